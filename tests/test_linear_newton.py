"""The linear-predictor Newton solver of the M-steps against the autodiff masked Newton it replaces.

emjax._newton.linear_newton must take the same Newton steps as masked_newton (only the work
differs), and gradient_and_hessian must equal the plain products it computes blockwise.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from emjax._minimize import masked_minimize
from emjax._newton import BLOCK_ROWS, gradient_and_hessian, linear_newton, masked_newton
from emjax.models import _moe_solve
from tests.utils import make_moe_problem


@pytest.mark.parametrize("n", [7, BLOCK_ROWS, 3 * BLOCK_ROWS + 5])
@pytest.mark.parametrize("blocks", [0, 1, 3])
def test_gradient_and_hessian_equals_the_plain_products(n, blocks):
    keys = jax.random.split(jax.random.key(n + blocks), 3)
    x = jax.random.normal(keys[0], (n, 5))
    gradients = jax.random.normal(keys[1], (n, 2))
    curvatures = jax.random.uniform(keys[2], (n, blocks))
    xg, hessians = jax.jit(gradient_and_hessian)(x, gradients, curvatures)
    np.testing.assert_allclose(xg, x.T @ gradients, rtol=1e-12, atol=1e-10)
    assert hessians.shape == (blocks, 5, 5)
    for p in range(blocks):
        np.testing.assert_allclose(hessians[p], (x * curvatures[:, p : p + 1]).T @ x, rtol=1e-12, atol=1e-10)


def _softmax_problem(seed, n=300, d=4, classes=3):
    keys = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(keys[0], (n, d))
    y = jax.random.categorical(keys[1], x @ jax.random.normal(keys[2], (d, classes)))
    weights = jax.random.uniform(keys[3], (n,), minval=0.1, maxval=1.0)
    targets = jax.nn.one_hot(y, classes) * weights[:, None]

    def loss(z):
        return weights * jax.nn.logsumexp(z, axis=-1) - jnp.sum(targets * z, axis=-1)

    return x, weights, targets, loss


@pytest.mark.parametrize(("ridge", "closed_form"), [(0.0, False), (0.3, True)])
def test_linear_newton_takes_masked_newtons_steps(ridge, closed_form):
    x, weights, targets, loss = _softmax_problem(0)
    d, classes = x.shape[1], targets.shape[1]
    # Column 0 pinned; one more entry frozen inside a free column.
    free = jnp.ones((d, classes), bool).at[:, 0].set(False).at[2, 1].set(False)
    init = 0.2 * jax.random.normal(jax.random.key(5), (d, classes))

    def penalty(u):
        return 0.5 * ridge * jnp.sum(jnp.square(jnp.where(free, u, 0)))

    derivatives = _moe_solve.softmax_derivatives(weights, targets) if closed_form else None
    for steps in (1, 2, 50):  # every partial iterate, not only the minimiser
        fast = jax.jit(
            lambda u, n=steps: linear_newton(loss, x, u, free, (1, 2), penalty, ridge, n, derivatives=derivatives)
        )(init)
        reference = jax.jit(
            lambda u, steps=steps: masked_newton(lambda v: jnp.mean(loss(x @ v)) + penalty(v), u, free, steps)
        )(init)
        np.testing.assert_allclose(fast, reference, rtol=1e-11, atol=1e-12)
        np.testing.assert_array_equal(fast[~free], init[~free])


def test_given_scores_change_nothing_and_derivatives_are_those_of_the_solution_map():
    x, weights, targets, loss = _softmax_problem(1, n=120, d=3)
    free = jnp.ones((3, 3), bool).at[:, 0].set(False)
    init = jnp.zeros((3, 3))

    def fast(scale, scores=None):
        scaled = x * scale
        return linear_newton(
            lambda z: weights * jax.nn.logsumexp(z, axis=-1) - jnp.sum(targets * z, axis=-1),
            scaled,
            init,
            free,
            (1, 2),
            lambda u: 0.0,
            0.0,
            scores=scores,
        )

    def reference(scale):
        scaled = x * scale
        return masked_newton(lambda u: jnp.mean(loss(scaled @ u)), init, free)

    np.testing.assert_allclose(fast(1.0, x @ init), fast(1.0), rtol=1e-13, atol=1e-14)
    probe = jax.random.normal(jax.random.key(2), (3, 3))
    grad_fast = jax.grad(lambda s: jnp.sum(probe * fast(s)))(1.3)
    grad_reference = jax.grad(lambda s: jnp.sum(probe * reference(s)))(1.3)
    step = 1e-5
    central = (jnp.sum(probe * reference(1.3 + step)) - jnp.sum(probe * reference(1.3 - step))) / (2 * step)
    np.testing.assert_allclose(grad_fast, grad_reference, rtol=1e-9)
    np.testing.assert_allclose(grad_fast, central, rtol=1e-6)


class _AutodiffMoLogE(emjax.MoLogE):
    """MoLogE whose M-steps go through the model's own solver (the autodiff masked Newton)."""

    def minimize(self, objective, init, free):
        return masked_minimize(objective, init, free, self.m_step_method, self.m_step_max_steps)


class _AutodiffMoPoE(emjax.MoPoE):
    def minimize(self, objective, init, free):
        return masked_minimize(objective, init, free, self.m_step_method, self.m_step_max_steps)


@pytest.mark.parametrize("kind", ["log", "poi"])
def test_em_and_mirror_steps_equal_those_of_the_autodiff_m_step(kind):
    model, truth, x, y = make_moe_problem(kind, seed=3)
    params = jax.tree_util.tree_map(lambda a: 0.7 * a, truth)  # mid-fit: several Newton steps per M-step
    slow = (
        _AutodiffMoLogE(model.num_experts, num_classes=model.expert.num_classes, ridge=0.05)
        if kind == "log"
        else _AutodiffMoPoE(model.num_experts, ridge=0.05)
    )
    fast = type(model)(
        model.num_experts, **({"num_classes": model.expert.num_classes} if kind == "log" else {}), ridge=0.05
    )
    trainable = jax.tree_util.tree_map(lambda a: jnp.ones(a.shape, bool), params)
    # One gate entry frozen, so the fast path meets a partly free row.
    trainable = emjax.MoEParams(
        gate=trainable.gate.at[1, 0].set(False), experts=trainable.experts, sigma=trainable.sigma
    )
    for step in (
        lambda m: emjax.mirror_descent_step(m, params, x, y, 0.7),
        lambda m: emjax.em_step(m, params, x, y, trainable=trainable),
    ):
        got, want = step(fast), step(slow)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-11)
