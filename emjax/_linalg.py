"""Symmetric positive semi-definite solves that never produce NaN."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.scipy.linalg import cho_factor, cho_solve


def solve_psd(matrix: Array, rhs: Array) -> Array:
    """Solve ``matrix @ u = rhs`` for a symmetric PSD ``matrix`` by Cholesky, with a round-off jitter.

    A jitter of ``eps * trace / size`` (plus the smallest normal number) keeps the factor defined
    when the matrix is singular (fewer samples than features, a saturated logistic Hessian). On a
    well-conditioned matrix it changes the answer only at round-off level. On a singular one the
    solution is not unique: the answer is finite and solves the system on the range of the
    matrix, while its null-space components are arbitrary (round-off over the jitter). Add an
    explicit ridge where a unique answer is needed.
    """
    size = matrix.shape[0]
    eps = jnp.finfo(matrix.dtype).eps
    jitter = eps * jnp.trace(matrix) / size + jnp.finfo(matrix.dtype).tiny
    factor = cho_factor(matrix + jitter * jnp.eye(size, dtype=matrix.dtype), lower=True)
    return cho_solve(factor, rhs)
