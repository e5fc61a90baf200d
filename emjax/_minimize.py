r"""Masked damped Newton for small smooth convex problems, differentiable by the implicit function theorem.

The K-expert M-steps (the softmax gate, softmax-classifier and Poisson experts) all minimise a
convex objective over a small array in which some entries are held fixed: pinned by convention
(gate row 0, class column 0) or frozen by the user's ``trainable`` mask. With $F$ the free
entries, one Newton step solves $H_{FF}\,\Delta_F = -g_F$ and leaves $\Delta_{\bar F} = 0$ exactly, so
fixed entries stay bit-identical. Steps are damped by Armijo backtracking and warm-started; the
loop stops at $\|\Delta\|_\infty$ below 1e-10 (float64) or 1e-5 (float32), or after 50 steps
(MATH.md §3.1, §3.4).

The minimiser is wrapped in :func:`jax.lax.custom_root` with the optimality condition
$g_F(u) = 0,\ u_{\bar F} = u^{(0)}_{\bar F}$, so derivatives are those of the solution map, not of
the unrolled iterations (MATH.md §5.5-§5.6).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array, lax

from ._linalg import newton_shift, solve_psd
from ._newton import MAX_NEWTON_STEPS, armijo_step, newton_tolerance


def _newton(objective, u0: Array, free: Array, max_steps: int) -> Array:
    dtype = u0.dtype
    tol = newton_tolerance(dtype)
    gradient_fn = jax.grad(objective)
    hessian_fn = jax.hessian(objective)
    fixed_diagonal = jnp.diag(1 - free)

    def keep_going(state):
        _, step_norm, k = state
        return (k < max_steps) & (step_norm >= tol)

    def newton_step(state):
        u, _, k = state
        grad = free * gradient_fn(u)
        hess = hessian_fn(u) * free[:, None] * free[None, :] + fixed_diagonal
        direction = -solve_psd(hess, grad, newton_shift(dtype))
        step = armijo_step(objective, u, direction, objective(u), grad @ direction)
        return u + step, jnp.max(jnp.abs(step), initial=0), k + 1

    u, _, _ = lax.while_loop(keep_going, newton_step, (u0, jnp.asarray(jnp.inf, dtype), 0))
    return u


def masked_newton(objective, init: Array, free, max_steps: int = MAX_NEWTON_STEPS) -> Array:
    """Minimise ``objective(u)`` over the entries of ``u`` where ``free`` is True; the rest keep ``init``.

    Args:
        objective: a smooth convex scalar function of an array shaped like ``init``.
        init: the warm start (its fixed entries are the answer's fixed entries).
        free: boolean array (or mask broadcastable to ``init``) of the entries to optimise.
        max_steps: bound on Newton steps.

    Example:
        >>> import jax.numpy as jnp
        >>> u = masked_newton(lambda u: jnp.sum((u - 3.0) ** 2), jnp.zeros(2), jnp.array([True, False]))
        >>> u.tolist()
        [3.0, 0.0]
    """
    shape = init.shape
    free_flat = jnp.broadcast_to(jnp.asarray(free), shape).reshape(-1).astype(init.dtype)
    start = init.reshape(-1)

    def flat_objective(u):
        return objective(u.reshape(shape))

    def optimality(u):
        return free_flat * jax.grad(flat_objective)(u) + (1 - free_flat) * (u - start)

    def solve(_, u0):
        return _newton(flat_objective, u0, lax.stop_gradient(free_flat), max_steps)

    def tangent_solve(linear, rhs):
        return jnp.linalg.solve(jax.jacobian(linear)(rhs), rhs)

    return lax.custom_root(optimality, lax.stop_gradient(start), solve, tangent_solve).reshape(shape)
