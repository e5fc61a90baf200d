r"""Restarts: many fits from different data-driven starts, batched with ``vmap`` in one compilation."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._batching import auto_batch_size, map_lanes
from ._dtypes import as_arrays, working_dtype
from ._fit import FitResult, _fit_scan, _fit_until, check_fit_arguments, with_full_mask
from ._init import init_params
from ._progress import progress_interval
from ._status import Status
from ._stopping import check_criterion, check_tolerances
from ._validation import check_features, check_key, data_arguments, is_concrete
from .models import keep_frozen
from .models._weighted import with_weights


def final_losses(result: FitResult) -> Array:
    """The loss at each run's final parameters (its last finite trace entry), batched or not."""
    return result.final_loss


@eqx.filter_jit
def _restarts(
    model, solver, keys, x, y, num_steps, rtol, atol, progress_every, batch_size, frozen, fixed, criterion, weights
) -> FitResult:
    fitted = with_weights(model, weights, x.dtype)  # the starts and the fits weigh the rows

    def one(key):
        start = init_params.unguarded(fitted, key, x, y)  # non-finite data: Status.nonfinite, not an error
        start, _, _ = as_arrays(start, x, y)
        if fixed is not None:
            start = keep_frozen(frozen, fixed, start)
        if rtol is None:
            return _fit_scan(fitted, solver, start, x, y, num_steps, False, progress_every)
        return _fit_until(fitted, solver, start, x, y, num_steps, rtol, atol, False, progress_every, criterion)

    results = map_lanes(one, keys, batch_size)
    losses = final_losses(results)
    healthy = (results.status == Status.ok) | (results.status == Status.max_steps)
    # Prefer healthy runs: a degenerate one can have a spuriously high likelihood (a collapsed σ).
    score = jnp.where(healthy | ~jnp.any(healthy), losses, jnp.inf)
    score = jnp.where(jnp.isnan(score), jnp.inf, score)
    best = jnp.argmin(score)
    chosen = jax.tree_util.tree_map(lambda leaf: leaf[best], results)
    return FitResult(
        chosen.params,
        chosen.losses,
        chosen.num_steps,
        chosen.status,
        chosen.converged,
        chosen.state,
        None,
        losses,
        best.astype(jnp.int32),
        stats=chosen.stats,
        distance_estimate=chosen.distance_estimate,
        rate_estimate=chosen.rate_estimate,
    )


