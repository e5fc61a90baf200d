r"""One-step updates: EM, mirror descent with any step, gradient EM and gradient descent.

Every update here is one step of an iterative method; the loops that repeat them live in
:mod:`emjax._fit`. All are pure functions of (model, params, data) and work under ``jit``,
``vmap`` and ``grad``.

The M-step of EM solves $\nabla A(\theta^+) = \bar s(\theta_t)$ (docs/math.md §4.3); the mirror-descent
step with step size η solves $\nabla A(\theta^+) = \nabla A(\theta_t) - \eta\nabla L(\theta_t)$, the
same equations with *blended* targets (docs/math.md §4.4). Both use the damped Newton solver of
docs/math.md §3.1 for the logistic blocks and a Cholesky solve for the Gaussian expert.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array, lax

from ._checks import check_model, check_trainable, validate, validate_with_scalar_step, validate_with_step
from ._dtypes import working_dtype
from ._validation import check_features, check_inner_steps, public
from .models._weighted import weighted_arrays


def _validate_em(model, params, x, y, trainable=None, weights=None, **_) -> None:
    validate(model, params, x, y, weights)
    check_trainable(model, params, trainable)


def blend(prior, posterior, step_size):
    r"""Mirror descent's targets $t^{prior} + \eta\,(t^{post} - t^{prior})$, leaf by leaf (η = 1: EM's)."""
    return jax.tree_util.tree_map(lambda p, q: p + step_size * (q - p), prior, posterior)


def m_step(model, params, x, expected, step_size, free, cache=None):
    """The M-step after an E-step whose ``(targets, scores)`` are ``expected``: fitted to the posterior
    targets (``step_size`` None: EM) or to their blend with the prior ones (mirror descent)."""
    targets, scores = expected
    if step_size is not None:
        targets = blend(model.prior_targets(params, x, scores), targets, step_size)
    return model.solve(params, x, targets, free, scores, cache)


def _one_step(model, params, x, y, step_size, free):
    # One cache for the E-step and the M-step (x is laid out once).
    cache = model.precompute(x, y)
    _, targets, scores = model.expectation(params, x, y, cache)
    return m_step(model, params, x, (targets, scores), step_size, free, cache)


def em_update(model, params, x, y, free):
    """One EM step on arrays already cast (no checks): the M-step fitted to the posterior targets."""
    return _one_step(model, params, x, y, None, free)


def mirror_update(model, params, x, y, step_size, free):
    """One mirror-descent step on arrays already cast (no checks): the M-step fitted to blended targets."""
    return _one_step(model, params, x, y, step_size, free)


@public(_validate_em)
def em_step(model, params, x, y, trainable=None, weights=None):
    r"""One EM iteration: E-step, then the M-step solved to convergence.

    K-expert models (docs/math.md §3.4): the gate is a soft-target multinomial logistic regression on
    the responsibilities (masked damped Newton, warm-started, row 0 pinned); linear experts are
    weighted least squares with σ_k² the weighted residual variance (floored at 1e-8);
    softmax-classifier and Poisson experts are weighted Newton solves.

    Gate: soft-label logistic regression on the responsibilities $r$ (damped Newton, warm-started
    at $w_t$). Expert: $\beta^+ = (X^\top X)^{-1} X^\top((2r-1)\odot y)$ for SymMoLinE; soft-label
    logistic regression on $q = y r + (1-y)(1-r)$ for SymMoLogE (docs/math.md §3.2-§3.3).

    Derivatives (``jax.jacobian(em_step)``) are implicit derivatives of the exact M-step, so at a
    fixed point they equal the missing-information matrix (docs/math.md §5.3).

    Example:
        >>> import jax, jax.numpy as jnp, emjax
        >>> model = emjax.SymMoLinE()
        >>> truth = emjax.SymParams(w=jnp.array([1.0, 0.0]), beta=jnp.array([0.0, 2.0]))
        >>> x, y = emjax.sample(model, truth, jax.random.key(0), 500)
        >>> start = emjax.SymParams(w=jnp.zeros(2), beta=jnp.array([0.5, 0.5]))
        >>> new = emjax.em_step(model, start, x, y)
        >>> bool(emjax.neg_log_likelihood(model, new, x, y) < emjax.neg_log_likelihood(model, start, x, y))
        True

    Args:
        trainable: optional mask with the structure of ``params`` (True = may change). K-expert
            masks may be per block (``True``), per expert (shape (K,)) or per entry; symmetric
            masks are one bool per block. Frozen entries stay bit-identical; the rest solve the
            M-step with the frozen ones held fixed.
        weights: optional observation weights $v_n \ge 0$, shape (n,) (K-expert models): every mean
            over rows becomes $\sum_n v_n(\cdot)/\sum_n v_n$, as if row n appeared $v_n$ times.
    """
    model, params, x, y = weighted_arrays(model, weights, params, x, y)
    return em_update(model, params, x, y, model.free_mask(params, trainable))


@public(validate_with_scalar_step, traced=("step_size",))
def mirror_descent_step(model, params, x, y, step_size, trainable=None, weights=None):
    r"""One mirror-descent step with mirror map A: $\nabla A(\theta^+) = \nabla A(\theta) - \eta\nabla L(\theta)$.

    Equivalently $\theta^+ = \arg\min_u \langle\nabla L(\theta), u\rangle + D_A(u, \theta)/\eta$. Because
    $\nabla A$ is a mean of x-weighted mean parameters, this is the M-step with blended targets
    $(1-\eta)\,\text{prior mean} + \eta\,\text{posterior mean}$ (docs/math.md §4.4); ``step_size=1`` is
    exactly :func:`em_step`. For η in (0, 1] the loss never increases; for η > 1 nothing is
    guaranteed (targets may leave [0, 1]).

    K-expert models: the projected step of docs/math.md §4.6, the M-step fitted to blended statistics
    $(1-\eta)E_{\theta_t}[S\mid x] + \eta E_{\theta_t}[S\mid x, y]$.

    Args:
        step_size: η > 0, a scalar (traced under ``jit``, so sweeps over η compile once).
        trainable: optional mask, as in :func:`em_step`.
        weights: optional observation weights, as in :func:`em_step`.
    """
    model, params, x, y = weighted_arrays(model, weights, params, x, y)
    eta = jnp.asarray(step_size, x.dtype)
    return mirror_update(model, params, x, y, eta, model.free_mask(params, trainable))


def _per_block(step_size, params):
    """One step size per parameter block, shaped like ``params`` (scalars)."""
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    if isinstance(step_size, eqx.Module):
        return jax.tree_util.tree_map(lambda eta: jnp.asarray(eta, dtype), step_size)
    eta = jnp.asarray(step_size, dtype)
    return jax.tree_util.tree_map(lambda _: eta, params)


def _descend(params, direction, eta, free):
    r"""$\theta - \eta\,d$ on free entries; fixed entries are returned unchanged (bit-identical)."""
    return jax.tree_util.tree_map(lambda p, g, e, f: jnp.where(f, p - e * g, p), params, direction, eta, free)


def descent_update(model, params, x, y, eta, free):
    """One gradient step on L (+ the model's penalty) on arrays already cast (no checks)."""
    return _descend(params, model.objective_gradient(params, x, y, free), eta, free)


def gradient_em_update(model, params, x, y, eta, inner_steps: int, free):
    r"""``inner_steps`` gradient steps on the surrogate $Q(\cdot\mid\theta_t)$ (arrays already cast, no checks)."""
    anchor = model.surrogate_anchor(params, x, y)

    def inner(_, u):
        return _descend(u, model.surrogate_gradient(u, x, y, anchor, free), eta, free)

    return lax.fori_loop(0, inner_steps, inner, params)


@public(validate_with_step, traced=("step_size",))
def gradient_descent_step(model, params, x, y, step_size, trainable=None, weights=None):
    r"""One gradient step on the loss, $\theta^+ = \theta - \eta\nabla L(\theta)$ (docs/math.md §7).

    Args:
        step_size: η, a positive scalar, or a params-shaped pytree of scalars (``SymParams(w=eta_w,
            beta=eta_beta)``, ``MoEParams(gate=..., experts=..., sigma=...)``) for one step per block.
            :func:`safe_step_size` gives a step that guarantees descent for symmetric models.
        trainable: optional mask, as in :func:`em_step`; fixed entries get no step.
        weights: optional observation weights, as in :func:`em_step`.
    """
    model, params, x, y = weighted_arrays(model, weights, params, x, y)
    return descent_update(model, params, x, y, _per_block(step_size, params), model.free_mask(params, trainable))


def _validate_gradient_em(model, params, x, y, step_size, inner_steps, trainable=None, weights=None, **_) -> None:
    validate_with_step(model, params, x, y, step_size, trainable=trainable, weights=weights)
    check_inner_steps(inner_steps)


@public(_validate_gradient_em, traced=("step_size",))
def gradient_em_step(model, params, x, y, step_size, inner_steps: int = 3, trainable=None, weights=None):
    r"""Gradient EM: ``inner_steps`` gradient steps on the EM surrogate $Q(\cdot\mid\theta_t)$.

    The E-step is done once, at $\theta_t$. Then, from $u_0 = \theta_t$, for $m$ = ``inner_steps``
    iterations, $u_{j+1} = u_j - \eta\,\nabla_u Q(u_j\mid\theta_t) = u_j - \eta\,(\nabla A(u_j) - \bar s(\theta_t))$,
    with the responsibilities held fixed (docs/math.md §7). With $m = 1$ this is exactly one gradient
    descent step on L (Fisher's identity); emjax's suggested default is $m = 3$.

    Args:
        step_size: η > 0, a scalar, or a params-shaped pytree of scalars for one step per block.
        inner_steps: m ≥ 1, a Python int.
        trainable: optional mask, as in :func:`em_step`.
        weights: optional observation weights, as in :func:`em_step`.

    K-expert models: $\nabla_u Q$ comes from autodiff of the surrogate with the responsibilities fixed.
    """
    model, params, x, y = weighted_arrays(model, weights, params, x, y)
    free = model.free_mask(params, trainable)
    return gradient_em_update(model, params, x, y, _per_block(step_size, params), inner_steps, free)


def _validate_safe_step(model, x, **_) -> None:
    check_model(model)
    check_features(x)
    if model.curvature_bound(jnp.float32) is None:
        raise ValueError(
            f"safe_step_size needs a global bound on the curvature of L, which {type(model).__name__} does not "
            "have (the symmetric models do). For K-expert models tune the step (emjax.sweeps.tune_step_sizes), "
            "or use EM, which needs none."
        )


@public(_validate_safe_step)
def safe_step_size(model, x) -> Array:
    r"""A gradient step that guarantees monotone descent: $1/(c\,\lambda_{\max}(X^\top X/n))$.

    $\nabla^2 L \preceq \nabla^2 A$ and each diagonal block of $\nabla^2 A$ is $\preceq c\,X^\top X/n$, with
    $c$ = ``model.curvature_bound`` = $\max(1/4, 1/\sigma^2)$ for SymMoLinE and $1/4$ for SymMoLogE
    (docs/math.md §7). Models without such a bound (K-expert ones) are refused.
    """
    x = jnp.asarray(x, working_dtype(x))
    top = jnp.linalg.eigvalsh(x.T @ x / x.shape[0])[-1]
    return 1 / (model.curvature_bound(x.dtype) * top)
