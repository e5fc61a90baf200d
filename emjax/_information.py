r"""Information matrices and the missing-information matrix (MATH.md §5), in closed form.

All matrices are (2d, 2d) in the flattened order ``concat(w, beta)``. With $p = \mathrm{sigmoid}(x\cdot w)$,
$r$ the responsibilities and $v = r(1-r)$:

* complete information $\nabla^2 A = \mathrm{blockdiag}(\mathrm{mean}\,p(1-p)xx^\top,\
  \mathrm{mean}\,A^{e\prime\prime}(x\cdot\beta)\,xx^\top)$;
* missing information $I_{miss} = \mathrm{mean}\,v\,[x; c x][x; c x]^\top$, $c = 2y/\sigma^2$ (SymMoLinE)
  or $2y - 1$ (SymMoLogE);
* observed information $\nabla^2 L = \nabla^2 A - I_{miss}$ (exact, for every θ and data set);
* $M(\theta) = (\nabla^2 A)^{-1} I_{miss}$, whose eigenvalues are those of the symmetric
  $G^{-1} I_{miss} G^{-\top}$ with $\nabla^2 A = G G^\top$; ``em_rate`` is the largest.

Nothing here loops, so everything differentiates (``jax.grad(em_rate)`` included).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.linalg import cho_factor, cho_solve, solve_triangular

from . import _moe
from ._checks import is_mixture, validate
from ._likelihood import as_arrays, posterior_logit, projections
from ._linalg import add_jitter
from ._validation import public
from .models import SymParams


def _weighted_gram(x: Array, weights: Array) -> Array:
    return (x * weights[:, None]).T @ x / x.shape[0]


def _complete(model, params: SymParams, x: Array) -> Array:
    xw, xb = projections(params, x)
    p = jax.nn.sigmoid(xw)
    gate = _weighted_gram(x, p * (1 - p))
    expert = _weighted_gram(x, model.expert_curvature(xb))
    zeros = jnp.zeros_like(gate)
    return jnp.block([[gate, zeros], [zeros, expert]])


def _missing(model, params: SymParams, x: Array, y: Array) -> Array:
    xw, xb = projections(params, x)
    logit = posterior_logit(model, xw, xb, y)
    v = jax.nn.sigmoid(logit) * jax.nn.sigmoid(-logit)
    stacked = jnp.concatenate([x, model.missing_coefficient(y)[:, None] * x], axis=1)
    return _weighted_gram(stacked, v)


def _factorable(complete: Array, missing: Array) -> Array:
    """∇²A plus a jitter at round-off level, so its Cholesky factor exists even where every gate
    or expert probability saturates (|x.w| ~ 1e3 makes p(1-p) underflow to 0). The jitter scales
    with both matrices, so M stays finite (at most ~1/eps) and is unchanged to working precision
    whenever ∇²A is well conditioned."""
    # A few ulps per row beyond solve_psd's shift: the Cholesky factor of a rank-deficient Gram
    # matrix needs room for the round-off of its own products.
    return add_jitter(complete, 4 * (jnp.trace(complete) + jnp.trace(missing)))


@public(validate)
def complete_information(model, params, x, y=None) -> Array:
    r"""$\nabla^2 A(\theta)$, the complete-data (Fisher) information, shape (2d, 2d).

    K-expert models (curved families, MATH.md §5.6) need y: the complete information is
    $I_c(\theta) = -\nabla^2_u Q(u\mid\theta)|_{u=\theta}$, shape (P, P) over the flattened free
    parameters (order in :mod:`emjax.models.moe`).

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> p = emjax.SymParams(w=jnp.zeros(1), beta=jnp.zeros(1))
        >>> emjax.complete_information(emjax.SymMoLinE(), p, jnp.ones((2, 1))).tolist()
        [[0.25, 0.0], [0.0, 1.0]]
    """
    if is_mixture(model):
        if y is None:
            raise ValueError("complete_information needs y for K-expert models (I_c depends on the responsibilities)")
        return _moe.complete_information(model, *as_arrays(params, x, y))
    return _complete(model, *as_arrays(params, x))


@public(validate)
def missing_information(model, params, x, y) -> Array:
    r"""$I_{miss}(\theta) = \mathrm{mean}_n J_n^\top \mathrm{Cov}_\theta[S\mid x_n, y_n] J_n$, shape (2d, 2d).

    K-expert models: $\mathrm{mean}_n\mathrm{Cov}_{z\mid x_n, y_n}[\nabla_\theta \log p(y_n, z\mid x_n;\theta)]$
    (Louis, 1982), shape (P, P) over the flattened free parameters.
    """
    if is_mixture(model):
        return _moe.missing_information(model, *as_arrays(params, x, y))
    return _missing(model, *as_arrays(params, x, y))


@public(validate)
def observed_information(model, params, x, y) -> Array:
    r"""$\nabla^2 L(\theta) = \nabla^2 A(\theta) - I_{miss}(\theta)$ (Louis' identity), shape (2d, 2d).

    K-expert models: $I_c - I_{miss}$ over the flattened free parameters, shape (P, P).
    """
    params, x, y = as_arrays(params, x, y)
    if is_mixture(model):
        return _moe.observed_information(model, params, x, y)
    return _complete(model, params, x) - _missing(model, params, x, y)


@public(validate)
def missing_information_matrix(model, params, x, y) -> Array:
    r"""$M(\theta) = \nabla^2 A(\theta)^{-1} I_{miss}(\theta)$, shape (2d, 2d), via a Cholesky solve.

    At a fixed point $\hat\theta$ of EM, $M(\hat\theta)$ is the Jacobian of the EM map
    (Dempster-Laird-Rubin), ``jax.jacobian(em_step)``. K-expert models: $I_c^{-1} I_{miss}$ over
    the flattened free parameters (MATH.md §5.6).
    """
    params, x, y = as_arrays(params, x, y)
    if is_mixture(model):
        return _moe.missing_information_matrix(model, params, x, y)
    missing = _missing(model, params, x, y)
    chol = cho_factor(_factorable(_complete(model, params, x), missing), lower=True)
    return cho_solve(chol, missing)


def _mim_eigenvalues(model, params, x, y) -> Array:
    missing = _missing(model, params, x, y)
    factor = jnp.linalg.cholesky(_factorable(_complete(model, params, x), missing))
    left = solve_triangular(factor, missing, lower=True)
    symmetric = solve_triangular(factor, left.T, lower=True)
    return jnp.linalg.eigvalsh((symmetric + symmetric.T) / 2)


@public(validate)
def mim_eigenvalues(model, params, x, y) -> Array:
    r"""Eigenvalues of $M(\theta)$, ascending, from ``eigvalsh`` of $G^{-1} I_{miss} G^{-\top}$ (never ``eig``)."""
    return _eigenvalues(model, *as_arrays(params, x, y))


def _eigenvalues(model, params, x, y) -> Array:
    if is_mixture(model):
        return _moe.mim_eigenvalues(model, params, x, y)
    return _mim_eigenvalues(model, params, x, y)


@public(validate)
def em_rate(model, params, x, y) -> Array:
    r"""$\lambda_{\max}(M(\theta))$: the local linear rate of EM at a fixed point (MATH.md §5.3).

    Differentiable: ``jax.grad(lambda b: em_rate(model, SymParams(w, b), x, y))(beta)`` works.

    Example:
        >>> import jax, jax.numpy as jnp, emjax
        >>> model = emjax.SymMoLinE()
        >>> truth = emjax.SymParams(w=jnp.array([2.0, 0.0]), beta=jnp.array([0.0, 4.0]))
        >>> x, y = emjax.sample(model, truth, jax.random.key(0), 20000)
        >>> 0.1 < float(emjax.em_rate(model, truth, x, y)) < 0.4
        True
    """
    return _eigenvalues(model, *as_arrays(params, x, y))[-1]
