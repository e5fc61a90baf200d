r"""One-step updates: EM, mirror descent with any step, gradient EM and gradient descent.

Every update here is one step of an iterative method; the loops that repeat them live in
:mod:`emjax._fit`. All are pure functions of (model, params, data) and work under ``jit``,
``vmap`` and ``grad``.

The M-step of EM solves $\nabla A(\theta^+) = \bar s(\theta_t)$ (MATH.md §4.3); the mirror-descent
step with step size η solves $\nabla A(\theta^+) = \nabla A(\theta_t) - \eta\nabla L(\theta_t)$, the
same equations with *blended* targets (MATH.md §4.4). Both use the damped Newton solver of
MATH.md §3.1 for the logistic blocks and a Cholesky solve for the Gaussian expert.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array, lax

from ._checks import validate, validate_with_step
from ._likelihood import as_arrays, posterior_logit, projections
from ._mirror import loss_gradient_raw, mirror_gradient_raw, posterior_statistics_raw
from ._newton import soft_logistic_regression
from ._validation import check_features, check_inner_steps, public
from .models import AbstractSymmetricModel, SymParams


def _solve_targets(model, params: SymParams, x: Array, gate_targets, expert_targets) -> SymParams:
    """Solve ``grad A(theta+) = (mean t_gate x, mean t_expert x)``, warm-started at params."""
    return SymParams(
        w=soft_logistic_regression(x, gate_targets, params.w),
        beta=model.expert_solve(x, expert_targets, params.beta),
    )


@public(validate)
def em_step(model: AbstractSymmetricModel, params: SymParams, x, y) -> SymParams:
    r"""One EM iteration: E-step, then the M-step solved to convergence.

    Gate: soft-label logistic regression on the responsibilities $r$ (damped Newton, warm-started
    at $w_t$). Expert: $\beta^+ = (X^\top X)^{-1} X^\top((2r-1)\odot y)$ for SymMoLinE; soft-label
    logistic regression on $q = y r + (1-y)(1-r)$ for SymMoLogE (MATH.md §3.2-§3.3).

    Derivatives (``jax.jacobian(em_step)``) are implicit derivatives of the exact M-step, so at a
    fixed point they equal the missing-information matrix (MATH.md §5.3).

    Example:
        >>> import jax, jax.numpy as jnp, emjax
        >>> model = emjax.SymMoLinE()
        >>> truth = emjax.SymParams(w=jnp.array([1.0, 0.0]), beta=jnp.array([0.0, 2.0]))
        >>> x, y = emjax.sample(model, truth, jax.random.key(0), 500)
        >>> start = emjax.SymParams(w=jnp.zeros(2), beta=jnp.array([0.5, 0.5]))
        >>> new = emjax.em_step(model, start, x, y)
        >>> bool(emjax.neg_log_likelihood(model, new, x, y) < emjax.neg_log_likelihood(model, start, x, y))
        True
    """
    params, x, y = as_arrays(params, x, y)
    xw, xb = projections(params, x)
    logit = posterior_logit(model, xw, xb, y)
    return _solve_targets(
        model, params, x, jax.nn.sigmoid(logit), model.expert_posterior_statistic(logit, y)
    )


@public(validate_with_step, traced=("step_size",))
def mirror_descent_step(model: AbstractSymmetricModel, params: SymParams, x, y, step_size) -> SymParams:
    r"""One mirror-descent step with mirror map A: $\nabla A(\theta^+) = \nabla A(\theta) - \eta\nabla L(\theta)$.

    Equivalently $\theta^+ = \arg\min_u \langle\nabla L(\theta), u\rangle + D_A(u, \theta)/\eta$. Because
    $\nabla A$ is a mean of x-weighted mean parameters, this is the M-step with blended targets
    $(1-\eta)\,\text{prior mean} + \eta\,\text{posterior mean}$ (MATH.md §4.4); ``step_size=1`` is
    exactly :func:`em_step`. For η in (0, 1] the loss never increases; for η > 1 nothing is
    guaranteed (targets may leave [0, 1]).

    Args:
        step_size: η > 0, a scalar (traced under ``jit``, so sweeps over η compile once).
    """
    params, x, y = as_arrays(params, x, y)
    eta = jnp.asarray(step_size, x.dtype)
    xw, xb = projections(params, x)
    logit = posterior_logit(model, xw, xb, y)
    prior_gate, prior_expert = jax.nn.sigmoid(xw), model.expert_mean(xb)
    gate_targets = prior_gate - eta * (prior_gate - jax.nn.sigmoid(logit))
    expert_targets = prior_expert - eta * (prior_expert - model.expert_posterior_statistic(logit, y))
    return _solve_targets(model, params, x, gate_targets, expert_targets)


def _per_block(step_size, dtype) -> SymParams:
    if isinstance(step_size, SymParams):
        return SymParams(w=jnp.asarray(step_size.w, dtype), beta=jnp.asarray(step_size.beta, dtype))
    eta = jnp.asarray(step_size, dtype)
    return SymParams(w=eta, beta=eta)


def _descend(params: SymParams, direction: SymParams, eta: SymParams) -> SymParams:
    return SymParams(w=params.w - eta.w * direction.w, beta=params.beta - eta.beta * direction.beta)


@public(validate_with_step, traced=("step_size",))
def gradient_descent_step(model: AbstractSymmetricModel, params: SymParams, x, y, step_size) -> SymParams:
    r"""One gradient step on the loss, $\theta^+ = \theta - \eta\nabla L(\theta)$ (MATH.md §7).

    Args:
        step_size: η, a positive scalar, or ``SymParams(w=eta_w, beta=eta_beta)`` for one step per block.
            :func:`safe_step_size` gives a step that guarantees descent.
    """
    params, x, y = as_arrays(params, x, y)
    return _descend(params, loss_gradient_raw(model, params, x, y), _per_block(step_size, x.dtype))


def _validate_gradient_em(model, params, x, y, step_size, inner_steps, **_) -> None:
    validate_with_step(model, params, x, y, step_size)
    check_inner_steps(inner_steps)


@public(_validate_gradient_em, traced=("step_size",))
def gradient_em_step(
    model: AbstractSymmetricModel, params: SymParams, x, y, step_size, inner_steps: int = 3
) -> SymParams:
    r"""Gradient EM: ``inner_steps`` gradient steps on the EM surrogate $Q(\cdot\mid\theta_t)$.

    The E-step is done once, at $\theta_t$. Then, from $u_0 = \theta_t$, for $m$ = ``inner_steps``
    iterations, $u_{j+1} = u_j - \eta\,\nabla_u Q(u_j\mid\theta_t) = u_j - \eta\,(\nabla A(u_j) - \bar s(\theta_t))$,
    with the responsibilities held fixed (MATH.md §7). With $m = 1$ this is exactly one gradient
    descent step on L (Fisher's identity); emjax's suggested default is $m = 3$.

    Args:
        step_size: η > 0, a scalar, or ``SymParams(w=eta_w, beta=eta_beta)`` for one step per block.
        inner_steps: m ≥ 1, a Python int.
    """
    params, x, y = as_arrays(params, x, y)
    eta = _per_block(step_size, x.dtype)
    target = posterior_statistics_raw(model, params, x, y)

    def inner(_, u):
        mirror = mirror_gradient_raw(model, u, x)
        surrogate_grad = SymParams(w=mirror.w - target.w, beta=mirror.beta - target.beta)
        return _descend(u, surrogate_grad, eta)

    return lax.fori_loop(0, inner_steps, inner, params)


def safe_step_size(model: AbstractSymmetricModel, x) -> Array:
    r"""A gradient step that guarantees monotone descent: $1/(c\,\lambda_{\max}(X^\top X/n))$.

    $\nabla^2 L \preceq \nabla^2 A$ and each diagonal block of $\nabla^2 A$ is $\preceq c\,X^\top X/n$, with
    $c = \max(1/4, 1/\sigma^2)$ for SymMoLinE and $c = 1/4$ for SymMoLogE (MATH.md §7).
    """
    check_features(x)
    x = jnp.asarray(x, jnp.result_type(jnp.asarray(x).dtype, jnp.float32))
    top = jnp.linalg.eigvalsh(x.T @ x / x.shape[0])[-1]
    smoothness = jnp.maximum(0.25, jnp.asarray(model.expert_smoothness(), x.dtype))
    return 1 / (smoothness * top)
