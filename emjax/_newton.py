r"""The one Newton solver of emjax: masked, damped, warm-started, differentiable (docs/math.md §3.1).

Every M-step sub-problem that Newton solves (the symmetric gate, the softmax gate, softmax and
Poisson experts, any family's generic objective) minimises a smooth convex $f(u)$ over the entries
of $u$ where a mask ``free`` is True; the other entries keep their starting values (bit-identical).
One loop, :func:`damped_newton`, solves them all:

* the direction solves $(H_{FF} + \mu I)\,\Delta_F = -g_F$ by Cholesky, with a Levenberg shift μ of
  $\sqrt{\varepsilon}$ times the mean diagonal (:func:`emjax._linalg.newton_shift`): it keeps null
  directions of a singular Hessian still and never moves the fixed point $g_F = 0$;
* the step is damped by Armijo backtracking, :func:`armijo_search` (halve from 1 until
  $f(u + \alpha\Delta) \le f(u) + c\,\alpha\,g^\top\Delta$, c = 1e-4, at most 40 halvings, with a
  round-off slack), and no step is taken when no finite trial is found;
* it stops when $\|\alpha\Delta\|_\infty$ falls below 1e-10 (float64) or 1e-5 (float32), or after
  ``max_steps`` steps (default 50); a full step already below that tolerance is the last one and is
  taken without a line search (it is the step Armijo would accept, and its trial costs a pass over x).

Problems differ only in how they supply the gradient and Hessian and how a trial point is
evaluated: :func:`masked_newton` uses the dense autodiff Hessian of any objective;
:func:`linear_newton` serves objectives of a linear predictor, $f(U) = \mathrm{mean}_n\,\ell_n(x_n U) +
\text{penalty}(U)$, whose Hessian blocks $X^\top\mathrm{diag}(h_{ij})X$ come from one blocked product
(:func:`gradient_and_hessian`) and whose trials move along $x\cdot\Delta$, computed once (O(n m) per
trial, no pass over x). :func:`soft_logistic_regression` is :func:`linear_newton` with one column.

One wrapper, :func:`implicit_solve`, puts any such loop under :func:`jax.lax.custom_root` with the
optimality condition $g_F(u) = 0,\ u_{\bar F} = u^{(0)}_{\bar F}$: ``jax.grad``/``jax.jacobian`` of
anything built on a solution differentiate the solution map (through $H_{FF}^{-1}$), not the unrolled
iterations (docs/math.md §5.5(6)). The L-BFGS path for large sub-problems
(:mod:`emjax._minimize`) uses the same wrapper with a matrix-free tangent solve.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from ._linalg import newton_shift, solve_psd
from ._logistic import Logistic

MAX_NEWTON_STEPS = 50
ARMIJO = 1e-4
MAX_HALVINGS = 40


def newton_tolerance(dtype) -> float:
    """Stopping tolerance on ``max|step|``: 1e-10 in float64, 1e-5 in float32 (docs/math.md §3.1)."""
    return 1e-10 if jnp.finfo(dtype).bits >= 64 else 1e-5


def armijo_slack(f0, eps):
    """Round-off allowance of the Armijo test: near an optimum f changes by less than its last bits."""
    return 16 * eps * (abs(f0) + 1)


def armijo_accepts(f_alpha, f0, alpha, slope, slack):
    """Armijo's sufficient-decrease test (False for NaN); works on Python floats and on arrays."""
    return f_alpha <= f0 + ARMIJO * alpha * slope + slack


def armijo_search(trial, f0: Array, slope: Array, dtype):
    """Backtracking along a line: halve alpha from 1 until the trial's value passes :func:`armijo_accepts`.

    ``trial(alpha)`` returns ``(f(alpha), point)``, where ``point`` is whatever the caller keeps of the
    trial (the new iterate and what it carries), so an accepted trial is never evaluated twice.
    Returns ``(alpha, f(alpha), point)`` of the accepted trial, or of the last one after
    :data:`MAX_HALVINGS` halvings; the value is not finite when no finite trial was found (callers
    then take no step).
    """
    slack = armijo_slack(jnp.asarray(f0), jnp.finfo(dtype).eps)

    def reject(search):
        alpha, f_alpha, _, halvings = search
        return (~armijo_accepts(f_alpha, f0, alpha, slope, slack)) & (halvings < MAX_HALVINGS)

    def halve(search):
        alpha, _, _, halvings = search
        alpha = alpha / 2
        return (alpha, *trial(alpha), halvings + 1)

    one = jnp.ones((), dtype)
    alpha, f_alpha, point, _ = lax.while_loop(reject, halve, (one, *trial(one), 0))
    return alpha, f_alpha, point


