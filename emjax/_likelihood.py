r"""Sampling, the E-step and the loss (MATH.md §1-§2), all in log space.

With $\Delta_n = \ell_{n1} - \ell_{n0}$ the posterior log-odds of $z=1$, the responsibilities are
$r_n = \mathrm{sigmoid}(\Delta_n)$ and the loss is
$L = -\mathrm{mean}_n\,\mathrm{logaddexp}(\log\mathrm{sigmoid}(x\cdot w) + l_1,\
\log\mathrm{sigmoid}(-x\cdot w) + l_0)$.
Nothing is exponentiated before it is normalised, so $|x\cdot w|$ and $|x\cdot\beta|$ of order
$10^3$ give exact 0/1 responsibilities and a finite loss, never NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from . import _moe
from ._checks import check_any_params, check_types, is_mixture, validate
from ._dtypes import working_dtype
from ._validation import check_key, public, shape_of
from .models import AbstractSymmetricModel, MoEParams, SymParams


def as_arrays(params: SymParams | MoEParams, x, y=None):
    """Cast parameters, features and labels to their working dtype (:mod:`emjax._dtypes`)."""
    dtype = working_dtype(params, x, y)
    params = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, dtype), params)
    x = jnp.asarray(x, dtype)
    if y is None:
        return params, x
    return params, x, jnp.asarray(y, dtype)


def projections(params: SymParams, x: Array) -> tuple[Array, Array]:
    """Gate and expert scores ``(x.w, x.beta)``, one pass over x."""
    scores = x @ jnp.stack([params.w, params.beta], axis=1)
    return scores[:, 0], scores[:, 1]


def posterior_logit(model: AbstractSymmetricModel, xw: Array, xb: Array, y: Array) -> Array:
    r"""$\Delta = \log P(z=1\mid x,y) - \log P(z=0\mid x,y) = x\cdot w + (l_1 - l_0)$."""
    return xw + model.expert_log_ratio(xb, y)


def _check_sample(model, params, key, n, **_) -> None:
    check_types(model, params)
    check_key(key)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive Python int (it fixes array shapes); got {n!r}")
    first = params.gate if is_mixture(model) else params.w
    if len(shape_of(first, "params")) < 1 or shape_of(first, "params")[-1] < 1:
        raise ValueError(f"params must carry the feature dimension d >= 1; got shape {jnp.shape(first)}")
    check_any_params(model, params, shape_of(first, "params")[-1])


@public(_check_sample)
def sample(model, params, key: Array, n: int):
    r"""Draw n samples: $x\sim N(0, I_d)$, then z from the gate, then y from expert z.

    Symmetric models: $z\sim\mathrm{Bernoulli}(\mathrm{sigmoid}(x\cdot w))$; K-expert models:
    $z\sim\mathrm{softmax}(x W^\top)$. To sample with an intercept, append a column of ones to x
    yourself and use ``responsibilities``/``fit`` on it.

    Args:
        model: the model.
        params: the true parameters; their dtype is the dtype of x and y.
        key: a ``jax.random`` key.
        n: number of samples (a Python int).

    Returns:
        ``(x, y)`` of shapes (n, d) and (n,).

    Example:
        >>> import jax, jax.numpy as jnp, emjax
        >>> truth = emjax.SymParams(w=jnp.ones(2), beta=jnp.ones(2))
        >>> x, y = emjax.sample(emjax.SymMoLinE(), truth, jax.random.key(1), 7)
        >>> x.shape
        (7, 2)
    """
    if is_mixture(model):
        return _moe.sample(model, params, key, n)
    dtype = working_dtype(params)
    key_x, key_z, key_y = jax.random.split(key, 3)
    x = jax.random.normal(key_x, (n, params.w.shape[0]), dtype)
    xw = x @ params.w.astype(dtype)
    xb = x @ params.beta.astype(dtype)
    z = jax.random.bernoulli(key_z, jax.nn.sigmoid(xw))
    return x, model.sample_labels(key_y, xb, z)


@public(validate)
def responsibilities(model, params, x, y) -> Array:
    r"""Posterior probabilities of the latent label, shape (n, 2) or (n, K).

    K-expert models: $\gamma_{nk} = \exp(\ell_{nk} - \mathrm{logsumexp}_j \ell_{nj})$ with
    $\ell_{nk} = \log\pi_k(x_n) + \log p(y_n\mid x_n, z=k)$, never exponentiated before normalising.
    Symmetric models:

    Column 1 is $r_n = P(z=1\mid x_n, y_n) = \mathrm{sigmoid}(\Delta_n)$ and column 0 is
    $\mathrm{sigmoid}(-\Delta_n)$ (computed directly, not as $1 - r_n$, so both tails are exact).

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> p = emjax.SymParams(w=jnp.zeros(1), beta=jnp.ones(1))
        >>> r = emjax.responsibilities(emjax.SymMoLinE(), p, jnp.ones((1, 1)), jnp.zeros(1))
        >>> r.tolist()
        [[0.5, 0.5]]
    """
    params, x, y = as_arrays(params, x, y)
    if is_mixture(model):
        return _moe.e_step(model, params, x, y)[0]
    xw, xb = projections(params, x)
    logit = posterior_logit(model, xw, xb, y)
    return jnp.stack([jax.nn.sigmoid(-logit), jax.nn.sigmoid(logit)], axis=1)


def log_likelihoods(model: AbstractSymmetricModel, xw: Array, xb: Array, y: Array) -> Array:
    """Per-sample ``log p(y | x)`` from the scores (log space throughout)."""
    l1, l0 = model.expert_log_likelihoods(xb, y)
    return jnp.logaddexp(jax.nn.log_sigmoid(xw) + l1, jax.nn.log_sigmoid(-xw) + l0)


@public(validate)
def neg_log_likelihood(model, params, x, y) -> Array:
    r"""$L(\theta) = -\mathrm{mean}_n \log p(y_n\mid x_n;\theta)$, all constants included.

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> p = emjax.SymParams(w=jnp.zeros(1), beta=jnp.zeros(1))
        >>> round(float(emjax.neg_log_likelihood(emjax.SymMoLogE(), p, jnp.ones((2, 1)), jnp.array([0, 1]))), 6)
        0.693147
    """
    return loss_raw(model, *as_arrays(params, x, y))


def loss_raw(model, params, x: Array, y: Array) -> Array:
    """L on arrays already cast to one dtype (no checks), for either kind of model."""
    if is_mixture(model):
        return _moe.loss(model, params, x, y)
    xw, xb = projections(params, x)
    return -jnp.mean(log_likelihoods(model, xw, xb, y))
