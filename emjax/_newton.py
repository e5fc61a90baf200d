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


def armijo_search(phi, f0: Array, slope: Array, dtype) -> tuple[Array, Array]:
    """Backtracking along a line: halve alpha from 1 until ``phi(alpha) <= f0 + c alpha slope`` (+ slack).

    Returns ``(alpha, phi(alpha))`` of the accepted trial, or of the last one after 40 halvings; the
    value is not finite when no finite trial was found (callers then take no step).
    """
    eps = jnp.finfo(dtype).eps
    slack = 16 * eps * (jnp.abs(f0) + 1)  # round-off: near the optimum f changes by less than its last bits

    def reject(search):
        alpha, f_alpha, halvings = search
        accept = f_alpha <= f0 + _ARMIJO * alpha * slope + slack  # False for NaN
        return (~accept) & (halvings < _MAX_HALVINGS)

    def halve(search):
        alpha, _, halvings = search
        alpha = alpha / 2
        return alpha, phi(alpha), halvings + 1

    one = jnp.ones((), dtype)
    alpha, f_alpha, _ = lax.while_loop(reject, halve, (one, phi(one), 0))
    return alpha, f_alpha


def armijo_step(objective, u: Array, direction: Array, f0: Array, slope: Array) -> Array:
    """The damped step ``alpha * direction``: halve alpha from 1 until Armijo's condition holds.

    Returns a zero step if no finite trial point is found (so a Newton loop never steps to NaN).
    """
    alpha, f_alpha = armijo_search(lambda a: objective(u + a * direction), f0, slope, u.dtype)
    return jnp.where(jnp.isfinite(f_alpha), alpha * direction, jnp.zeros_like(direction))


BLOCK_ROWS = 1024
"""Rows per block of :func:`gradient_and_hessian` on a single CPU device (a few hundred KB of scaled rows: cache-sized)."""


def gradient_and_hessian(x: Array, gradients: Array, curvatures: Array) -> tuple[Array, Array]:
    r"""$X^\top G$ and the blocks $X^\top \mathrm{diag}(c_p) X$ from one matrix product (sums, not means).

    Args:
        x: (n, d). gradients: (n, m), the columns of $G$. curvatures: (n, P), one weight column per block.

    Returns:
        ``(X^T G, blocks)`` of shapes (d, m) and (P, d, d).

    The product is $[x c_1, \dots, x c_P, G]^\top x$: x is read once for the gradient and all P
    Hessian blocks. On a single CPU device it runs over blocks of :data:`BLOCK_ROWS` rows, so the scaled copies
    of x live in cache and never travel to memory: XLA's single tall-and-skinny (n, d)-by-(n, d)
    product runs far below its square-matmul rate at these shapes. A matrix-vector product in x's
    (n, d) layout, ``x.T @ g``, is slow for the same reason.
    """
    n, d = x.shape
    blocks = curvatures.shape[1]

    def product(rows, g, c):
        scaled = (rows[:, None, :] * c[:, :, None]).reshape(rows.shape[0], blocks * d)
        return jnp.concatenate([scaled, g], axis=1).T @ rows

    # Blocks only on a lone CPU device: slicing blocks out of rows sharded over several devices would
    # make XLA move rows between them (collective permutes) instead of summing each shard in place.
    if jax.default_backend() != "cpu" or jax.device_count() > 1 or n <= BLOCK_ROWS:
        total = product(x, gradients, curvatures)
    else:
        count = n // BLOCK_ROWS

        def accumulate(i, total):
            def rows(a):
                return lax.dynamic_slice_in_dim(a, i * BLOCK_ROWS, BLOCK_ROWS)

            return total + product(rows(x), rows(gradients), rows(curvatures))

        tail = count * BLOCK_ROWS
        total = product(x[tail:], gradients[tail:], curvatures[tail:])
        total = lax.fori_loop(0, count, accumulate, total)
    return total[blocks * d:].T, total[: blocks * d].reshape(blocks, d, d)


def _newton_solve(x: Array, targets: Array, u0: Array, max_steps: int, z0: Array | None = None) -> Array:
    # Carries z = x.u and f(u) from one iteration to the next: the line search moves along
    # x.direction, computed once, so a trial costs O(n), not a pass over x, and the accepted trial's
    # z is the next iteration's. The gradient and Hessian come from one product (gradient_and_hessian).
    n = x.shape[0]
    dtype = x.dtype
    tol = newton_tolerance(dtype)

    def losses(z):
        return jax.nn.softplus(z) - targets * z

    def keep_going(state):
        _, _, _, step_norm, k = state
        return (k < max_steps) & (step_norm >= tol)

    def newton_step(state):
        u, z, f0, _, k = state
        p = jax.nn.sigmoid(z)
        grad, hess = gradient_and_hessian(x, (p - targets)[:, None], (p * (1 - p))[:, None])
        grad, hess = grad[:, 0] / n, hess[0] / n
        # solve_psd's jitter keeps the step defined when every sample saturates (|x.u| huge);
        # it changes the direction, never the fixed point (grad = 0).
        direction = -solve_psd(hess, grad)
        along = x @ direction
        alpha, f_alpha = armijo_search(lambda a: jnp.mean(losses(z + a * along)), f0, grad @ direction, dtype)
        finite = jnp.isfinite(f_alpha)
        step = jnp.where(finite, alpha * direction, jnp.zeros_like(direction))
        z = jnp.where(finite, z + alpha * along, z)
        return u + step, z, jnp.where(finite, f_alpha, f0), jnp.max(jnp.abs(step)), k + 1

    z0 = x @ u0 if z0 is None else z0
    init = (u0, z0, jnp.mean(losses(z0)), jnp.asarray(jnp.inf, dtype), 0)
    u, *_ = lax.while_loop(keep_going, newton_step, init)
    return u


def soft_logistic_regression(
    x: Array, targets: Array, init: Array, max_steps: int = MAX_NEWTON_STEPS, *, scores: Array | None = None
) -> Array:
    r"""Minimise $\mathrm{mean}_n[\mathrm{softplus}(x_n\cdot u) - t_n x_n\cdot u]$ over $u$.

    Args:
        x: features, shape (n, d).
        targets: soft labels $t$, shape (n,), normally in (0, 1).
        init: warm start, shape (d,). It does not change the answer, only the work.
        max_steps: bound on Newton steps.
        scores: optionally ``x @ init``, when the caller has it already (an E-step does): it saves
            one pass over x. Derivatives never flow through it.

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
        return _newton_solve(x, targets, u0, max_steps, None if scores is None else lax.stop_gradient(scores))

    def tangent_solve(linear_gradient, rhs):
        return jnp.linalg.solve(jax.jacobian(linear_gradient)(rhs), rhs)

    return lax.custom_root(gradient, lax.stop_gradient(init), solve, tangent_solve)
