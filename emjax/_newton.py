r"""Soft-label logistic regression by damped Newton, differentiable by the implicit function theorem.

This is the shared M-step solver of MATH.md §3.1: given targets $t \in [0,1]^n$, minimise

$$f(u) = \mathrm{mean}_n\,[\mathrm{softplus}(x_n \cdot u) - t_n\, x_n \cdot u],$$

whose stationarity condition is moment matching, $\mathrm{mean}\,\mathrm{sigmoid}(x\cdot u)\,x =
\mathrm{mean}\, t\, x$. Newton steps are damped by Armijo backtracking (undamped Newton can
diverge) and warm-started, and the loop stops when $\|\Delta u\|_\infty$ falls below a
dtype-dependent tolerance or after ``max_steps`` steps.

The solution is wrapped in :func:`jax.lax.custom_root`, so ``jax.grad``, ``jax.jacfwd`` and
``jax.jacobian`` of anything built on it differentiate the *solution map* (through
$\nabla^2 f^{-1}$), not the unrolled iterations. That is what MATH.md §5.5(6) needs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array, lax

from ._linalg import solve_psd

MAX_NEWTON_STEPS = 50
_ARMIJO = 1e-4
_MAX_HALVINGS = 40


def newton_tolerance(dtype) -> float:
    """Stopping tolerance on ``max|step|``: 1e-10 in float64, 1e-5 in float32 (MATH.md §3.1)."""
    return 1e-10 if jnp.finfo(dtype).bits >= 64 else 1e-5


def _objective(x: Array, targets: Array, u: Array) -> Array:
    z = x @ u
    return jnp.mean(jax.nn.softplus(z) - targets * z)


def armijo_step(objective, u: Array, direction: Array, f0: Array, slope: Array) -> Array:
    """The damped step ``alpha * direction``: halve alpha from 1 until Armijo's condition holds.

    Returns a zero step if no finite trial point is found (so a Newton loop never steps to NaN).
    """
    eps = jnp.finfo(u.dtype).eps
    slack = 16 * eps * (jnp.abs(f0) + 1)  # round-off: near the optimum f changes by less than its last bits

    def reject(search):
        alpha, f_alpha, halvings = search
        accept = f_alpha <= f0 + _ARMIJO * alpha * slope + slack  # False for NaN
        return (~accept) & (halvings < _MAX_HALVINGS)

    def halve(search):
        alpha, _, halvings = search
        alpha = alpha / 2
        return alpha, objective(u + alpha * direction), halvings + 1

    alpha, f_alpha, _ = lax.while_loop(reject, halve, (jnp.ones((), u.dtype), objective(u + direction), 0))
    return jnp.where(jnp.isfinite(f_alpha), alpha * direction, jnp.zeros_like(direction))


def _newton_solve(x: Array, targets: Array, u0: Array, max_steps: int) -> Array:
    n = x.shape[0]
    dtype = x.dtype
    tol = newton_tolerance(dtype)

    def keep_going(state):
        _, step_norm, k = state
        return (k < max_steps) & (step_norm >= tol)

    def newton_step(state):
        u, _, k = state
        z = x @ u
        p = jax.nn.sigmoid(z)
        grad = x.T @ (p - targets) / n
        hess = (x * (p * (1 - p))[:, None]).T @ x / n
        # solve_psd's jitter keeps the step defined when every sample saturates (|x.u| huge);
        # it changes the direction, never the fixed point (grad = 0).
        direction = -solve_psd(hess, grad)
        f0 = jnp.mean(jax.nn.softplus(z) - targets * z)
        step = armijo_step(lambda v: _objective(x, targets, v), u, direction, f0, grad @ direction)
        return u + step, jnp.max(jnp.abs(step)), k + 1

    init = (u0, jnp.asarray(jnp.inf, dtype), 0)
    u, _, _ = lax.while_loop(keep_going, newton_step, init)
    return u


def soft_logistic_regression(
    x: Array, targets: Array, init: Array, max_steps: int = MAX_NEWTON_STEPS
) -> Array:
    r"""Minimise $\mathrm{mean}_n[\mathrm{softplus}(x_n\cdot u) - t_n x_n\cdot u]$ over $u$.

    Args:
        x: features, shape (n, d).
        targets: soft labels $t$, shape (n,), normally in (0, 1).
        init: warm start, shape (d,). It does not change the answer, only the work.
        max_steps: bound on Newton steps.

    Returns:
        The minimiser, shape (d,). Derivatives with respect to ``x`` and ``targets`` are exact
        implicit derivatives of the minimiser.

    Example:
        >>> import jax.numpy as jnp
        >>> x = jnp.array([[1.0], [1.0]])
        >>> u = soft_logistic_regression(x, jnp.array([0.5, 0.5]), jnp.ones(1))
        >>> bool(abs(u[0]) < 1e-6)  # mean sigmoid(u) must equal mean t = 1/2
        True
    """
    n = x.shape[0]

    def gradient(u):
        return x.T @ (jax.nn.sigmoid(x @ u) - targets) / n

    def solve(_, u0):
        return _newton_solve(x, targets, u0, max_steps)

    def tangent_solve(linear_gradient, rhs):
        return jnp.linalg.solve(jax.jacobian(linear_gradient)(rhs), rhs)

    return lax.custom_root(gradient, lax.stop_gradient(init), solve, tangent_solve)
