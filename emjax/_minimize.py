r"""Which inner solver an M-step sub-problem gets: Newton, or L-BFGS for large ones.

The K-expert M-steps (the softmax gate, softmax-classifier and Poisson experts, any family's generic
objective) minimise a convex objective over an array in which some entries are held fixed: pinned by
convention (gate row 0, class column 0) or frozen by the user's ``trainable`` mask. Fixed entries
stay bit-identical. Two methods, chosen by the size P of the array (:func:`masked_minimize`):

* **Newton** (P <= :data:`NEWTON_MAX_SIZE`): emjax's one damped Newton solver (:mod:`emjax._newton`).
* **L-BFGS** (larger P, e.g. a 10-class expert on 785 inputs, P = 7,850): ``optax.lbfgs`` with
  its zoom (strong Wolfe) line search, memory 10, warm-started at the current iterate, over the
  free entries; it stops when $\|g_F\|_\infty$ falls below Newton's tolerance or after
  ``max_steps`` steps (default :data:`LBFGS_MAX_STEPS`). Every accepted step decreases the
  objective, so EM with a capped L-BFGS M-step is a generalized EM: L never increases.

Both run under the same implicit-derivative wrapper (:func:`emjax._newton.implicit_solve`); the
L-BFGS path solves the tangent system matrix-free by conjugate gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax import Array, lax

from ._newton import MAX_NEWTON_STEPS, implicit_solve, masked_newton, newton_tolerance

NEWTON_MAX_SIZE = 256
"""``method="auto"`` uses dense Newton up to this many entries and L-BFGS above: a dense Hessian
costs P Hessian-vector products and O(P^3) to factor, so past a few hundred entries a capped
L-BFGS run is cheaper per M-step by orders of magnitude (a 10-class expert on the 65 digits
features has P = 650; on the 785 Fashion-MNIST features P = 7,850)."""

LBFGS_MAX_STEPS = 100
"""Default bound on L-BFGS steps per M-step sub-problem."""

METHODS = ("auto", "newton", "lbfgs")


def _lbfgs(objective, u0: Array, free: Array, max_steps: int) -> Array:
    dtype = u0.dtype
    tol = newton_tolerance(dtype)
    fixed = u0

    def restricted(u):
        # Fixed entries enter only through ``fixed``: their gradient is exactly 0, so every L-BFGS
        # direction (a combination of gradients and gradient differences) leaves them alone.
        return objective(jnp.where(free > 0, u, fixed))

    optimiser = optax.lbfgs(
        memory_size=10, linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one")
    )
    value_and_grad = optax.value_and_grad_from_state(restricted)

    def keep_going(state):
        _, _, gradient_norm, k, healthy = state
        return (k < max_steps) & (gradient_norm >= tol) & healthy

    def lbfgs_step(state):
        u, opt_state, _, k, _ = state
        value, gradient = value_and_grad(u, state=opt_state)
        updates, new_state = optimiser.update(gradient, opt_state, u, value=value, grad=gradient, value_fn=restricted)
        new_u = optax.apply_updates(u, updates)
        new_value, new_gradient = value_and_grad(new_u, state=new_state)
        healthy = jnp.isfinite(new_value) & jnp.all(jnp.isfinite(new_u)) & (new_value <= value)
        u = jnp.where(healthy, new_u, u)
        gradient_norm = jnp.max(jnp.abs(new_gradient), initial=0)
        return u, new_state, gradient_norm, k + 1, healthy

    gradient_norm0 = jnp.max(jnp.abs(jax.grad(restricted)(u0)), initial=0)
    init = (u0, optimiser.init(u0), gradient_norm0, 0, jnp.isfinite(gradient_norm0))
    u, *_ = lax.while_loop(keep_going, lbfgs_step, init)
    return jnp.where(free > 0, u, fixed)


def _conjugate_gradients(matvec, rhs: Array) -> Array:
    """Solve ``matvec(u) = rhs`` for a symmetric positive definite operator (at most 2P iterations)."""
    tol = jnp.finfo(rhs.dtype).eps * 10

    def keep_going(state):
        _, residual, _, norm, k = state
        return (k < 2 * rhs.shape[0]) & (norm > jnp.square(tol) * (rhs @ rhs))

    def iterate(state):
        u, residual, direction, norm, k = state
        image = matvec(direction)
        alpha = norm / (direction @ image)
        u, residual = u + alpha * direction, residual - alpha * image
        new_norm = residual @ residual
        return u, residual, residual + (new_norm / norm) * direction, new_norm, k + 1

    state = (jnp.zeros_like(rhs), rhs, rhs, rhs @ rhs, 0)
    return lax.while_loop(keep_going, iterate, state)[0]


def _cg_tangent_solve(linear, rhs):
    # custom_linear_solve makes the matrix-free solve transposable (reverse mode); the optimality
    # Jacobian free*H*free + diag(1 - free) is symmetric.
    return lax.custom_linear_solve(linear, rhs, _conjugate_gradients, symmetric=True)


def resolve_method(method: str, size: int) -> str:
    """``"newton"`` or ``"lbfgs"`` for a sub-problem with ``size`` entries (see :data:`NEWTON_MAX_SIZE`)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if method == "auto":
        return "newton" if size <= NEWTON_MAX_SIZE else "lbfgs"
    return method


def masked_minimize(objective, init: Array, free, method: str = "auto", max_steps: int | None = None) -> Array:
    """Minimise ``objective(u)`` over the entries of ``u`` where ``free`` is True; the rest keep ``init``.

    Args:
        objective: a smooth convex scalar function of an array shaped like ``init``.
        init: the warm start (its fixed entries are the answer's fixed entries).
        free: boolean array (or mask broadcastable to ``init``) of the entries to optimise.
        method: ``"newton"``, ``"lbfgs"`` or ``"auto"`` (Newton up to :data:`NEWTON_MAX_SIZE` entries).
        max_steps: bound on Newton or L-BFGS steps (default 50 or :data:`LBFGS_MAX_STEPS`).

    Example:
        >>> import jax.numpy as jnp
        >>> u = masked_minimize(lambda u: jnp.sum((u - 3.0) ** 2), jnp.zeros(2), jnp.array([True, False]), "lbfgs")
        >>> [round(v, 6) for v in u.tolist()]
        [3.0, 0.0]
    """
    method = resolve_method(method, init.size)
    if method == "newton":
        return masked_newton(objective, init, free, MAX_NEWTON_STEPS if max_steps is None else max_steps)
    return implicit_solve(
        objective, init, free, _lbfgs, _cg_tangent_solve, LBFGS_MAX_STEPS if max_steps is None else max_steps
    )
