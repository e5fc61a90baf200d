"""Figures for ``emjax reproduce`` (matplotlib's object API on the Agg canvas: no global backend change).

Every figure is written twice, as a 300 dpi PNG and as a vector PDF, with no title inside the image
(a paper sets its own caption): the description of the run goes into the files' ``Title`` metadata.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._extras import require
from ..sweeps import METHOD_LABELS
from ._summaries import band, iterations_to, measured_rate, nan_median
from ._table2 import fitted_count

COLOURS = {"em": "#1f77b4", "gradient_em": "#ff7f0e", "gd": "#2ca02c", "adam": "#d62728", "md": "#9467bd"}
DPI = 300
#: An EM fit counts as converged when its estimated distance to the fixed point, relative to ‖θ*‖,
#: is at most this (Aitken: last step × ρ/(1 − ρ), ρ the rate measured from its trace).
CONVERGED_DISTANCE = 1e-6


def _figure(width, height, columns=2, rows=1):
    require("matplotlib", "emjax's figures")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, columns, squeeze=False)


def _snr_axis(axis, snrs):
    from matplotlib.ticker import NullFormatter

    axis.set_xscale("log")
    axis.set_xticks(snrs)
    axis.set_xticklabels([f"{s:g}" for s in snrs])
    axis.xaxis.set_minor_formatter(NullFormatter())


def _tick_label(value, _=None) -> str:
    """Plain numbers where they are short (0.005, 20), powers of ten elsewhere."""
    if value == 0:
        return "0"
    sign = "−" if value < 0 else ""
    size = abs(value)
    if 1e-3 <= size < 1e4:
        return sign + f"{size:g}"
    exponent = int(np.floor(np.log10(size) + 1e-9))
    mantissa = float(f"{size / 10.0**exponent:.3g}")
    if mantissa >= 10:  # 9.999999e-4 rounds up to the next power of ten
        exponent, mantissa = exponent + 1, mantissa / 10
    head = "" if mantissa == 1 else f"{mantissa:g}\\times"
    return sign + f"${head}10^{{{exponent}}}$"


def _log_axis(axis, which="y"):
    """A log axis with readable ticks: at 1, 2 and 5 times a power of ten, in plain numbers, when it
    spans at most three decades; at the powers of ten otherwise."""
    from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, LogLocator, NullFormatter

    target = axis.yaxis if which == "y" else axis.xaxis
    (axis.set_yscale if which == "y" else axis.set_xscale)("log")
    low, high = axis.get_ylim() if which == "y" else axis.get_xlim()
    few_decades = np.log10(high / low) <= 3
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if few_decades else (1.0,), numticks=12))
    target.set_major_formatter(FuncFormatter(_tick_label) if few_decades else LogFormatterSciNotation())
    target.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10), numticks=12))
    target.set_minor_formatter(NullFormatter())


def _asinh_ticks(axis, width: float, low: float, high: float):
    """Ticks of an asinh axis: 0, and ±(1, 2, 5)·10^k from ``width / 2`` out to [low, high] (only the
    powers of ten on a side that spans more than two decades)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    first = int(np.floor(np.log10(width / 2)))
    ticks = [0.0]
    for sign, end in ((1.0, high), (-1.0, -low)):
        if end < width / 2:
            continue
        last = int(np.floor(np.log10(end)))
        multiples = (1.0,) if last - first > 2 else (1.0, 2.0, 5.0)
        sizes = [m * 10.0**k for k in range(first, last + 1) for m in multiples]
        ticks += [sign * size for size in sizes if width / 2 <= size <= end]
    axis.yaxis.set_major_locator(FixedLocator(sorted(ticks)))
    axis.yaxis.set_major_formatter(FuncFormatter(_tick_label))
    axis.yaxis.set_minor_locator(NullLocator())


def save_figure(figure, path: Path, caption: str) -> list[Path]:
    """Write ``path`` (PNG, 300 dpi) and the same figure as a PDF beside it; return both paths."""
    path = Path(path)
    pdf = path.with_suffix(".pdf")
    figure.savefig(path, dpi=DPI, metadata={"Title": caption})
    figure.savefig(pdf, metadata={"Title": caption})
    return [path, pdf]


