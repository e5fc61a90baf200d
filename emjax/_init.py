r"""Where fits start: data-driven initial parameters, random ground truths, and label matching.

:func:`init_params` is what :func:`emjax.fit_restarts` calls once per restart, so two keys give
two different, data-driven starts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from . import _moe
from ._checks import check_types, is_mixture, validate
from ._dtypes import working_dtype
from ._validation import check_features, check_key, check_labels, public
from .models import MixtureOfExperts, MoEParams, SymMoLinE, SymParams

_LLOYD_STEPS = 3
_SOFTEN = 0.5  # initial responsibilities: half on the assigned expert, half spread evenly


def _validate_init(model, key, x, y, **_) -> None:
    check_key(key)
    n, d = check_features(x)
    check_labels(y, n)
    placeholder = _placeholder(model, d)
    check_types(model, placeholder)
    validate(model, placeholder, x, y)


def _placeholder(model, d: int, dtype=None):
    """Parameters of the right shapes (zeros, σ = 1) in ``dtype`` (default: JAX's default float)."""
    if is_mixture(model):
        k = model.num_experts
        sigma = jnp.ones(k, dtype) if model.expert.has_scale else None
        return MoEParams(gate=jnp.zeros((k, d), dtype), experts=jnp.zeros((k,) + model.expert.coef_shape(d), dtype),
                         sigma=sigma)
    return SymParams(w=jnp.zeros(d, dtype), beta=jnp.zeros(d, dtype))


def _standardise(columns: Array) -> Array:
    scale = jnp.std(columns, axis=0, keepdims=True)
    return (columns - jnp.mean(columns, axis=0, keepdims=True)) / jnp.where(scale > 0, scale, 1)


def _cluster(key: Array, points: Array, k: int) -> Array:
    """k-means++ seeding followed by a few Lloyd steps; returns hard labels (n,)."""
    keys = jax.random.split(key, k)
    centres = [points[jax.random.randint(keys[0], (), 0, points.shape[0])]]
    for j in range(1, k):
        chosen = jnp.stack(centres)
        distance = jnp.min(jnp.sum(jnp.square(points[:, None, :] - chosen[None]), axis=-1), axis=1)
        logits = jnp.log(distance + jnp.finfo(points.dtype).tiny)
        centres.append(points[jax.random.categorical(keys[j], logits)])
    centres = jnp.stack(centres)
    for _ in range(_LLOYD_STEPS):
        labels = jnp.argmin(jnp.sum(jnp.square(points[:, None, :] - centres[None]), axis=-1), axis=1)
        onehot = jax.nn.one_hot(labels, k, dtype=points.dtype)
        counts = jnp.sum(onehot, axis=0)
        means = onehot.T @ points / jnp.where(counts > 0, counts, 1)[:, None]
        centres = jnp.where((counts > 0)[:, None], means, centres)
    return jnp.argmin(jnp.sum(jnp.square(points[:, None, :] - centres[None]), axis=-1), axis=1)


def _init_mixture(model: MixtureOfExperts, key: Array, x: Array, y: Array) -> MoEParams:
    k = model.num_experts
    statistic = model.expert.statistic(y)
    points = jnp.concatenate([_standardise(x), _standardise(statistic)], axis=1)
    labels = _cluster(key, points, k)
    weights = (1 - _SOFTEN) * jax.nn.one_hot(labels, k, dtype=x.dtype) + _SOFTEN / k
    stats = statistic[:, :, None] * weights[:, None, :]
    scale = model.expert.initial_scale(y)
    start = MoEParams(
        gate=jnp.zeros((k, x.shape[1]), x.dtype),
        experts=jnp.zeros((k,) + model.expert.coef_shape(x.shape[1]), x.dtype),
        sigma=None if scale is None else jnp.full((k,), scale, x.dtype),
    )
    return _moe.solve_targets(model, start, x, weights, stats, _moe.free_mask(model, start))


def _init_symmetric(model, key: Array, x: Array, y: Array) -> SymParams:
    n, d = x.shape
    key_w, key_b = jax.random.split(key)
    w = 0.1 * jax.random.normal(key_w, (d,), x.dtype) / jnp.sqrt(d)
    direction = jax.random.normal(key_b, (d,), x.dtype)
    direction = direction / jnp.linalg.norm(direction)
    if isinstance(model, SymMoLinE):
        # Spectral start: for x ~ N(0, I), E[y^2 x x^T] = (|b|^2 + s^2) I + 2 b b^T, so the top
        # eigenvector is along beta and its eigenvalue exceeds mean y^2 by 2|b|^2.
        moment = (x * jnp.square(y)[:, None]).T @ x / n
        values, vectors = jnp.linalg.eigh(moment)
        norm = jnp.sqrt(jnp.maximum((values[-1] - jnp.mean(jnp.square(y))) / 2, 1e-2))
        sign = jnp.where(vectors[:, -1] @ direction < 0, -1, 1).astype(x.dtype)
        return SymParams(w=w, beta=sign * norm * vectors[:, -1])
    return SymParams(w=w, beta=direction)


@public(_validate_init)
def init_params(model, key: Array, x, y):
    r"""A data-driven starting point for a fit; different keys give different starts.

    K-expert models: cluster the rows of the standardised $[x, T(y)]$ ($T$ the expert statistic) into
    K groups (k-means++ seeding and three Lloyd steps), give each sample responsibility
    $\tfrac12$ on its group plus $\tfrac1{2K}$ on every expert, and take one M-step from zero
    (σ from the spread of y): the gate then separates the groups and each expert fits its own.
    SymMoLinE: a spectral start, β along the top eigenvector of $\mathrm{mean}\,y^2 x x^\top$ with its
    norm read off the eigenvalue, and a small random w. SymMoLogE: a unit-norm random β and a small w.

    Example:
        >>> import jax, emjax
        >>> model = emjax.MoLinE(2)
        >>> truth = emjax.testing.random_params(model, jax.random.key(0), d=3)
        >>> x, y = emjax.sample(model, truth, jax.random.key(1), 200)
        >>> start = emjax.init_params(model, jax.random.key(2), x, y)
        >>> start.gate.shape, start.sigma.shape
        ((2, 3), (2,))
    """
    dtype = working_dtype(x, y)
    x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
    if is_mixture(model):
        return _init_mixture(model, key, x, y)
    return _init_symmetric(model, key, x, y)
