"""The ``emjax`` command line. Top of the dependency chain: nothing in emjax imports it."""

from __future__ import annotations

import argparse
import sys


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
    results = run_demo(n=args.n, d=args.d, num_steps=args.steps, seed=args.seed, dtype=dtype,
                       checkpoints=checkpoints)
    print(format_demo(results))
    return 0


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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("n", "d", "steps"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name} must be a positive integer")
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
