"""Symmetric positive semi-definite solves that never produce NaN."""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import Array, lax
from jax.scipy.linalg import cho_factor, cho_solve


def add_jitter(matrix: Array, scale: Array, relative: float | None = None) -> Array:
    """``matrix + (relative * scale + tiny) I``: a diagonal shift relative to ``scale`` (default: eps).

    ``scale`` is the magnitude the matrix is compared against (e.g. its mean diagonal); the
    smallest normal number keeps the shift positive when the matrix is exactly zero.
    """
    size = matrix.shape[0]
    relative = jnp.finfo(matrix.dtype).eps if relative is None else relative
    jitter = relative * scale + jnp.finfo(matrix.dtype).tiny
    return matrix + jitter * jnp.eye(size, dtype=matrix.dtype)


def solve_psd(matrix: Array, rhs: Array, relative: float | None = None, scale: Array | None = None) -> Array:
    """Solve ``matrix @ u = rhs`` for a symmetric PSD ``matrix`` by Cholesky, with a round-off jitter.

    A jitter of ``eps * trace / size`` (plus the smallest normal number) keeps the factor defined
    when the matrix is singular (fewer samples than features, a saturated logistic Hessian). On a
    well-conditioned matrix it changes the answer only at round-off level. On a singular one the
    solution is not unique: the answer is finite and solves the system on the range of the
    matrix, while its null-space components are arbitrary (round-off over the jitter). Add an
    explicit ridge where a unique answer is needed. ``relative`` replaces eps as the size of the
    shift relative to ``scale`` (default: the mean diagonal).

    On an exactly singular matrix (two identical feature columns) the factorisation's own round-off
    can exceed a shift of eps and leave a negative pivot; the factorisation is then redone with a shift
    of sqrt(eps) (only then: a well-conditioned solve is unchanged), so the answer is always finite
    for a finite PSD matrix and right-hand side.
    """
    return cho_solve(psd_factor(matrix, relative, scale), rhs)


def psd_factor(matrix: Array, relative: float | None = None, scale: Array | None = None):
    """The jittered Cholesky factor :func:`solve_psd` solves with, for a matrix used many times.

    A ``cho_factor`` pair: ``cho_solve(psd_factor(m), b)`` is ``solve_psd(m, b)``. A fit factors
    SymMoLinE's $X^\top X$ once and solves with it at every EM step."""
    scale = jnp.trace(matrix) / matrix.shape[0] if scale is None else scale

    def factor(shift):
        return cho_factor(add_jitter(matrix, scale, shift), lower=True)[0]

    first = factor(relative)
    safer = newton_shift(matrix.dtype) if relative is None else jnp.maximum(newton_shift(matrix.dtype), relative)
    return lax.cond(jnp.all(jnp.isfinite(first)), lambda: first, lambda: factor(safer)), True


def newton_shift(dtype) -> float:
    """Relative Levenberg shift for Newton steps: sqrt(eps).

    Along a null direction of a singular Hessian (duplicated features, an expert without data) the
    gradient is pure round-off, ~eps; with a shift of eps the step there would be O(1) and the
    iterates would random-walk to overflow. With sqrt(eps) that step is ~sqrt(eps), while the
    fixed point (gradient = 0) is unchanged and convergence stays fast."""
    return math.sqrt(float(jnp.finfo(dtype).eps))
