r"""Mini-batch (stochastic) EM over a stream of batches, with an optional exact full-batch polish.

**The step** (docs/math.md §4.4-§4.6). On batch $B_t$ with step $\eta_t$, one mini-batch EM step is the
(projected) mirror-descent step on that batch,

$$\nabla A_{B_t}(\theta_{t+1}) = (1-\eta_t)\,\nabla A_{B_t}(\theta_t) + \eta_t\,\bar s_{B_t}(\theta_t),$$

i.e. the M-step fitted to *blended* expected sufficient statistics: a running average, with weight
$\eta_t$, of the batch's posterior statistics and the statistics the current model expects.
It is stochastic mirror descent on $L$ with the KL regulariser: $\nabla L_{B}$ is an unbiased
estimate of $\nabla L$, so with Robbins-Monro steps (:class:`RobbinsMonro`) the iterates settle at a
stationary point of the full-data loss, the fixed point of full-batch EM. $\eta_t = 1$ is EM on
the batch; on the whole data set, this is :func:`emjax.mirror_descent_step` itself.

**The polish** (optional). The mini-batch iterate sits within the batch noise of the fixed point;
``polish_steps`` full-data steps then converge to it, one pass over the stream per step, with a
backtracking check that the full-data loss never increases (as for EM): Newton on L with
$\nabla^2 L = I_c - I_{miss}$ (quadratic convergence, the default), or Lange's EM-gradient step,
whose local rate is EM's own (:mod:`emjax.streaming._passes`).

This module's loop runs in Python over host batches (the data never sits on the device at once);
each step is one compiled call, so a new batch of the same shape reuses the compilation. The step
is :func:`emjax.fit`'s own: ``mirror_descent(eta).update`` (:mod:`emjax._solvers`) on the batch.

**Stopping** uses :func:`emjax.fit`'s rule (:mod:`emjax._stopping`) on the losses this trainer
records: with ``tol``, the mini-batch phase stops after the first epoch whose mean batch loss is
within ``atol + tol * |L|`` of the previous epoch's, and the polish stops once two consecutive
full-data losses are. The polish also keeps its own test on the parameters, max |Δθ| <=
``polish_tol``: near the fixed point the change in L is second order in the step, so a loss test
alone cannot certify the parameters to ``polish_tol``; that is what the polish is for.
"""

from __future__ import annotations

import json
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_model_params, check_trainable, validate
from .._dtypes import as_arrays
from .._fit import FitResult
from .._newton import MAX_HALVINGS, armijo_accepts, armijo_slack
from .._progress import progress_interval, report
from .._solvers import MirrorDescent
from .._status import Status
from .._stopping import check_tolerances, final_status, loss_converged, tree_all_finite
from ..models._weighted import weighted_arrays
from ._passes import flat_mask, flat_ridge, full_pass, newton_direction, split_batch
from ._schedule import RobbinsMonro, as_schedule, checked_step


class StreamResult(FitResult):
    """What :func:`fit_stream` returns: a :class:`emjax.FitResult` with the streaming phases' traces.

    The :class:`~emjax.FitResult` fields (host NumPy values, not device arrays):

    * ``params``: the final parameters (the last finite iterate).
    * ``losses``: the trace the stopping rule reads: one entry per completed epoch (the mean of
      that epoch's batch losses, each at the iterate before its step), then the polish's
      ``polish_losses`` (exact full-data L).
    * ``num_steps``: steps applied, mini-batch steps plus accepted polish passes.
    * ``status``: an :class:`emjax.Status` code: ``ok``; ``max_steps`` (a polish, or a ``tol``, was
      asked for and not met); ``nonfinite`` (a step gave NaN or Inf and was not applied).
    * ``converged``: True when the polish met ``polish_tol`` or the rule, or (without a polish)
      when the epochs met ``tol``; never for a non-finite run.
    * ``state``: None (the stochastic step is stateless).

    ``final_loss`` is the last polish loss when a polish ran, else the last epoch loss.

    Attributes:
        num_batches: mini-batch steps applied.
        num_rows: rows those steps saw (epochs × n when every epoch completes).
        batch_losses: L on each mini-batch just before its step (NumPy, float64).
        step_sizes: the η of each mini-batch step.
        epoch_losses: the mean batch loss of each completed epoch (what ``tol`` compares).
        polish_losses: the full-data L at the start of the polish and after each polish step
            (empty without a polish); it never increases.
        polish_step_norms: max |Δθ| of each polish step.
        converged: True when the polish met ``polish_tol``.
        seconds: wall time of the mini-batch phase and of the polish.
    """

    num_batches: int = 0
    num_rows: int = 0
    batch_losses: np.ndarray | None = None
    step_sizes: np.ndarray | None = None
    epoch_losses: np.ndarray | None = None
    polish_losses: np.ndarray | None = None
    polish_step_norms: np.ndarray | None = None
    seconds: tuple[float, float] = (0.0, 0.0)

    @property
    def final_loss(self):
        """The last polish loss (exact full-data L) if a polish ran, else the last epoch loss (NaN if none)."""
        trace = self.polish_losses if len(self.polish_losses) else self.epoch_losses
        return float(trace[-1]) if len(trace) else float("nan")


