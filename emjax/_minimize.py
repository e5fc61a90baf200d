r"""Masked minimisers for the K-expert M-steps, differentiable by the implicit function theorem.

The K-expert M-steps (the softmax gate, softmax-classifier and Poisson experts) all minimise a
convex objective over an array in which some entries are held fixed: pinned by convention
(gate row 0, class column 0) or frozen by the user's ``trainable`` mask. Fixed entries stay
bit-identical. Two methods, chosen by the size P of the array (:func:`masked_minimize`):

* **Newton** (P <= :data:`NEWTON_MAX_SIZE`): with $F$ the free entries, one step solves
  $H_{FF}\,\Delta_F = -g_F$ with the dense Hessian ($P$ Hessian-vector products and a Cholesky
  factorisation), damped by Armijo backtracking and warm-started; it stops at $\|\Delta\|_\infty$
  below 1e-10 (float64) or 1e-5 (float32), or after 50 steps (MATH.md §3.1, §3.4).
* **L-BFGS** (larger P, e.g. a 10-class expert on 785 inputs, P = 7,850): ``optax.lbfgs`` with
  its zoom (strong Wolfe) line search, memory 10, warm-started at the current iterate, over the
  free entries; it stops when $\|g_F\|_\infty$ falls below the same tolerance or after
  ``max_steps`` steps (default :data:`LBFGS_MAX_STEPS`). Every accepted step decreases the
  objective, so EM with a capped L-BFGS M-step is a generalized EM: L never increases.

Both are wrapped in :func:`jax.lax.custom_root` with the optimality condition
$g_F(u) = 0,\ u_{\bar F} = u^{(0)}_{\bar F}$, so derivatives are those of the solution map, not of
the unrolled iterations (MATH.md §5.5-§5.6); the L-BFGS path solves the tangent system matrix-free
by conjugate gradients.

**Linear predictors.** Every built-in Newton M-step minimises $f(U) = \mathrm{mean}_n\,\ell_n(x_n U)
+ \tfrac{\lambda}{2}\|U\|^2$ with $U$ of shape (d, m) and a loss of each row's m scores. For these
:func:`linear_newton` takes the same Newton steps without differentiating through x: the per-sample
m x m Hessians of $\ell_n$ come in closed form (softmax, Poisson) or from autodiff in score space,
and the gradient and all the $X^\top\mathrm{diag}(h_{ij})X$ blocks of the free columns from one
blocked product (:func:`emjax._newton.gradient_and_hessian`); the line search moves along
$x\cdot$direction, computed once, so a trial costs O(n m), not a pass over x. The dense autodiff
Hessian of :func:`masked_newton` (m d Hessian-vector products, each through x) made EM iterations of
MoLinE(3) and MoLogE(2, 3) up to 12x slower at n = 1e5, d = 32 (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array, lax
from jax.scipy.linalg import cho_factor, cho_solve

from ._linalg import add_jitter, newton_shift, solve_psd
from ._newton import MAX_NEWTON_STEPS, armijo_search, armijo_step, gradient_and_hessian, newton_tolerance

NEWTON_MAX_SIZE = 256
"""``method="auto"`` uses dense Newton up to this many entries and L-BFGS above: a dense Hessian
costs P Hessian-vector products and O(P^3) to factor, so past a few hundred entries a capped
L-BFGS run is cheaper per M-step by orders of magnitude (a 10-class expert on the 65 digits
features has P = 650; on the 785 Fashion-MNIST features P = 7,850)."""

LBFGS_MAX_STEPS = 100
"""Default bound on L-BFGS steps per M-step sub-problem."""

METHODS = ("auto", "newton", "lbfgs")


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


def _lbfgs(objective, u0: Array, free: Array, max_steps: int) -> Array:
    dtype = u0.dtype
    tol = newton_tolerance(dtype)
    fixed = u0

    def restricted(u):
        # Fixed entries enter only through ``fixed``: their gradient is exactly 0, so every L-BFGS
        # direction (a combination of gradients and gradient differences) leaves them alone.
        return objective(jnp.where(free > 0, u, fixed))

    optimiser = optax.lbfgs(memory_size=10, linesearch=optax.scale_by_zoom_linesearch(
        max_linesearch_steps=20, initial_guess_strategy="one"))
    value_and_grad = optax.value_and_grad_from_state(restricted)

    def keep_going(state):
        _, _, gradient_norm, k, healthy = state
        return (k < max_steps) & (gradient_norm >= tol) & healthy

    def lbfgs_step(state):
        u, opt_state, _, k, _ = state
        value, gradient = value_and_grad(u, state=opt_state)
        updates, new_state = optimiser.update(
            gradient, opt_state, u, value=value, grad=gradient, value_fn=restricted)
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


def _dense_tangent_solve(linear, rhs):
    return jnp.linalg.solve(jax.jacobian(linear)(rhs), rhs)


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
    return _masked_solve(objective, init, free, _lbfgs, _cg_tangent_solve,
                         LBFGS_MAX_STEPS if max_steps is None else max_steps)


def _masked_solve(objective, init: Array, free, loop, tangent_solve, max_steps: int) -> Array:
    shape = init.shape
    free_flat = jnp.broadcast_to(jnp.asarray(free), shape).reshape(-1).astype(init.dtype)
    start = init.reshape(-1)

    def flat_objective(u):
        return objective(u.reshape(shape))

    def optimality(u):
        # The gradient is taken with the fixed entries held at ``start``, so the Jacobian is
        # blockdiag(H_FF, I): symmetric, as the matrix-free (CG) tangent solve needs.
        held = jnp.where(free_flat > 0, u, start)
        return free_flat * jax.grad(flat_objective)(held) + (1 - free_flat) * (u - start)

    def solve(_, u0):
        return loop(flat_objective, u0, lax.stop_gradient(free_flat), max_steps)

    return lax.custom_root(optimality, lax.stop_gradient(start), solve, tangent_solve).reshape(shape)


def linear_newton(loss, x: Array, init: Array, free, columns, penalty, ridge: float,
                  max_steps: int = MAX_NEWTON_STEPS, scores: Array | None = None, derivatives=None) -> Array:
    r"""Masked damped Newton for $f(U) = \mathrm{mean}_n\,\ell_n(x_n U) + \mathrm{penalty}(U)$, U of shape (d, m).

    The same iterates as ``masked_newton(f, init, free)`` (round-off aside): the same Newton
    directions, Levenberg shift, Armijo line search and stopping rule, and the same implicit
    derivatives (:func:`jax.lax.custom_root` on the masked gradient of f). Only the work differs
    (module docstring).

    Args:
        loss: ``loss(z)`` of scores z (n, m) returns the per-sample losses (n,); row n's loss may
            depend only on row n of z.
        x: features (n, d).
        init: the warm start U, shape (d, m).
        free: boolean (d, m) mask of the entries to optimise; the rest keep ``init``.
        columns: static tuple of the columns of U that hold free entries: every entry of the other
            columns must be fixed (e.g. a pinned gate row or class column). Only these columns'
            Hessian blocks are formed.
        penalty: ``penalty(U)``, a scalar whose gradient on the free entries is ``ridge * U`` and
            whose Hessian there is ``ridge * I`` (a ridge over any superset of the free entries).
        ridge: λ >= 0, a Python float.
        max_steps: bound on Newton steps.
        scores: optionally ``x @ init`` when the caller has it (an E-step does); saves one pass over x.
        derivatives: optionally ``derivatives(z) -> (g, h)`` in closed form: g (n, m) the gradient of
            ``sum(loss(z))`` and ``h(i, j)`` (n,) its second derivatives in columns i and j. Default:
            autodiff of ``loss`` in score space.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = jax.random.normal(jax.random.key(0), (50, 2))
        >>> t = jax.nn.one_hot(jnp.arange(50) % 3, 3)
        >>> loss = lambda z: jax.nn.logsumexp(z, axis=-1) - jnp.sum(t * z, axis=-1)
        >>> free = jnp.ones((2, 3), bool).at[:, 0].set(False)
        >>> u = linear_newton(loss, x, jnp.zeros((2, 3)), free, (1, 2), lambda u: 0.0, 0.0)
        >>> objective = lambda u: jnp.mean(loss(x @ u))
        >>> bool(jnp.allclose(u, masked_newton(objective, jnp.zeros((2, 3)), free), atol=1e-8))
        True
    """

    def objective(u):
        return jnp.mean(loss(x @ u)) + penalty(u)

    if derivatives is None:
        derivatives = functools.partial(_score_derivatives, loss)
    loop = functools.partial(_linear_newton_loop, loss, derivatives, x, init.shape, tuple(int(c) for c in columns),
                             penalty, ridge, None if scores is None else lax.stop_gradient(scores))
    return _masked_solve(objective, init, free, loop, _dense_tangent_solve, max_steps)


def _score_derivatives(loss, z):
    """Gradient (n, m) of ``sum(loss(z))`` and its per-sample second derivatives ``h(i, j)`` by autodiff."""
    gradient, hvp = jax.linearize(jax.grad(lambda z: jnp.sum(loss(z))), z)
    columns = {}

    def second(i, j):
        if j not in columns:  # one Hessian-vector product per column, over all samples at once
            columns[j] = hvp(jnp.zeros_like(z).at[:, j].set(1))
        return columns[j][:, i]

    return gradient, second


def _linear_newton_loop(loss, derivatives, x, shape, columns, penalty, ridge, scores, _objective, u0, free,
                        max_steps):
    """The Newton loop of :func:`linear_newton` on the flattened U (as :func:`_masked_solve` calls it)."""
    n, d = x.shape
    dtype = u0.dtype
    tol = newton_tolerance(dtype)
    shift = newton_shift(dtype)
    cols = np.asarray(columns)
    width = len(columns)
    pairs = [(i, j) for i in range(width) for j in range(i, width)]
    free_cols = free.reshape(shape)[:, cols].reshape(-1)  # the solved entries, ordered (feature, column)
    fixed_diagonal = jnp.diag(1 - free_cols)
    # masked_newton solves with the whole masked Hessian, whose Levenberg shift is relative to its mean
    # diagonal: that includes a unit diagonal entry for each entry of the fixed columns.
    outside = u0.size - d * width

    def value(u, z):
        return jnp.mean(loss(z)) + penalty(u)

    def keep_going(state):
        _, _, _, step_norm, k = state
        return (k < max_steps) & (step_norm >= tol)

    def newton_step(state):
        u, z, f0, _, k = state
        score_grad, second = derivatives(z)
        curvatures = jnp.stack([second(columns[i], columns[j]) for i, j in pairs], axis=1)
        xg, blocks = gradient_and_hessian(x, score_grad[:, cols], curvatures)
        grad = free_cols * (xg / n + ridge * u[:, cols]).reshape(-1)
        block = {}
        for p, (i, j) in enumerate(pairs):
            block[i, j] = block[j, i] = blocks[p]  # X^T diag(h_ij) X is symmetric
        hess = jnp.stack([jnp.stack([block[i, j] for j in range(width)]) for i in range(width)])
        hess = hess.transpose(2, 0, 3, 1).reshape(d * width, d * width) / n + ridge * jnp.eye(d * width, dtype=dtype)
        hess = hess * free_cols[:, None] * free_cols[None, :] + fixed_diagonal
        scale = (jnp.trace(hess) + outside) / u0.size
        solved = -cho_solve(cho_factor(add_jitter(hess, scale, shift), lower=True), grad)
        direction = jnp.zeros(shape, dtype).at[:, cols].set(solved.reshape(d, width))
        along = jnp.zeros_like(z).at[:, cols].set(x @ direction[:, cols])
        alpha, f_alpha = armijo_search(lambda a: value(u + a * direction, z + a * along), f0, grad @ solved, dtype)
        finite = jnp.isfinite(f_alpha)
        step = jnp.where(finite, alpha * direction, jnp.zeros_like(direction))
        z = jnp.where(finite, z + alpha * along, z)
        return u + step, z, jnp.where(finite, f_alpha, f0), jnp.max(jnp.abs(step), initial=0), k + 1

    u0 = u0.reshape(shape)
    z0 = x @ u0 if scores is None else scores
    init = (u0, z0, value(u0, z0), jnp.asarray(jnp.inf, dtype), 0)
    u, *_ = lax.while_loop(keep_going, newton_step, init)
    return u.reshape(-1)


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
    return _masked_solve(objective, init, free, _newton, _dense_tangent_solve, max_steps)
