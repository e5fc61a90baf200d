r"""Roofline of one EM iteration: measured time against the memory and FLOP floors of this machine.

What it measures
----------------
1. The machine, in one subprocess:

   * **read bandwidth**: a jitted reduction over a 1 GiB array (``--quick``: 256 MiB) in three shapes
     (a flat sum, row sums of a (N/1024, 1024) array, the max of that array), the median of the
     repeats of each, and the best of the three (the floor uses the most favourable rate);
   * **matmul rate**: a jitted 4096 x 4096 product (``--quick``: 2048) in float64 and in float32,
     2 * 4096^3 FLOPs over the median time, in GFLOP/s.

2. For each model and each feature dimension d (one subprocess each, the sizes n in increasing order):
   the median wall time of one jitted ``emjax.em_step(model, start, x, y)``, after a first call that
   compiles it. Data are ``emjax.sample(model, truth, key, n)`` (x ~ N(0, I_d)); the truth is
   ``emjax.testing.random_params(model, key, d, gate_norm=2, expert_norm=2)`` (SymMoLinE, SNR 2;
   the defaults for K-expert models), and the start is the truth with a
   relative error of ``--start-error`` (default 0.1) per block in a random direction, i.e. an iterate
   in the middle of a fit. Every call does the same work, so repeats are comparable. Repeats: as many as
   fit in ``--seconds-per-cell`` (at least one, at most ``--repeats``).

Models: ``sym`` = ``emjax.SymMoLinE()``, ``moline`` = ``emjax.MoLinE(3)``, ``mologe`` =
``emjax.MoLogE(2, num_classes=3)``.

Grid and dtypes: n in {1e3, 1e4, 1e5, 1e6, 1e7} x d in {2, 8, 32, 128, 256}. A cell runs in
``--dtype`` (default float64) when x fits in ``--max-x-gb`` (default 2) GB, otherwise in float32 when
that fits, otherwise it is skipped and the table says so. A cell is also skipped when the time
measured at the previous n, scaled linearly in n, predicts more than ``--max-call-seconds`` (default
60) for one call (the table says which): this bounds the run and, for slow code, its memory.

The floors
----------
* **Memory floor** = one read of x (n d bytes-per-value) / bandwidth. Everything else an iteration
  touches is O(n) or O(n K), smaller by a factor d or more.
* **FLOP floor** = the dominant FLOPs / the matmul rate of the cell's dtype. Counted for an M-step
  whose every Newton solve takes **one** Newton iteration (a lower bound: a warm-started solve takes
  one to a few), with symmetric products counted once (X^T D X costs n d^2 multiply-adds, i.e.
  n d(d+1) ~ n d^2 FLOPs, as a symmetric rank-n update would):

  - SymMoLinE: E-step scores x.w, x.beta: 4nd; beta M-step X^T X: nd^2 and X^T t: 2nd; gate Newton
    iteration: Hessian X^T diag(p(1-p)) X: nd^2, gradient 2nd, x.direction for the line search 2nd.
    Total 2nd^2 + 10nd.
  - MoLinE(K): E-step gate logits and expert means 4ndK; gate Newton over the K-1 free rows: the
    (K-1)K/2 distinct d x d blocks X^T diag(pi_i(delta_ij - pi_j)) X: nd^2 (K-1)K/2, gradient and
    x.direction 4nd(K-1); experts: K weighted Gram matrices K nd^2, right-hand sides 2ndK, residuals
    for sigma 2ndK. Total nd^2 (K(K-1)/2 + K) + nd(12K - 4); for K = 3: 6nd^2 + 32nd.
  - MoLogE(K, C) (class column 0 pinned): E-step 2ndK + 2ndKC; gate as above; each expert's Newton
    iteration nd^2 (C-1)C/2 + 4nd(C-1). For K = 2, C = 3: 7nd^2 + 32nd.

  The elementwise work (exp, log1p per sample and expert) is not counted: a floor is a lower bound.
  Where the M-step of a K-expert model uses L-BFGS (more than 256 entries, see
  ``emjax._minimize.NEWTON_MAX_SIZE``) the count is the same Newton count, so the ratio includes the
  cost of the method.
* **ratio** = time / max(memory floor, FLOP floor): 1 would be the roofline.

Before/after
------------
``--emjax-path DIR`` imports emjax from ``DIR`` (a directory holding an ``emjax`` package) instead of
the installed one, so the same script times an older copy of the library, e.g.::

    mkdir -p /tmp/before && git archive <commit> emjax | tar -x -C /tmp/before
    python benchmarks/roofline.py --emjax-path /tmp/before --json before.json --out before.md
    python benchmarks/roofline.py --json after.json --out after.md
    python benchmarks/roofline.py --compare before.json after.json

How to run
----------
From the repository root with emjax installed (``pip install -e .``)::

    python benchmarks/roofline.py --quick        # n up to 1e5, d in {2, 32}, 2 models: about 1 minute
    python benchmarks/roofline.py                # the full grid: about 10 minutes on 2 cores
    python benchmarks/roofline.py --out table.md --json table.json
    python benchmarks/roofline.py --help         # --models, --ns, --ds, --dtype, --max-x-gb, ...

The machine is shared and noisy: compare ratios measured in one run (or runs made back to back).
Subprocesses, timing, peak memory and tables come from ``benchmarks/_harness.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from _harness import median_time, rss_mb, run_worker, serve_worker, setup_jax, table, time_calls, write_outputs

MODELS = ("sym", "moline", "mologe")
MODEL_NAMES = {"sym": "SymMoLinE()", "moline": "MoLinE(3)", "mologe": "MoLogE(2, 3)"}
FULL_NS = (1_000, 10_000, 100_000, 1_000_000, 10_000_000)
FULL_DS = (2, 8, 32, 128, 256)
QUICK_NS = (1_000, 10_000, 100_000)
QUICK_DS = (2, 32)


def itemsize(dtype: str) -> int:
    return 8 if dtype == "float64" else 4


# ============================================================================ the count


def flops_per_iteration(model: str, n: int, d: int) -> float:
    """Dominant FLOPs of one EM iteration with one Newton iteration per solve (module docstring)."""
    if model == "sym":
        return 2 * n * d * d + 10 * n * d
    if model == "moline":
        k = 3
        return n * d * d * (k * (k - 1) / 2 + k) + n * d * (12 * k - 4)
    if model == "mologe":
        k, c = 2, 3
        estep = 2 * n * d * k + 2 * n * d * k * c
        gate = n * d * d * k * (k - 1) / 2 + 4 * n * d * (k - 1)
        experts = k * (n * d * d * (c - 1) * c / 2 + 4 * n * d * (c - 1))
        return estep + gate + experts
    raise ValueError(model)


def choose_dtype(n: int, d: int, preferred: str, max_bytes: float):
    """The dtype a cell runs in, or None when x does not fit in ``max_bytes`` even in float32."""
    for dtype in (preferred, "float32"):
        if n * d * itemsize(dtype) <= max_bytes:
            return dtype
    return None


# ============================================================================ workers (subprocesses)


def worker_machine(spec):
    """Read bandwidth (best of three reductions, median of repeats each) and matmul rates."""
    jax, _ = setup_jax("float64")
    import jax.numpy as jnp

    repeats = spec["repeats"]
    count = spec["bandwidth_bytes"] // 8
    data = jax.random.normal(jax.random.key(0), (count,), jnp.float64)
    matrix = data.reshape(-1, 1024)
    variants = {
        "sum": (jax.jit(jnp.sum), data),
        "row sums": (jax.jit(lambda m: jnp.sum(m, axis=1)), matrix),
        "max": (jax.jit(jnp.max), matrix),
    }
    bandwidth = {}
    for name, (fn, arg) in variants.items():
        jax.block_until_ready(fn(arg))
        seconds, _ = median_time(lambda fn=fn, arg=arg: jax.block_until_ready(fn(arg)), repeats)
        bandwidth[name] = data.nbytes / seconds / 1e9
    del data, matrix
    rates = {}
    size = spec["matmul_size"]
    product = jax.jit(lambda a, b: a @ b)
    for dtype in ("float64", "float32"):
        a = jax.random.normal(jax.random.key(1), (size, size), dtype)
        b = jax.random.normal(jax.random.key(2), (size, size), dtype)
        jax.block_until_ready(product(a, b))
        seconds, _ = median_time(lambda a=a, b=b: jax.block_until_ready(product(a, b)), repeats)
        rates[dtype] = 2 * size**3 / seconds / 1e9
    # Not a floor, but what the small-d cells spend their time on: the elementwise exp/log1p work.
    softplus = jax.jit(lambda v: jnp.sum(jax.nn.softplus(v)))
    elementwise = {}
    for dtype in ("float64", "float32"):
        values = jax.random.normal(jax.random.key(3), (2**24,), dtype)
        jax.block_until_ready(softplus(values))
        seconds, _ = median_time(lambda values=values: jax.block_until_ready(softplus(values)), repeats)
        elementwise[dtype] = seconds / values.size * 1e9
    return {
        "bandwidth_gbs": bandwidth,
        "best_bandwidth_gbs": max(bandwidth.values()),
        "softplus_ns_per_value": elementwise,
        "matmul_gflops": rates,
        "matmul_size": size,
        "bandwidth_bytes": spec["bandwidth_bytes"],
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "devices": [str(dev) for dev in jax.devices()],
    }


def _perturbed(jax, emjax, model, truth, key, error: float):
    """The truth plus a relative error ``error`` per block (free entries only) in a random direction."""
    import jax.numpy as jnp

    if isinstance(truth, emjax.SymParams):
        if not hasattr(emjax, "testing"):  # a copy from before emjax.testing (key first)
            return emjax.perturb(key, truth, error)
        return emjax.testing.perturb(truth, key, error)
    pinned = model.pinned(truth.dim)
    keys = jax.random.split(key, 2)

    def move(leaf, fixed, key):
        noise = jnp.where(jnp.asarray(fixed), 0, jax.random.normal(key, leaf.shape, leaf.dtype))
        scale = error * jnp.linalg.norm(leaf) / jnp.maximum(jnp.linalg.norm(noise), 1e-30)
        return leaf + scale * noise

    sigma = None if truth.sigma is None else truth.sigma * (1 + error)
    return emjax.MoEParams(
        gate=move(truth.gate, pinned.gate, keys[0]), experts=move(truth.experts, pinned.experts, keys[1]), sigma=sigma
    )


def make_model(emjax, name: str):
    return {
        "sym": lambda: emjax.SymMoLinE(),
        "moline": lambda: emjax.MoLinE(3),
        "mologe": lambda: emjax.MoLogE(2, num_classes=3),
    }[name]()


def worker_model(spec):
    """Time one jitted em_step per n (ascending) for one model and one d."""
    jax, emjax = setup_jax("float64", emjax_path=spec["emjax_path"])
    import jax.numpy as jnp

    name, d = spec["model"], spec["d"]
    model = make_model(emjax, name)
    rows = []
    predicted_next = 0.0
    base_mb = rss_mb()
    memory_per_x_byte = 0.0  # (peak - base) / bytes of x at the last measured n
    for n in spec["ns"]:
        dtype = choose_dtype(n, d, spec["dtype"], spec["max_x_bytes"])
        row = {"model": name, "n": n, "d": d, "dtype": dtype}
        if dtype is None:
            gb = n * d * 4 / 1e9
            row["skipped"] = f"x is {gb:.1f} GB in float32 (> {spec['max_x_bytes'] / 1e9:.0f} GB)"
            rows.append(row)
            continue
        if predicted_next > spec["max_call_seconds"]:
            row["skipped"] = f"predicted {predicted_next:.0f} s per call (> {spec['max_call_seconds']:.0f} s)"
            rows.append(row)
            predicted_next *= 10
            continue
        predicted_mb = base_mb + memory_per_x_byte * n * d * itemsize(dtype) / 2**20
        if predicted_mb > spec["max_rss_gb"] * 1024:
            row["skipped"] = f"predicted peak memory {predicted_mb / 1024:.0f} GB (> {spec['max_rss_gb']:.0f} GB)"
            rows.append(row)
            continue
        key_truth, key_data, key_start = jax.random.split(jax.random.key(spec["seed"]), 3)
        if not hasattr(emjax, "testing"):  # a copy from before emjax.testing: its two generators
            truth = (
                emjax.random_params(key_truth, d, 2.0, 2.0, jnp.dtype(dtype))
                if name == "sym"
                else emjax.random_moe_params(model, key_truth, d=d, dtype=jnp.dtype(dtype))
            )
        elif name == "sym":
            truth = emjax.testing.random_params(
                model, key_truth, d, gate_norm=2.0, expert_norm=2.0, dtype=jnp.dtype(dtype)
            )
        else:
            truth = emjax.testing.random_params(model, key_truth, d=d, dtype=jnp.dtype(dtype))
        x, y = jax.jit(lambda t, k, n=n: emjax.sample(model, t, k, n))(truth, key_data)
        start = _perturbed(jax, emjax, model, truth, key_start, spec["start_error"])
        step = jax.jit(lambda p, x, y: emjax.em_step(model, p, x, y))
        row.update(
            time_calls(
                lambda step=step, start=start, x=x, y=y: jax.block_until_ready(step(start, x, y)),
                spec["repeats"],
                spec["seconds_per_cell"],
            )
        )
        row["x_bytes"] = int(x.nbytes)
        rows.append(row)
        predicted_next = row["seconds"] * 10
        row["peak_mb"] = rss_mb()
        memory_per_x_byte = (row["peak_mb"] - base_mb) * 2**20 / x.nbytes  # memory is about linear in n
        del x, y
    return {"rows": rows, "peak_mb": rss_mb(), "emjax_file": emjax.__file__}


WORKERS = {"machine": worker_machine, "model": worker_model}


# ============================================================================ the report


def add_floors(row, machine):
    """Memory floor, FLOP floor and ratio (seconds) of a measured row, in place."""
    if "seconds" not in row:
        return row
    n, d, dtype = row["n"], row["d"], row["dtype"]
    row["memory_floor_s"] = n * d * itemsize(dtype) / (machine["best_bandwidth_gbs"] * 1e9)
    row["flops"] = flops_per_iteration(row["model"], n, d)
    row["flop_floor_s"] = row["flops"] / (machine["matmul_gflops"][dtype] * 1e9)
    row["ratio"] = row["seconds"] / max(row["memory_floor_s"], row["flop_floor_s"])
    return row


def roofline_table(rows):
    headers = ["model", "n", "d", "dtype", "x MB", "ms / iteration", "memory floor ms", "FLOP floor ms", "ratio"]
    body = []
    for row in rows:
        label = [MODEL_NAMES[row["model"]], f"{row['n']:.0e}".replace("+0", ""), row["d"]]
        if "seconds" not in row:
            reason = row.get("skipped") or row.get("error", "failed")
            body.append(label + [row.get("dtype") or "-", "-", f"skipped: {reason}", "-", "-", "-"])
            continue
        body.append(
            label
            + [
                row["dtype"],
                row["n"] * row["d"] * itemsize(row["dtype"]) / 1e6,
                row["seconds"] * 1e3,
                row["memory_floor_s"] * 1e3,
                row["flop_floor_s"] * 1e3,
                row["ratio"],
            ]
        )
    return table(headers, body)


def machine_lines(machine):
    bw = ", ".join(f"{k} {v:.1f}" for k, v in machine["bandwidth_gbs"].items())
    rates = machine["matmul_gflops"]
    size = machine["matmul_size"]
    return [
        f"Machine: {machine['cores']} cores, JAX {machine['jax']}, devices {', '.join(machine['devices'])}.",
        f"Read bandwidth over {machine['bandwidth_bytes'] / 2**30:.2f} GiB (GB/s, median per reduction): {bw}; "
        f"best **{machine['best_bandwidth_gbs']:.1f} GB/s**.",
        f"Matmul {size} x {size}: **{rates['float64']:.1f} GFLOP/s** float64, "
        f"**{rates['float32']:.1f} GFLOP/s** float32.",
    ] + (
        [
            f"Elementwise (not in the floors): softplus of 2^24 values, {soft['float64']:.2f} ns per value "
            f"float64, {soft['float32']:.2f} float32."
        ]
        if (soft := machine.get("softplus_ns_per_value"))
        else []
    )


def compare_table(before, after):
    """Before/after per-iteration times of the cells measured in both runs."""
    index = {(r["model"], r["n"], r["d"]): r for r in before["rows"] if "seconds" in r}
    headers = ["model", "n", "d", "dtype", "before ms", "after ms", "speed-up", "ratio before", "ratio after"]
    body = []
    for row in after["rows"]:
        old = index.get((row["model"], row["n"], row["d"]))
        label = [MODEL_NAMES[row["model"]], f"{row['n']:.0e}".replace("+0", ""), row["d"]]
        if "seconds" not in row:
            continue
        if old is None:
            body.append(label + [row["dtype"], "not run", row["seconds"] * 1e3, "-", "-", row["ratio"]])
            continue
        body.append(
            label
            + [
                row["dtype"],
                old["seconds"] * 1e3,
                row["seconds"] * 1e3,
                old["seconds"] / row["seconds"],
                old["ratio"],
                row["ratio"],
            ]
        )
    return table(headers, body)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="n in {1e3, 1e4, 1e5}, d in {2, 32}, models sym and moline, 256 MiB bandwidth array",
    )
    parser.add_argument(
        "--models", default=None, help="comma-separated subset of sym,moline,mologe (default all; --quick: sym,moline)"
    )
    parser.add_argument("--ns", default=None, help="comma-separated sizes n (default 1e3,...,1e7)")
    parser.add_argument("--ds", default=None, help="comma-separated dimensions d (default 2,8,32,128,256)")
    parser.add_argument(
        "--dtype",
        default="float64",
        choices=("float64", "float32"),
        help="preferred dtype; float32 where x would not fit in --max-x-gb (default float64)",
    )
    parser.add_argument("--max-x-gb", type=float, default=2.0, help="largest x in GB (default 2)")
    parser.add_argument(
        "--max-call-seconds",
        type=float,
        default=60.0,
        help="skip a cell when the previous n, scaled linearly, predicts more than this per call",
    )
    parser.add_argument(
        "--max-rss-gb",
        type=float,
        default=8.0,
        help="skip a cell when the previous n's peak memory, scaled linearly, predicts more "
        "than this (default 8; the machine is shared)",
    )
    parser.add_argument("--repeats", type=int, default=7, help="most timed calls per cell (default 7)")
    parser.add_argument(
        "--seconds-per-cell",
        type=float,
        default=3.0,
        help="timed calls per cell: as many as fit in this many seconds (at least 1)",
    )
    parser.add_argument("--start-error", type=float, default=0.1, help="relative error of the start (default 0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--emjax-path", default=None, help="import emjax from this directory (e.g. an older copy, for before/after)"
    )
    parser.add_argument("--out", default=None, help="also write the markdown report to this file")
    parser.add_argument("--json", default=None, help="also write every measurement to this JSON file")
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("BEFORE_JSON", "AFTER_JSON"),
        default=None,
        help="print the before/after table of two --json files and exit",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        return serve_worker(WORKERS, args.worker)

    if args.compare:
        with open(args.compare[0]) as f:
            before = json.load(f)
        with open(args.compare[1]) as f:
            after = json.load(f)
        print(compare_table(before, after))
        return 0

    def parse(text, default):
        return tuple(int(float(v)) for v in text.split(",")) if text else default

    models = tuple(args.models.split(",")) if args.models else (("sym", "moline") if args.quick else MODELS)
    for name in models:
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    ns = parse(args.ns, QUICK_NS if args.quick else FULL_NS)
    ds = parse(args.ds, QUICK_DS if args.quick else FULL_DS)
    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    start = time.perf_counter()
    machine = run_worker(
        __file__,
        {
            "task": "machine",
            "repeats": 3 if args.quick else 7,
            "bandwidth_bytes": (2**28 if args.quick else 2**30),
            "matmul_size": 2048 if args.quick else 4096,
        },
        timeout=600,
    )
    if "error" in machine:
        say(f"machine measurement failed: {machine['error']}")
        return 1
    say(f"# Roofline of one EM iteration ({'emjax from ' + args.emjax_path if args.emjax_path else 'installed emjax'})")
    say()
    for line in machine_lines(machine):
        say(line + "  ")
    say()
    report = {"args": vars(args), "machine": machine, "rows": []}
    for name in models:
        for d in ds:
            spec = {
                "task": "model",
                "model": name,
                "d": d,
                "ns": list(ns),
                "dtype": args.dtype,
                "max_x_bytes": args.max_x_gb * 1e9,
                "max_call_seconds": args.max_call_seconds,
                "max_rss_gb": args.max_rss_gb,
                "repeats": args.repeats,
                "seconds_per_cell": args.seconds_per_cell,
                "start_error": args.start_error,
                "seed": args.seed,
                "emjax_path": args.emjax_path,
            }
            result = run_worker(__file__, spec, timeout=3600)
            if "error" in result:
                rows = [{"model": name, "n": n, "d": d, "dtype": None, "error": result["error"][:120]} for n in ns]
                print(f"{name} d={d}: failed: {result['error']}", flush=True)
            else:
                rows = [add_floors(row, machine) for row in result["rows"]]
                done = [r for r in rows if "seconds" in r]
                print(
                    f"{name} d={d}: "
                    + ", ".join(f"n={r['n']}: {r['seconds'] * 1e3:.3g} ms" for r in done)
                    + f" ({result['process_s']:.0f} s, peak {result['peak_mb']:.0f} MB, {result['emjax_file']})",
                    flush=True,
                )
            report["rows"].extend(rows)
    order = {name: i for i, name in enumerate(models)}
    report["rows"].sort(key=lambda r: (order[r["model"]], r["d"], r["n"]))
    say()
    say(roofline_table(report["rows"]))
    say()
    measured = [r for r in report["rows"] if "ratio" in r]
    if measured:
        worst = max(measured, key=lambda r: r["ratio"])
        say(
            f"Largest ratio: {worst['ratio']:.0f} ({MODEL_NAMES[worst['model']]}, n = {worst['n']}, d = {worst['d']}). "
            f"Total run {time.perf_counter() - start:.0f} s."
        )
    report["total_s"] = time.perf_counter() - start
    write_outputs(args.out, lines, args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
