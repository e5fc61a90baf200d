r"""Information matrices and the missing-information matrix (docs/math.md §5), for every model.

Over the flattened free parameters (the model's :meth:`~emjax.models.AbstractModel.flatten` order):

* complete information $I_c = -\nabla^2_u Q(u\mid\theta)|_{u=\theta}$ ($\nabla^2 A$ for the symmetric
  models, in closed form);
* missing information $I_{miss} = \mathrm{mean}_n\mathrm{Cov}_{z\mid x_n,y_n}[\nabla\log p(y_n,z\mid x_n)]$;
* observed information $\nabla^2 L = I_c - I_{miss}$ (Louis' identity);
* $M(\theta) = I_c^{-1} I_{miss}$, whose eigenvalues are those of the symmetric $R^\top I_{miss} R$
  with $R R^\top = I_c^{-1}$ (the model's ``information_inverse_root``); ``em_rate`` is the largest.

Nothing here loops, so everything differentiates (``jax.grad(em_rate)`` included).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from ._checks import check_trainable, validate
from ._validation import public
from .models._weighted import weighted_arrays


def _validate_restricted(model, params, x, y, trainable=None, weights=None, **_) -> None:
    validate(model, params, x, y, weights)
    check_trainable(model, params, trainable)


def _inverse_root(model, params, x, y, trainable=None) -> tuple[Array, Array]:
    """The model's inverse root R of $I_c$ ($R R^\\top = I_c^{-1}$) and $I_{miss}$, of the model restricted
    to the ``trainable`` entries when a mask is given."""
    complete = model.complete_information(params, x, y)
    missing = model.missing_information(params, x, y)
    if trainable is not None:
        # Frozen coordinates are constants of the restricted model: the identity in I_c and zero in I_miss
        # make M block-diagonal, the restricted model's MIM on the estimated entries and 0 on the frozen ones.
        free = model.flat_free_mask(params, trainable)
        both = free[:, None] & free[None, :]
        complete = jnp.where(both, complete, jnp.diag(~free).astype(complete.dtype))
        missing = jnp.where(both, missing, 0)
    return model.information_inverse_root(complete, missing), missing


@public(validate)
def complete_information(model, params, x, y, weights=None) -> Array:
    r"""$\nabla^2 A(\theta)$, the complete-data (Fisher) information, shape (2d, 2d).

    For every model it is $I_c(\theta) = -\nabla^2_u Q(u\mid\theta)|_{u=\theta}$, the Hessian of the EM
    surrogate, over the flattened free parameters. For the symmetric models (linear exponential
    families) that is $\nabla^2 A(\theta)$, which does not depend on y; for K-expert models (curved
    families, docs/math.md §5.6) it depends on y through the responsibilities, shape (P, P) in the
    order of :mod:`emjax.models.moe`.

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> p = emjax.SymParams(w=jnp.zeros(1), beta=jnp.zeros(1))
        >>> emjax.complete_information(emjax.SymMoLinE(), p, jnp.ones((2, 1)), jnp.zeros(2)).tolist()
        [[0.25, 0.0], [0.0, 1.0]]
    """
    model, params, x, y = weighted_arrays(model, weights, params, x, y)
    return model.complete_information(params, x, y)


@public(validate)
def missing_information(model, params, x, y, weights=None) -> Array:
    r"""$I_{miss}(\theta) = \mathrm{mean}_n J_n^\top \mathrm{Cov}_\theta[S\mid x_n, y_n] J_n$, shape (2d, 2d).

    K-expert models: $\mathrm{mean}_n\mathrm{Cov}_{z\mid x_n, y_n}[\nabla_\theta \log p(y_n, z\mid x_n;\theta)]$
    (Louis, 1982), shape (P, P) over the flattened free parameters.
    """
    model, params, x, y = weighted_arrays(model, weights, params, x, y)
    return model.missing_information(params, x, y)


@public(validate)
def observed_information(model, params, x, y, weights=None) -> Array:
    r"""$\nabla^2 L(\theta) = \nabla^2 A(\theta) - I_{miss}(\theta)$ (Louis' identity), shape (2d, 2d).

    K-expert models: $I_c - I_{miss}$ over the flattened free parameters, shape (P, P).
    """
    model, params, x, y = weighted_arrays(model, weights, params, x, y)
    return model.complete_information(params, x, y) - model.missing_information(params, x, y)


@public(_validate_restricted)
def missing_information_matrix(model, params, x, y, weights=None, trainable=None) -> Array:
    r"""$M(\theta) = I_c(\theta)^{-1} I_{miss}(\theta)$, shape (P, P).

    For the symmetric models $I_c = \nabla^2 A$, so $M = \nabla^2 A^{-1} I_{miss}$.

    At a fixed point $\hat\theta$ of EM, $M(\hat\theta)$ is the Jacobian of the EM map
    (Dempster-Laird-Rubin), ``jax.jacobian(em_step)``. K-expert models: $I_c^{-1} I_{miss}$ over
    the flattened free parameters (docs/math.md §5.6).

    With a ``trainable`` mask (as a solver's): the MIM of the model restricted to the estimated entries,
    on those rows and columns, and 0 on the frozen ones (constants of the restricted model; e.g. the
    entries :func:`emjax.covariates` freezes). At a fixed point of EM with that mask it is the
    Jacobian of the masked EM map.
    """
    root, missing = _inverse_root(*weighted_arrays(model, weights, params, x, y), trainable)
    return root @ (root.T @ missing)


@public(_validate_restricted)
def mim_eigenvalues(model, params, x, y, weights=None, trainable=None) -> Array:
    r"""Eigenvalues of $M(\theta)$, ascending, from ``eigvalsh`` of $G^{-1} I_{miss} G^{-\top}$ (never ``eig``).

    With a ``trainable`` mask: those of the restricted model (:func:`missing_information_matrix`), plus a
    0 for each frozen entry."""
    return _eigenvalues(*weighted_arrays(model, weights, params, x, y), trainable)


def _eigenvalues(model, params, x, y, trainable=None) -> Array:
    root, missing = _inverse_root(model, params, x, y, trainable)
    symmetric = root.T @ missing @ root
    return jnp.linalg.eigvalsh((symmetric + symmetric.T) / 2)


@public(_validate_restricted)
def em_rate(model, params, x, y, weights=None, trainable=None) -> Array:
    r"""$\lambda_{\max}(M(\theta))$: the local linear rate of EM at a fixed point (docs/math.md §5.3).

    Differentiable: ``jax.grad(lambda b: em_rate(model, SymParams(w, b), x, y))(beta)`` works. With a
    ``trainable`` mask: the rate of EM with that mask (the restricted model's, :func:`missing_information_matrix`).

    Example:
        >>> import jax, jax.numpy as jnp, emjax
        >>> model = emjax.SymMoLinE()
        >>> truth = emjax.SymParams(w=jnp.array([2.0, 0.0]), beta=jnp.array([0.0, 4.0]))
        >>> x, y = emjax.sample(model, truth, jax.random.key(0), 20000)
        >>> 0.1 < float(emjax.em_rate(model, truth, x, y)) < 0.4
        True
    """
    return _eigenvalues(*weighted_arrays(model, weights, params, x, y), trainable)[-1]