def damped_newton(derivatives, line, u0: Array, aux0, f0: Array, max_steps: int) -> Array:
    """The Newton loop (module docstring), generic over how a problem evaluates itself.

    Args:
        derivatives: ``derivatives(u, aux) -> (grad, hess, scale)``: the masked gradient (zero on fixed
            entries), the masked Hessian (unit diagonal on fixed entries) over the solved entries, and
            the magnitude the Levenberg shift is relative to (None: the Hessian's mean diagonal).
        line: ``line(u, aux, direction) -> trial`` with ``trial(alpha) -> (f, (u, aux))``: f and the
            new ``(u, aux)`` at the trial point ``u + alpha * direction``.
        u0, aux0, f0: the start, whatever the problem carries along (e.g. the scores x u), and f(u0).
        max_steps: bound on Newton steps.
    """
    dtype = u0.dtype
    tol = newton_tolerance(dtype)

    def keep_going(state):
        _, _, _, step_norm, k = state
        return (k < max_steps) & (step_norm >= tol)

    def search(u, aux, f, grad, direction):
        alpha, f_alpha, point = armijo_search(line(u, aux, direction), f, grad @ direction, dtype)
        # No finite trial point: no step at all (the direction itself may be non-finite, and 0 * inf is NaN).
        finite = jnp.isfinite(f_alpha)
        new_u, new_aux = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old), point, (u, aux))
        step = jnp.where(finite, alpha * direction, jnp.zeros_like(direction))
        return new_u, new_aux, jnp.where(finite, f_alpha, f), jnp.max(jnp.abs(step), initial=0)

    def last_step(u, aux, f, grad, direction):
        # A full step below the tolerance ends the loop, which returns u alone: the trial that Armijo
        # would accept (within its round-off slack) is not evaluated, and aux and f are left as they
        # were (the trial's value and aux are dead code in this branch).
        _, (new_u, _) = line(u, aux, direction)(jnp.ones((), dtype))
        return new_u, aux, f, jnp.max(jnp.abs(direction), initial=0)

    def newton_step(state):
        u, aux, f, _, k = state
        grad, hess, scale = derivatives(u, aux)
        direction = -solve_psd(hess, grad, newton_shift(dtype), scale)
        below = jnp.max(jnp.abs(direction), initial=0) < tol
        new_u, new_aux, new_f, step_norm = lax.cond(below, last_step, search, u, aux, f, grad, direction)
        return new_u, new_aux, new_f, step_norm, k + 1

    init = (u0, aux0, f0, jnp.asarray(jnp.inf, dtype), 0)
    return lax.while_loop(keep_going, newton_step, init)[0]


def dense_tangent_solve(linear, rhs):
    """The implicit-derivative tangent solve with the dense optimality Jacobian."""
    return jnp.linalg.solve(jax.jacobian(linear)(rhs), rhs)


def implicit_solve(objective, init: Array, free, loop, tangent_solve=dense_tangent_solve, max_steps: int = 50) -> Array:
    r"""Minimise ``objective`` over the free entries of ``init`` with ``loop``, differentiably.

    ``loop(flat_objective, u0_flat, free_flat, max_steps)`` returns the flat minimiser; the result is
    wrapped in :func:`jax.lax.custom_root` on the masked gradient, so derivatives are implicit."""
    shape = init.shape
    free_flat = jnp.broadcast_to(jnp.asarray(free), shape).reshape(-1).astype(init.dtype)
    start = init.reshape(-1)

    def flat_objective(u):
        return objective(u.reshape(shape))

    def optimality(u):
        # The gradient is taken with the fixed entries held at ``start``, so the Jacobian is
        # blockdiag(H_FF, I): symmetric, as a matrix-free (CG) tangent solve needs.
        held = jnp.where(free_flat > 0, u, start)
        return free_flat * jax.grad(flat_objective)(held) + (1 - free_flat) * (u - start)

    def solve(_, u0):
        return loop(flat_objective, u0, lax.stop_gradient(free_flat), max_steps)

    return lax.custom_root(optimality, lax.stop_gradient(start), solve, tangent_solve).reshape(shape)


