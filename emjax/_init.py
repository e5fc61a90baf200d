r"""Where fits start: data-driven initial parameters (each model's ``init_params``).

:func:`init_params` is what :func:`emjax.fit_restarts` calls once per restart, so two keys give
two different, data-driven starts.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from ._checks import check_model, validate
from ._dtypes import working_dtype
from ._validation import check_features, check_key, check_labels, public
from .models._weighted import with_weights


def _validate_init(model, key, x, y, weights=None, **_) -> None:
    check_key(key)
    n, d = check_features(x)
    check_labels(y, n)
    check_model(model)
    validate(model, model.placeholder(d), x, y, weights)


@public(_validate_init)
def init_params(model, key: Array, x, y, weights=None):
    r"""A data-driven starting point for a fit; different keys give different starts.

    K-expert models: cluster the rows of the standardised $[x, T(y)]$ ($T$ the expert statistic) into
    K groups (k-means++ seeding and three Lloyd steps), give each sample responsibility
    $\tfrac12$ on its group plus $\tfrac1{2K}$ on every expert, and take one M-step from zero
    (σ from the spread of y): the gate then separates the groups and each expert fits its own.
    SymMoLinE: a spectral start, β along the top eigenvector of $\mathrm{mean}\,y^2 x x^\top$ with its
    norm read off the eigenvalue, and a small random w. SymMoLogE: a unit-norm random β and a small w.

    With observation ``weights`` (K-expert models and trees, as for :func:`emjax.fit`) the clustering,
    the standardisation and the M-step count row n $v_n$ times: the seeding draws row n with
    probability $\propto v_n D_n^2$, and a row of weight 0 influences nothing.

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
    model = with_weights(model, weights, dtype)
    return model.init_params(key, jnp.asarray(x, dtype), jnp.asarray(y, dtype))
