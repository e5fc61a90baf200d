"""Inner solvers that scale (L-BFGS M-steps) and the model ridge as part of every solver's objective."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import emjax
from emjax._minimize import NEWTON_MAX_SIZE, masked_minimize, resolve_method
from tests.utils import make_moe_problem

em_step = eqx.filter_jit(emjax.em_step)


def _softmax_problem(seed=0, n=150, d=4, classes=4):
    key_x, key_b, key_y, key_w = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(key_x, (n, d))
    coef = jax.random.normal(key_b, (d, classes))
    y = jax.random.categorical(key_y, x @ coef)
    weights = jax.random.uniform(key_w, (n,), minval=0.1, maxval=1.0)
    stats = jax.nn.one_hot(y, classes) * weights[:, None]

    def objective(c):
        logits = x @ c
        return jnp.mean(weights * jax.nn.logsumexp(logits, axis=-1) - jnp.sum(logits * stats, axis=-1))

    free = jnp.ones((d, classes), bool).at[:, 0].set(False)
    start = 0.1 * jnp.ones((d, classes)).at[:, 0].set(0.3)
    return objective, start, free


def test_lbfgs_and_newton_reach_the_same_minimiser_and_keep_fixed_entries():
    objective, start, free = _softmax_problem()
    newton = jax.jit(lambda s: masked_minimize(objective, s, free, "newton"))(start)
    lbfgs = jax.jit(lambda s: masked_minimize(objective, s, free, "lbfgs", max_steps=200))(start)
    np.testing.assert_allclose(lbfgs, newton, atol=1e-7)
    np.testing.assert_array_equal(lbfgs[:, 0], start[:, 0])  # bit-identical fixed column
    gradient = jax.grad(objective)(lbfgs)
    assert float(jnp.max(jnp.abs(jnp.where(free, gradient, 0)))) < 1e-8


def test_lbfgs_solution_map_is_differentiable_like_newtons():
    _, start, free = _softmax_problem(seed=1)

    def minimiser(scale, method):
        objective, _, _ = _softmax_problem(seed=1)
        return masked_minimize(lambda c: objective(c) + 0.5 * scale * jnp.sum(c**2), start, free, method, max_steps=300)

    def summary(scale, method):
        return jnp.sum(jnp.sin(minimiser(scale, method)))

    grad_newton = jax.jit(jax.grad(summary), static_argnums=1)(0.05, "newton")
    grad_lbfgs = jax.jit(jax.grad(summary), static_argnums=1)(0.05, "lbfgs")
    value = jax.jit(summary, static_argnums=1)
    central = (value(0.05 + 1e-5, "newton") - value(0.05 - 1e-5, "newton")) / 2e-5
    np.testing.assert_allclose(grad_lbfgs, grad_newton, rtol=1e-5)
    np.testing.assert_allclose(grad_newton, central, rtol=1e-5)


def test_auto_picks_newton_for_small_and_lbfgs_for_large_problems():
    assert resolve_method("auto", NEWTON_MAX_SIZE) == "newton"
    assert resolve_method("auto", NEWTON_MAX_SIZE + 1) == "lbfgs"
    with pytest.raises(ValueError, match="method"):
        resolve_method("cg", 3)
    with pytest.raises(ValueError, match="m_step_method"):
        emjax.MoLogE(2, 3, m_step_method="bfgs")
    with pytest.raises(ValueError, match="m_step_max_steps"):
        emjax.MoLogE(2, 3, m_step_max_steps=0)


def test_em_step_with_lbfgs_equals_em_step_with_newton():
    _, truth, x, y = make_moe_problem("log", seed=3, n=200)
    newton = emjax.MoLogE(3, num_classes=3, m_step_method="newton")
    lbfgs = emjax.MoLogE(3, num_classes=3, m_step_method="lbfgs", m_step_max_steps=300)
    start = emjax.init_params(newton, jax.random.key(3), x, y)
    for a, b in zip(
        jax.tree_util.tree_leaves(em_step(lbfgs, start, x, y)),
        jax.tree_util.tree_leaves(em_step(newton, start, x, y)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_capped_lbfgs_em_is_a_generalized_em_that_never_increases_the_objective():
    _, _, x, y = make_moe_problem("log", seed=4, n=100)
    for ridge in (0.0, 0.05):  # L itself, and L + ridge
        model = emjax.MoLogE(3, num_classes=3, ridge=ridge, m_step_method="lbfgs", m_step_max_steps=2)
        start = emjax.init_params(model, jax.random.key(4), x, y)
        result = emjax.fit(model, emjax.em(), start, x, y, 8, keep_history=True)
        free = model.free_mask(start)
        penalties = jax.vmap(
            lambda p, model=model, free=free, ridge=ridge: model.penalty(p, free) if ridge else jnp.zeros(())
        )(result.params_history)
        objective = np.asarray(result.losses + penalties)
        assert np.all(np.diff(objective) <= 1e-12), objective
        assert objective[-1] < objective[0] - 1e-3


def test_every_solver_minimises_the_ridge_penalised_objective():
    _, _, x, y = make_moe_problem("log", seed=5, n=150)
    ridge = 0.3
    model = emjax.MoLogE(3, num_classes=3, ridge=ridge)
    params = emjax.init_params(model, jax.random.key(5), x, y)
    free = model.free_mask(params)

    def penalised(p):
        return emjax.neg_log_likelihood(model, p, x, y) + model.penalty(p, free)

    gradient = jax.jit(jax.grad(penalised))(params)
    step = eqx.filter_jit(emjax.gradient_descent_step)(model, params, x, y, 0.5)
    for new, old, g, f in zip(*(jax.tree_util.tree_leaves(t) for t in (step, params, gradient, free)), strict=True):
        np.testing.assert_allclose(new, jnp.where(f, old - 0.5 * g, old), atol=1e-12)
    # Fisher's identity with the ridge: one gradient-EM inner step is one GD step on L + ridge.
    one_inner = eqx.filter_jit(emjax.gradient_em_step)(model, params, x, y, 0.5, inner_steps=1)
    for a, b in zip(jax.tree_util.tree_leaves(one_inner), jax.tree_util.tree_leaves(step), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)
    # The EM fixed point is a stationary point of L + ridge, and optax solvers see the same gradient.
    fitted = emjax.fit(model, emjax.em(), params, x, y, 100, tol=1e-13).params
    stationary = jax.jit(jax.grad(penalised))(fitted)
    for g, f in zip(jax.tree_util.tree_leaves(stationary), jax.tree_util.tree_leaves(free), strict=True):
        np.testing.assert_allclose(jnp.where(f, g, 0), 0, atol=1e-5)  # ridge * |theta| is ~0.1
    solver = emjax.from_optax(optax.sgd(0.5))
    via_optax, _ = eqx.filter_jit(solver.update)(model, params, solver.init(params), x, y)
    for a, b in zip(jax.tree_util.tree_leaves(via_optax), jax.tree_util.tree_leaves(step), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)
