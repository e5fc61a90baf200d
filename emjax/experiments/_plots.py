"""Figures for ``emjax reproduce`` (matplotlib's object API on the Agg canvas: no global backend change)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._extras import require
from ..sweeps import METHOD_LABELS
from ._summaries import band, iterations_to, measured_rate, nan_median

COLOURS = {"em": "#1f77b4", "gradient_em": "#ff7f0e", "gd": "#2ca02c", "adam": "#d62728", "md": "#9467bd"}


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


def _bands(axis, values, methods, iterations, positive=False):
    for i, method in enumerate(methods):
        b = band(values[:, i])
        lo, hi, mean = b["q10"], b["q90"], b["mean"]
        if positive:
            lo, hi, mean = (np.maximum(v, 1e-16) for v in (lo, hi, mean))
        colour = COLOURS.get(method)
        axis.plot(iterations, mean, color=colour, label=METHOD_LABELS[method])
        axis.fill_between(iterations, lo, hi, color=colour, alpha=0.2, linewidth=0)


def _finish_trace_figure(figure, axes, title: str, path: Path) -> Path:
    """Iteration axes, legends and the title; write the PNG."""
    for axis in axes[0]:
        axis.set_xlabel("iteration t")
        axis.legend()
    figure.suptitle(title)
    figure.savefig(path, dpi=110)
    return path


def _synthetic_title(name: str, settings) -> str:
    return (
        f"{name}: SymMoLinE, n={settings.n}, d={settings.d}, SNR {settings.snr:g}, "
        f"{settings.num_instances} instances (mean, 10-90% band)"
    )


def plot_figure1(outputs, settings, path: Path) -> Path:
    """L(θ_t) − L(θ*) (symlog) and L(θ_t) − L(θ_T) (log): mean line, 10-90% band over instances."""
    figure, axes = _figure(11, 4)
    t = np.arange(settings.num_steps + 1)
    gap_truth = outputs["loss"] - outputs["loss_truth"][:, None, None]
    _bands(axes[0, 0], gap_truth, settings.methods, t)
    axes[0, 0].set_yscale("symlog", linthresh=1e-6)
    axes[0, 0].axhline(0, color="black", linewidth=0.5)
    axes[0, 0].set_title(r"$L(\theta_t) - L(\theta^*)$ (negative: the MLE beats $\theta^*$)")
    gap_final = outputs["loss"][:, :, :-1] - outputs["loss"][:, :, -1:]
    _bands(axes[0, 1], gap_final, settings.methods, t[:-1], positive=True)
    axes[0, 1].set_yscale("log")
    axes[0, 1].set_title(r"$L(\theta_t) - L(\theta_T)$")
    return _finish_trace_figure(figure, axes, _synthetic_title("Figure 1", settings), path)


def plot_figure2(outputs, settings, path: Path) -> Path:
    """‖β_t − β*‖/‖β*‖ and ‖w_t − w*‖/‖w*‖ against iterations."""
    figure, axes = _figure(11, 4)
    t = np.arange(settings.num_steps + 1)
    _bands(axes[0, 0], outputs["expert_error"], settings.methods, t)
    axes[0, 0].set_title(r"$\|\beta_t - \beta^*\| / \|\beta^*\|$")
    _bands(axes[0, 1], outputs["gate_error"], settings.methods, t)
    axes[0, 1].set_title(r"$\|w_t - w^*\| / \|w^*\|$")
    for axis in axes[0]:
        axis.set_yscale("log")
    return _finish_trace_figure(figure, axes, _synthetic_title("Figure 2", settings), path)


def plot_mim(run: dict, settings, path: Path, floor: float) -> Path:
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
        left.plot(
            snrs,
            np.median(fits["rate_final"][:, :, em], axis=1),
            "kx",
            label=r"$\lambda_{\max}(M(\theta_T))$ at EM's final iterate",
        )
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
        right.set_yscale("log")
        right.set_xlabel("SNR")
        right.set_ylabel(f"iterations to L - L_best <= {settings.tolerance:g}")
        right.set_title(f"{name}: iterations to tolerance (dotted: > {settings.num_steps})")
        right.legend(fontsize=7)
    figure.savefig(path, dpi=110)
    return path


def plot_table2(run: dict, settings, path: Path) -> Path:
    """Test accuracy and test cross-entropy against iterations (mean line, 10-90% band over instances)."""
    outputs, data = run["outputs"], run["data"]
    figure, axes = _figure(11, 4)
    t = np.arange(settings.num_iterations + 1)
    _bands(axes[0, 0], outputs["test_accuracy"], settings.methods, t)
    axes[0, 0].set_title("test accuracy")
    _bands(axes[0, 1], outputs["test_loss"], settings.methods, t)
    axes[0, 1].set_yscale("log")
    axes[0, 1].set_title("test cross-entropy L")
    title = (
        f"Table 2 setting: 2-expert MoLogE on Random-Invert {data.name} (n_train={data.x_train.shape[0]}), "
        f"{settings.num_instances} instances (mean, 10-90% band)"
    )
    return _finish_trace_figure(figure, axes, title, path)
