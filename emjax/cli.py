"""The ``emjax`` command line. Top of the dependency chain: nothing in emjax imports it."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace as dataclasses_replace
from pathlib import Path

from ._backend import WORKAROUND_FLAG, miscompiling_jaxlib


def _demo(args: argparse.Namespace) -> int:
    import jax

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from ._demo import format_demo, run_demo

    dtype = jnp.float64 if args.x64 else jnp.float32
    checkpoints = sorted({t for t in (0, 1, 5, 10, 25, 50, 100, args.steps) if t <= args.steps})
    print(
        f"emjax demo: n={args.n}, d={args.d}, {args.steps} steps, seed {args.seed}, "
        f"{jnp.dtype(dtype).name}, devices {jax.devices()}",
        flush=True,
    )
    results = run_demo(n=args.n, d=args.d, num_steps=args.steps, seed=args.seed, dtype=dtype, checkpoints=checkpoints)
    print(format_demo(results))
    return 0


def _configure_cpu() -> None:
    """One CPU device per core, unless the user set the device count in XLA_FLAGS.

    A sweep's chunk is split over devices, and a CPU device runs its program on one core, so one
    device per core is what lets ``emjax reproduce``/``emjax sweep`` use every core (results do
    not depend on the device count). Library code never does this: call ``emjax.sweep`` from a
    script started with ``XLA_FLAGS=--xla_force_host_platform_device_count=<cores>`` for the same.
    On a jaxlib known to miscompile emjax's programs (:mod:`emjax._backend`) it also disables the
    faulty fusion for its own process. Must run before JAX initialises its backends.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        flags = f"{flags} --xla_force_host_platform_device_count={os.cpu_count() or 1}"
    if miscompiling_jaxlib(xla_flags=flags) is not None:
        flags = f"{flags} {WORKAROUND_FLAG}"
    os.environ["XLA_FLAGS"] = flags.strip()


def _setup_jax(args: argparse.Namespace):
    """Multi-host initialisation and precision: the CLI, never the library, configures JAX."""
    import jax

    if getattr(args, "distributed", False):
        jax.distributed.initialize()
    if not getattr(args, "float32", True):
        jax.config.update("jax_enable_x64", True)
    return jax


def _reproduce(args: argparse.Namespace) -> int:
    from ._extras import require

    names = args.experiment
    try:  # before any compute: the figures need matplotlib, the default Table 2 data scikit-learn
        require("matplotlib", "emjax reproduce")
        if args.data == "digits" and ("all" in names or "table2" in names):
            require("sklearn", "emjax reproduce table2 (the digits data set)")
    except ImportError as error:
        raise SystemExit(f"emjax reproduce: error: {error}") from None
    jax = _setup_jax(args)
    from .experiments import EXPERIMENTS, reproduce

    experiments = EXPERIMENTS if "all" in names else tuple(dict.fromkeys(names))
    if args.data == "fmnist" and "table2" in experiments:
        from .datasets import fashion_mnist_folder

        try:
            args.path = str(fashion_mnist_folder(args.path))
        except FileNotFoundError as error:
            raise SystemExit(f"emjax reproduce: error: {error}") from None
    print(
        f"emjax reproduce {' '.join(names)}{' --quick' if args.quick else ''} -> {args.out} "
        f"({'float32' if args.float32 else 'float64'}; Table 2 in float32; devices {jax.devices()})",
        flush=True,
    )
    files = reproduce(
        experiments,
        args.out,
        quick=args.quick,
        progress=False if args.no_progress else None,
        batch_size=_batch_size(args),
        data=args.data,
        path=args.path,
        table2_options={"start": args.start, "validation": args.validation},
    )
    print("wrote " + ", ".join(str(path) for path in files))
    return 0


def _batch_size(args: argparse.Namespace):
    if args.batch_size is None:
        return "auto"
    return None if args.batch_size == 0 else args.batch_size


MODEL_NAMES = ("SymMoLinE", "SymMoLogE", "MoLinE", "MoLogE", "MoPoE")


def _parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"emjax sweep: error: {flag} must be comma-separated numbers; got {text!r}") from None
    if not values:
        raise SystemExit(f"emjax sweep: error: {flag} is empty")
    return values


