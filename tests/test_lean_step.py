"""The lean EM step that ``emjax.fit`` runs equals the general one (issue 15).

``fit`` evaluates each iterate's loss inside the E-step that the next step reuses, hands every
M-step a per-fit cache (``model.precompute``: x feature-major, SymMoLinE's XᵀX factor), shares one
exponential between softplus, sigmoid and tanh(z/2), and ends a Newton solve whose step is already
below tolerance without a line search. None of this may change the numbers: the oracles here are
the unfused functions (``model.loss``, ``posterior_targets``, ``em_step`` in a Python loop) and a
brute-force logaddexp for the loss.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from emjax._logistic import Logistic
from emjax._newton import soft_logistic_regression

from .utils import make_problem

DTYPES = [jnp.float64, jnp.float32]
# Iterates equal to the general path: round-off (float64) or Newton-tolerance-level (float32).
TOLERANCE = {jnp.float64: 1e-12, jnp.float32: 2e-5}


def _start(truth, seed):
    return emjax.testing.perturb(truth, jax.random.key(seed))


# One data set per model and dtype for every test here (each test starts from its own point): the sampler and
# every program below (E-step, solves, steps, fit loops) compile once per model and dtype, not once per test's
# data shape.
@functools.cache
def _problem(kind, dtype=jnp.float64):
    return make_problem(kind, seed=3, n=2000, d=4, dtype=dtype)


# The model's methods compiled, once per model, shape and dtype: called eagerly, their Newton loops and
# conditionals are dispatched op by op and compile anew at every call. The frozen-block masks are boolean arrays
# (traced), so the three mask variants of a test share one program.
@eqx.filter_jit
def _solve(model, params, x, targets, free, scores=None, cache=None):
    return model.solve(params, x, targets, free, scores, cache)


@eqx.filter_jit
def _posterior_targets(model, params, x, y):
    return model.posterior_targets(params, x, y)


@eqx.filter_jit
def _precompute(model, x, y):
    return model.precompute(x, y)


@eqx.filter_jit
def _lean_and_unfused(model, params, x, y):
    """The lean E-step (with the per-fit cache) and its oracles, the unfused functions, as one program
    (called eagerly, every operation of these methods compiles on its own: about 90 small programs)."""
    lean = model.expectation(params, x, y, model.precompute(x, y))
    plain_targets, _ = model.posterior_targets(params, x, y)
    # Oracle: the mixture log-likelihood as logaddexp of the two joint log-densities.
    oracle = -jnp.mean(jax.nn.logsumexp(model.log_joint(params, x, y), axis=1))
    return lean, plain_targets, oracle, model.loss(params, x, y)


@pytest.mark.parametrize("kind", ["lin", "log"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_expectation_loss_and_targets_equal_the_unfused_functions(kind, dtype):
    model, truth, x, y = _problem(kind, dtype)
    params = _start(truth, 1)
    (loss, targets, scores), plain_targets, oracle, plain_loss = _lean_and_unfused(model, params, x, y)
    rtol = 1e-13 if dtype == jnp.float64 else 2e-6
    np.testing.assert_allclose(loss, oracle, rtol=rtol)
    np.testing.assert_allclose(loss, plain_loss, rtol=rtol)
    for lean, plain in zip(targets, plain_targets, strict=True):
        np.testing.assert_allclose(lean, plain, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(scores.gate_softplus, jnp.mean(jax.nn.softplus(x @ params.w)), rtol=rtol)
    np.testing.assert_allclose(scores.gate_sigmoid, jax.nn.sigmoid(x @ params.w), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("kind", ["lin", "log"])
def test_loss_is_exact_where_the_scores_saturate(kind):
    """|x.w| and |x.beta| of order 1e3: the one-exponential form keeps every digit logaddexp has."""
    model, truth, x, y = _problem(kind)
    params = emjax.SymParams(w=300.0 * truth.w, beta=200.0 * truth.beta)
    (loss, (r, _), _), _, oracle, _ = _lean_and_unfused(model, params, x, y)
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(loss, oracle, rtol=1e-12)
    assert bool(jnp.all((r >= 0) & (r <= 1)))


def test_logistic_matches_the_library_functions_in_both_tails():
    z = jnp.array([-745.0, -700.0, -40.0, -1.0, -1e-12, 0.0, 1e-12, 1.0, 40.0, 700.0, 745.0])
    logistic = Logistic(z)
    np.testing.assert_allclose(logistic.softplus, jax.nn.softplus(z), rtol=1e-15)
    np.testing.assert_allclose(logistic.sigmoid, jax.nn.sigmoid(z), rtol=1e-15)
    np.testing.assert_allclose(logistic.sigmoid_negative, jax.nn.sigmoid(-z), rtol=1e-15)
    np.testing.assert_allclose(logistic.tanh_half, jnp.tanh(z / 2), rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(logistic.softplus_negative_abs, jax.nn.softplus(-jnp.abs(z)), rtol=1e-15)


@pytest.mark.parametrize("kind", ["lin", "log"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("frozen", [None, "w", "beta"])
def test_solve_with_the_cache_equals_solve_without(kind, dtype, frozen):
    model, truth, x, y = _problem(kind, dtype)
    params = _start(truth, 2)
    trainable = None if frozen is None else emjax.SymParams(w=frozen != "w", beta=frozen != "beta")
    free = model.free_mask(params, trainable)
    targets, scores = _posterior_targets(model, params, x, y)
    lean = _solve(model, params, x, targets, free, scores, _precompute(model, x, y))
    plain = _solve(model, params, x, targets, free)
    for a, b in zip(jax.tree_util.tree_leaves(lean), jax.tree_util.tree_leaves(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
    if frozen is not None:
        assert bool(jnp.all(getattr(lean, frozen) == getattr(params, frozen)))


@pytest.mark.parametrize("kind", ["lin", "log"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("frozen", [None, "w"])
def test_fit_equals_a_python_loop_of_em_step(kind, dtype, frozen):
    """The compiled lean loop against the public one-step function called eagerly, step by step."""
    model, truth, x, y = _problem(kind, dtype)
    start = _start(truth, 4)
    trainable = None if frozen is None else emjax.SymParams(w=False, beta=True)
    steps = 12
    result = emjax.fit(model, emjax.em(trainable=trainable), start, x, y, steps)
    params, losses = start, [emjax.neg_log_likelihood(model, start, x, y)]
    for _ in range(steps):
        params = emjax.em_step(model, params, x, y, trainable=trainable)
        losses.append(emjax.neg_log_likelihood(model, params, x, y))
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(result.losses, jnp.stack(losses), rtol=tol)
    for a, b in zip(jax.tree_util.tree_leaves(result.params), jax.tree_util.tree_leaves(params), strict=True):
        np.testing.assert_allclose(a, b, rtol=tol * 10, atol=tol * 10)
    assert int(result.num_steps) == steps


@pytest.mark.parametrize("kind", ["lin", "log"])
def test_mirror_descent_in_fit_equals_a_python_loop_of_its_step(kind):
    model, truth, x, y = _problem(kind)
    start = _start(truth, 6)
    result = emjax.fit(model, emjax.mirror_descent(0.6), start, x, y, 6)
    params = start
    for _ in range(6):
        params = emjax.mirror_descent_step(model, params, x, y, 0.6)
    for a, b in zip(jax.tree_util.tree_leaves(result.params), jax.tree_util.tree_leaves(params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_fit_with_a_tolerance_takes_the_loss_from_the_e_step():
    """The while-loop form: losses, the stopping step and the result equal the scan form's prefix."""
    model, truth, x, y = _problem("lin")
    start = _start(truth, 8)
    until = emjax.fit(model, emjax.em(), start, x, y, 200, tol=1e-10)
    steps = int(until.num_steps)
    assert bool(until.converged) and 0 < steps < 200
    scan = emjax.fit(model, emjax.em(), start, x, y, steps)
    np.testing.assert_allclose(until.losses[: steps + 1], scan.losses, rtol=1e-13)
    assert bool(jnp.all(jnp.isnan(until.losses[steps + 1 :])))
    for a, b in zip(jax.tree_util.tree_leaves(until.params), jax.tree_util.tree_leaves(scan.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_newton_ends_without_a_line_search_only_below_tolerance():
    """The warm solve that starts at the answer returns it after one full step; a cold one still
    converges to the point where the gradient (moment matching) vanishes."""
    key = jax.random.key(0)
    x = jax.random.normal(key, (4000, 4))
    u_true = jnp.array([1.0, -2.0, 0.5, 0.0])
    targets = jax.nn.sigmoid(x @ u_true)
    solve = jax.jit(soft_logistic_regression)  # one program for both solves (eagerly, each compiles its loop)
    cold = solve(x, targets, jnp.zeros(4))
    warm = solve(x, targets, cold)
    gradient = x.T @ (jax.nn.sigmoid(x @ cold) - targets) / x.shape[0]
    assert float(jnp.max(jnp.abs(gradient))) < 1e-13
    np.testing.assert_allclose(cold, u_true, atol=1e-9)
    np.testing.assert_allclose(warm, cold, atol=1e-12)


def test_softplus_of_both_signs_shares_one_log1p_and_stays_finite_at_infinity():
    z = jnp.array([-jnp.inf, -745.0, -1.0, 0.0, 1.0, 745.0, jnp.inf])
    logistic = Logistic(z)
    np.testing.assert_allclose(logistic.softplus_negative, jax.nn.softplus(-z), rtol=1e-15)
    model = emjax.SymMoLogE()
    l1, l0 = model.expert_log_likelihoods(z, jnp.ones_like(z))
    np.testing.assert_allclose(l1, jax.nn.log_sigmoid(z), rtol=1e-15)
    np.testing.assert_allclose(l0, jax.nn.log_sigmoid(-z), rtol=1e-15)
