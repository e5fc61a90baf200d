"""Image transforms in pure JAX (random inversion) and a design-matrix helper (intercept column)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import is_concrete, shape_of


def _check_probability(p) -> None:
    if shape_of(p, "p") != ():
        raise ValueError(f"p must be a scalar probability in [0, 1]; got shape {shape_of(p, 'p')}")
    if not is_concrete(p):
        return
    value = np.asarray(p)
    if value.dtype == bool or not np.issubdtype(value.dtype, np.number) or np.iscomplexobj(value):
        raise ValueError(f"p must be a real number in [0, 1]; got {p!r}")
    if not 0 <= value <= 1:  # also refuses NaN
        raise ValueError(f"p must be a probability in [0, 1]; got {p!r}")


def random_invert(key, images, p=0.5):
    r"""Random Invert: each image, independently with probability $p$, becomes $1 - x$.

    The "Random Invert" transform of Fruytier et al. (2025), Table 2. With
    $b_i \sim \mathrm{Bernoulli}(p)$ drawn independently per image from ``key``,

    $$\tilde x_i = \begin{cases} 1 - x_i & b_i = 1, \\ x_i & b_i = 0, \end{cases}$$

    elementwise over the pixel intensities of image $i$, which lie in $[0, 1]$. The same key gives
    the same flags, so applying the transform twice with one key restores the images: it is an
    involution on the flagged images. In floating point the round trip is exact when every pixel is
    a multiple of $2^{-24}$ in ``float32`` ($2^{-53}$ in ``float64``), such as the digits' $k/16$,
    and otherwise within one rounding of $1 - x$ ($2^{-25}$ in ``float32``).

    Pure JAX: works under ``jit``, under ``vmap`` over keys (and over ``p``), and keeps the dtype of
    ``images``. Not jitted itself.

    Args:
        key: a JAX PRNG key.
        images: floating-point images, shape (n, ...) with any trailing shape (flattened rows
            (n, H*W) or (n, H, W)).
        p: the probability of inverting each image, a scalar in $[0, 1]$ (may be traced).

    Returns:
        ``(inverted, flags)``: ``inverted`` has the shape and dtype of ``images``; ``flags`` is a
        ``bool`` array of shape (n,), true where the image was inverted.

    Raises:
        ValueError: if ``images`` is 0-D or not floating point, or if a concrete ``p`` is not a
            number in $[0, 1]$.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from emjax.datasets import random_invert
        >>> images = jnp.array([[0.0, 0.25], [0.5, 1.0], [1.0, 0.75]])
        >>> inverted, flags = random_invert(jax.random.key(0), images, p=1.0)
        >>> inverted.tolist(), flags.tolist()
        ([[1.0, 0.75], [0.5, 0.0], [0.0, 0.25]], [True, True, True])

    References:
        Fruytier et al. (2025), Table 2 (data augmentations).
    """
    shape = shape_of(images, "images")
    if len(shape) < 1:
        raise ValueError("images must have shape (n, ...) with at least one axis; got a 0-D array")
    images = jnp.asarray(images)
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            f"images must hold floating-point intensities in [0, 1]; got dtype {images.dtype} "
            "(scale integer pixels first, e.g. divide uint8 images by 255)"
        )
    _check_probability(p)
    p = jnp.asarray(p)
    if not jnp.issubdtype(p.dtype, jnp.floating):  # an int 0 or 1: jax.random.bernoulli wants a float
        p = p.astype(images.dtype)
    flags = jax.random.bernoulli(key, p, (shape[0],))
    mask = flags.reshape((shape[0],) + (1,) * (len(shape) - 1))
    return jnp.where(mask, 1 - images, images), flags


def add_intercept(x):
    r"""Append a column of ones: $x \mapsto [x, \mathbf 1]$, shape (..., d) to (..., d + 1).

    The ones go last, so the intercept is the last coefficient of a linear model. A NumPy array
    (or any array-like that is not a JAX array) gives a NumPy array; a JAX array, or a tracer under
    ``jit``, gives a JAX array. The dtype is kept.

    Args:
        x: features, shape (..., d) with at least one axis, e.g. (n, d) rows of flattened images.

    Returns:
        ``x`` with a trailing column of ones, shape (..., d + 1), same dtype.

    Raises:
        ValueError: if ``x`` is 0-D.

    Example:
        >>> import numpy as np
        >>> from emjax.datasets import add_intercept
        >>> add_intercept(np.array([[0.5, 0.25], [0.0, 1.0]], dtype=np.float32))
        array([[0.5 , 0.25, 1.  ],
               [0.  , 1.  , 1.  ]], dtype=float32)
    """
    xp = jnp if isinstance(x, jax.Array) else np
    x = xp.asarray(x)
    if x.ndim < 1:
        raise ValueError("x must have shape (..., d) with at least one axis; got a 0-D array")
    ones = xp.ones(x.shape[:-1] + (1,), dtype=x.dtype)
    return xp.concatenate([x, ones], axis=-1)