def _dense_loop(objective, u0: Array, free: Array, max_steps: int) -> Array:
    gradient_fn = jax.grad(objective)
    hessian_fn = jax.hessian(objective)
    fixed_diagonal = jnp.diag(1 - free)

    def derivatives(u, _):
        grad = free * gradient_fn(u)
        return grad, hessian_fn(u) * free[:, None] * free[None, :] + fixed_diagonal, None

    def line(u, _, direction):
        def trial(a):
            return objective(u + a * direction), (u + a * direction, None)

        return trial

    return damped_newton(derivatives, line, u0, None, objective(u0), max_steps)


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
    return implicit_solve(objective, init, free, _dense_loop, dense_tangent_solve, max_steps)


BLOCK_ROWS = 1024
"""Rows per block of :func:`gradient_and_hessian` on a single CPU device (a few hundred KB of scaled
rows: cache-sized)."""


def gradient_and_hessian(x: Array, gradients: Array, curvatures: Array, xt: Array | None = None) -> tuple[Array, Array]:
    r"""$X^\top G$ and the blocks $X^\top \mathrm{diag}(c_p) X$ from one matrix product (sums, not means).

    Args:
        x: (n, d). gradients: (n, m), the columns of $G$. curvatures: (n, P), one weight column per block.
        xt: optionally ``x.T`` already laid out feature-major (a fit computes it once,
            :meth:`emjax.models.AbstractModel.precompute`); taken from x otherwise.

    Returns:
        ``(X^T G, blocks)`` of shapes (d, m) and (P, d, d).

    The product is $[x c_1, \dots, x c_P, G]^\top x$ in the feature-major layout (d, n): x is read
    once for the gradient and all P Hessian blocks, and every product contracts over the contiguous
    axis (XLA's CPU dots in x's (n, d) layout ran 1.5-3x slower at the benchmark's shapes). On a single CPU
    device it runs over blocks of :data:`BLOCK_ROWS` samples, so the scaled copies of x live in
    cache and never travel to memory.
    """
    n, d = x.shape
    xt = x.T if xt is None else xt
    blocks = curvatures.shape[1]

    def product(columns, g, c):
        # columns: (d, b) samples of x; g: (b, m); c: (b, P)
        scaled = (c.T[:, None, :] * columns[None, :, :]).reshape(blocks * d, columns.shape[1])
        return jnp.concatenate([scaled, g.T], axis=0) @ columns.T

    # Blocks only on a lone CPU device: slicing blocks out of samples sharded over several devices would
    # make XLA move samples between them (collective permutes) instead of summing each shard in place.
    if jax.default_backend() != "cpu" or jax.device_count() > 1 or n <= BLOCK_ROWS:
        total = product(xt, gradients, curvatures)
    else:
        count = n // BLOCK_ROWS

        def accumulate(i, total):
            def rows(a, axis=0):
                return lax.dynamic_slice_in_dim(a, i * BLOCK_ROWS, BLOCK_ROWS, axis=axis)

            return total + product(rows(xt, 1), rows(gradients), rows(curvatures))

        tail = count * BLOCK_ROWS
        total = product(xt[:, tail:], gradients[tail:], curvatures[tail:])
        total = lax.fori_loop(0, count, accumulate, total)
    return total[blocks * d :].T, total[: blocks * d].reshape(blocks, d, d)


