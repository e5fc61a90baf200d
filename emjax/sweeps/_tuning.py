r"""Fair step sizes for the gradient baselines: the best of a documented grid, on separate instances.

Each stepped method (gradient descent, gradient EM, Adam, mirror descent) is run with every
candidate of its grid on ``num_instances`` instances per SNR that are drawn from a key stream of
their own (``fold_in(key, TUNING_STREAM)``), so the instances the figures report are never used to
choose a step. The score of a candidate is the mean over instances and iterations of
$\log_{10}(L(\theta_t) - L_{\mathrm{ref}} + 10^{-12})$, where $L_{\mathrm{ref}}$ is the lowest loss any
candidate reached on that instance: the step that gets lowest fastest, on average, wins. A run
that stopped on a non-finite step scores $+\infty$.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from .._status import Status
from ._cells import STEPPED, ConvergenceCell
from ._sweep import SweepResult, _as_key, sweep

#: The documented candidate grids (all of one length, so they zip into one sweep axis).
STEP_GRIDS = {
    "gd": (0.125, 0.25, 0.5, 1.0, 2.0, 4.0),
    "gradient_em": (0.125, 0.25, 0.5, 1.0, 2.0, 4.0),
    "adam": (0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
    "md": (0.25, 0.4, 0.55, 0.7, 0.85, 1.0),
}

#: ``fold_in`` constant that separates tuning instances from reported ones.
TUNING_STREAM = 0x7475_6E65


@dataclasses.dataclass(frozen=True)
class TunedSteps:
    """What :func:`tune_step_sizes` returns.

    Attributes:
        step_sizes: ``{method: array (num_snrs,)}``, the chosen step at every SNR.
        candidates: ``{method: array (num_candidates,)}``, the grid that was searched.
        scores: ``{method: array (num_snrs, num_candidates)}``, lower is better (inf: diverged).
        snrs: the SNR grid.
        sweep: the tuning sweep's :class:`emjax.SweepResult` (its traces, timings and folder).
    """

    step_sizes: dict
    candidates: dict
    scores: dict
    snrs: np.ndarray
    sweep: SweepResult


def candidate_scores(losses: np.ndarray, status: np.ndarray) -> np.ndarray:
    """The tuning score (module notes) of every candidate and method, lower is better.

    Args:
        losses: shape (..., candidate, instance, method, T + 1), every run's loss trace.
        status: shape (..., candidate, instance, method), every run's :class:`emjax.Status`.

    Returns:
        Shape (..., candidate, method): the mean over instances and iterations of
        log10(L_t - L_ref + 1e-12), L_ref the lowest loss any candidate reached on that instance
        and method; +inf for a candidate with a non-finite run.
    """
    finite = np.all(np.isfinite(losses), axis=-1) & (status != Status.nonfinite)
    best = np.nanmin(np.where(np.isfinite(losses), losses, np.inf), axis=(-4, -1), keepdims=True)
    gaps = np.log10(np.maximum(losses - best, 0) + 1e-12).mean(axis=-1)
    return np.where(finite, gaps, np.inf).mean(axis=-2)


def tune_step_sizes(
    cell: ConvergenceCell, key, snrs, *, num_instances: int = 5, grids: dict | None = None, **sweep_options
) -> TunedSteps:
    r"""Choose each stepped method's step size per SNR, on instances that the reported sweep never sees.

    Args:
        cell: the :class:`ConvergenceCell` of the experiment (its stepped methods are tuned; EM
            needs no step). The tuning runs this cell with the same n, d, T and model.
        key: the experiment's key (an int or a ``jax.random.key``); the tuning instances come from
            ``fold_in(key, TUNING_STREAM)``.
        snrs: the SNR grid (1-D).
        num_instances: instances per SNR and candidate (the same instances for every candidate).
        grids: ``{method: candidates}``, default :data:`STEP_GRIDS`; all of one length.
        **sweep_options: passed to :func:`emjax.sweep` (``chunk_size``, ``batch_size``, ``progress``, ...).

    Returns:
        A :class:`TunedSteps`.
    """
    methods = tuple(m for m in cell.methods if m in STEPPED)
    if not methods:
        raise ValueError(f"cell has no stepped method to tune (methods {cell.methods})")
    grids = {m: tuple(STEP_GRIDS[m]) for m in methods} if grids is None else {m: tuple(grids[m]) for m in methods}
    lengths = {len(g) for g in grids.values()}
    if len(lengths) != 1:
        sizes = {m: len(g) for m, g in grids.items()}
        raise ValueError(f"step-size grids must all have the same length; got {sizes}")
    if not isinstance(num_instances, int) or num_instances < 1:
        raise ValueError(f"num_instances must be a positive int; got {num_instances!r}")
    tuning_cell = dataclasses.replace(cell, methods=methods)
    key = jax.random.fold_in(_as_key(key), TUNING_STREAM)
    snrs = np.atleast_1d(np.asarray(snrs))
    result = sweep(
        tuning_cell,
        key,
        {
            "snr": snrs,
            "candidate": {"step_sizes": {m: np.asarray(g) for m, g in grids.items()}},
            "seed": np.arange(num_instances),
        },
        key_axes=("snr", "seed"),
        **sweep_options,
    )
    gaps = candidate_scores(result.outputs["loss"], result.outputs["status"])  # (snr, candidate, method)
    chosen, scores = {}, {}
    for i, method in enumerate(methods):
        scores[method] = gaps[:, :, i]
        chosen[method] = np.asarray(grids[method])[np.argmin(gaps[:, :, i], axis=1)]
    return TunedSteps(
        step_sizes=chosen,
        candidates={m: np.asarray(g) for m, g in grids.items()},
        scores=scores,
        snrs=snrs,
        sweep=result,
    )
