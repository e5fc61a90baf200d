"""k-means++ clustering of standardised points: the seeding of the K-expert starts.

With observation weights $v_n \\ge 0$ (normalised or not) every step counts row n $v_n$ times: the
standardisation uses weighted means and variances, the first centre is drawn with probability
$\\propto v_n$, each next one $\\propto v_n D_n^2$ (k-means++ on the data with row n repeated
$v_n$ times), and the Lloyd steps average with weights. A row of weight 0 is never a centre and moves
no centre, so appending zero-weight rows changes no centre.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from ._model import row_mean

_LLOYD_STEPS = 3


def standardise(columns: Array, weights: Array | None = None) -> Array:
    """Columns centred and scaled to unit (weighted) standard deviation; constant columns only centred."""
    if weights is None:
        scale = jnp.std(columns, axis=0, keepdims=True)
        return (columns - jnp.mean(columns, axis=0, keepdims=True)) / jnp.where(scale > 0, scale, 1)
    centred = columns - row_mean(columns, weights)[None]
    scale = jnp.sqrt(row_mean(jnp.square(centred), weights))[None]
    return centred / jnp.where(scale > 0, scale, 1)


def cluster(key: Array, points: Array, k: int, weights: Array | None = None) -> Array:
    """k-means++ seeding followed by a few Lloyd steps (weighted by ``weights`` when given); returns hard
    labels (n,)."""
    keys = jax.random.split(key, k)
    if weights is None:
        log_weights = jnp.zeros((), points.dtype)
        first = jax.random.randint(keys[0], (), 0, points.shape[0])
    else:
        log_weights = jnp.log(weights.astype(points.dtype))  # -inf: never drawn
        first = jax.random.categorical(keys[0], log_weights)
    centres = [points[first]]
    for j in range(1, k):
        chosen = jnp.stack(centres)
        distance = jnp.min(jnp.sum(jnp.square(points[:, None, :] - chosen[None]), axis=-1), axis=1)
        logits = jnp.log(distance + jnp.finfo(points.dtype).tiny) + log_weights
        centres.append(points[jax.random.categorical(keys[j], logits)])
    centres = jnp.stack(centres)
    for _ in range(_LLOYD_STEPS):
        labels = jnp.argmin(jnp.sum(jnp.square(points[:, None, :] - centres[None]), axis=-1), axis=1)
        onehot = jax.nn.one_hot(labels, k, dtype=points.dtype)
        if weights is not None:
            onehot = onehot * weights.astype(points.dtype)[:, None]
        counts = jnp.sum(onehot, axis=0)
        means = onehot.T @ points / jnp.where(counts > 0, counts, 1)[:, None]
        centres = jnp.where((counts > 0)[:, None], means, centres)
    return jnp.argmin(jnp.sum(jnp.square(points[:, None, :] - centres[None]), axis=-1), axis=1)
