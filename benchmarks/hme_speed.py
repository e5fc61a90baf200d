"""Speed of EM on a hierarchical mixture of experts (issue 19): ``emjax.fit`` with ``emjax.em()``.

A depth-2 tree with branching (3, 2) (6 Gaussian leaves) fitted to n = 10^5 rows (d = 4, sampled from a
random truth), 100 EM steps from ``emjax.init_params``, beside the flat ``MoLinE(6)`` on the same data as a
reference. Reports the first call (compilation included) and the best of the warm calls, in seconds.

Usage::

    python benchmarks/hme_speed.py                 # n = 100000, 100 steps, float64
    python benchmarks/hme_speed.py --float32 --n 20000 --steps 50
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--branching", type=str, default="3,2")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--float32", action="store_true")
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", not args.float32)  # a script, not the library: it may configure JAX
    import emjax

    branching = tuple(int(b) for b in args.branching.split(","))
    tree = emjax.HierarchicalMoE(emjax.GaussianExpert(), branching=branching)
    flat = emjax.MoLinE(tree.num_experts)
    truth = emjax.testing.random_params(tree, jax.random.key(0), args.d, gate_norm=2.0, expert_norm=2.0, sigma=0.5)
    x, y = emjax.sample(tree, truth, jax.random.key(1), args.n)

    print(f"# HierarchicalMoE {args.branching} EM speed")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}, {'float32' if args.float32 else 'float64'}"
    )
    print(f"n = {args.n}, d = {args.d}, {args.steps} EM steps\n")
    print("| model | first call (s) | warm (s) | ms / step | final loss |")
    print("|---|---|---|---|---|")
    for name, model in ((tree.describe(), tree), (flat.describe(), flat)):
        start = emjax.init_params(model, jax.random.key(2), x, y)

        def run(model=model, start=start):
            return jax.block_until_ready(emjax.fit(model, emjax.em(), start, x, y, args.steps))

        tic = time.perf_counter()
        result = run()
        first = time.perf_counter() - tic
        warm = []
        for _ in range(args.repeats):
            tic = time.perf_counter()
            run()
            warm.append(time.perf_counter() - tic)
        best = min(warm)
        loss = float(result.losses[-1])
        print(f"| {name} | {first:.2f} | {best:.2f} | {1000 * best / args.steps:.1f} | {loss:.6f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