@eqx.filter_jit
def _stochastic_step(model, solver, params, x, y, weights=None):
    """L on the batch at ``params``, then :func:`emjax.fit`'s step, ``solver.update`` (mirror descent); with
    observation weights, both of the batch's weighted means."""
    model, params, x, y = weighted_arrays(model, weights, params, x, y)
    loss = model.loss(params, x, y)
    new, _ = solver.update(model, params, solver.init(params), x, y)
    return new, loss, tree_all_finite(new) & jnp.isfinite(loss)


def _is_one_shot(batches) -> bool:
    try:
        return iter(batches) is batches
    except TypeError as error:
        raise ValueError(f"batches must be an iterable of (x, y) pairs; got {type(batches).__name__}") from error


def _check_count(value, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a Python int >= 0; got {value!r}")
    return value


def _batch_checker(model, params):
    def check(x, y, weights=None):
        if not (isinstance(x, (np.ndarray, jax.Array)) and isinstance(y, (np.ndarray, jax.Array))):
            raise ValueError(
                f"each batch must be a pair (x, y) of arrays; got ({type(x).__name__}, {type(y).__name__})"
            )
        validate(model, params, x, y, weights)

    return check


class _Checkpoint:
    """Progress saved to a folder (parameters with equinox, counters and traces as JSON/NPZ).

    Writes go to temporary names first and are renamed into place, so an interruption at any
    moment leaves either the previous checkpoint or the new one, never a torn file."""

    def __init__(self, folder, fingerprint: str):
        self.folder, self.fingerprint = os.fspath(folder), fingerprint
        self.params_path = os.path.join(self.folder, "params.eqx")
        self.state_path = os.path.join(self.folder, "state.json")
        self.trace_path = os.path.join(self.folder, "trace.npz")

    def load(self, like):
        if not os.path.exists(self.state_path):
            return None
        with open(self.state_path) as handle:
            state = json.load(handle)
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"checkpoint {self.folder} was written for a different run ({state.get('fingerprint')}); "
                f"this run is {self.fingerprint}. Use another folder or delete it."
            )
        params = eqx.tree_deserialise_leaves(self.params_path, like)
        with np.load(self.trace_path) as traces:
            state["traces"] = {name: list(traces[name]) for name in traces.files}
        return params, state

    def save(self, params, state: dict, traces: dict) -> None:
        os.makedirs(self.folder, exist_ok=True)
        eqx.tree_serialise_leaves(self.params_path + ".tmp", params)
        arrays = {name: np.asarray(value, np.float64) for name, value in traces.items()}
        np.savez(self.trace_path + ".tmp.npz", **arrays)
        with open(self.state_path + ".tmp", "w") as handle:
            json.dump(dict(state, fingerprint=self.fingerprint), handle)
        os.replace(self.params_path + ".tmp", self.params_path)
        os.replace(self.trace_path + ".tmp.npz", self.trace_path)
        os.replace(self.state_path + ".tmp", self.state_path)