def _bands(axis, values, methods, iterations, positive=False):
    for i, method in enumerate(methods):
        b = band(values[:, i])
        lo, hi, mean = b["q10"], b["q90"], b["mean"]
        if positive:
            lo, hi, mean = (np.maximum(v, 1e-16) for v in (lo, hi, mean))
        colour = COLOURS.get(method)
        axis.plot(iterations, mean, color=colour, label=METHOD_LABELS[method])
        axis.fill_between(iterations, lo, hi, color=colour, alpha=0.2, linewidth=0)


def _finish_trace_figure(figure, axes, caption: str, path: Path) -> list[Path]:
    """Iteration axes and legends; write the PNG and the PDF."""
    for axis in axes[0]:
        axis.set_xlabel("iteration t")
        axis.legend()
    return save_figure(figure, path, caption)


def synthetic_caption(name: str, settings) -> str:
    """The description of a Figure 1-2 run, for the files' metadata."""
    return (
        f"{name}: SymMoLinE, n={settings.n}, d={settings.d}, SNR {settings.snr:g}, "
        f"{settings.num_instances} instances (mean, 10-90% band)"
    )


def asinh_width(values) -> float:
    """The linear width of Figure 1's asinh axis: the typical size of L(θ_T) − L(θ*) where the runs end.

    Below this size the axis is linear, above it logarithmic, and the passage is smooth, so the
    curves cross zero (the MLE beats θ*) without the cliff a symmetric-log axis draws there."""
    final = np.abs(np.asarray(values)[..., -1])
    final = final[np.isfinite(final) & (final > 0)]
    return float(np.median(final)) if final.size else 1e-6


def plot_figure1(outputs, settings, path: Path) -> list[Path]:
    """L(θ_t) − L(θ*) (asinh axis) and L(θ_t) − L(θ_T) (log): mean line, 10-90% band over instances."""
    figure, axes = _figure(11, 4)
    t = np.arange(settings.num_steps + 1)
    gap_truth = outputs["loss"] - outputs["loss_truth"][:, None, None]
    _bands(axes[0, 0], gap_truth, settings.methods, t)
    width = asinh_width(gap_truth)
    axes[0, 0].set_yscale("asinh", linear_width=width)
    finite = gap_truth[np.isfinite(gap_truth)]
    _asinh_ticks(axes[0, 0], width, float(finite.min(initial=0.0)), float(finite.max(initial=0.0)))
    axes[0, 0].axhline(0, color="black", linewidth=0.5)
    axes[0, 0].set_ylabel(r"$L(\theta_t) - L(\theta^*)$ (below 0: the MLE beats $\theta^*$)")
    gap_final = outputs["loss"][:, :, :-1] - outputs["loss"][:, :, -1:]
    _bands(axes[0, 1], gap_final, settings.methods, t[:-1], positive=True)
    _log_axis(axes[0, 1])
    axes[0, 1].set_ylabel(r"$L(\theta_t) - L(\theta_T)$")
    return _finish_trace_figure(figure, axes, synthetic_caption("Figure 1", settings), path)


def plot_figure2(outputs, settings, path: Path) -> list[Path]:
    """‖β_t − β*‖/‖β*‖ and ‖w_t − w*‖/‖w*‖ against iterations."""
    figure, axes = _figure(11, 4)
    t = np.arange(settings.num_steps + 1)
    _bands(axes[0, 0], outputs["expert_error"], settings.methods, t)
    axes[0, 0].set_ylabel(r"$\|\beta_t - \beta^*\| / \|\beta^*\|$")
    _bands(axes[0, 1], outputs["gate_error"], settings.methods, t)
    axes[0, 1].set_ylabel(r"$\|w_t - w^*\| / \|w^*\|$")
    for axis in axes[0]:
        _log_axis(axis)
    return _finish_trace_figure(figure, axes, synthetic_caption("Figure 2", settings), path)