@data_arguments
def fit_restarts(
    model,
    solver,
    key: Array,
    x,
    y,
    num_restarts: int,
    num_steps: int = 500,
    *,
    params=None,
    tol=None,
    atol=0.0,
    criterion: str = "distance",
    progress: bool | int = False,
    batch_size: int | str | None = "auto",
    weights=None,
) -> FitResult:
    r"""Fit from ``num_restarts`` data-driven starts in one compiled program and return the best.

    Restart r starts at ``init_params(model, jax.random.split(key, num_restarts)[r], x, y, weights)`` (with
    the solver's frozen entries taken from ``params``) and runs :func:`emjax.fit` (with ``tol``: a
    bounded while-loop per lane; ``tol=None``: exactly ``num_steps`` steps). A start depends on its
    key and the data only, so the best restart can be re-run alone with :func:`emjax.fit` from
    that start. The best restart is chosen on the device: the lowest final loss among runs whose
    status is ``ok`` or ``max_steps`` (a degenerate run can reach a spuriously low loss by
    collapsing a σ), or among all runs when none is healthy.

    Args:
        model, solver: as for :func:`emjax.fit`.
        key: a ``jax.random`` key; restart r uses ``jax.random.split(key, num_restarts)[r]``.
        x, y: the data.
        num_restarts: a Python int >= 1.
        num_steps: the step bound of every restart; 0 returns the best start by loss, unchanged,
            with the status :func:`emjax.fit` gives (``ok``, or ``max_steps`` with a tolerance).
        params: required when the solver freezes entries (``trainable`` False where the model does
            not pin them): the values those entries keep in every restart, e.g. 0 for a gate that
            must ignore a column. ``init_params`` knows nothing of the restriction, so its values
            there would silently fit a different model. Its other entries are not used.
        tol, atol, criterion: the stopping rule of :func:`emjax.fit`, with the same defaults: ``tol=None``
            runs exactly ``num_steps`` steps per restart; pass e.g. ``tol=1e-8`` to stop each
            restart once its relative loss change is that small (on a CPU, with ``batch_size``
            1, that lets each restart stop early).
        progress: as for :func:`emjax.fit` (every lane reports).
        batch_size: ``"auto"`` (default): 1 on a CPU, None on an accelerator
            (:mod:`emjax._batching`). None runs all restarts in one ``vmap``: best on a GPU. Under
            ``vmap`` a while-loop runs until its slowest lane stops, so on a CPU a chunk size
            (``lax.map`` with ``batch_size``; 1 = one restart after another) lets fast restarts
            finish early. Results are the same either way (up to round-off).
        weights: optional observation weights, as for :func:`emjax.fit`: every restart minimises the
            weighted loss, and the best is the lowest weighted loss; the starts weigh the rows too
            (:func:`emjax.init_params` with ``weights``).

    Returns:
        A :class:`FitResult` of the best restart (``.params``, ``.losses``, ``.status``, ...) with
        ``restart_losses`` (shape (num_restarts,), every restart's final loss) and ``best_restart``.

    Example:
        >>> import jax, emjax
        >>> model = emjax.MoLinE(2)
        >>> truth = emjax.testing.random_params(model, jax.random.key(0), d=2)
        >>> x, y = emjax.sample(model, truth, jax.random.key(1), 300)
        >>> result = emjax.fit_restarts(model, emjax.em(), jax.random.key(2), x, y, num_restarts=4, num_steps=50)
        >>> result.restart_losses.shape
        (4,)
    """
    if not isinstance(num_restarts, int) or isinstance(num_restarts, bool) or num_restarts < 1:
        raise ValueError(f"num_restarts must be a Python int >= 1; got {num_restarts!r}")
    if batch_size == "auto":
        batch_size = auto_batch_size()
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f'batch_size must be "auto", None or a Python int >= 1; got {batch_size!r}')
    check_key(key)
    _, d = check_features(x)
    check_fit_arguments(model, solver, model.placeholder(d) if params is None else params, x, y, num_steps, weights)
    dtype = working_dtype(x, y) if params is None else working_dtype(x, y, params)
    placeholder = model.placeholder(d, dtype)
    progress_every = progress_interval(progress)
    check_tolerances(tol, atol)
    check_criterion(criterion)
    x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
    keys = jax.random.split(key, num_restarts)
    user_mask = solver.trainable
    solver = with_full_mask(model, solver, placeholder)
    if params is None:
        if user_mask is not None:
            _refuse_silent_freeze(_frozen_entries(model, solver, placeholder))
        frozen = fixed = None
    else:
        frozen, fixed = _frozen_entries(model, solver, placeholder), as_arrays(params, x, y)[0]
    if weights is not None:
        weights = jnp.asarray(weights, dtype)
    rtol, atol = (None, None) if tol is None else (jnp.asarray(tol, dtype), jnp.asarray(atol, dtype))
    return _restarts(
        model, solver, keys, x, y, num_steps, rtol, atol, progress_every, batch_size, frozen, fixed, criterion, weights
    )


def _frozen_entries(model, solver, placeholder):
    """True where the solver freezes an entry that the model itself does not pin."""
    unpinned = model.free_mask(placeholder, None)
    return jax.tree_util.tree_map(lambda allowed, free: allowed & ~free, unpinned, solver.trainable)


def _refuse_silent_freeze(frozen) -> None:
    leaves = jax.tree_util.tree_leaves(frozen)
    if all(is_concrete(leaf) for leaf in leaves) and not any(np.any(np.asarray(leaf)) for leaf in leaves):
        return
    raise ValueError(
        "solver.trainable freezes entries, and restarts start at init_params, which knows nothing of the "
        "restriction: pass params=... holding the values the frozen entries must keep (e.g. zeros for a gate "
        "column the model must ignore); fit_restarts then sets them in every start"
    )