def _fingerprint(
    model, params, num_epochs, schedule, polish_steps, polish_method, curvature_rows, tol=None, atol=0.0
) -> str:
    shapes = [tuple(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(params)]
    text = (
        f"{model!r}|{shapes}|epochs={num_epochs}|{_schedule_fingerprint(schedule)}|"
        f"polish={polish_steps} {polish_method} {curvature_rows}"
    )
    return text if tol is None else f"{text}|tol={float(tol)!r} atol={float(atol)!r}"


def _schedule_fingerprint(schedule) -> str:
    """A description of the step-size schedule that is the same in every process.

    A lambda's or plain function's repr holds its memory address, which differs in the process that
    resumes; its name and first steps do not."""
    text = repr(schedule)
    if " at 0x" not in text:
        return text
    name = getattr(schedule, "__qualname__", type(schedule).__qualname__)
    return f"{name}{[float(schedule(t)) for t in range(8)]}"


def fit_stream(
    model,
    params,
    batches,
    *,
    num_epochs: int = 1,
    step_size=None,
    polish_steps: int = 0,
    polish_tol: float = 1e-8,
    polish_method: str = "newton",
    curvature_rows: int | None = 100_000,
    trainable=None,
    progress: bool | int = False,
    checkpoint=None,
    checkpoint_every: int = 100,
    tol=None,
    atol=0.0,
) -> StreamResult:
    r"""Mini-batch EM over a stream of (x, y) batches, then an optional full-batch polish.

    Args:
        model: any emjax model. params: the initial parameters.
        batches: an iterable of ``(x, y)`` pairs (x of shape (b, d), y of shape (b,)):
            :class:`ArrayBatches`, :class:`NpyBatches`, a list, or a one-shot generator (then
            ``num_epochs`` must be 1 and ``polish_steps`` 0, since those walk the data again). For
            observation weights (K-expert models), ``(x, y, weights)`` triples
            (``ArrayBatches(..., weights=w)``): each mini-batch step fits the batch's weighted
            statistics, and the polish the full data's weighted loss (:func:`emjax.fit`'s ``weights``).
        num_epochs: passes of mini-batch EM over the batches (0: polish only).
        step_size: $\eta_t$ for mini-batch step t: a number in (0, 1] (constant) or a callable
            ``t -> eta`` such as :class:`RobbinsMonro` (the default, $\eta_t = (1+t/10)^{-0.6}$).
        polish_steps: bound on full-data EM-gradient passes after the mini-batch phase (0: none).
        polish_tol: the polish stops once a step changes no parameter by more than this.
        tol, atol: :func:`emjax.fit`'s stopping rule and defaults (None: no loss test). With
            ``tol``, the mini-batch phase stops after the first epoch whose mean batch loss
            $E_e$ has $|E_{e-1} - E_e| \le$ ``atol`` $+$ ``tol`` $|E_e|$, and the polish also stops
            once two consecutive full-data losses meet the rule.
        polish_method: ``"newton"`` (Newton on L, $\nabla^2 L = I_c - I_{miss}$; a few passes) or
            ``"em_gradient"`` (one Newton step on the EM surrogate per pass; EM's own local rate).
            Both stop at the full-batch EM fixed point.
        curvature_rows: rows (from the start of each pass) over which the polish's information
            matrices are averaged; the loss and gradient always use every row, so the polish
            still stops exactly at the full-batch fixed point (default 100,000; None: all rows).
        trainable: optional mask as in :func:`emjax.em_step` (frozen entries never change).
        progress: print a line every 100 mini-batches (``True``) or every k (an int), and one
            per polish pass (:mod:`emjax._progress`, as :func:`emjax.fit`).
        checkpoint: optional folder. Progress is saved there every ``checkpoint_every``
            mini-batches, after each epoch and after each polish step; calling ``fit_stream``
            again with the same folder and arguments resumes where the last save left off (the
            batches already used in the current epoch are skipped).
        checkpoint_every: mini-batches between saves.

    Returns:
        A :class:`StreamResult` (a :class:`emjax.FitResult`). Memory use is one batch plus the
        parameters, whatever n.

    Example:
        >>> import jax, emjax
        >>> from emjax.streaming import ArrayBatches, fit_stream
        >>> model = emjax.MoLinE(2)
        >>> truth = emjax.testing.random_params(model, jax.random.key(0), d=2)
        >>> x, y = emjax.sample(model, truth, jax.random.key(1), 4000)
        >>> start = emjax.init_params(model, jax.random.key(2), x, y)
        >>> result = fit_stream(model, start, ArrayBatches(x, y, 500), num_epochs=2, polish_steps=20)
        >>> result.num_batches, bool(result.polish_losses[-1] <= result.polish_losses[0])
        (16, True)
    """
    check_model_params(model, params)
    num_epochs = _check_count(num_epochs, "num_epochs")
    polish_steps = _check_count(polish_steps, "polish_steps")
    checkpoint_every = _check_count(checkpoint_every, "checkpoint_every") or 1
    if not (isinstance(polish_tol, (int, float)) and np.isfinite(polish_tol) and polish_tol >= 0):
        raise ValueError(f"polish_tol must be a finite number >= 0; got {polish_tol!r}")
    if curvature_rows is not None and (
        not isinstance(curvature_rows, int) or isinstance(curvature_rows, bool) or curvature_rows < 1
    ):
        raise ValueError(f"curvature_rows must be None or a Python int >= 1; got {curvature_rows!r}")
    if polish_method not in POLISH_METHODS:
        raise ValueError(f"polish_method must be one of {POLISH_METHODS}; got {polish_method!r}")
    schedule = RobbinsMonro() if step_size is None else as_schedule(step_size)
    every = progress_interval(progress, default=100)
    check_tolerances(tol, atol)
    rule = None if tol is None else (float(tol), float(atol))
    if _is_one_shot(batches) and (num_epochs > 1 or polish_steps > 0):
        raise ValueError(
            "a one-shot iterator can be walked once: pass a re-iterable source (ArrayBatches, "
            "NpyBatches, a list) for several epochs or a polish"
        )
    check_batch = _batch_checker(model, params)

    store = (
        None
        if checkpoint is None
        else _Checkpoint(
            checkpoint,
            _fingerprint(model, params, num_epochs, schedule, polish_steps, polish_method, curvature_rows, tol, atol),
        )
    )
    traces = {"batch_losses": [], "step_sizes": [], "epoch_losses": [], "polish_losses": [], "polish_step_norms": []}
    state = {
        "epoch": 0,
        "batch": 0,
        "step": 0,
        "rows": 0,
        "status": int(Status.ok),
        "polish_done": 0,
        "converged": False,
        "epoch_first": 0,
        "epochs_converged": False,
    }
    resumed = store.load(params) if store is not None else None
    if resumed is not None:
        params, saved = resumed
        traces.update(saved.pop("traces"))
        state.update({key: saved[key] for key in state if key in saved})
        if progress:
            print(
                f"emjax.fit_stream: resumed from {checkpoint} at epoch {state['epoch']}, batch {state['batch']}",
                flush=True,
            )

    def save():
        if store is not None:
            store.save(params, state, traces)

    started = time.perf_counter()
    free = None
    while state["epoch"] < num_epochs and state["status"] == Status.ok and not state["epochs_converged"]:
        for index, pair in enumerate(batches):
            if index < state["batch"]:
                continue  # used before the interruption this run resumes from
            x, y, weights = split_batch(pair)
            check_batch(x, y, weights)
            if free is None:
                check_trainable(model, params, trainable)
                free = model.free_mask(as_arrays(params, x)[0], trainable)
            eta = checked_step(schedule, state["step"])
            solver = MirrorDescent(step_size=jnp.asarray(eta), trainable=free)
            new, loss, finite = _stochastic_step(model, solver, params, x, y, weights)
            if not bool(finite):
                state["status"] = int(Status.nonfinite)
                break
            params = new
            traces["batch_losses"].append(float(loss))
            traces["step_sizes"].append(eta)
            state["step"] += 1
            state["batch"] = index + 1
            state["rows"] += int(np.shape(x)[0])
            if every and state["step"] % every == 0:
                report(
                    "emjax.fit_stream",
                    state["step"],
                    None,
                    loss,
                    f"epoch {state['epoch'] + 1}/{num_epochs}, batch {index + 1}, eta {eta:.3g}",
                )
            if state["step"] % checkpoint_every == 0:
                save()
        if state["status"] != Status.ok:
            break
        state["epoch"] += 1
        state["batch"] = 0
        epoch = traces["batch_losses"][state["epoch_first"] :]
        state["epoch_first"] = len(traces["batch_losses"])
        if epoch:
            traces["epoch_losses"].append(float(np.mean(epoch)))
            if rule is not None and len(traces["epoch_losses"]) >= 2:
                state["epochs_converged"] = bool(loss_converged(*traces["epoch_losses"][-2:], *rule))
        save()
    stochastic_seconds = time.perf_counter() - started

    started = time.perf_counter()
    if polish_steps and state["status"] == Status.ok and state["polish_done"] < polish_steps:
        params = _polish(
            model,
            params,
            batches,
            polish_steps,
            polish_tol,
            polish_method == "newton",
            curvature_rows,
            trainable,
            check_batch,
            state,
            traces,
            save,
            bool(progress),
            rule,
        )
    elif not polish_steps:
        finite = state["status"] != Status.nonfinite
        state["converged"] = bool(finite and state["epochs_converged"])
        state["status"] = int(final_status(finite, state["epochs_converged"], rule is not None, np.where))
    polish_seconds = time.perf_counter() - started
    save()
    arrays = {name: np.asarray(value, np.float64) for name, value in traces.items()}
    return StreamResult(
        params=params,
        losses=np.concatenate([arrays["epoch_losses"], arrays["polish_losses"]]),
        num_steps=np.asarray(state["step"] + len(arrays["polish_step_norms"]), np.int32),
        status=np.asarray(state["status"], np.int32),
        converged=np.asarray(bool(state["converged"])),
        state=None,
        num_batches=int(state["step"]),
        num_rows=int(state["rows"]),
        batch_losses=arrays["batch_losses"],
        step_sizes=arrays["step_sizes"],
        epoch_losses=arrays["epoch_losses"],
        polish_losses=arrays["polish_losses"],
        polish_step_norms=arrays["polish_step_norms"],
        seconds=(stochastic_seconds, polish_seconds),
    )


POLISH_METHODS = ("newton", "em_gradient")


def _polish(
    model,
    params,
    batches,
    polish_steps,
    polish_tol,
    newton,
    curvature_rows,
    trainable,
    check_batch,
    state,
    traces,
    save,
    verbose,
    rule=None,
):
    """Newton or EM-gradient passes (see :mod:`emjax.streaming._passes`), accepted only if L does not increase."""
    first = next(iter(batches))
    check_batch(*split_batch(first))
    params = as_arrays(params, first[0])[0]
    check_trainable(model, params, trainable)
    free = flat_mask(model, params, trainable)
    ridge = flat_ridge(model, params)
    vector = np.asarray(model.flatten(params), np.float64)
    eps = np.finfo(np.asarray(first[0]).dtype if np.asarray(first[0]).dtype.kind == "f" else np.float64).eps
    sums = full_pass(model, params, batches, check_batch, newton, curvature_rows)
    if not traces["polish_losses"]:
        traces["polish_losses"].append(sums.loss)
    state["status"] = int(Status.max_steps)
    while state["polish_done"] < polish_steps:
        direction = newton_direction(sums, vector, ridge, free)
        current = sums.loss + 0.5 * float(np.sum(ridge * vector**2))
        # The Newton solver's own line search (emjax._newton): Armijo's test along -direction, the same
        # constant, slack and halving limit, each trial one pass over the stream.
        slope = -float(np.sum(np.where(free, sums.gradient + ridge * vector, 0.0) * direction))
        slack = armijo_slack(current, eps)
        alpha, accepted = 1.0, False
        for _ in range(MAX_HALVINGS + 1):
            candidate_vector = vector - alpha * direction
            candidate = model.unflatten(candidate_vector, params)
            candidate_sums = full_pass(model, candidate, batches, check_batch, newton, curvature_rows)
            loss = candidate_sums.loss + 0.5 * float(np.sum(ridge * candidate_vector**2))
            if (
                np.isfinite(loss)
                and np.all(np.isfinite(candidate_sums.gradient))
                and armijo_accepts(loss, current, alpha, slope, slack)
            ):
                accepted = True
                break
            alpha /= 2
        step_norm = float(np.max(np.abs(alpha * direction), initial=0.0))
        state["polish_done"] += 1
        if not accepted:  # no decrease along a shrinking Newton step: at the fixed point to round-off
            state["status"] = int(Status.ok) if step_norm <= polish_tol else int(Status.nonfinite)
            state["converged"] = step_norm <= polish_tol
            break
        vector, params, sums = candidate_vector, candidate, candidate_sums
        traces["polish_losses"].append(sums.loss)
        traces["polish_step_norms"].append(step_norm)
        if verbose:
            report(
                "emjax.fit_stream polish", state["polish_done"], polish_steps, sums.loss, f"max |step| {step_norm:.3g}"
            )
        save()
        loss_rule = rule is not None and bool(loss_converged(*traces["polish_losses"][-2:], *rule))
        if step_norm <= polish_tol or loss_rule:
            state["status"], state["converged"] = int(Status.ok), True
            break
    return params
