r"""The iteration engine: run a solver inside one compiled loop, and the result every trainer returns.

``fit`` validates its inputs in Python, then calls a single ``equinox.filter_jit``-compiled loop
(a ``lax.scan`` of a fixed number of steps, or a bounded ``lax.while_loop`` with a tolerance);
step sizes, tolerances and the model's σ are traced arrays, so a grid of SNRs, σ's or step sizes
reuses one compilation.

What is shared with the other trainers (:func:`emjax.streaming.fit_stream`,
:func:`emjax.deep.fit_em`, :func:`emjax.deep.fit_end_to_end`):

* the result type, :class:`FitResult` (their results are subclasses adding only extra fields);
* the stopping rule and the status codes (:mod:`emjax._stopping`, :class:`emjax.Status`);
* the progress output (:mod:`emjax._progress`);
* the steps: a solver's ``update`` (:mod:`emjax._solvers`) is the one step function; the streaming
  trainer's mini-batch step is ``mirror_descent(eta).update`` on the batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from ._checks import check_step_tree, check_trainable, validate
from ._progress import maybe_report, progress_interval
from ._solvers import AbstractSolver, GradientDescent, GradientEM
from ._status import Status
from ._stopping import (
    aitken_distance,
    check_criterion,
    check_tolerances,
    distance_converged,
    final_status,
    informative_step,
    loss_converged,
    rate_estimate,
    roundoff_distance,
    step_norms,
    step_ratio,
    tree_all_finite,
)
from ._validation import check_int, data_arguments, is_concrete
from .models import MoEParams, SymParams
from .models._weighted import weighted_arrays


class FitResult(eqx.Module):
    r"""The one result type of every emjax trainer (a pytree, so a vmapped fit returns one batched result).

    :func:`fit` and :func:`emjax.fit_restarts` return it; :func:`emjax.streaming.fit_stream`
    returns :class:`emjax.streaming.StreamResult` and :func:`emjax.deep.fit_em` /
    :func:`emjax.deep.fit_end_to_end` return :class:`emjax.deep.DeepFitResult`, subclasses that
    only add fields. Modelled on optimistix's ``Solution``: the value, a status code (never an
    exception inside ``jit``), statistics and the solver's final state. ``repr(result)`` (and
    :meth:`describe`) gives the status by name, the steps, convergence and final loss, per status
    for a batched result; :func:`emjax.summary` adds the coefficient tables.

    Attributes:
        params: the final parameters (the last finite iterate if the run went non-finite); for
            the deep trainers, the trained model.
        losses: the loss trace the stopping rule (:func:`emjax._stopping.loss_converged`) reads.
            For :func:`fit`: shape (num_steps + 1,) (the bound, with a tolerance);
            ``losses[t]`` is L at the iterate after t steps, so ``losses[0]`` is L at the
            initial parameters. NaN after the run stopped (at a tolerance, or at a non-finite
            step). The subclasses document what their entries are.
        num_steps: the number of steps actually applied (int32).
        status: a :class:`emjax.Status` code (int32): ``ok`` (the steps ran, or the tolerance was
            met, with finite values), ``max_steps`` (a tolerance was asked for and not met),
            ``nonfinite`` (a loss or iterate became NaN or infinite; that step was not applied) or
            ``degenerate`` (K-expert models: at the final iterate an expert holds under one sample
            of responsibility mass, its weighted design is numerically singular, its σ sits on the
            variance floor, or a classifier/count expert fits its own data perfectly, so that its
            coefficients diverge; the values are finite).
        converged: True when a tolerance was given and met with finite values (never for a NaN).
        state: the solver's final state.
        params_history: with ``keep_history=True``, every iterate, leading axis num_steps + 1,
            NaN-padded after the run stopped.
        restart_losses: from :func:`emjax.fit_restarts` only: the final loss of every restart
            (NaN-free: a restart that went non-finite reports its last finite loss).
        best_restart: from :func:`emjax.fit_restarts` only: the index of the returned restart.
        stats: the work done, a dict of int32 counts (per lane under ``vmap``):
            ``"num_map_evaluations"`` (applications of the update map: for EM one E-step plus one
            M-step; an accelerated solver makes two or three per iteration),
            ``"num_loss_evaluations"`` (points at which L was evaluated, the initial one included;
            each E-step yields L at its point) and ``"num_fallbacks"`` (extrapolations a safeguard
            rejected in favour of the plain step).
        distance_estimate: the estimated distance $\hat d$ (∞-norm over the free coordinates of
            :meth:`~emjax.models.AbstractModel.flatten`) from the final parameters to the fixed
            point: Aitken's $\|\Delta\theta\|_\infty\,\hat\rho/(1-\hat\rho)$ (docs/math.md §5.7);
            infinite until ρ̂ is known (after three plain steps or two accelerated cycles) or when
            ρ̂ ≥ 1.
        rate_estimate: ρ̂, the estimated linear rate of the iteration (the base map's for an
            accelerated solver); near a fixed point of EM it approaches ``emjax.em_rate``. NaN
            while unknown.
    """

    params: SymParams | MoEParams
    losses: Array
    num_steps: Array
    status: Array
    converged: Array
    state: Any
    params_history: SymParams | MoEParams | None = None
    restart_losses: Array | None = None
    best_restart: Array | None = None
    stats: dict | None = None
    distance_estimate: Array | None = None
    rate_estimate: Array | None = None

    @property
    def final_loss(self):
        """The loss at the final parameters, ``losses[num_steps]`` (per lane for a batched result)."""
        losses, steps = jnp.asarray(self.losses), jnp.asarray(self.num_steps)
        return jnp.take_along_axis(losses, steps[..., None], axis=-1)[..., 0]

    def describe(self) -> str:
        """The run in words: status by name, steps applied, convergence, final loss, parameter shapes.

        A batched result (leading axes from ``vmap`` or a sweep) gives the number of lanes per status
        and the range of the steps and final losses. This is also the result's ``repr``; inside
        ``jit`` (traced values, nothing to read) the ``repr`` falls back to equinox's tree of shapes.
        For the fitted coefficients with standard errors, AIC and BIC, see :func:`emjax.summary`.

        Example:
            >>> import jax, jax.numpy as jnp, emjax
            >>> model = emjax.SymMoLinE()
            >>> start = emjax.SymParams(w=jnp.array([0.5, 0.5]), beta=jnp.array([1.0, 1.0]))
            >>> x, y = emjax.sample(model, start, jax.random.key(0), 100)
            >>> print(emjax.fit(model, emjax.em(), start, x, y, num_steps=5).describe())  # doctest: +ELLIPSIS
            FitResult(status=Status.ok, num_steps=5, converged=False, final_loss=..., params=SymParams(...))
        """
        status = np.asarray(self.status)
        steps = np.asarray(self.num_steps)
        converged = np.asarray(self.converged)
        try:
            final = np.asarray(self.final_loss, dtype=float)
        except Exception:  # noqa: BLE001 - a subclass's losses may not follow the base layout
            final = np.full(status.shape, np.nan)
        params = eqx.tree_pformat(self.params, width=10_000)
        name = type(self).__name__
        if status.ndim == 0:
            return (
                f"{name}(status={Status.name_of(status)}, num_steps={int(steps)}, converged={bool(converged)}, "
                f"final_loss={float(final):.6g}, params={params})"
            )
        codes, counts = np.unique(status, return_counts=True)
        per_status = ", ".join(f"{Status.name_of(code)}: {count}" for code, count in zip(codes, counts, strict=True))
        finite = final[np.isfinite(final)]
        losses = f"{finite.min():.6g}..{finite.max():.6g}" if finite.size else "nan"
        return (
            f"{name}[batch {'x'.join(map(str, status.shape))}](status={{{per_status}}}, "
            f"num_steps={steps.min()}..{steps.max()}, converged={int(np.sum(converged))}/{converged.size}, "
            f"final_loss={losses}, params={params})"
        )

    def __repr__(self) -> str:
        leaves = (self.status, self.num_steps, self.converged, self.losses)
        if not all(is_concrete(leaf) for leaf in leaves):
            return eqx.tree_pformat(self)
        return self.describe()


def _final_status(model, params, x, y, status, free):
    """Flag a degenerate final iterate (a model that lost an expert); a non-finite run keeps its code.
    ``free``: the solver's full mask (frozen coefficients are not part of any expert's design)."""
    degenerate = model.is_degenerate(params, x, y, free=free) & (status != Status.nonfinite)
    return jnp.where(degenerate, Status.degenerate, status).astype(jnp.int32)


def _where(flag, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(flag, a, b), new, old)


def _healthy_start(params, x, y, loss0):
    """Whether a run may start: finite data, initial parameters and loss. Concrete inputs were checked
    in Python already; this catches traced ones (inside a user's ``jit``), which would otherwise
    leave a zero-step run, or a loss that stays finite at an infinite parameter, reported ``ok``."""
    return jnp.isfinite(loss0) & tree_all_finite((params, x, y))


STAT_NAMES = ("num_map_evaluations", "num_loss_evaluations", "num_fallbacks")


class _Track(NamedTuple):
    """What the loop keeps besides the iterate: the work counts and the Aitken estimate's inputs."""

    counts: dict
    step_norm: Array  # ‖last step‖₂ (the ratio of successive steps estimates ρ)
    rate_sample: Array  # the last contraction sample
    rate: Array  # ρ̂
    distance: Array  # the estimated distance of the current iterate to the fixed point


def _initial_track(dtype) -> _Track:
    counts = {name: jnp.zeros((), jnp.int32) for name in STAT_NAMES}
    counts["num_loss_evaluations"] = jnp.ones((), jnp.int32)  # L at the initial parameters
    nan = jnp.asarray(jnp.nan, dtype)
    return _Track(counts, nan, nan, nan, jnp.asarray(jnp.inf, dtype))


def _start(model, solver, params, x, y):
    """What the loop carries in: the per-fit cache, the solver state, L(params) and its E-step."""
    cache = model.precompute(x, y)
    state = solver.init(params)
    loss, expected = solver.expect(model, params, state, x, y, cache)
    return cache, state, loss, expected


def _advance(model, solver, params, state, loss, expected, track, cache, x, y, healthy):
    """One solver iteration, accepted only if the run is healthy and the new iterate and loss are finite.

    The new iterate's loss comes with its E-step, which the next iteration reuses: one pass over x
    per map evaluation (the lean step, docs/guides/performance.md). The work is counted whenever
    the lane was healthy; the rate and distance estimates move only with an accepted step."""
    step = solver.iterate(model, params, state, x, y, cache, loss, expected)
    accept = healthy & tree_all_finite(step.params) & jnp.isfinite(step.loss)
    if step.rate is None:
        step_norm, step_size = step_norms(model, step.params, params)
        # Once ρ̂ is known, a step at round-off level leaves it alone (see informative_step).
        informative = informative_step(model, step_norm, step.params, track.rate)
        sample = jnp.where(informative, step_ratio(step_norm, track.step_norm), track.rate_sample)
        rate = jnp.where(informative, rate_estimate(sample, track.rate_sample), track.rate)
    else:
        step_norm, step_size, sample = track.step_norm, step.step, step.rate
        rate = rate_estimate(sample, track.rate_sample)
    counted = healthy.astype(jnp.int32)
    work = dict(zip(STAT_NAMES, (step.num_map_evaluations, step.num_loss_evaluations, step.num_fallbacks), strict=True))
    counts = {name: track.counts[name] + counted * jnp.asarray(work[name], jnp.int32) for name in STAT_NAMES}
    distance = aitken_distance(step_size, rate)
    if step.rate is None:
        distance = roundoff_distance(model, step_norm, step_size, step.params, rate, distance)
    moved = _Track(counts, step_norm, sample, rate, distance)
    track = _Track(counts, *_where(accept, tuple(moved)[1:], tuple(track)[1:]))
    # A rejected step ends the run (nothing is applied after it), so its E-step is never reused.
    return (
        _where(accept, step.params, params),
        _where(accept, step.state, state),
        step.loss,
        step.expected,
        accept,
        track,
    )


def _converged(model, criterion: str, params, previous_loss, loss, track, rtol, atol):
    if criterion == "loss":
        return loss_converged(previous_loss, loss, rtol, atol)
    flat = model.flatten(params)
    scale = jnp.max(jnp.abs(flat)) if flat.size else jnp.zeros((), loss.dtype)
    return distance_converged(track.distance, scale, rtol, atol)


def _result(model, solver, params, x, y, losses, applied, status, converged, state, history, track) -> FitResult:
    status = _final_status(model, params, x, y, status, solver.trainable)
    return FitResult(
        params,
        losses,
        applied,
        status,
        converged,
        state,
        history,
        stats=dict(track.counts),
        distance_estimate=track.distance,
        rate_estimate=track.rate,
    )


@eqx.filter_jit
def _fit_scan(model, solver, params, x, y, num_steps: int, keep_history: bool, progress_every: int) -> FitResult:
    cache, state0, loss0, expected0 = _start(model, solver, params, x, y)

    def step(carry, t):
        params, state, loss, expected, track, healthy, applied = carry
        params, state, new_loss, expected, accept, track = _advance(
            model, solver, params, state, loss, expected, track, cache, x, y, healthy
        )
        maybe_report("emjax.fit", progress_every, t + 1, num_steps, new_loss)
        loss = jnp.where(accept, new_loss, jnp.nan)
        carry = (params, state, loss, expected, track, accept, applied + accept.astype(jnp.int32))
        return carry, (loss, params if keep_history else None)

    healthy0 = _healthy_start(params, x, y, loss0)
    init = (params, state0, loss0, expected0, _initial_track(x.dtype), healthy0, jnp.zeros((), jnp.int32))
    (params, state, _, _, track, healthy, applied), (losses, history) = lax.scan(
        step, init, jnp.arange(num_steps, dtype=jnp.int32)
    )
    losses = jnp.concatenate([loss0[None], losses])
    if keep_history:
        history = jax.tree_util.tree_map(lambda first, rest: jnp.concatenate([first[None], rest]), init[0], history)
    status = final_status(healthy, False, False, jnp.where).astype(jnp.int32)
    return _result(model, solver, params, x, y, losses, applied, status, jnp.asarray(False), state, history, track)


@eqx.filter_jit
def _fit_until(
    model, solver, params, x, y, max_steps: int, rtol, atol, keep_history: bool, progress_every: int, criterion: str
) -> FitResult:
    dtype = x.dtype
    cache, state0, loss0, expected0 = _start(model, solver, params, x, y)
    losses = jnp.full((max_steps + 1,), jnp.nan, dtype).at[0].set(loss0)
    history = None
    if keep_history:
        history = jax.tree_util.tree_map(
            lambda leaf: jnp.full((max_steps + 1,) + leaf.shape, jnp.nan, leaf.dtype).at[0].set(leaf), params
        )
    init = (
        jnp.zeros((), jnp.int32),
        params,
        state0,
        expected0,
        loss0,
        losses,
        history,
        _initial_track(dtype),
        _healthy_start(params, x, y, loss0),
        jnp.asarray(False),
    )

    def keep_going(carry):
        t, _, _, _, _, _, _, _, finite, converged = carry
        return (t < max_steps) & finite & ~converged

    def step(carry):
        t, params, state, expected, loss, losses, history, track, _, _ = carry
        # The loop stops at the first non-finite step, so every step it runs starts healthy.
        new_params, new_state, new_loss, expected, accept, track = _advance(
            model, solver, params, state, loss, expected, track, cache, x, y, jnp.asarray(True)
        )
        maybe_report("emjax.fit", progress_every, t + 1, max_steps, new_loss)
        converged = accept & _converged(model, criterion, new_params, loss, new_loss, track, rtol, atol)
        losses = losses.at[t + 1].set(jnp.where(accept, new_loss, jnp.nan))
        if keep_history:
            history = jax.tree_util.tree_map(lambda h, leaf: h.at[t + 1].set(leaf), history, new_params)
        t = t + accept.astype(jnp.int32)
        loss = jnp.where(accept, new_loss, loss)
        return (t, new_params, new_state, expected, loss, losses, history, track, accept, converged)

    applied, params, state, _, _, losses, history, track, finite, converged = lax.while_loop(keep_going, step, init)
    status = final_status(finite, converged, True, jnp.where).astype(jnp.int32)
    return _result(model, solver, params, x, y, losses, applied, status, converged, state, history, track)


@data_arguments
def fit(
    model,
    solver: AbstractSolver,
    params,
    x,
    y,
    num_steps: int,
    *,
    keep_history: bool = False,
    progress: bool | int = False,
    tol=None,
    atol=0.0,
    criterion: str = "distance",
    weights=None,
) -> FitResult:
    r"""Run ``solver`` from ``params`` in one compiled loop: ``num_steps`` steps, or until a tolerance.

    Without ``tol`` the loop is a ``lax.scan`` of exactly ``num_steps`` steps (reverse-mode
    differentiable). With ``tol`` it is a ``lax.while_loop`` bounded by ``num_steps`` that stops
    after the first step that meets the ``criterion``; under ``vmap`` each lane stops on its own
    (finished lanes keep their values while others run on). The default is no tolerance, as for
    :func:`emjax.fit_restarts`: ``num_steps`` means exactly that many steps.

    **Stopping criteria** (docs/math.md §5.7).

    * ``"distance"`` (default): stop when the *estimated distance to the fixed point* is small,
      $\hat d \le$ ``atol`` $+$ ``tol`` $\cdot\|\theta\|_\infty$, with Aitken's estimate
      $\hat d = \|\theta_{t+1} - \theta_t\|_\infty\,\hat\rho / (1 - \hat\rho)$ and $\hat\rho$ the
      larger of the last two ratios of successive step lengths (the iteration's linear rate; for
      EM near a fixed point, $\lambda_{\max}$ of the missing-information matrix). A small step
      is not enough: at rate 0.996 a step of 1e-8 leaves the iterate about 2.3e-6 away. Steps
      at round-off level leave ρ̂ unchanged; at loose tolerances (1e-2) the run may stop while
      ρ̂ still measures the fast early transient and d̂ is too small (docs/math.md §5.7).
    * ``"loss"``: stop when the loss change is small, $|L_t - L_{t+1}| \le$ ``atol``
      $+$ ``tol`` $\cdot |L_{t+1}|$ (the rule of the streaming and deep trainers). It can stop
      far from the fixed point when EM is slow.

    The estimate and the rate are reported (``distance_estimate``, ``rate_estimate``) with or
    without a tolerance, and ``stats`` counts the map and loss evaluations.

    Args:
        model: any emjax model (``SymMoLinE``, ``SymMoLogE``, ``MoLinE``, ``MoLogE``, ``MoPoE``).
        solver: ``em()``, ``mirror_descent(eta)``, ``gradient_em(eta, m)``, ``gradient_descent(eta)``,
            ``from_optax(tx)``, or an accelerated one, ``squarem(base)`` or ``anderson(base)``
            (then one step is one extrapolation cycle; ``stats`` counts the map evaluations).
        params: the initial parameters.
        x: features, shape (n, d). y: responses, shape (n,).
        num_steps: number of iterations (the bound, with ``tol``), a Python int >= 0; it fixes
            the length of the loss trace. ``num_steps=0`` returns ``params`` unchanged with
            ``losses = [L(params)]``: ``Status.ok`` without a tolerance, ``Status.max_steps`` with
            one (no step ran, so the rule was not met; :func:`emjax.fit_restarts` reports the same).
        keep_history: also return every iterate in ``params_history``.
        progress: print the step and loss from inside the compiled loop (``jax.debug.callback``),
            every 10 steps with ``True`` or every k steps with an int k. Off by default; results
            are bit-identical either way. Under ``vmap`` every lane reports.
        tol: relative tolerance (a float or traced scalar, >= 0) of the ``criterion``, or None.
        atol: absolute tolerance of the ``criterion``, used with ``tol`` (default 0).
        criterion: ``"distance"`` (the estimated distance to the fixed point, default) or
            ``"loss"`` (the loss change); see above.
        weights: optional observation weights $v_n \ge 0$, shape (n,) (K-expert models): the run
            minimises $-\sum_n v_n\log p(y_n\mid x_n)/\sum_n v_n$ and ``losses`` report it; integer
            frequency weights give the fit of the data with row n repeated $v_n$ times.

    Returns:
        A :class:`FitResult`. A step that produces a non-finite loss or parameter is not applied:
        the run keeps its last finite iterate and reports ``Status.nonfinite``. Non-finite data or
        initial parameters (concrete ones raise ``ValueError``; traced ones, inside a user's ``jit``,
        cannot be checked in Python) give ``Status.nonfinite`` with no step applied.

    Raises:
        ValueError: on invalid arguments (shapes, dtypes, non-finite or out-of-range values, labels
            the model cannot produce, a bad solver, step size, tolerance or ``num_steps``).

    Example:
        >>> import jax, jax.numpy as jnp, emjax
        >>> model = emjax.SymMoLinE()
        >>> truth = emjax.SymParams(w=jnp.array([2.0, 0.0]), beta=jnp.array([0.0, 2.0]))
        >>> x, y = emjax.sample(model, truth, jax.random.key(0), 1000)
        >>> start = emjax.SymParams(w=jnp.array([0.5, 0.5]), beta=jnp.array([1.0, 1.0]))
        >>> result = emjax.fit(model, emjax.em(), start, x, y, num_steps=20)
        >>> result.losses.shape, int(result.status)
        ((21,), 0)
    """
    check_fit_arguments(model, solver, params, x, y, num_steps, weights)
    progress_every = progress_interval(progress)
    check_tolerances(tol, atol)
    check_criterion(criterion)
    model, params, x, y = weighted_arrays(model, weights, params, x, y)
    solver = with_full_mask(model, solver, params)
    if tol is None:
        return _fit_scan(model, solver, params, x, y, num_steps, bool(keep_history), progress_every)
    rtol, atol = jnp.asarray(tol, x.dtype), jnp.asarray(atol, x.dtype)
    return _fit_until(model, solver, params, x, y, num_steps, rtol, atol, bool(keep_history), progress_every, criterion)


def check_fit_arguments(model, solver, params, x, y, num_steps, weights=None) -> None:
    """Boundary checks shared by :func:`fit` and :func:`emjax.fit_restarts`."""
    validate(model, params, x, y, weights)
    check_int(num_steps, "num_steps", 0)
    if not isinstance(solver, AbstractSolver):
        raise ValueError(
            "solver must be an emjax solver (em(), mirror_descent(eta), gradient_em(eta, m), "
            f"gradient_descent(eta), from_optax(tx), squarem(base), anderson(base)); got {type(solver).__name__}"
        )
    check_trainable(model, params, solver.trainable, "solver.trainable")
    step_solver = getattr(solver, "base", solver)  # an accelerated solver's steps are its base's
    if isinstance(step_solver, (GradientDescent, GradientEM)):
        check_step_tree(model, params, step_solver.step_size, "solver.step_size")


def with_full_mask(model, solver: AbstractSolver, params) -> AbstractSolver:
    """The solver with its ``trainable`` expanded to full-shape boolean arrays.

    Every mask (None, per block, per expert, per entry) then has the same pytree structure, so a
    model and data shape compile once whatever is frozen."""
    full = model.free_mask(params, solver.trainable)
    return eqx.tree_at(lambda s: s.trainable, solver, full, is_leaf=lambda leaf: leaf is None)
