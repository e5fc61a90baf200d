r"""The paper's synthetic experiments (docs/math.md §8) and the MIM-versus-SNR figure, as resumable sweeps.

Settings the paper does not publish, fixed here (docs/math.md §8 suggestions):

* **Figures 1-2** (:class:`FigureSettings`): SymMoLinE with σ = 1, x ~ N(0, I_10), n = 5000,
  ‖β*‖ = 2 (SNR 2), ‖w*‖ = 2, random directions; start θ0 = θ* + δ with relative error 1 in each
  block; 50 instances, 100 iterations; EM, gradient EM (3 inner steps), gradient descent and Adam.
  Step sizes: each baseline's best of :data:`emjax.sweeps.STEP_GRIDS`, chosen on 5 separate
  instances (:func:`emjax.sweeps.tune_step_sizes`). ``L(θ_t) − L(θ_T)`` uses each method's own θ_T.
* **MIM figure** (:class:`MimSettings`): for SymMoLinE and SymMoLogE, λ_max(M(θ*)) against SNR on
  fresh data sets of 20,000 samples with w* ⟂ β* and ‖w*‖ ∈ {1, 2, 4} (the second axis of docs/math.md
  §6); fits of every method at ‖w*‖ = 2 (SymMoLinE) or 4 (SymMoLogE, whose M is near 1 otherwise),
  n = 2000, 10 instances per SNR, 200 iterations, steps tuned per SNR. The EM rate measured from
  the traces (slope of log step length, :func:`measured_rate`) is overlaid on λ_max(M) at the truth
  and at EM's final iterate; iterations to reach L(θ_t) − L_best ≤ 1e-6 (L_best: the lowest loss any
  method reached on that instance) are plotted per method.

``--quick`` shrinks instance counts, n and the SNR grid (about a minute on 2 cores); the figures
keep their shape. Every sweep is written under ``out/sweeps/<size>/`` and resumes when re-run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..models import SymMoLinE, SymMoLogE
from ..sweeps import METHOD_LABELS, ConvergenceCell, RateCell, sweep, tune_step_sizes
from ._summaries import band, iterations_to, measured_rate, nan_median, write_csv

EXPERIMENTS = ("figure1", "figure2", "mim", "table2")
MODELS = {"SymMoLinE": lambda: SymMoLinE(sigma=1.0), "SymMoLogE": lambda: SymMoLogE()}


@dataclasses.dataclass(frozen=True)
class FigureSettings:
    """Figures 1-2 (see the module notes for the choices)."""

    n: int = 5000
    d: int = 10
    snr: float = 2.0
    gate_norm: float = 2.0
    num_instances: int = 50
    num_steps: int = 100
    tuning_instances: int = 5
    methods: tuple = ("em", "gradient_em", "gd", "adam")
    seed: int = 0

    @classmethod
    def quick(cls) -> FigureSettings:
        return cls(n=2000, num_instances=12, tuning_instances=3)


@dataclasses.dataclass(frozen=True)
class MimSettings:
    """The MIM-versus-SNR figure (see the module notes for the choices)."""

    snrs: tuple = (0.5, 0.71, 1.0, 1.41, 2.0, 2.83, 4.0, 5.66, 8.0)
    gate_norms: tuple = (1.0, 2.0, 4.0)
    fit_gate_norm: tuple = (("SymMoLinE", 2.0), ("SymMoLogE", 4.0))
    rate_n: int = 20000
    rate_instances: int = 4
    n: int = 2000
    d: int = 10
    num_instances: int = 10
    num_steps: int = 200
    tuning_instances: int = 3
    tolerance: float = 1e-6
    methods: tuple = ("em", "gradient_em", "gd", "adam")
    seed: int = 1

    @classmethod
    def quick(cls) -> MimSettings:
        return cls(
            snrs=(0.5, 1.0, 2.0, 4.0, 8.0),
            rate_n=5000,
            rate_instances=2,
            n=1000,
            num_instances=4,
            num_steps=100,
            tuning_instances=2,
        )


def _steps_floor(dtype) -> float:
    """Step lengths below this are round-off (relative to ‖θ*‖)."""
    return 1e-9 if jnp.finfo(dtype).bits >= 64 else 1e-4


def _timing(results) -> str:
    compile_s = sum(r.compile_seconds for r in results)
    run_s = sum(r.run_seconds for r in results)
    computed = sum(r.computed_chunks for r in results)
    loaded = sum(r.loaded_chunks for r in results)
    return (
        f"{len(results)} sweeps: compile {compile_s:.1f} s, run {run_s:.1f} s "
        f"({computed} chunks computed, {loaded} loaded)"
    )


def run_figures(settings: FigureSettings, folder: Path, *, progress=None, batch_size="auto") -> dict:
    """Tune the baselines, run the Figure 1-2 sweep; return the traces and the tuned steps."""
    cell = ConvergenceCell(
        SymMoLinE(sigma=1.0), settings.methods, settings.num_steps, settings.n, settings.d, gate_norm=settings.gate_norm
    )
    options = {"progress": progress, "batch_size": batch_size}
    tuned = tune_step_sizes(
        cell,
        settings.seed,
        [settings.snr],
        num_instances=settings.tuning_instances,
        out=folder / "figures-tuning",
        **options,
    )
    steps = {m: np.asarray(v[0]) for m, v in tuned.step_sizes.items()}
    cell = dataclasses.replace(cell, step_sizes=steps)
    result = sweep(
        cell,
        settings.seed,
        {"snr": np.asarray([settings.snr]), "seed": np.arange(settings.num_instances)},
        key_axes=("seed",),
        out=folder / "figures",
        config={"settings": dataclasses.asdict(settings)},
        chunk_size=max(1, settings.num_instances // 2),
        **options,
    )
    outputs = jax.tree_util.tree_map(lambda leaf: leaf[0], result.outputs)  # drop the one-point SNR axis
    return {"outputs": outputs, "tuned": tuned, "steps": steps, "sweeps": [tuned.sweep, result]}


def run_mim(settings: MimSettings, folder: Path, *, progress=None, batch_size="auto") -> dict:
    """λ_max(M(θ*)) over SNR × ‖w*‖, and tuned fits over SNR, for both symmetric models."""
    options = {"progress": progress, "batch_size": batch_size}
    snrs = np.asarray(settings.snrs)
    out = {}
    for index, (name, make) in enumerate(MODELS.items()):
        model = make()
        seed = settings.seed + 10 * index
        rates = sweep(
            RateCell(model, settings.rate_n, settings.d, orthogonal=True),
            seed,
            {"gate_norm": np.asarray(settings.gate_norms), "snr": snrs, "seed": np.arange(settings.rate_instances)},
            key_axes=("seed",),
            out=folder / f"mim-rates-{name}",
            **options,
        )
        gate_norm = dict(settings.fit_gate_norm)[name]
        cell = ConvergenceCell(
            model, settings.methods, settings.num_steps, settings.n, settings.d, gate_norm=gate_norm, orthogonal=True
        )
        tuned = tune_step_sizes(
            cell, seed, snrs, num_instances=settings.tuning_instances, out=folder / f"mim-tuning-{name}", **options
        )
        fits = sweep(
            cell,
            seed,
            {"snr": {"snr": snrs, "step_sizes": tuned.step_sizes}, "seed": np.arange(settings.num_instances)},
            key_axes=("seed",),
            out=folder / f"mim-fits-{name}",
            config={"settings": dataclasses.asdict(settings)},
            chunk_size=settings.num_instances * 2,
            **options,
        )
        out[name] = {
            "rates": rates.outputs["rate"],
            "fits": fits.outputs,
            "tuned": tuned,
            "gate_norm": gate_norm,
            "sweeps": [rates, tuned.sweep, fits],
        }
    return out


# ----------------------------------------------------------------------------- summaries


def summarise_figures(run: dict, settings: FigureSettings, out: Path) -> list[Path]:
    o = run["outputs"]
    methods = settings.methods
    gap_truth = o["loss"] - o["loss_truth"][:, None, None]  # (instance, method, T+1)
    gap_final = o["loss"] - o["loss"][:, :, -1:]
    rows1, rows2 = [], []
    for i, method in enumerate(methods):
        bt, bf = band(gap_truth[:, i]), band(gap_final[:, i])
        be, we = band(o["expert_error"][:, i]), band(o["gate_error"][:, i])
        for t in range(settings.num_steps + 1):
            rows1.append(
                [t, method, bt["mean"][t], bt["q10"][t], bt["q90"][t], bf["mean"][t], bf["q10"][t], bf["q90"][t]]
            )
            rows2.append(
                [t, method, be["mean"][t], be["q10"][t], be["q90"][t], we["mean"][t], we["q10"][t], we["q90"][t]]
            )
    files = [out / "figure1.csv", out / "figure2.csv", out / "step_sizes_figures.csv"]
    write_csv(
        files[0],
        [
            "iteration",
            "method",
            "gap_truth_mean",
            "gap_truth_q10",
            "gap_truth_q90",
            "gap_final_mean",
            "gap_final_q10",
            "gap_final_q90",
        ],
        rows1,
    )
    write_csv(
        files[1],
        [
            "iteration",
            "method",
            "beta_error_mean",
            "beta_error_q10",
            "beta_error_q90",
            "w_error_mean",
            "w_error_q10",
            "w_error_q90",
        ],
        rows2,
    )
    tuned = run["tuned"]
    write_csv(
        files[2],
        ["snr", "method", "chosen_step", "candidates", "scores"],
        [
            [
                settings.snr,
                m,
                float(run["steps"][m]),
                " ".join(f"{c:g}" for c in tuned.candidates[m]),
                " ".join(f"{s:.3g}" for s in tuned.scores[m][0]),
            ]
            for m in tuned.step_sizes
        ],
    )
    return files


def summarise_mim(run: dict, settings: MimSettings, out: Path, floor: float) -> list[Path]:
    rate_rows, fit_rows, iteration_rows, step_rows = [], [], [], []
    for name, r in run.items():
        rates = r["rates"]  # (gate_norm, snr, instance)
        for g, gate_norm in enumerate(settings.gate_norms):
            for s, snr in enumerate(settings.snrs):
                rate_rows.append([name, gate_norm, snr, float(np.mean(rates[g, s])), float(np.std(rates[g, s]))])
        fits = r["fits"]  # leaves (snr, instance, method, ...)
        em = list(settings.methods).index("em")
        measured = measured_rate(fits["step_length"][:, :, em], floor)
        best = np.nanmin(fits["loss"], axis=(2, 3), keepdims=True)
        iterations = iterations_to(fits["loss"] - best, settings.tolerance)  # (snr, instance, method)
        for s, snr in enumerate(settings.snrs):
            fit_rows.append(
                [
                    name,
                    r["gate_norm"],
                    snr,
                    float(np.mean(fits["rate_truth"][s])),
                    float(np.mean(fits["rate_final"][s, :, em])),
                    float(nan_median(measured[s][None])[0]),
                    int(np.sum(np.isfinite(measured[s]))),
                ]
            )
            for i, method in enumerate(settings.methods):
                its = iterations[s, :, i]
                iteration_rows.append(
                    [
                        name,
                        snr,
                        method,
                        float(np.median(its)),
                        float(np.quantile(its, 0.1)),
                        float(np.quantile(its, 0.9)),
                        float(np.mean(its <= settings.num_steps)),
                    ]
                )
                if method in r["tuned"].step_sizes:
                    step_rows.append([name, snr, method, float(r["tuned"].step_sizes[method][s])])
    files = [out / "mim_rates.csv", out / "mim_fits.csv", out / "mim_iterations.csv", out / "step_sizes_mim.csv"]
    write_csv(files[0], ["model", "gate_norm", "snr", "rate_truth_mean", "rate_truth_std"], rate_rows)
    write_csv(
        files[1],
        ["model", "gate_norm", "snr", "rate_truth", "rate_em_final", "rate_em_measured_median", "instances_measured"],
        fit_rows,
    )
    write_csv(
        files[2],
        ["model", "snr", "method", "iterations_median", "iterations_q10", "iterations_q90", "fraction_reached"],
        iteration_rows,
    )
    write_csv(files[3], ["model", "snr", "method", "chosen_step"], step_rows)
    return files


def reproduce(
    experiments=EXPERIMENTS,
    out="emjax-results",
    *,
    quick: bool = False,
    progress=None,
    batch_size="auto",
    log=print,
    data: str = "digits",
    path=None,
    table2_options: dict | None = None,
) -> list[Path]:
    """Run ``experiments`` (a subset of :data:`EXPERIMENTS`), write PNGs and CSVs to ``out``; return the files.

    Sweeps are kept under ``out/sweeps/{quick,full}/`` so an interrupted run resumes where it stopped.
    ``data`` and ``path`` choose Table 2's data set (``"digits"``, or ``"fmnist"`` with the folder of
    the Fashion-MNIST IDX files); ``table2_options`` sets other :class:`Table2Settings` fields
    (``start``, ``validation``); see :mod:`emjax.experiments._table2`.
    """
    from ._plots import plot_figure1, plot_figure2, plot_mim, plot_table2
    from ._table2 import Table2Settings, run_table2, summarise_table2

    unknown = [e for e in experiments if e not in EXPERIMENTS]
    if unknown or not experiments:
        raise ValueError(f"experiments must be among {EXPERIMENTS}; got {list(experiments)}")
    table2_settings = None
    if "table2" in experiments:  # validate before any long run starts
        options = dict(table2_options or {})
        if data == "fmnist":
            from ..datasets import fashion_mnist_folder

            path = str(fashion_mnist_folder(path))  # before any long run: a clear error if the files are absent
        table2_settings = (
            Table2Settings.quick(data, path, **options) if quick else Table2Settings(data=data, path=path, **options)
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folder = out / "sweeps" / ("quick" if quick else "full")
    dtype = jnp.zeros((), float).dtype
    written = []
    if {"figure1", "figure2"} & set(experiments):
        settings = FigureSettings.quick() if quick else FigureSettings()
        log(
            f"figures 1-2: SymMoLinE, n={settings.n}, d={settings.d}, SNR {settings.snr}, "
            f"{settings.num_instances} instances x {settings.num_steps} iterations"
        )
        run = run_figures(settings, folder, progress=progress, batch_size=batch_size)
        log("  tuned steps: " + ", ".join(f"{METHOD_LABELS[m]} {float(s):g}" for m, s in run["steps"].items()))
        log("  " + _timing(run["sweeps"]))
        written += summarise_figures(run, settings, out)
        if "figure1" in experiments:
            written += plot_figure1(run["outputs"], settings, out / "figure1.png")
        if "figure2" in experiments:
            written += plot_figure2(run["outputs"], settings, out / "figure2.png")
    if "mim" in experiments:
        settings = MimSettings.quick() if quick else MimSettings()
        log(
            f"mim: SNR {list(settings.snrs)}, ||w*|| {list(settings.gate_norms)}; fits n={settings.n}, "
            f"{settings.num_instances} instances x {settings.num_steps} iterations"
        )
        run = run_mim(settings, folder, progress=progress, batch_size=batch_size)
        log("  " + _timing([s for r in run.values() for s in r["sweeps"]]))
        floor = _steps_floor(dtype)
        written += summarise_mim(run, settings, out, floor)
        written += plot_mim(run, settings, out / "mim.png", floor)
    if table2_settings is not None:
        run = run_table2(
            table2_settings, folder / table2_settings.sweep_name, progress=progress, batch_size=batch_size, log=log
        )
        written += summarise_table2(run, table2_settings, out)
        written += plot_table2(run, table2_settings, out / "table2.png")
    record = {
        "experiments": list(experiments),
        "quick": quick,
        "dtype": str(dtype),
        "devices": [str(d) for d in jax.devices()],
        "files": [p.name for p in written],
    }
    if table2_settings is not None:
        record["table2"] = {"data": data, "start": table2_settings.start, "validation": table2_settings.validation}
    (out / "reproduce.json").write_text(json.dumps(record, indent=2))
    written.append(out / "reproduce.json")
    return written
