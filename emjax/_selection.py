r"""Early stopping chosen by validation likelihood: the iterate of a fit that held-out data like best.

EM (and every solver) lowers the training loss at each step; on a model with many coefficients per
sample it can keep lowering it by fitting noise, and the held-out loss then rises again. The
standard remedy is to keep the iterates, evaluate the held-out negative log-likelihood
$L_{\mathrm{val}}(\theta_t) = -\mathrm{mean}_{m}\log p(y^{\mathrm{val}}_m\mid x^{\mathrm{val}}_m;\theta_t)$
of each, and return $\theta_{t^*}$ with $t^* = \arg\min_t L_{\mathrm{val}}(\theta_t)$. The choice uses
no test data, works for every model through its loss, and is a pure function of arrays, so it runs
under ``jit`` and ``vmap`` (one lane per fit).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from ._dtypes import as_arrays
from ._validation import data_arguments


class BestIterate(NamedTuple):
    r"""What :func:`best_iterate` returns.

    Attributes:
        params: the chosen iterate $\theta_{t^*}$, shaped like one iterate.
        index: $t^*$, an int32 scalar (0 is the start).
        losses: $L_{\mathrm{val}}(\theta_t)$ for every kept iterate, shape (T + 1,); NaN where an
            iterate's loss is not finite. Such iterates are never chosen unless every one is
            non-finite, in which case ``index`` is 0 (check ``losses``).
    """

    params: Any
    index: Array
    losses: Array


@data_arguments
def best_iterate(model, history, x_val, y_val) -> BestIterate:
    r"""The iterate with the lowest validation loss $L_{\mathrm{val}}(\theta_t)$ (early stopping).

    Args:
        model: the model that was fitted.
        history: a :class:`emjax.FitResult` of a fit run with ``keep_history=True``, or its
            ``params_history`` (parameters with a leading axis over the iterates $t = 0, \dots, T$).
            A fit that stopped early on a tolerance fills the rows after its last iterate with NaN;
            their losses are NaN and they are never chosen.
        x_val, y_val: held-out data, not used in the fit.

    Returns:
        :class:`BestIterate`: the chosen parameters, their index $t^*$ (the first of equal minima)
        and the validation loss of every iterate.

    Raises:
        ValueError: if ``history`` is a result fitted without ``keep_history=True``, its leaves
            do not share a leading axis, or ``x_val`` has no rows.

    Example:
        >>> import jax, emjax
        >>> model = emjax.MoLinE(2)
        >>> truth = emjax.testing.random_params(model, jax.random.key(0), d=3)
        >>> x, y = emjax.sample(model, truth, jax.random.key(1), 300)
        >>> start = emjax.init_params(model, jax.random.key(2), x[:200], y[:200])
        >>> result = emjax.fit(model, emjax.em(), start, x[:200], y[:200], 30, keep_history=True)
        >>> best = emjax.best_iterate(model, result, x[200:], y[200:])
        >>> best.losses.shape, bool(best.losses[best.index] <= best.losses[-1])
        ((31,), True)
    """
    if hasattr(history, "params_history"):
        if history.params_history is None:
            raise ValueError("best_iterate needs the iterates: fit with keep_history=True")
        history = history.params_history
    lengths = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jax.tree_util.tree_leaves(history)}
    if len(lengths) != 1 or None in lengths:
        raise ValueError(
            "history must be parameters with one leading axis over the iterates (a fit's params_history); "
            f"got leading sizes {sorted(lengths, key=str)}"
        )
    first = jax.tree_util.tree_map(lambda leaf: leaf[0], history)
    _, x_val, y_val = as_arrays(first, x_val, y_val)
    if x_val.ndim < 1 or x_val.shape[0] == 0:
        raise ValueError(f"x_val must hold at least one row of held-out data; got shape {x_val.shape}")
    losses = jax.lax.map(lambda params: model.loss(params, x_val, y_val), history)
    finite = jnp.isfinite(losses)
    index = jnp.argmin(jnp.where(finite, losses, jnp.inf)).astype(jnp.int32)
    params = jax.tree_util.tree_map(lambda leaf: leaf[index], history)
    return BestIterate(params=params, index=index, losses=jnp.where(finite, losses, jnp.nan))
