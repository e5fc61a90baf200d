"""Symmetric positive semi-definite solves that never produce NaN."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.scipy.linalg import cho_factor, cho_solve


def add_jitter(matrix: Array, scale: Array) -> Array:
    """``matrix + (eps * scale + tiny) I``: a diagonal shift at round-off level relative to ``scale``.

    ``scale`` is the magnitude the matrix is compared against (e.g. its mean diagonal); the
    smallest normal number keeps the shift positive when the matrix is exactly zero.
    """
    size = matrix.shape[0]
    jitter = jnp.finfo(matrix.dtype).eps * scale + jnp.finfo(matrix.dtype).tiny
    return matrix + jitter * jnp.eye(size, dtype=matrix.dtype)


def solve_psd(matrix: Array, rhs: Array) -> Array:
    """Solve ``matrix @ u = rhs`` for a symmetric PSD ``matrix`` by Cholesky, with a round-off jitter.

    A jitter of ``eps * trace / size`` (plus the smallest normal number) keeps the factor defined
    when the matrix is singular (fewer samples than features, a saturated logistic Hessian). On a
    well-conditioned matrix it changes the answer only at round-off level. On a singular one the
    solution is not unique: the answer is finite and solves the system on the range of the
    matrix, while its null-space components are arbitrary (round-off over the jitter). Add an
    explicit ridge where a unique answer is needed.
    """
    factor = cho_factor(add_jitter(matrix, jnp.trace(matrix) / matrix.shape[0]), lower=True)
    return cho_solve(factor, rhs)
