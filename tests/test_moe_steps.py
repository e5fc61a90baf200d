"""K-expert updates: exact M-steps (surrogate stationarity), EM = MD(1), monotone descent,
pinned and frozen entries, and every solver in fit."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import emjax
from tests.utils import MOE_MODELS, make_moe_problem


@pytest.fixture(params=sorted(MOE_MODELS))
def moe_kind(request):
    return request.param


# Fits share compiled loops: a frozen mask is expanded to full boolean arrays (one program whatever is frozen) and
# step sizes are traced, so fits with the same solver type, data shape and number of steps compile once. The mask
# tests therefore run as many steps as the descent tests do.
DESCENT_STEPS = 15  # test_em_and_mirror_descent_never_increase_the_loss and the EM / mirror-descent mask test
GRADIENT_STEPS = 20  # test_gradient_solvers_descend and the gradient-solver mask test


def _start(model, x, y, seed=0):
    return emjax.init_params(model, jax.random.key(seed), x, y)


def _leaves(params):
    return jax.tree_util.tree_leaves(params)


@eqx.filter_jit
def _surrogate_gradient(model, params, x, y, gamma):
    """The gradient of Q(. | theta) at ``params`` for theta's responsibilities ``gamma``: compiled (10x faster than
    eager autodiff), with the data as arguments, so the tests of one family and data shape share the program."""
    return jax.grad(model.surrogate)(params, x, y, gamma)


def test_em_step_is_the_exact_m_step(moe_kind):
    """The new point makes the free gradient of Q(. | theta_t) vanish (autodiff oracle of docs/math.md §4.3)."""
    model, _, x, y = make_moe_problem(moe_kind, seed=20, n=200)
    params = _start(model, x, y)
    new = emjax.em_step(model, params, x, y)
    gamma = emjax.responsibilities(model, params, x, y)
    grads = _surrogate_gradient(model, new, x, y, gamma)
    free = model.free_mask(new)
    for grad, mask in zip(_leaves(grads), _leaves(free), strict=True):
        np.testing.assert_allclose(jnp.where(mask, grad, 0), 0, atol=1e-9)


def test_mirror_descent_with_unit_step_is_em(moe_kind):
    model, _, x, y = make_moe_problem(moe_kind, seed=21, n=200)
    params = _start(model, x, y)
    for a, b in zip(
        _leaves(emjax.mirror_descent_step(model, params, x, y, 1.0)),
        _leaves(emjax.em_step(model, params, x, y)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("eta", [1.0, 0.4])
def test_em_and_mirror_descent_never_increase_the_loss(moe_kind, eta):
    """Over many random problems and starts, float64 (docs/math.md §4.6, §5.4)."""
    model = MOE_MODELS[moe_kind]
    solver = emjax.mirror_descent(eta)

    def run(seed):
        _, truth, x, y = make_moe_problem(moe_kind, seed=seed, n=200)
        start = emjax.init_params(model, jax.random.key(seed), x, y)
        return emjax.fit(model, solver, start, x, y, DESCENT_STEPS).losses

    for seed in range(30, 33):
        losses = run(seed)
        assert bool(jnp.all(jnp.isfinite(losses)))
        assert bool(jnp.all(jnp.diff(losses) <= 1e-10 * (1 + jnp.abs(losses[1:])))), (seed, losses)


def test_mirror_descent_step_differs_from_em_for_small_steps(moe_kind):
    model, _, x, y = make_moe_problem(moe_kind, seed=22, n=200)
    params = _start(model, x, y)
    half = emjax.mirror_descent_step(model, params, x, y, 0.5)
    full = emjax.em_step(model, params, x, y)
    assert float(jnp.max(jnp.abs(half.experts - full.experts))) > 1e-6


def _mask(model, params):
    """Freeze a gate entry, all of expert 1 and (linear experts) sigma_2, in one mask."""
    k = model.num_experts
    sigma = None if params.sigma is None else jnp.arange(k) != 2
    return emjax.MoEParams(
        gate=jnp.ones(params.gate.shape, bool).at[2, 0].set(False), experts=jnp.arange(k) != 1, sigma=sigma
    )


def _check_frozen(model, before, after, mask):
    free = model.free_mask(before, mask)
    for new, old, may_move in zip(_leaves(after), _leaves(before), _leaves(free), strict=True):
        assert bool(jnp.all(jnp.where(may_move, True, new == old)))
        assert bool(jnp.any(jnp.where(may_move, new != old, False)))


@pytest.mark.parametrize("solver_name", ["em", "md"])
def test_every_m_step_keeps_frozen_and_pinned_entries_bit_identical(moe_kind, solver_name):
    model, _, x, y = make_moe_problem(moe_kind, seed=23, n=200)
    params = _start(model, x, y)
    mask = _mask(model, params)
    solver = emjax.em(trainable=mask) if solver_name == "em" else emjax.mirror_descent(0.5, trainable=mask)
    _check_frozen(model, params, emjax.fit(model, solver, params, x, y, DESCENT_STEPS).params, mask)


@pytest.mark.parametrize("solver_name", ["gd", "gem", "adamw"])
def test_every_gradient_solver_keeps_frozen_and_pinned_entries_bit_identical(solver_name):
    model, _, x, y = make_moe_problem("log", seed=23, n=200)
    params = _start(model, x, y)
    mask = _mask(model, params)
    solver = {
        "gd": emjax.gradient_descent(0.05, trainable=mask),
        "gem": emjax.gradient_em(0.05, 3, trainable=mask),  # 3 inner steps, as in test_gradient_solvers_descend
        # Weight decay moves entries whose gradient is zero: the mask must still hold.
        "adamw": emjax.from_optax(optax.adamw(0.01, weight_decay=0.1), trainable=mask),
    }[solver_name]
    _check_frozen(model, params, emjax.fit(model, solver, params, x, y, GRADIENT_STEPS).params, mask)


def test_symmetric_models_freeze_whole_blocks():
    model = emjax.SymMoLinE()
    truth = emjax.SymParams(w=jnp.array([1.0, 0.0]), beta=jnp.array([0.0, 2.0]))
    x, y = emjax.sample(model, truth, jax.random.key(0), 200)
    start = emjax.SymParams(w=jnp.array([0.3, 0.3]), beta=jnp.array([1.0, 1.0]))
    for solver in (
        emjax.em(trainable=emjax.SymParams(w=False, beta=True)),
        emjax.gradient_descent(0.1, trainable=emjax.SymParams(w=False, beta=True)),
    ):
        result = emjax.fit(model, solver, start, x, y, 3)
        assert bool(jnp.all(result.params.w == start.w)) and bool(jnp.any(result.params.beta != start.beta))


def test_freezing_a_separable_block_leaves_the_rest_of_the_m_step_unchanged():
    """The M-step separates into gate and experts: freezing the gate or one expert must not move the others."""
    model, _, x, y = make_moe_problem("log", seed=24, n=200)
    params = _start(model, x, y)
    free = emjax.em_step(model, params, x, y)
    # Both masks per expert (boolean arrays of shape (K,), traced): one compiled em_step for the two.
    sigma_all = np.ones(3, bool) if params.sigma is not None else None
    mask = emjax.MoEParams(gate=np.zeros(3, bool), experts=np.ones(3, bool), sigma=sigma_all)
    gate_fixed = emjax.em_step(model, params, x, y, trainable=mask)
    np.testing.assert_allclose(gate_fixed.experts, free.experts, rtol=1e-12, atol=1e-12)
    mask = emjax.MoEParams(gate=np.ones(3, bool), experts=np.array([True, False, True]), sigma=sigma_all)
    expert_fixed = emjax.em_step(model, params, x, y, trainable=mask)
    np.testing.assert_allclose(expert_fixed.gate, free.gate, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(expert_fixed.experts[::2], free.experts[::2], rtol=1e-12, atol=1e-12)


def test_a_frozen_gate_entry_is_a_constrained_optimum():
    """Freezing one gate entry solves the gate problem over the others (its free gradient vanishes)."""
    model, _, x, y = make_moe_problem("lin", seed=25, n=200)
    params = _start(model, x, y)
    mask = emjax.MoEParams(gate=jnp.ones((3, 3), bool).at[2, 0].set(False), experts=True, sigma=True)
    new = emjax.em_step(model, params, x, y, trainable=mask)
    assert new.gate[2, 0] == params.gate[2, 0]
    gamma = emjax.responsibilities(model, params, x, y)
    grad = _surrogate_gradient(model, new, x, y, gamma).gate
    np.testing.assert_allclose(grad.at[2, 0].set(0).at[0].set(0), 0, atol=1e-9)


@pytest.mark.parametrize("solver_name", ["gd", "gem", "adam"])
def test_gradient_solvers_descend(moe_kind, solver_name):
    model, _, x, y = make_moe_problem(moe_kind, seed=26, n=200)
    params = _start(model, x, y)
    solver = {
        "gd": emjax.gradient_descent(0.02),
        "gem": emjax.gradient_em(0.02, 3),
        "adam": emjax.from_optax(optax.adam(0.01)),
    }[solver_name]
    result = emjax.fit(model, solver, params, x, y, GRADIENT_STEPS)
    assert int(result.status) in (emjax.Status.ok, emjax.Status.degenerate)
    assert float(result.losses[-1]) < float(result.losses[0])


def test_gradient_em_with_one_inner_step_is_gradient_descent(moe_kind):
    """Fisher's identity: grad_u Q(u | theta)|_{u=theta} = grad L(theta)."""
    model, _, x, y = make_moe_problem(moe_kind, seed=27, n=200)
    params = _start(model, x, y)
    for a, b in zip(
        _leaves(emjax.gradient_em_step(model, params, x, y, 0.03, 1)),
        _leaves(emjax.gradient_descent_step(model, params, x, y, 0.03)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


class BernoulliExpert(emjax.AbstractExpertFamily):
    """A user-written family: logistic regression with one coefficient vector, four methods only."""

    def statistic(self, y):
        return y[:, None]

    def natural(self, coef, scale, x):
        return (x @ coef)[:, None]

    def log_partition(self, natural):
        return jax.nn.softplus(natural[:, 0])

    def sample(self, coef, scale, key, x):
        return jax.random.bernoulli(key, jax.nn.sigmoid(x @ coef)).astype(x.dtype)


def test_a_new_expert_family_needs_only_the_interface():
    """A four-method Bernoulli family is the two-class softmax expert with its pinned column 0."""
    custom = emjax.MixtureOfExperts(expert=BernoulliExpert(), num_experts=3)
    builtin = emjax.MoLogE(3, num_classes=2)
    truth = emjax.testing.random_params(custom, jax.random.key(0), 3)
    x, y = emjax.sample(custom, truth, jax.random.key(1), 200)

    def as_softmax(p):
        return emjax.MoEParams(gate=p.gate, experts=jnp.stack([jnp.zeros_like(p.experts), p.experts], axis=-1))

    start = emjax.init_params(custom, jax.random.key(2), x, y)
    np.testing.assert_allclose(
        emjax.neg_log_likelihood(custom, start, x, y),
        emjax.neg_log_likelihood(builtin, as_softmax(start), x, y),
        rtol=1e-12,
    )
    custom_step = emjax.em_step(custom, start, x, y)
    builtin_step = emjax.em_step(builtin, as_softmax(start), x, y)
    np.testing.assert_allclose(as_softmax(custom_step).experts, builtin_step.experts, atol=1e-8)
    np.testing.assert_allclose(custom_step.gate, builtin_step.gate, atol=1e-8)