def _score_derivatives(loss, z):
    """Gradient (n, m) of ``sum(loss(z))`` and its per-sample second derivatives ``h(i, j)`` by autodiff."""
    gradient, hvp = jax.linearize(jax.grad(lambda z: jnp.sum(loss(z))), z)
    columns = {}

    def second(i, j):
        if j not in columns:  # one Hessian-vector product per column, over all samples at once
            columns[j] = hvp(jnp.zeros_like(z).at[:, j].set(1))
        return columns[j][:, i]

    return gradient, second


def linear_pieces(x, xt, shape, columns, free, ridge):
    """The bookkeeping of Newton on U (d, m) with linear scores z = x U, shared by every such loop.

    Returns ``(assemble, move)``: ``assemble(u, score_grad, second)`` gives the masked gradient,
    Hessian and shift scale of :func:`damped_newton` from the per-sample derivatives in score space
    (``score_grad`` (n, m); ``second(a, b)`` (n,) for columns a, b), with the ridge; ``move(solved, z)``
    turns the solved entries into the step on U and its move in score space, ``x @ step``."""
    n, d = x.shape
    cols = np.asarray(columns)
    width = len(columns)
    pairs = [(i, j) for i in range(width) for j in range(i, width)]
    size = int(np.prod(shape))
    free_cols = free.reshape(shape)[:, cols].reshape(-1)  # the solved entries, ordered (feature, column)
    fixed_diagonal = jnp.diag(1 - free_cols)
    # The shift is relative to the mean diagonal of the whole masked Hessian, which has a unit
    # diagonal entry for each entry of the columns left out: the same shift as masked_newton's.
    outside = size - d * width

    def assemble(u, score_grad, second):
        curvatures = jnp.stack([second(columns[i], columns[j]) for i, j in pairs], axis=1)
        xg, blocks = gradient_and_hessian(x, score_grad[:, cols], curvatures, xt)
        grad = free_cols * (xg / n + ridge * u[:, cols]).reshape(-1)
        block = {}
        for p, (i, j) in enumerate(pairs):
            block[i, j] = block[j, i] = blocks[p]  # X^T diag(h_ij) X is symmetric
        hess = jnp.stack([jnp.stack([block[i, j] for j in range(width)]) for i in range(width)])
        hess = hess.transpose(2, 0, 3, 1).reshape(d * width, d * width) / n
        hess = hess + ridge * jnp.eye(d * width, dtype=hess.dtype)
        hess = hess * free_cols[:, None] * free_cols[None, :] + fixed_diagonal
        return grad, hess, (jnp.trace(hess) + outside) / size

    def move(solved, z):
        direction = jnp.zeros(shape, z.dtype).at[:, cols].set(solved.reshape(d, width))
        return direction, jnp.zeros_like(z).at[:, cols].set((direction[:, cols].T @ xt).T)

    return assemble, move


def _linear_loop(loss, derivatives, x, shape, columns, penalty, ridge, scores, xt, _objective, u0, free, max_steps):
    """:func:`damped_newton` for a linear predictor, on the flattened U (as :func:`implicit_solve` calls it)."""
    xt = x.T if xt is None else xt  # every product below contracts over the contiguous axis
    assemble, move = linear_pieces(x, xt, shape, columns, free, ridge)

    def value(u, z):
        return jnp.mean(loss(z)) + penalty(u)

    def newton_derivatives(u, z):
        return assemble(u, *derivatives(z))

    def line(u, z, solved):
        direction, along = move(solved, z)

        def trial(a):
            return value(u + a * direction, z + a * along), (u + a * direction, z + a * along)

        return trial

    u0 = u0.reshape(shape)
    z0 = x @ u0 if scores is None else scores
    return damped_newton(newton_derivatives, line, u0, z0, value(u0, z0), max_steps).reshape(-1)


