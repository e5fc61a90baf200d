r"""Inference at a fitted point: standard errors from the observed information, AIC and BIC.

With $\hat\theta$ a local minimiser of $L$ (a mean over n samples), the asymptotic covariance of the
free parameters is $(n\,\nabla^2 L(\hat\theta))^{-1}$, where $\nabla^2 L = I_c - I_{miss}$ is the observed
information from Louis' identity (docs/math.md §5.1, §5.6). Pinned entries (gate row 0, class column 0)
and entries frozen by ``trainable`` are not estimated: they are left out of the inverse and get a
standard error of 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._checks import check_model_params, check_trainable, validate
from ._dtypes import working_dtype
from ._information import observed_information
from ._likelihood import neg_log_likelihood
from ._validation import data_arguments, is_concrete


def _estimated(model, params, trainable) -> np.ndarray:
    """Boolean vector over the flattened free parameters: True where the entry was estimated."""
    if trainable is not None and not all(is_concrete(leaf) for leaf in jax.tree_util.tree_leaves(trainable)):
        raise ValueError("trainable must hold concrete booleans here (it decides which parameters are counted)")
    return np.asarray(model.flat_free_mask(params, trainable))


@data_arguments
def standard_errors(model, params, x, y, trainable=None, weights=None):
    r"""Asymptotic standard errors $\sqrt{\mathrm{diag}((n\nabla^2 L(\hat\theta))^{-1})}$, shaped like ``params``.

    Evaluate at a fitted $\hat\theta$ (a local minimum, where $\nabla^2 L \succ 0$); elsewhere the
    inverse is not a covariance and entries with a negative variance come back NaN. Pinned and
    frozen entries get 0. For K-expert models the result is subject to the label permutation of
    ``params`` (use :func:`emjax.testing.match_experts` first when comparing with a truth).

    With observation ``weights`` $v_n$ the information is the weighted mean and n is $\sum_n v_n$:
    frequency weights give the standard errors of the expanded data (rescale other weights to sum
    to the number of independent observations first; :mod:`emjax.models._weighted`).

    Example:
        >>> import jax, jax.numpy as jnp, emjax
        >>> model = emjax.SymMoLinE()
        >>> truth = emjax.SymParams(w=jnp.array([1.0, 0.0]), beta=jnp.array([0.0, 2.0]))
        >>> x, y = emjax.sample(model, truth, jax.random.key(0), 2000)
        >>> fitted = emjax.fit(model, emjax.em(), truth, x, y, 50).params
        >>> se = emjax.standard_errors(model, fitted, x, y)
        >>> bool(jnp.all(se.beta < 0.1))
        True
    """
    validate(model, params, x, y, weights)
    check_trainable(model, params, trainable)
    estimated = _estimated(model, params, trainable)
    information = observed_information(model, params, x, y, weights=weights)
    n = _sample_size(model, x, weights)
    index = np.nonzero(estimated)[0]
    sub = information[np.ix_(index, index)]
    covariance = jnp.linalg.inv(n * (sub + sub.T) / 2)
    variances = jnp.diag(covariance)
    errors = jnp.where(variances >= 0, jnp.sqrt(jnp.abs(variances)), jnp.nan)
    vector = jnp.zeros(estimated.shape[0], errors.dtype).at[index].set(errors)
    return model.unflatten(vector, jax.tree_util.tree_map(jnp.zeros_like, params))


def _sample_size(model, x, weights):
    """n of the asymptotics: the rows of x, or the sum of the observation weights."""
    return jnp.shape(x)[0] if weights is None else jnp.sum(jnp.asarray(weights))


def num_parameters(model, params, trainable=None) -> int:
    """Number of estimated parameters: free (not pinned) and trainable."""
    check_model_params(model, params)
    check_trainable(model, params, trainable)
    return int(np.sum(_estimated(model, params, trainable)))


@data_arguments
def aic(model, params, x, y, trainable=None, weights=None) -> Array:
    r"""Akaike's criterion $2nL(\hat\theta) + 2k$, k the number of estimated parameters (lower is better).

    With observation ``weights`` $v_n$: $nL = -\sum_n v_n \log p_n$ (n = $\sum_n v_n$), as for the expanded data.

    Example:
        >>> import jax, emjax
        >>> model = emjax.MoLinE(2)
        >>> truth = emjax.testing.random_params(model, jax.random.key(0), d=2)
        >>> x, y = emjax.sample(model, truth, jax.random.key(1), 100)
        >>> bool(emjax.aic(model, truth, x, y) < emjax.bic(model, truth, x, y))
        True
    """
    validate(model, params, x, y, weights)
    check_trainable(model, params, trainable)
    n = _sample_size(model, x, weights)
    loss = neg_log_likelihood(model, params, x, y, weights=weights)
    return 2 * n * loss + 2 * num_parameters(model, params, trainable)


@data_arguments
def bic(model, params, x, y, trainable=None, weights=None) -> Array:
    r"""Schwarz's criterion $2nL(\hat\theta) + k\log n$ (lower is better); consistent for choosing K.

    With observation ``weights`` $v_n$, n is $\sum_n v_n$ (the expanded data's size for frequency
    weights; for weights that do not count observations, rescale them to sum to the number of
    independent observations first)."""
    validate(model, params, x, y, weights)
    check_trainable(model, params, trainable)
    dtype = working_dtype(params, x, y)
    n = jnp.asarray(_sample_size(model, x, weights), dtype)
    k = num_parameters(model, params, trainable)
    return 2 * n * neg_log_likelihood(model, params, x, y, weights=weights) + k * jnp.log(n)