def _sweep(args: argparse.Namespace) -> int:
    jax = _setup_jax(args)
    import numpy as np

    from . import models
    from .experiments._summaries import measured_rate, nan_median, write_csv
    from .sweeps import METHODS, STEPPED, ConvergenceCell, sweep, tune_step_sizes

    snrs = _parse_floats(args.snr, "--snr")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise SystemExit(f"emjax sweep: error: --methods must name some of {sorted(METHODS)}; got {args.methods!r}")
    steps = {}
    for item in args.step or []:
        name, _, value = item.partition("=")
        if name not in STEPPED or not value:
            raise SystemExit(f"emjax sweep: error: --step takes METHOD=STEP with METHOD in {STEPPED}; got {item!r}")
        steps[name] = float(value)
    if args.model.startswith("Sym"):
        model = models.SymMoLinE(sigma=1.0) if args.model == "SymMoLinE" else models.SymMoLogE()
    else:
        model = getattr(models, args.model)(args.experts)
    cell = ConvergenceCell(
        model, methods, args.steps, args.n, args.d, gate_norm=args.gate_norm, with_rates=not args.no_rates
    )
    options = {
        "progress": False if args.no_progress else None,
        "batch_size": _batch_size(args),
        "chunk_size": args.chunk_size,
    }
    need = [m for m in methods if m in STEPPED and m not in steps]
    snr_axis = {"snr": np.asarray(snrs)}
    if need:
        tuning_out = None if args.out is None else Path(args.out) / "tuning"
        tuned = tune_step_sizes(
            dataclasses_replace(cell, methods=tuple(need)),
            args.seed,
            snrs,
            num_instances=args.tuning_instances,
            out=tuning_out,
            **options,
        )
        snr_axis["step_sizes"] = {m: tuned.step_sizes[m] for m in need}
        print("tuned steps per SNR: " + "; ".join(f"{m} {list(map(float, v))}" for m, v in tuned.step_sizes.items()))
    cell = dataclasses_replace(cell, step_sizes=steps)
    result = sweep(
        cell,
        args.seed,
        {"snr": snr_axis, "seed": np.arange(args.seeds)},
        key_axes=("seed",),
        out=None if args.out is None else Path(args.out) / "sweep",
        **options,
    )
    o = result.outputs
    if jax.process_index() != 0:
        return 0
    floor = 1e-9 if not args.float32 else 1e-4
    rows = []
    best = np.nanmin(o["loss"], axis=(2, 3), keepdims=True)
    for s, snr in enumerate(snrs):
        for i, method in enumerate(methods):
            rate = measured_rate(o["step_length"][s, :, i], floor)
            rows.append(
                [
                    snr,
                    method,
                    float(np.nanmean(o["loss"][s, :, i, -1] - best[s, :, 0, 0])),
                    float(np.mean(o["expert_error"][s, :, i, -1])),
                    float(np.mean(o["gate_error"][s, :, i, -1])),
                    float(np.mean(o["rate_truth"][s])),
                    float(nan_median(rate[None])[0]),
                    int(np.sum(o["status"][s, :, i] != 0)),
                ]
            )
    header = [
        "snr",
        "method",
        "final_gap_to_best",
        "expert_error",
        "gate_error",
        "rate_truth",
        "rate_measured",
        "runs_not_ok",
    ]
    if args.out is not None:
        write_csv(Path(args.out) / "summary.csv", header, rows)
    print(" ".join(f"{h:>18}" for h in header))
    for row in rows:
        print(" ".join(f"{v:>18.6g}" if isinstance(v, float) else f"{v!s:>18}" for v in row))
    print(
        f"compile {result.compile_seconds:.1f} s, run {result.run_seconds:.1f} s, "
        f"{result.computed_chunks} chunks computed, {result.loaded_chunks} loaded"
    )
    return 0


