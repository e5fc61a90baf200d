"""k-means++ clustering of standardised points: the seeding of the K-expert starts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

_LLOYD_STEPS = 3


def standardise(columns: Array) -> Array:
    scale = jnp.std(columns, axis=0, keepdims=True)
    return (columns - jnp.mean(columns, axis=0, keepdims=True)) / jnp.where(scale > 0, scale, 1)


def cluster(key: Array, points: Array, k: int) -> Array:
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
