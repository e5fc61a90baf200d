r"""The mirror map $A(\theta)$, its gradient, its Bregman divergence, and the statistics of EM.

For the symmetric models the complete-data law is an exponential family whose natural parameter
is linear in θ (docs/math.md §4.1), so

* $A(\theta) = \mathrm{mean}_n A_{x_n}(\theta)$, $A_x = \mathrm{softplus}(x\cdot w) + A^{e}(x\cdot\beta)$;
* $\nabla A(\theta) = (\mathrm{mean}\ \mathrm{sigmoid}(x\cdot w)\,x,\ \mathrm{mean}\ A^{e\prime}(x\cdot\beta)\,x)$;
* $\bar s(\theta)$, the posterior-mean statistic, makes the M-step $\nabla A(\theta^+) = \bar s(\theta_t)$;
* Fisher's identity $\nabla L = \nabla A - \bar s$;
* $D_A(\theta, \theta') = \mathrm{mean}_n\,\mathrm{KL}(p_{\theta'}(y,z\mid x_n)\,\|\,p_\theta(y,z\mid x_n))$.
"""

from __future__ import annotations

from jax import Array

from ._checks import validate, validate_pair
from ._dtypes import as_arrays
from ._validation import public
from .models._weighted import weighted_arrays


@public(validate)
def mirror_map(model, params, x, weights=None) -> Array:
    r"""The mirror map $A(\theta) = \mathrm{mean}_n [\mathrm{softplus}(x_n\cdot w) + A^e(x_n\cdot\beta)]$.

    $A^e(t) = t^2/(2\sigma^2)$ for SymMoLinE and $\mathrm{softplus}(t)$ for SymMoLogE (docs/math.md §4.1).
    For K-expert models, with statistics $(1[z=k], 1[z=k]T(y))_k$ and natural parameters
    $(x\cdot W_k - A_k, \phi_k)$, the log-partition is $A_x = \mathrm{logsumexp}_k\, x\cdot W_k$ (docs/math.md §4.5).

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> p = emjax.SymParams(w=jnp.zeros(1), beta=jnp.ones(1))
        >>> round(float(emjax.mirror_map(emjax.SymMoLinE(), p, jnp.ones((3, 1)))), 6)
        1.193147
    """
    model, params, x = weighted_arrays(model, weights, params, x)
    return model.mirror_map(params, x)


@public(validate)
def mirror_map_grad(model, params, x, weights=None):
    r"""$\nabla A(\theta)$, shaped like ``params``: in closed form for the symmetric models (w part,
    β part); by autodiff for K-expert models, whose mirror map depends on the gate only (so the
    expert and σ parts are 0)."""
    model, params, x = weighted_arrays(model, weights, params, x)
    return model.mirror_map_grad(params, x)


@public(validate)
def posterior_statistics(model, params, x, y, weights=None):
    r"""$\bar s(\theta) = \mathrm{mean}_n J_n^\top E_\theta[S\mid x_n, y_n]$ (docs/math.md §4.3).

    The w part is $\mathrm{mean}\ r x$; the β part is $\mathrm{mean}\,(2r-1)y\,x/\sigma^2$ (SymMoLinE)
    or $\mathrm{mean}\ q x$ (SymMoLogE). The EM step solves $\nabla A(\theta^+) = \bar s(\theta_t)$.
    For every model it equals $\nabla A(\theta) - \nabla L(\theta)$ (Fisher's identity), which is
    how it is computed for K-expert models, shaped like ``params``.
    """
    model, params, x, y = weighted_arrays(model, weights, params, x, y)
    return model.posterior_statistics(params, x, y)


@public(validate)
def neg_log_likelihood_grad(model, params, x, y, weights=None):
    r"""$\nabla L(\theta) = \nabla A(\theta) - \bar s(\theta)$ in closed form (Fisher's identity).

    K-expert models: by autodiff, every entry (pinned ones included), as a :class:`MoEParams`.
    """
    model, params, x, y = weighted_arrays(model, weights, params, x, y)
    return model.loss_gradient(params, x, y)


@public(validate_pair)
def bregman_divergence(model, params, ref, x, weights=None) -> Array:
    r"""$D_A(\theta, \theta') = A(\theta) - A(\theta') - \langle\nabla A(\theta'), \theta - \theta'\rangle$.

    ``params`` is θ and ``ref`` is θ'. It equals the mean KL between complete-data conditionals with
    the *reference first*, $\mathrm{mean}_n \mathrm{KL}(p_{\theta'}(y,z\mid x_n)\,\|\,p_\theta(y,z\mid x_n))$
    (docs/math.md §4.2). It is evaluated sample by sample (the per-sample terms are the Bernoulli and
    Gaussian KLs), and each per-sample term is clipped at 0 so round-off can never make it negative.
    For K-expert models (curved families, docs/math.md §4.5) it is this mean KL, evaluated as
    $\mathrm{KL}(\pi'\|\pi) + \sum_k\pi'_k\,\mathrm{KL}(p'_k\|p_k)$: the Bregman divergence of the log-partition in
    natural coordinates.

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> a = emjax.SymParams(w=jnp.zeros(1), beta=jnp.zeros(1))
        >>> b = emjax.SymParams(w=jnp.zeros(1), beta=jnp.ones(1))
        >>> float(emjax.bregman_divergence(emjax.SymMoLinE(), b, a, jnp.ones((4, 1))))
        0.5
    """
    model, params, x = weighted_arrays(model, weights, params, x)
    ref, _ = as_arrays(ref, x)
    return model.bregman_divergence(params, ref, x)
