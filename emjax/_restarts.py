r"""Restarts: many fits from different data-driven starts, batched with ``vmap`` in one compilation."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from ._fit import FitResult, _fit_scan, _fit_until, check_fit_arguments, progress_interval, with_full_mask
from ._init import _placeholder, init_params
from ._likelihood import as_arrays
from ._status import Status
from ._validation import check_features, check_key, check_tolerance


def final_losses(result: FitResult) -> Array:
    """The loss at each run's final parameters (its last finite trace entry), batched or not."""
    return jnp.take_along_axis(result.losses, result.num_steps[..., None], axis=-1)[..., 0]


@eqx.filter_jit
def _restarts(model, solver, keys, x, y, num_steps, rtol, atol, progress_every, batch_size) -> FitResult:
    def one(key):
        start = init_params.unguarded(model, key, x, y)  # non-finite data: Status.nonfinite, not an error
        start, _, _ = as_arrays(start, x, y)
        if rtol is None:
            return _fit_scan(model, solver, start, x, y, num_steps, False, progress_every)
        return _fit_until(model, solver, start, x, y, num_steps, rtol, atol, False, progress_every)

    if batch_size is None:
        results = jax.vmap(one)(keys)
    else:
        results = jax.lax.map(one, keys, batch_size=batch_size)
    losses = final_losses(results)
    healthy = (results.status == Status.ok) | (results.status == Status.max_steps)
    # Prefer healthy runs: a degenerate one can have a spuriously high likelihood (a collapsed σ).
    score = jnp.where(healthy | ~jnp.any(healthy), losses, jnp.inf)
    score = jnp.where(jnp.isnan(score), jnp.inf, score)
    best = jnp.argmin(score)
    chosen = jax.tree_util.tree_map(lambda leaf: leaf[best], results)
    return FitResult(chosen.params, chosen.losses, chosen.num_steps, chosen.status, chosen.converged,
                     chosen.state, None, losses, best.astype(jnp.int32))


def fit_restarts(model, solver, key: Array, x, y, num_restarts: int, num_steps: int = 500, *, tol=1e-8,
                 atol=0.0, progress: bool | int = False, batch_size: int | None = None) -> FitResult:
    r"""Fit from ``num_restarts`` data-driven starts at once (``vmap``) and return the best.

    Each restart starts at :func:`emjax.init_params` with its own key and runs :func:`emjax.fit`
    (with ``tol``: a bounded while-loop per lane; ``tol=None``: exactly ``num_steps`` steps). The
    best restart is chosen on the device: the lowest final loss among runs whose status is ``ok``
    or ``max_steps`` (a degenerate run can reach a spuriously low loss by collapsing a σ), or among
    all runs when none is healthy.

    Args:
        model, solver: as for :func:`emjax.fit`.
        key: a ``jax.random`` key; restart r uses ``jax.random.split(key, num_restarts)[r]``.
        x, y: the data.
        num_restarts: a Python int >= 1.
        num_steps: the step bound of every restart.
        tol, atol: the stopping rule of :func:`emjax.fit` (``tol=None`` for fixed steps).
        progress: as for :func:`emjax.fit` (every lane reports).
        batch_size: None (default) runs all restarts in one ``vmap``: best on a GPU. Under
            ``vmap`` a while-loop runs until its slowest lane stops, so on a CPU a chunk size
            (``lax.map`` with ``batch_size``; 1 = one restart after another) lets fast restarts
            finish early. Results are the same either way (up to round-off).

    Returns:
        A :class:`FitResult` of the best restart (``.params``, ``.losses``, ``.status``, ...) with
        ``restart_losses`` (shape (num_restarts,), every restart's final loss) and ``best_restart``.

    Example:
        >>> import jax, emjax
        >>> model = emjax.MoLinE(2)
        >>> truth = emjax.random_moe_params(model, jax.random.key(0), d=2)
        >>> x, y = emjax.sample(model, truth, jax.random.key(1), 300)
        >>> result = emjax.fit_restarts(model, emjax.em(), jax.random.key(2), x, y, num_restarts=4, num_steps=50)
        >>> result.restart_losses.shape
        (4,)
    """
    if not isinstance(num_restarts, int) or isinstance(num_restarts, bool) or num_restarts < 1:
        raise ValueError(f"num_restarts must be a Python int >= 1; got {num_restarts!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size must be None or a Python int >= 1; got {batch_size!r}")
    check_key(key)
    _, d = check_features(x)
    placeholder = _placeholder(model, d)
    check_fit_arguments(model, solver, placeholder, x, y, num_steps)
    progress_every = progress_interval(progress)
    check_tolerance(atol, "atol")
    if tol is not None:
        check_tolerance(tol, "tol")
    dtype = jnp.result_type(jnp.asarray(x).dtype, jnp.float32)
    x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
    keys = jax.random.split(key, num_restarts)
    solver = with_full_mask(model, solver, as_arrays(placeholder, x, y)[0])
    if tol is None:
        return _restarts(model, solver, keys, x, y, num_steps, None, None, progress_every, batch_size)
    return _restarts(model, solver, keys, x, y, num_steps, jnp.asarray(tol, dtype), jnp.asarray(atol, dtype),
                     progress_every, batch_size)
