r"""The mirror map $A(\theta)$, its gradient, its Bregman divergence, and the statistics of EM.

For the symmetric models the complete-data law is an exponential family whose natural parameter
is linear in θ (MATH.md §4.1), so

* $A(\theta) = \mathrm{mean}_n A_{x_n}(\theta)$, $A_x = \mathrm{softplus}(x\cdot w) + A^{e}(x\cdot\beta)$;
* $\nabla A(\theta) = (\mathrm{mean}\ \mathrm{sigmoid}(x\cdot w)\,x,\ \mathrm{mean}\ A^{e\prime}(x\cdot\beta)\,x)$;
* $\bar s(\theta)$, the posterior-mean statistic, makes the M-step $\nabla A(\theta^+) = \bar s(\theta_t)$;
* Fisher's identity $\nabla L = \nabla A - \bar s$;
* $D_A(\theta, \theta') = \mathrm{mean}_n\,\mathrm{KL}(p_{\theta'}(y,z\mid x_n)\,\|\,p_\theta(y,z\mid x_n))$.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from . import _moe
from ._checks import is_mixture, validate, validate_pair
from ._likelihood import as_arrays, posterior_logit, projections
from ._validation import public
from .models import AbstractSymmetricModel, SymParams, softplus_bregman


def _mean_times_x(x: Array, coefficients: Array) -> Array:
    return x.T @ coefficients / x.shape[0]


def mirror_gradient_raw(model: AbstractSymmetricModel, params: SymParams, x: Array) -> SymParams:
    xw, xb = projections(params, x)
    return SymParams(
        w=_mean_times_x(x, jax.nn.sigmoid(xw)), beta=_mean_times_x(x, model.expert_mean(xb))
    )


def posterior_statistics_raw(model, params: SymParams, x: Array, y: Array) -> SymParams:
    xw, xb = projections(params, x)
    logit = posterior_logit(model, xw, xb, y)
    return SymParams(
        w=_mean_times_x(x, jax.nn.sigmoid(logit)),
        beta=_mean_times_x(x, model.expert_posterior_statistic(logit, y)),
    )


def loss_gradient_raw(model, params: SymParams, x: Array, y: Array) -> SymParams:
    # One pass: the prior and posterior statistics share the scores x.w, x.beta.
    xw, xb = projections(params, x)
    logit = posterior_logit(model, xw, xb, y)
    return SymParams(
        w=_mean_times_x(x, jax.nn.sigmoid(xw) - jax.nn.sigmoid(logit)),
        beta=_mean_times_x(x, model.expert_mean(xb) - model.expert_posterior_statistic(logit, y)),
    )


@public(validate)
def mirror_map(model, params, x) -> Array:
    r"""The mirror map $A(\theta) = \mathrm{mean}_n [\mathrm{softplus}(x_n\cdot w) + A^e(x_n\cdot\beta)]$.

    $A^e(t) = t^2/(2\sigma^2)$ for SymMoLinE and $\mathrm{softplus}(t)$ for SymMoLogE (MATH.md §4.1).
    For K-expert models, with statistics $(1[z=k], 1[z=k]T(y))_k$ and natural parameters
    $(x\cdot W_k - A_k, \phi_k)$, the log-partition is $A_x = \mathrm{logsumexp}_k\, x\cdot W_k$ (MATH.md §4.5).

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> p = emjax.SymParams(w=jnp.zeros(1), beta=jnp.ones(1))
        >>> round(float(emjax.mirror_map(emjax.SymMoLinE(), p, jnp.ones((3, 1)))), 6)
        1.193147
    """
    params, x = as_arrays(params, x)
    if is_mixture(model):
        return _moe.mirror_map(params, x)
    xw, xb = projections(params, x)
    return jnp.mean(jax.nn.softplus(xw) + model.expert_log_partition(xb))


def _validate_symmetric(model, params, x, y=None, **_) -> None:
    if is_mixture(model):
        raise ValueError(
            "this function is defined for the symmetric models, whose natural parameters are linear in theta; "
            "for K-expert models use neg_log_likelihood_grad, em_step or the information matrices"
        )
    validate(model, params, x, y)


@public(_validate_symmetric)
def mirror_map_grad(model: AbstractSymmetricModel, params: SymParams, x) -> SymParams:
    r"""$\nabla A(\theta)$ in closed form, as a :class:`SymParams` (w part, β part)."""
    return mirror_gradient_raw(model, *as_arrays(params, x))


@public(_validate_symmetric)
def posterior_statistics(model: AbstractSymmetricModel, params: SymParams, x, y) -> SymParams:
    r"""$\bar s(\theta) = \mathrm{mean}_n J_n^\top E_\theta[S\mid x_n, y_n]$ (MATH.md §4.3).

    The w part is $\mathrm{mean}\ r x$; the β part is $\mathrm{mean}\,(2r-1)y\,x/\sigma^2$ (SymMoLinE)
    or $\mathrm{mean}\ q x$ (SymMoLogE). The EM step solves $\nabla A(\theta^+) = \bar s(\theta_t)$.
    """
    return posterior_statistics_raw(model, *as_arrays(params, x, y))


@public(validate)
def neg_log_likelihood_grad(model, params, x, y):
    r"""$\nabla L(\theta) = \nabla A(\theta) - \bar s(\theta)$ in closed form (Fisher's identity).

    K-expert models: by autodiff, every entry (pinned ones included), as a :class:`MoEParams`.
    """
    params, x, y = as_arrays(params, x, y)
    if is_mixture(model):
        return jax.grad(_moe.loss, argnums=1)(model, params, x, y)
    return loss_gradient_raw(model, params, x, y)


@public(validate_pair)
def bregman_divergence(model, params, ref, x) -> Array:
    r"""$D_A(\theta, \theta') = A(\theta) - A(\theta') - \langle\nabla A(\theta'), \theta - \theta'\rangle$.

    ``params`` is θ and ``ref`` is θ'. It equals the mean KL between complete-data conditionals with
    the *reference first*, $\mathrm{mean}_n \mathrm{KL}(p_{\theta'}(y,z\mid x_n)\,\|\,p_\theta(y,z\mid x_n))$
    (MATH.md §4.2). It is evaluated sample by sample (the per-sample terms are the Bernoulli and
    Gaussian KLs), and each per-sample term is clipped at 0 so round-off can never make it negative.
    For K-expert models (curved families, MATH.md §4.5) it is this mean KL, evaluated as
    $\mathrm{KL}(\pi'\|\pi) + \sum_k\pi'_k\,\mathrm{KL}(p'_k\|p_k)$: the Bregman divergence of the log-partition in
    natural coordinates.

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> a = emjax.SymParams(w=jnp.zeros(1), beta=jnp.zeros(1))
        >>> b = emjax.SymParams(w=jnp.zeros(1), beta=jnp.ones(1))
        >>> float(emjax.bregman_divergence(emjax.SymMoLinE(), b, a, jnp.ones((4, 1))))
        0.5
    """
    params, x = as_arrays(params, x)
    ref, _ = as_arrays(ref, x)
    if is_mixture(model):
        return _moe.bregman_divergence(model, params, ref, x)
    xw, xb = projections(params, x)
    xw_ref, xb_ref = projections(ref, x)
    return jnp.mean(softplus_bregman(xw, xw_ref) + model.expert_bregman(xb, xb_ref))