def _validation_fraction(text: str) -> float:
    """``--validation``: a fraction in [0, 0.5)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < 0.5:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 0.5); got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emjax", description="EM for mixtures of experts, as mirror descent.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="fit both symmetric models with every solver; print a table")
    demo.add_argument("--n", type=int, default=5000, help="samples (default 5000)")
    demo.add_argument("--d", type=int, default=10, help="features (default 10)")
    demo.add_argument("--steps", type=int, default=100, help="iterations per solver (default 100)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--x64", action="store_true", help="compute in float64")
    demo.set_defaults(func=_demo)

    reproduce = commands.add_parser("reproduce", help="the paper's figures and Table 2: PNGs, CSVs, Markdown")
    reproduce.add_argument(
        "experiment",
        nargs="+",
        choices=("figure1", "figure2", "mim", "table2", "all"),
        help="one or more experiments, or all",
    )
    reproduce.add_argument("--quick", action="store_true", help="reduced sizes (about a minute each on 2 cores)")
    reproduce.add_argument(
        "--data",
        choices=("digits", "fmnist"),
        default="digits",
        help="Table 2's data: scikit-learn's digits (default) or Fashion-MNIST (--path, else $EMJAX_FASHION_MNIST, "
        "else Debian's dataset-fashion-mnist package)",
    )
    reproduce.add_argument(
        "--path",
        default=None,
        help="folder with the Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], ...); default: "
        "$EMJAX_FASHION_MNIST, then /usr/share/datasets/fashion-mnist",
    )
    reproduce.add_argument(
        "--start",
        choices=("small", "data"),
        default="small",
        help="Table 2's start, shared by every method: the paper's small random one (default) or emjax.init_params",
    )
    reproduce.add_argument(
        "--validation",
        type=_validation_fraction,
        default=0.0,
        help="Table 2: hold out this fraction of the training images and report each method's iterate of lowest "
        "held-out loss (early stopping; default 0: the last iterate)",
    )
    reproduce.add_argument("--out", default="emjax-results", help="output folder (default emjax-results)")
    _common_sweep_flags(reproduce)
    reproduce.set_defaults(func=_reproduce)

    grid = commands.add_parser("sweep", help="your own SNR x seed grid: every method, traces on disk, a summary")
    grid.add_argument("--model", choices=MODEL_NAMES, default="SymMoLinE")
    grid.add_argument("--experts", type=int, default=3, help="K for MoLinE/MoLogE/MoPoE (default 3)")
    grid.add_argument("--snr", default="0.5,1,2,4", help="comma-separated SNRs (default 0.5,1,2,4)")
    grid.add_argument("--seeds", type=int, default=10, help="instances per SNR (default 10)")
    grid.add_argument(
        "--methods", default="em,gradient_em,gd,adam", help="comma-separated from em, md, gradient_em, gd, adam"
    )
    grid.add_argument(
        "--step",
        action="append",
        metavar="METHOD=STEP",
        help="fix a step size (repeatable); stepped methods without one are tuned per SNR",
    )
    grid.add_argument("--tuning-instances", type=int, default=3, help="instances per SNR for tuning (default 3)")
    grid.add_argument("--steps", type=int, default=100, help="iterations per method (default 100)")
    grid.add_argument("--n", type=int, default=2000, help="samples per instance (default 2000)")
    grid.add_argument("--d", type=int, default=10, help="features (default 10)")
    grid.add_argument("--gate-norm", type=float, default=2.0, help="||w*|| or gate row norm (default 2)")
    grid.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    grid.add_argument(
        "--no-rates", action="store_true", help="skip lambda_max(M) (the K-expert MIM needs memory growing fast in n)"
    )
    grid.add_argument("--chunk-size", type=int, default=None, help="cells per compiled call and per file")
    grid.add_argument("--out", default=None, help="output folder (resumable); none: keep in memory")
    _common_sweep_flags(grid)
    grid.set_defaults(func=_sweep)
    return parser


def _common_sweep_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--float32", action="store_true", help="compute in float32 (default float64)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="cells per lax.map group on each device; 0 vmaps a device's whole share "
        "(default: 1 on CPU, whole share on GPU)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (multi-host; see emjax.sweep)",
    )


def main(argv: list[str] | None = None) -> int:
    _configure_cpu()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "batch_size", None) is not None and args.batch_size < 0:
        parser.error("--batch-size must be >= 0")
    for name in ("n", "d", "steps", "seeds", "experts", "tuning_instances", "chunk_size"):
        value = getattr(args, name, 1)
        if value is not None and value < 1:
            parser.error(f"--{name} must be a positive integer")
    from .sweeps import ConfigurationMismatch

    try:
        return args.func(args)
    except ConfigurationMismatch as error:
        print(f"emjax {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
