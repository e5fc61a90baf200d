"""The lean K-expert step (per-fit cache, one-product E-step, gate Newton carrying its softmax, Gaussian
experts solved together) equals the general one: same M-steps, same E-step, same fits, to round-off."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from emjax._newton import linear_newton
from emjax.models import _moe_solve
from emjax.models._model import normalise
from tests.utils import MOE_MODELS, make_moe_problem

KINDS = sorted(MOE_MODELS)
# Every family in float64, the linear-Gaussian one (its own closed-form experts) in float32 too.
CASES = [(kind, jnp.float64) for kind in KINDS] + [("lin", jnp.float32)]
TOLERANCE = {jnp.float64: 1e-9, jnp.float32: 2e-4}


def _problem(kind, dtype, seed=0, n=150, d=3):
    model, _, x, y = make_moe_problem(kind, seed=seed, n=n, d=d)
    # The start is initialised in float64 and then cast: one compiled init_params per family, not per dtype.
    params = emjax.init_params(model, jax.random.key(seed), x, y)
    return model, *jax.tree_util.tree_map(lambda leaf: leaf.astype(dtype), (x, y, params))


def _close(a, b, dtype, scale=1.0):
    tol = scale * TOLERANCE[dtype]
    for left, right in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(left), np.asarray(right), rtol=tol, atol=tol)


def _reference_expectation(model, params, x, y):
    logits = x @ params.gate.T
    gamma, log_likelihoods = normalise(jax.nn.log_softmax(logits, axis=-1) + model.expert_log_probs(params, x, y))
    return -jnp.mean(log_likelihoods), gamma, logits


@eqx.filter_jit
def _expectations(model, params, x, y):
    """The reference E-step, the lean one without and with the per-fit cache, the unfused loss and the expert
    statistic, as one program (called eagerly, every operation of the model's methods compiles on its own)."""
    lean = tuple(model.expectation(params, x, y, cache) for cache in (None, model.precompute(x, y)))
    return _reference_expectation(model, params, x, y), lean, model.loss(params, x, y), model.expert.statistic(y)


def _e_step(model, params, x, y):
    """``model.expectation(params, x, y)``, from the program above (compiled once per family and dtype)."""
    return _expectations(model, params, x, y)[1][0]


@pytest.mark.parametrize("kind, dtype", CASES)
def test_expectation_equals_the_reference_with_and_without_cache(kind, dtype):
    model, x, y, params = _problem(kind, dtype, seed=1)
    (loss, gamma, logits), lean, plain_loss, statistic = _expectations(model, params, x, y)
    for lean_loss, (lean_gamma, stats), scores in lean:
        _close(lean_loss, loss, dtype)
        _close(lean_loss, plain_loss, dtype)
        _close(lean_gamma, gamma, dtype)
        _close(stats, statistic[:, :, None] * gamma[:, None, :], dtype)
        _close(scores.logits, logits, dtype)
        _close(scores.log_normaliser, jax.nn.logsumexp(logits, axis=-1), dtype)
        _close(scores.probabilities, jax.nn.softmax(logits, axis=-1), dtype)


@pytest.mark.parametrize("kind, dtype", CASES)
def test_solve_with_cache_and_scores_equals_solve_without(kind, dtype):
    model, x, y, params = _problem(kind, dtype, seed=2)
    free = model.free_mask(params)

    @jax.jit
    def solves(params, x, y):
        _, targets, scores = model.expectation(params, x, y)
        return (
            model.solve(params, x, targets, free),
            model.solve(params, x, targets, free, scores, model.precompute(x, y)),
            model.solve(params, x, targets, free, scores.logits),  # a bare logits array still works
        )

    plain, lean, from_logits = solves(params, x, y)
    _close(lean, plain, dtype)
    _close(from_logits, plain, dtype)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_gate_loop_equals_linear_newton(dtype):
    model, x, y, params = _problem("lin", dtype, seed=3)
    free = model.free_mask(params)
    _, (weights, _), scores = _e_step(model, params, x, y)
    lean = jax.jit(lambda w, s: _moe_solve.fit_gate(model, x, w, params.gate, free.gate, s, x.T))(weights, scores)
    row_mass = jnp.sum(weights, axis=-1)

    def loss(z):
        return row_mass * jax.nn.logsumexp(z, axis=-1) - jnp.sum(weights * z, axis=-1)

    general = jax.jit(linear_newton, static_argnums=(0, 4, 5, 6, 7, 9))(
        loss,
        x,
        params.gate.T,
        free.gate.T,
        tuple(range(1, model.num_experts)),
        lambda u: 0.0 * jnp.sum(u),
        0.0,
        derivatives=_moe_solve.softmax_derivatives(row_mass, weights),
    ).T
    _close(lean, general, dtype)


@pytest.mark.parametrize("dtype, ridge", [(jnp.float64, 0.0), (jnp.float64, 0.1), (jnp.float32, 0.0)])
def test_gaussian_experts_together_equal_the_family_m_step(dtype, ridge):
    model = emjax.MoLinE(3, ridge=ridge)
    plain, x, y, params = _problem("lin", dtype, seed=4)
    free = model.free_mask(params)
    free = emjax.MoEParams(gate=free.gate, experts=free.experts.at[1, 0].set(False), sigma=free.sigma.at[2].set(False))
    _, (weights, stats), _ = _e_step(plain, params, x, y)  # the E-step does not depend on the ridge
    family = model.expert

    @jax.jit
    def both(params, weights, stats):
        lean = _moe_solve._solve_gaussian_experts(model, params, x, x.T, weights, stats, free.experts, free.sigma)

        def one(c, s, w, t, fc, fs):
            return family.m_step(x, w, t, c, s, fc, fs, ridge)

        general = jax.vmap(one, in_axes=(0, 0, 1, 2, 0, 0))(
            params.experts, params.sigma, weights, stats, free.experts, free.sigma
        )
        return lean, general

    (coef, scale), (ref_coef, ref_scale) = both(params, weights, stats)
    _close((coef, scale), (ref_coef, ref_scale), dtype, scale=10.0)
    assert coef[1, 0] == params.experts[1, 0] and scale[2] == params.sigma[2]


# The fit tests share their compiled programs: the same number of steps (one fit loop per family and dtype, whatever
# is frozen: fit expands every mask to full boolean arrays) and em_step with the full mask as a traced argument
# (the default mask where nothing is frozen), so the frozen and the unfrozen loops of em_step compile once.
FIT_STEPS = 4


@eqx.filter_jit
def _em_step(model, params, x, y, free):
    return emjax.em_step(model, params, x, y, trainable=free)


def _em_steps(model, params, x, y, trainable=None):
    """FIT_STEPS calls of em_step (each compiled) with ``trainable`` as a full mask."""
    free = model.free_mask(params, trainable)
    for _ in range(FIT_STEPS):
        params = _em_step(model, params, x, y, free)
    return params


@pytest.mark.parametrize("kind, dtype", CASES)
def test_fit_equals_a_loop_of_em_steps(kind, dtype):
    model, x, y, params = _problem(kind, dtype, seed=5)
    fitted = emjax.fit(model, emjax.em(), params, x, y, FIT_STEPS)
    _close(fitted.params, _em_steps(model, params, x, y), dtype, scale=10.0)


@pytest.mark.parametrize("kind", ["lin", "log"])
def test_frozen_block_stays_and_the_rest_matches_em_steps(kind):
    model, x, y, params = _problem(kind, jnp.float64, seed=6)
    trainable = emjax.MoEParams(
        gate=np.asarray(False), experts=np.asarray(True), sigma=None if params.sigma is None else np.asarray(True)
    )
    fitted = emjax.fit(model, emjax.em(trainable=trainable), params, x, y, FIT_STEPS)
    np.testing.assert_array_equal(fitted.params.gate, params.gate)
    _close(fitted.params, _em_steps(model, params, x, y, trainable), jnp.float64, scale=10.0)


def test_mirror_descent_uses_the_e_steps_prior():
    model, x, y, params = _problem("lin", jnp.float64, seed=7)
    _, _, scores = _e_step(model, params, x, y)
    prior_targets = jax.jit(model.prior_targets)
    for given in (scores, scores.logits, None):
        prior, stats = prior_targets(params, x, given)
        np.testing.assert_allclose(prior, jax.nn.softmax(x @ params.gate.T, axis=-1), rtol=1e-12, atol=1e-14)
        assert stats.shape == (x.shape[0], 2, model.num_experts)