def linear_newton(
    loss,
    x: Array,
    init: Array,
    free,
    columns,
    penalty,
    ridge: float,
    max_steps: int = MAX_NEWTON_STEPS,
    scores: Array | None = None,
    derivatives=None,
    xt: Array | None = None,
) -> Array:
    r"""Masked damped Newton for $f(U) = \mathrm{mean}_n\,\ell_n(x_n U) + \mathrm{penalty}(U)$, U of shape (d, m).

    The same iterates as ``masked_newton(f, init, free)`` (round-off aside): the same loop, shift,
    line search and implicit derivatives; only the work differs (module docstring).

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
        xt: optionally ``x.T`` laid out feature-major (:func:`gradient_and_hessian`); taken from x
            once per solve otherwise.

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
    loop = functools.partial(
        _linear_loop,
        loss,
        derivatives,
        x,
        init.shape,
        tuple(int(c) for c in columns),
        penalty,
        ridge,
        None if scores is None else lax.stop_gradient(scores),
        None if xt is None else lax.stop_gradient(xt),
    )
    return implicit_solve(objective, init, free, loop, dense_tangent_solve, max_steps)


def soft_logistic_regression(
    x: Array,
    targets: Array,
    init: Array,
    max_steps: int = MAX_NEWTON_STEPS,
    *,
    scores: Array | None = None,
    xt: Array | None = None,
    value: Array | None = None,
    probabilities: Array | None = None,
) -> Array:
    r"""Minimise $\mathrm{mean}_n[\mathrm{softplus}(x_n\cdot u) - t_n x_n\cdot u]$ over $u$.

    The same problem as :func:`linear_newton` with one column (m = 1), on the same loop and wrapper,
    written without the column bookkeeping.

    Its stationarity condition is moment matching, $\mathrm{mean}\,\mathrm{sigmoid}(x\cdot u)\,x =
    \mathrm{mean}\,t\,x$: the gate half of the symmetric models' M-step.

    Args:
        x: features, shape (n, d).
        targets: soft labels $t$, shape (n,), normally in (0, 1).
        init: warm start, shape (d,). It does not change the answer, only the work.
        max_steps: bound on Newton steps.
        scores: optionally ``x @ init``, when the caller has it already (an E-step does): it saves
            one pass over x. Derivatives never flow through it.
        xt: optionally ``x.T`` laid out feature-major (:func:`gradient_and_hessian`).
        value, probabilities: optionally ``mean softplus(scores)`` and ``sigmoid(scores)`` (with
            ``scores``), when the caller has them (the symmetric E-step does).

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
    start = None if scores is None else lax.stop_gradient((scores, value, probabilities))
    loop = functools.partial(_logistic_loop, x, None if xt is None else lax.stop_gradient(xt), targets, start)

    def objective(u):
        return jnp.mean(jax.nn.softplus(x @ u) - targets * (x @ u))

    return implicit_solve(objective, init, jnp.ones(init.shape, bool), loop, dense_tangent_solve, max_steps)


def _logistic_loop(x, xt, targets, start, _objective, u0, free, max_steps):
    """:func:`damped_newton` for one logistic column: the lightest form of :func:`linear_newton`'s problem
    (no column bookkeeping; its fixed per-iteration cost shows on small n, where EM calls it every step).

    It carries the scores z = x u and sigmoid(z): a trial's one exponential gives both its value and,
    once accepted, the next gradient and Hessian (:mod:`emjax._logistic`)."""
    n = x.shape[0]
    xt = x.T if xt is None else xt

    def evaluate(z):
        logistic = Logistic(z)
        return jnp.mean(logistic.softplus - targets * z), logistic.sigmoid

    def derivatives(u, carried):
        _, p = carried
        grad, hess = gradient_and_hessian(x, (p - targets)[:, None], (p * (1 - p))[:, None], xt)
        return grad[:, 0] / n, hess[0] / n, None

    def line(u, carried, direction):
        z, _ = carried
        along = direction @ xt  # once per Newton step: each trial then costs O(n)

        def trial(a):
            za = z + a * along
            f, p = evaluate(za)
            return f, (u + a * direction, (za, p))

        return trial

    z0, softplus_mean, p0 = (u0 @ xt, None, None) if start is None else start
    if softplus_mean is None or p0 is None:
        f0, p0 = evaluate(z0)
    else:
        f0 = softplus_mean - jnp.mean(targets * z0)
    return damped_newton(derivatives, line, u0, (z0, p0), f0, max_steps)
