"""Reductions of sweep traces to the numbers the figures and CSVs show (NumPy, on the host)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def band(values: np.ndarray, axis: int = 0) -> dict:
    """Mean, median and the 10%-90% quantile band along ``axis`` (NaNs ignored)."""
    return {
        "mean": np.nanmean(values, axis=axis),
        "median": np.nanmedian(values, axis=axis),
        "q10": np.nanquantile(values, 0.1, axis=axis),
        "q90": np.nanquantile(values, 0.9, axis=axis),
    }


def measured_rate(step_length: np.ndarray, floor: float, ceiling: float = 1e-2, min_points: int = 4) -> np.ndarray:
    r"""EM's contraction rate read off a trace of step lengths $s_t = \|\theta_{t+1} - \theta_t\|$.

    In the linear regime $s_t \approx c\,\lambda^t$, so $\lambda$ is $\exp$ of the least-squares slope of
    $\log s_t$ over the steps with ``floor`` < s_t < ``ceiling`` (above round-off, past the
    transient). Needs no limit point. NaN when fewer than ``min_points`` steps qualify.
    Works on leading batch axes; the last axis is time.
    """
    s = np.asarray(step_length, float)
    t = np.broadcast_to(np.arange(s.shape[-1], dtype=float), s.shape)
    use = np.isfinite(s) & (s > floor) & (s < ceiling)
    count = use.sum(-1)
    log_s = np.where(use, np.log(np.where(use, s, 1.0)), 0.0)
    t_used = np.where(use, t, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        t_mean = t_used.sum(-1) / count
        l_mean = log_s.sum(-1) / count
        cov = (np.where(use, (t - t_mean[..., None]) * (log_s - l_mean[..., None]), 0)).sum(-1)
        var = (np.where(use, (t - t_mean[..., None]) ** 2, 0)).sum(-1)
        rate = np.exp(cov / var)
    return np.where(count >= min_points, rate, np.nan)


def iterations_to(gap: np.ndarray, tolerance: float) -> np.ndarray:
    """First iteration t with ``gap[..., t] <= tolerance``; ``gap.shape[-1]`` when never reached."""
    reached = np.asarray(gap) <= tolerance
    first = np.argmax(reached, axis=-1)
    return np.where(reached.any(-1), first, gap.shape[-1])


def nan_median(values):
    """Median over axis 1 ignoring NaN; NaN (silently) where a row has no finite value."""
    finite = np.isfinite(values)
    sorted_rows = np.sort(np.where(finite, values, np.inf), axis=1)
    count = finite.sum(1)
    low = np.take_along_axis(sorted_rows, np.maximum((count - 1) // 2, 0)[:, None], 1)[:, 0]
    high = np.take_along_axis(sorted_rows, np.maximum(count // 2, 0)[:, None], 1)[:, 0]
    return np.where(count > 0, (low + high) / 2, np.nan)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """A plain CSV (floats with 6 significant digits)."""
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        for row in rows:
            writer.writerow([f"{v:.6g}" if isinstance(v, (float, np.floating)) else v for v in row])
