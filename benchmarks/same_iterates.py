r"""Do two copies of emjax take the same iterates? (the check behind a redesign: ≤ 1e-12 in float64)

For each model (SymMoLinE, SymMoLogE, MoLinE(3), MoLinE(3, ridge=0.1), MoLogE(2, 3), MoPoE(3)),
at n = 2,000 (d = 4, float64) each solver (EM, mirror descent η = 0.5, gradient EM
η = 0.1 with 3 inner steps, gradient descent η = 0.1, optax Adam 1e-2, and EM with a frozen
block), and at n = 20,000 EM, both copies run 50 steps with ``emjax.fit`` from the same start and also evaluate the
EM rate and the observed information at the result. The script prints the largest absolute
difference over everything, and each copy's median time of one jitted ``em_step``.

Truths are drawn with NumPy here (not with emjax's generators, whose names may differ between
the copies). Each copy runs in its own subprocess (``--emjax-path DIR`` puts ``DIR/emjax`` first
on the path)::

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

NS = (2_000, 20_000)
D = 4
NUM_STEPS = 50


def _models(emjax):
    return {
        "SymMoLinE": emjax.SymMoLinE(),
        "SymMoLogE": emjax.SymMoLogE(),
        "MoLinE(3)": emjax.MoLinE(3),
        "MoLinE(3, ridge)": emjax.MoLinE(3, ridge=0.1),
        "MoLogE(2, 3)": emjax.MoLogE(2, num_classes=3),
        "MoPoE(3)": emjax.MoPoE(3),
    }


def _truth(emjax, model, rng):
    if isinstance(model, emjax.MixtureOfExperts):
        k = model.num_experts
        gate = rng.normal(size=(k, D))
        gate[0] = 0
        classes = getattr(model.expert, "num_classes", None)
        experts = rng.normal(size=(k, D) if classes is None else (k, D, classes))
        if classes is not None:
            experts[..., 0] = 0
        sigma = np.full(k, 0.5) if model.expert.has_scale else None
        return emjax.MoEParams(gate=gate, experts=experts, sigma=sigma)
    return emjax.SymParams(w=2 * rng.normal(size=D) / np.sqrt(D), beta=2 * rng.normal(size=D) / np.sqrt(D))


def _frozen(emjax, params):
    if isinstance(params, emjax.MoEParams):
        return emjax.MoEParams(
            gate=np.asarray(False), experts=np.asarray(True), sigma=None if params.sigma is None else np.asarray(True)
        )
    return emjax.SymParams(w=np.asarray(False), beta=np.asarray(True))


def _solvers(emjax, params):
    import optax

    return {
        "em": emjax.em(),
        "md": emjax.mirror_descent(0.5),
        "gem": emjax.gradient_em(0.1, 3),
        "gd": emjax.gradient_descent(0.1),
        "adam": emjax.from_optax(optax.adam(1e-2)),
        "em-frozen": emjax.em(trainable=_frozen(emjax, params)),
    }


def worker(path: str | None, out: str) -> None:
    if path:
        sys.path.insert(0, os.path.abspath(path))
    import jax

    jax.config.update("jax_enable_x64", True)
    import emjax

    arrays, times = {}, {}
    for n in NS:
        for name, model in _models(emjax).items():
            truth = _truth(emjax, model, np.random.default_rng(0))
            x, y = emjax.sample(model, truth, jax.random.key(1), n)
            start = emjax.init_params(model, jax.random.key(2), x, y)
            for solver_name, solver in _solvers(emjax, start).items():
                if n > NS[0] and solver_name != "em":
                    continue  # every solver at the small size, EM (the hot path) also at the large one
                print(f"{path or 'installed'}: {name} n={n} {solver_name}", file=sys.stderr, flush=True)
                fitted = emjax.fit(model, solver, start, x, y, NUM_STEPS).params
                values = [fitted]
                if solver_name == "em":
                    values += [emjax.em_rate(model, fitted, x, y), emjax.observed_information(model, fitted, x, y)]
                leaves = jax.tree_util.tree_leaves(values)
                arrays[f"{name} n={n} {solver_name}"] = np.concatenate([np.ravel(np.asarray(leaf)) for leaf in leaves])
            step = jax.jit(lambda p, a, b, model=model: emjax.em_step(model, p, a, b))
            jax.block_until_ready(step(start, x, y))
            samples = []
            for _ in range(5):
                tic = time.perf_counter()
                jax.block_until_ready(step(start, x, y))
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
    parser.add_argument(
        "--after", default=None, help="directory holding the 'after' emjax (default: the installed one)"
    )
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
        print("| case | max abs difference | scale |")
        print("|---|---|---|")
        worst = 0.0
        for case in before.files:
            gap = float(np.max(np.abs(before[case] - after[case])))
            worst = max(worst, gap)
            print(f"| {case} | {gap:.1e} | {float(np.max(np.abs(before[case]))):.2g} |")
        print("\n| model, n | em_step ms before | after | speed-up |")
        print("|---|---|---|---|")
        for case, old in before_times.items():
            new = after_times[case]
            print(f"| {case} | {old * 1e3:.3g} | {new * 1e3:.3g} | {old / new:.2f} |")
        print(f"\nLargest difference over all cases: {worst:.1e}")


if __name__ == "__main__":
    main()