def em_converged(step_length: np.ndarray, rate: np.ndarray, floor: float) -> np.ndarray:
    """Which EM runs ended at a fixed point: Aitken's distance estimate, last step × ρ/(1 − ρ) with ρ
    the measured rate, at most :data:`CONVERGED_DISTANCE`; a run whose steps reached round-off
    (``floor``) too fast for a rate to be measured counts as converged."""
    last = np.asarray(step_length)[..., -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        distance = np.where((rate > 0) & (rate < 1), last * rate / (1 - rate), np.inf)
    return np.where(np.isfinite(rate), distance <= CONVERGED_DISTANCE, last <= floor)


def plot_mim(run: dict, settings, path: Path, floor: float) -> list[Path]:
    """Left: λ_max(M(θ*)) against SNR per ‖w*‖, measured EM rates overlaid. Right: iterations to tolerance."""
    figure, axes = _figure(11, 8, rows=2)
    snrs = np.asarray(settings.snrs)
    for row, (name, r) in enumerate(run.items()):
        left, right = axes[row]
        for g, gate_norm in enumerate(settings.gate_norms):
            rates = r["rates"][g]  # (snr, instance)
            label = rf"$\lambda_{{\max}}(M(\theta^*))$, $\|w^*\|={gate_norm:g}$"
            left.plot(snrs, rates.mean(-1), marker=".", label=label)
        fits = r["fits"]
        em = list(settings.methods).index("em")
        measured = measured_rate(fits["step_length"][:, :, em], floor)
        median = nan_median(measured)
        left.plot(
            snrs,
            median,
            "ks",
            fillstyle="none",
            markersize=8,
            label=rf"EM rate measured from traces ($\|w^*\|={r['gate_norm']:g}$)",
        )
        # λ_max(M) at EM's last iterate means EM's rate only where that iterate is a fixed point: where
        # EM has not converged (rate near 1, few steps) M(θ_T) can exceed 1, so those are drawn apart.
        rate_final = fits["rate_final"][:, :, em]
        converged = em_converged(fits["step_length"][:, :, em], measured, floor)
        for keep, colour, text in (
            (converged, "black", r"$\lambda_{\max}(M(\theta_T))$ at EM's last iterate, converged fits"),
            (~converged, "tab:red", r"the same, fits not converged in $T$ steps ($\theta_T$ no fixed point)"),
        ):
            if keep.any():
                values = np.where(keep, rate_final, np.nan)
                left.plot(snrs, nan_median(values), "x", color=colour, label=text)
        left.axhline(1.0, color="grey", linestyle=":", linewidth=1, label="rate 1: no contraction")
        _snr_axis(left, snrs)
        left.set_xlabel(r"SNR ($\|\beta^*\|/\sigma$)" if name == "SymMoLinE" else r"SNR ($\|\beta^*\|$)")
        left.set_ylabel("EM rate")
        left.set_title(f"{name}: local EM rate against SNR")
        left.legend(fontsize=7)
        best = np.nanmin(fits["loss"], axis=(2, 3), keepdims=True)
        iterations = iterations_to(fits["loss"] - best, settings.tolerance)
        for i, method in enumerate(settings.methods):
            its = iterations[:, :, i].astype(float)
            right.plot(snrs, np.median(its, axis=1), marker="o", color=COLOURS.get(method), label=METHOD_LABELS[method])
            right.fill_between(
                snrs,
                np.quantile(its, 0.1, axis=1),
                np.quantile(its, 0.9, axis=1),
                color=COLOURS.get(method),
                alpha=0.15,
                linewidth=0,
            )
        right.axhline(settings.num_steps + 1, color="grey", linestyle=":", linewidth=1)
        _snr_axis(right, snrs)
        _log_axis(right)
        right.set_xlabel("SNR")
        right.set_ylabel(f"iterations to L - L_best <= {settings.tolerance:g}")
        right.set_title(f"{name}: iterations to tolerance (dotted: > {settings.num_steps})")
        right.legend(fontsize=7)
    caption = (
        f"MIM: EM's local rate against SNR, SymMoLinE and SymMoLogE; fits n={settings.n}, "
        f"{settings.num_instances} instances x {settings.num_steps} iterations"
    )
    return save_figure(figure, path, caption)


def plot_table2(run: dict, settings, path: Path) -> list[Path]:
    """Test accuracy and test cross-entropy against iterations (mean line, 10-90% band over instances)."""

    outputs, data = run["outputs"], run["data"]
    figure, axes = _figure(11, 4)
    t = np.arange(settings.num_iterations + 1)
    _bands(axes[0, 0], outputs["test_accuracy"], settings.methods, t)
    axes[0, 0].set_ylabel("test accuracy")
    _bands(axes[0, 1], outputs["test_loss"], settings.methods, t)
    _log_axis(axes[0, 1])
    axes[0, 1].set_ylabel("test cross-entropy")
    caption = (
        f"Table 2 setting: 2-expert MoLogE on Random-Invert {data.name} (n_train={fitted_count(data, settings)}), "
        f"{settings.num_instances} instances (mean, 10-90% band)"
    )
    return _finish_trace_figure(figure, axes, caption, path)
