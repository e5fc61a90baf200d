r"""Sampling, the E-step and the loss (docs/math.md §1-§2), all in log space, for every model.

Each public function checks its arguments once, casts them to one working dtype
(:mod:`emjax._dtypes`) and calls the model's method (:class:`emjax.models.AbstractModel`).
"""

from __future__ import annotations

from jax import Array

from ._checks import check_model_params, validate
from ._dtypes import as_arrays
from ._validation import check_key, public
from .models._weighted import weighted_arrays


def _check_sample(model, params, key, n, **_) -> None:
    check_key(key)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive Python int (it fixes array shapes); got {n!r}")
    check_model_params(model, params)


@public(_check_sample)
def sample(model, params, key: Array, n: int):
    r"""Draw n samples: $x\sim N(0, I_d)$, then z from the gate, then y from expert z.

    Symmetric models: $z\sim\mathrm{Bernoulli}(\mathrm{sigmoid}(x\cdot w))$; K-expert models:
    $z\sim\mathrm{softmax}(x W^\top)$. To sample with an intercept, append a column of ones to x
    yourself and use ``responsibilities``/``fit`` on it.

    Args:
        model: the model.
        params: the true parameters; their dtype is the dtype of x and y.
        key: a ``jax.random`` key.
        n: number of samples (a Python int).

    Returns:
        ``(x, y)`` of shapes (n, d) and (n,).

    Example:
        >>> import jax, jax.numpy as jnp, emjax
        >>> truth = emjax.SymParams(w=jnp.ones(2), beta=jnp.ones(2))
        >>> x, y = emjax.sample(emjax.SymMoLinE(), truth, jax.random.key(1), 7)
        >>> x.shape
        (7, 2)
    """
    return model.sample(params, key, n)


@public(validate)
def responsibilities(model, params, x, y) -> Array:
    r"""Posterior probabilities of the latent label, shape (n, 2) or (n, K).

    K-expert models: $\gamma_{nk} = \exp(\ell_{nk} - \mathrm{logsumexp}_j \ell_{nj})$ with
    $\ell_{nk} = \log\pi_k(x_n) + \log p(y_n\mid x_n, z=k)$, never exponentiated before normalising.
    Symmetric models:

    Column 1 is $r_n = P(z=1\mid x_n, y_n) = \mathrm{sigmoid}(\Delta_n)$ and column 0 is
    $\mathrm{sigmoid}(-\Delta_n)$ (computed directly, not as $1 - r_n$, so both tails are exact).

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> p = emjax.SymParams(w=jnp.zeros(1), beta=jnp.ones(1))
        >>> r = emjax.responsibilities(emjax.SymMoLinE(), p, jnp.ones((1, 1)), jnp.zeros(1))
        >>> r.tolist()
        [[0.5, 0.5]]
    """
    return model.e_step(*as_arrays(params, x, y))[0]


@public(validate)
def neg_log_likelihood(model, params, x, y, weights=None) -> Array:
    r"""$L(\theta) = -\mathrm{mean}_n \log p(y_n\mid x_n;\theta)$, all constants included.

    With observation ``weights`` $v_n \ge 0$ (K-expert models): $-\sum_n v_n\log p_n / \sum_n v_n$, the
    loss of the data with row n repeated $v_n$ times (:mod:`emjax.models._weighted`).

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> p = emjax.SymParams(w=jnp.zeros(1), beta=jnp.zeros(1))
        >>> round(float(emjax.neg_log_likelihood(emjax.SymMoLogE(), p, jnp.ones((2, 1)), jnp.array([0, 1]))), 6)
        0.693147
    """
    model, params, x, y = weighted_arrays(model, weights, params, x, y)
    return model.loss(params, x, y)
