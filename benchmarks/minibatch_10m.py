"""Mini-batch EM on ten million rows streamed from memory-mapped .npy files, against full-batch EM.

    python benchmarks/minibatch_10m.py                      # 10M rows (about 10 minutes on 2 cores)
    python benchmarks/minibatch_10m.py --rows 1000000       # a smaller run
    python benchmarks/minibatch_10m.py --out benchmarks/results/minibatch_10m.md

What it does:

1. Writes a synthetic MoLinE(K) data set (x ~ N(0, I), d features) chunk by chunk to ``x.npy`` and
   ``y.npy`` (never holding it in memory), plus prefixes of 1e5 and 1e6 rows.
2. Fits it by streaming with :func:`emjax.streaming.fit_stream` (mini-batch EM with Robbins-Monro
   steps, then the full-batch EM-gradient polish), in a fresh process per data size, and records
   each process's peak resident memory (VmHWM): it must not grow with n.
3. Runs in-memory full-batch EM (:func:`emjax.fit`, an independent code path) from the polished
   point: if it is EM's fixed point, EM steps leave it in place (their sizes are printed). The
   last EM iterate is the reference; the report gives the parameter distance and the loss gap of
   the streamed estimates to it, after the mini-batch phase and after the polish.

Everything runs in float64. Distances are taken after matching expert labels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def _peak_memory_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _setup(args):
    import jax

    jax.config.update("jax_enable_x64", True)
    import emjax

    model = emjax.MoLinE(args.experts)
    truth = emjax.testing.random_params(model, jax.random.key(args.seed), d=args.dim, expert_norm=args.expert_norm)
    return jax, emjax, model, truth


def write_data(args, folder: str) -> None:
    """x.npy / y.npy with args.rows rows, written chunk by chunk through np.lib.format.open_memmap."""
    jax, emjax, model, truth = _setup(args)
    sizes = sorted({n for n in (100_000, 1_000_000, args.rows) if n <= args.rows})
    for n in sizes:
        x_file = np.lib.format.open_memmap(os.path.join(folder, f"x_{n}.npy"), "w+", np.float64, (n, args.dim))
        y_file = np.lib.format.open_memmap(os.path.join(folder, f"y_{n}.npy"), "w+", np.float64, (n,))
        chunk = 1_000_000
        for index, start in enumerate(range(0, n, chunk)):
            stop = min(start + chunk, n)
            x, y = emjax.sample(model, truth, jax.random.fold_in(jax.random.key(args.seed + 1), index), stop - start)
            x_file[start:stop], y_file[start:stop] = np.asarray(x), np.asarray(y)
        x_file.flush()
        y_file.flush()
        del x_file, y_file


def initial_params(args, emjax, jax, model, folder):
    """The shared start: emjax.init_params on the first 10,000 rows."""
    x = np.load(os.path.join(folder, f"x_{args.rows}.npy"), mmap_mode="r")[:10_000]
    y = np.load(os.path.join(folder, f"y_{args.rows}.npy"), mmap_mode="r")[:10_000]
    return emjax.init_params(model, jax.random.key(args.seed + 2), np.array(x), np.array(y))


def stream_worker(args, folder: str, n: int) -> dict:
    """One streamed fit in this process; prints a JSON line with its estimates and peak memory."""
    jax, emjax, model, _ = _setup(args)
    from emjax.streaming import NpyBatches, RobbinsMonro, fit_stream

    start = initial_params(args, emjax, jax, model, folder)
    batches = NpyBatches(os.path.join(folder, f"x_{n}.npy"), os.path.join(folder, f"y_{n}.npy"), args.batch_size)
    schedule = RobbinsMonro(initial=1.0, decay=args.decay, delay=args.delay)
    stochastic = fit_stream(model, start, batches, num_epochs=args.epochs, step_size=schedule)
    polished = fit_stream(
        model, stochastic.params, batches, num_epochs=0, polish_steps=args.polish_steps, polish_tol=args.polish_tol
    )
    flat = lambda p: np.concatenate([np.ravel(leaf) for leaf in jax.tree_util.tree_leaves(p)]).tolist()  # noqa: E731
    return {
        "n": n,
        "peak_mib": _peak_memory_mib(),
        "stochastic": flat(stochastic.params),
        "polished": flat(polished.params),
        "stochastic_seconds": stochastic.seconds[0],
        "polish_seconds": polished.seconds[1],
        "polish_passes": int(len(polished.polish_losses) - 1),
        "polish_converged": bool(polished.converged),
        "polish_losses": polished.polish_losses.tolist(),
        "batches": stochastic.num_batches,
    }


def reference_fit(args, folder: str, polished) -> dict:
    """Full-batch EM in memory (an independent code path), run from the polished point.

    If that point is the full-batch EM fixed point, EM leaves it where it is: the sizes of these
    steps are the check. (Running EM from the start to round-off at 10⁷ rows takes over an hour
    here, a few minutes per step.) The reference is the last EM iterate."""
    jax, emjax, model, _ = _setup(args)
    like = initial_params(args, emjax, jax, model, folder)
    x = np.load(os.path.join(folder, f"x_{args.rows}.npy"))
    y = np.load(os.path.join(folder, f"y_{args.rows}.npy"))
    leaves, treedef = jax.tree_util.tree_flatten(like)
    vector, parts, offset = np.asarray(polished), [], 0
    for leaf in leaves:
        parts.append(vector[offset : offset + leaf.size].reshape(leaf.shape))
        offset += leaf.size
    start = jax.tree_util.tree_unflatten(treedef, parts)
    started = time.perf_counter()
    result = emjax.fit(model, emjax.em(), start, x, y, args.reference_steps, keep_history=True)
    seconds = time.perf_counter() - started
    flat = lambda p: np.concatenate([np.ravel(leaf) for leaf in jax.tree_util.tree_leaves(p)])  # noqa: E731
    history = [
        flat(jax.tree_util.tree_map(lambda a, t=t: a[t], result.params_history))
        for t in range(args.reference_steps + 1)
    ]
    moves = [float(np.max(np.abs(b - a))) for a, b in zip(history, history[1:], strict=False)]
    return {
        "params": history[-1].tolist(),
        "steps": args.reference_steps,
        "seconds": seconds,
        "moves": moves,
        "loss": float(np.asarray(result.losses)[-1]),
        "status": int(result.status),
    }


def compare(args, folder: str, vectors: dict) -> dict:
    """Full-data L at each flat parameter vector, and its distance to the reference after matching expert labels."""
    jax, emjax, model, _ = _setup(args)
    like = initial_params(args, emjax, jax, model, folder)
    x = np.load(os.path.join(folder, f"x_{args.rows}.npy"))
    y = np.load(os.path.join(folder, f"y_{args.rows}.npy"))
    leaves, treedef = jax.tree_util.tree_flatten(like)

    def unflat(vector):
        vector, parts, offset = np.asarray(vector), [], 0
        for leaf in leaves:
            parts.append(vector[offset : offset + leaf.size].reshape(leaf.shape))
            offset += leaf.size
        return jax.tree_util.tree_unflatten(treedef, parts)

    reference = unflat(vectors.pop("reference"))
    out = {}
    for name, vector in vectors.items():
        params = emjax.testing.match_experts(unflat(vector), reference)
        pairs = zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(reference), strict=True)
        distance = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in pairs)
        out[name] = {"loss": float(emjax.neg_log_likelihood(model, params, x, y)), "distance": distance}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=4)
    parser.add_argument("--experts", type=int, default=3)
    parser.add_argument("--expert-norm", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--decay", type=float, default=0.6)
    parser.add_argument("--delay", type=float, default=10.0)
    parser.add_argument("--polish-steps", type=int, default=20)
    parser.add_argument("--polish-tol", type=float, default=1e-7)
    parser.add_argument("--reference-steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default=None, help="folder for the .npy files (default: a temporary one)")
    parser.add_argument("--out", default=None, help="also write the markdown report here")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    folder = args.dir or tempfile.mkdtemp(prefix="emjax-10m-")

    if args.job == "stream":
        print("RESULT " + json.dumps(stream_worker(args, folder, args.worker)), flush=True)
        return
    if args.job == "reference":
        print("RESULT " + json.dumps(reference_fit(args, folder, json.loads(sys.stdin.read()))), flush=True)
        return
    if args.job == "compare":
        print("RESULT " + json.dumps(compare(args, folder, json.loads(sys.stdin.read()))), flush=True)
        return

    started = time.perf_counter()
    if not os.path.exists(os.path.join(folder, f"x_{args.rows}.npy")):
        write_data(args, folder)
    print(f"data written to {folder} in {time.perf_counter() - started:.0f} s", flush=True)
    base = (
        [sys.executable, os.path.abspath(__file__)] + (argv if argv is not None else sys.argv[1:]) + ["--dir", folder]
    )

    def run(job, extra=(), stdin=None):
        done = subprocess.run(base + ["--job", job, *extra], input=stdin, stdout=subprocess.PIPE, text=True, check=True)
        line = [entry for entry in done.stdout.splitlines() if entry.startswith("RESULT ")][-1]
        return json.loads(line[len("RESULT ") :])

    sizes = sorted({n for n in (100_000, 1_000_000, args.rows) if n <= args.rows})
    streamed = {}
    for n in sizes:
        streamed[n] = run("stream", ["--worker", str(n)])
        print(
            f"streamed n={n:,}: peak {streamed[n]['peak_mib']:.0f} MiB, "
            f"mini-batch {streamed[n]['stochastic_seconds']:.1f} s, "
            f"polish {streamed[n]['polish_passes']} passes in {streamed[n]['polish_seconds']:.1f} s",
            flush=True,
        )
    full = streamed[args.rows]
    reference = run("reference", stdin=json.dumps(full["polished"]))
    print(
        f"full-batch EM from the polished point: {reference['steps']} steps in {reference['seconds']:.1f} s, "
        f"moves {reference['moves']}",
        flush=True,
    )
    found = run(
        "compare",
        stdin=json.dumps(
            {"stochastic": full["stochastic"], "polished": full["polished"], "reference": reference["params"]}
        ),
    )
    lines = [
        f"# Mini-batch EM on {args.rows:,} streamed rows (MoLinE({args.experts}), d = {args.dim}, float64)",
        "",
        f"Command: `python benchmarks/minibatch_10m.py --rows {args.rows}` (batch {args.batch_size:,}, "
        f"{args.epochs} epochs, eta_t = (1 + t/{args.delay:g})^-{args.decay:g}, polish tol {args.polish_tol:g}).",
        "",
        "| estimate | max abs parameter distance to full-batch EM | L − L(full-batch EM) | time |",
        "|---|---|---|---|",
        f"| reference: full-batch EM in memory, {reference['steps']} steps from the polished point "
        f"(they move it by {', '.join(f'{m:.1e}' for m in reference['moves'])}) | 0 | 0 (L = {reference['loss']:.10f}) "
        f"| {reference['seconds']:.1f} s |",
        f"| mini-batch EM, streamed ({full['batches']} batches) | {found['stochastic']['distance']:.2e} | "
        f"{found['stochastic']['loss'] - reference['loss']:.2e} | {full['stochastic_seconds']:.1f} s |",
        f"| + streamed Newton polish ({full['polish_passes']} passes) | {found['polished']['distance']:.2e} | "
        f"{found['polished']['loss'] - reference['loss']:.2e} | +{full['polish_seconds']:.1f} s |",
        "",
        "Peak resident memory of the streaming process (VmHWM; JAX and XLA themselves included):",
        "",
        "| rows | peak memory | data on disk |",
        "|---|---|---|",
    ]
    for n in sizes:
        lines.append(f"| {n:,} | {streamed[n]['peak_mib']:.0f} MiB | {n * (args.dim + 1) * 8 / 2**20:.0f} MiB |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(report)


if __name__ == "__main__":
    main()
