r"""Do two copies of emjax take the same EM iterates? (the check behind benchmarks/RESULTS.md)

For each model (SymMoLinE, SymMoLogE, MoLinE(3), MoLogE(2, 3), MoPoE(3)) and n in {2,000, 100,000}
(d = 4, float64), both copies run 20 EM steps (``emjax.fit``) and one mirror-descent step
(η = 0.5) from the same start; the script prints the largest absolute difference of all the
resulting parameters, and each copy's median time of one jitted ``em_step``.

Each copy runs in its own subprocess (``--emjax-path DIR`` puts ``DIR/emjax`` first on the path)::

    mkdir -p /tmp/before && git archive <commit> emjax | tar -x -C /tmp/before
    python benchmarks/same_iterates.py --before /tmp/before          # against the checkout
    python benchmarks/same_iterates.py --before /tmp/before --after /tmp/other
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

NS = (2_000, 100_000)
D = 4
NUM_STEPS = 20


def _models(emjax):
    return {"SymMoLinE": emjax.SymMoLinE(), "SymMoLogE": emjax.SymMoLogE(), "MoLinE(3)": emjax.MoLinE(3),
            "MoLogE(2, 3)": emjax.MoLogE(2, num_classes=3), "MoPoE(3)": emjax.MoPoE(3)}


def worker(path: str | None, out: str) -> None:
    if path:
        sys.path.insert(0, os.path.abspath(path))
    import jax

    jax.config.update("jax_enable_x64", True)
    import emjax

    arrays, times = {}, {}
    for n in NS:
        for name, model in _models(emjax).items():
            if isinstance(model, emjax.MixtureOfExperts):
                truth = emjax.testing.random_params(model, jax.random.key(0), d=D)
                x, y = emjax.sample(model, truth, jax.random.key(1), n)
                start = emjax.init_params(model, jax.random.key(2), x, y)
            else:
                truth = emjax.testing.random_params(model, jax.random.key(0), D, 2.0, 2.0)
                x, y = emjax.sample(model, truth, jax.random.key(1), n)
                start = emjax.SymParams(w=0.1 * np.ones(D), beta=np.ones(D))
            fitted = emjax.fit(model, emjax.em(), start, x, y, NUM_STEPS).params
            mirror = emjax.mirror_descent_step(model, start, x, y, 0.5)
            leaves = jax.tree_util.tree_leaves((fitted, mirror))
            arrays[f"{name} n={n}"] = np.concatenate([np.ravel(np.asarray(leaf)) for leaf in leaves])
            step = jax.jit(lambda p, a, b, model=model: emjax.em_step(model, p, a, b))
            jax.block_until_ready(step(fitted, x, y))
            samples = []
            for _ in range(5):
                tic = time.perf_counter()
                jax.block_until_ready(step(fitted, x, y))
                samples.append(time.perf_counter() - tic)
            times[f"{name} n={n}"] = statistics.median(samples)
    np.savez(out, **arrays)
    with open(out + ".json", "w") as handle:
        json.dump(times, handle)


def _run(path: str | None, out: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", out] + (["--emjax-path", path] if path else [])
    subprocess.run(command, check=True)
    with open(out + ".json") as handle:
        return json.load(handle)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=False, help="directory holding the 'before' emjax package")
    parser.add_argument("--after", default=None, help="directory holding the 'after' emjax (default: the installed one)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--emjax-path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.emjax_path, args.worker)
        return
    if not args.before:
        parser.error("--before DIR is required")
    with tempfile.TemporaryDirectory() as tmp:
        before_times = _run(args.before, os.path.join(tmp, "before.npz"))
        after_times = _run(args.after, os.path.join(tmp, "after.npz"))
        before, after = np.load(os.path.join(tmp, "before.npz")), np.load(os.path.join(tmp, "after.npz"))
        print("| case | max abs difference | em_step ms before | after | speed-up |")
        print("|---|---|---|---|---|")
        worst = 0.0
        for case in before.files:
            gap = float(np.max(np.abs(before[case] - after[case])))
            worst = max(worst, gap)
            old, new = before_times[case] * 1e3, after_times[case] * 1e3
            print(f"| {case} | {gap:.1e} | {old:.3g} | {new:.3g} | {old / new:.2f} |")
        print(f"\nLargest difference over all cases: {worst:.1e}")


if __name__ == "__main__":
    main()
