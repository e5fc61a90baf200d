r"""What do the boundary checks cost? A Python loop of ``emjax.em_step`` calls, checks on against off (issue 14).

For SymMoLinE and MoLinE(3), d = 10, n = 1,000,000 rows, float32 data on the default device, the
script times a Python loop of 100 eager ``em_step`` calls (each call's output is the next call's
input; the loop ends with ``block_until_ready``), several repeats with the modes interleaved, and
prints each mode's median and the ratios. Modes:

* ``on``: ``emjax.em_step(model, params, x, y)``, the public function as users call it: static checks
  in Python, value checks (finite x, y and parameters, labels) as one small compiled reduction on the
  device that holds the data (only the index of a failed check, one integer, comes to the host),
  no copy of the data to the host;
* ``off``: ``emjax.em_step.unguarded(...)``, the same wrapper with the same static checks and the
  same dispatch, without the value checks: the fair "checks off" (it differs from ``on`` only by
  what issue 14 is about);
* ``raw``: ``equinox.filter_jit`` of the undecorated step (no Python checks at all), for reference:
  ``off / raw`` is the cost of the static checks and argument binding;
* ``host``: ``off`` plus what the checks did before issue 14, ``np.isfinite(np.asarray(x))`` (and y)
  on every call, i.e. a copy of the data to the host per step (for reference).

The target is ``on / off <= 1.1``; the exit status is 1 when a model misses it. Timings on a shared
machine are noisy: compare the ratios within one run. ``--n``, ``--steps``, ``--repeats`` shrink the
problem (e.g. for a smoke test)::

    python benchmarks/check_overhead.py                 # n = 1e6, 100 steps, 5 repeats
    python benchmarks/check_overhead.py --n 100000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import emjax

D = 10


def problem(name: str, n: int):
    key_truth, key_data, key_start = jax.random.split(jax.random.key(0), 3)
    model = emjax.SymMoLinE() if name == "SymMoLinE" else emjax.MoLinE(3)
    truth = emjax.testing.random_params(model, key_truth, D, dtype=jnp.float32)
    x, y = emjax.sample(model, truth, key_data, n)
    if name == "SymMoLinE":
        start = emjax.testing.perturb(truth, key_start, 0.5)
    else:
        start = emjax.testing.random_params(model, key_start, D, dtype=jnp.float32)
    x, y = jax.block_until_ready((x.astype(jnp.float32), y.astype(jnp.float32)))
    start = jax.tree_util.tree_map(lambda leaf: leaf.astype(jnp.float32), start)
    return model, start, x, y


def host_checked(model, params, x, y):
    """The pre-issue-14 cost: the value checks read the data on the host every call."""
    if not (np.all(np.isfinite(np.asarray(x))) and np.all(np.isfinite(np.asarray(y)))):
        raise ValueError("x and y must be finite")
    return emjax.em_step.unguarded(model, params, x, y)


def steps():
    return {
        "on": emjax.em_step,
        "off": emjax.em_step.unguarded,
        "raw": eqx.filter_jit(emjax.em_step.__wrapped__),
        "host": host_checked,
    }


def loop(step, model, params, x, y, num_steps: int) -> float:
    start = time.perf_counter()
    for _ in range(num_steps):
        params = step(model, params, x, y)
    jax.block_until_ready(params)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default="SymMoLinE,MoLinE(3)")
    parser.add_argument("--modes", default="on,off,raw,host", help="a subset of on,off,raw,host (on and off needed)")
    parser.add_argument("--target", type=float, default=1.1)
    args = parser.parse_args(argv)
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), n = {args.n:,}, d = {D}, float32, "
        f"{args.steps} em_step calls per loop, {args.repeats} repeats"
    )
    ok = True
    for name in args.models.split(","):
        model, params, x, y = problem(name, args.n)
        modes = {mode: step for mode, step in steps().items() if mode in args.modes.split(",")}
        for step in modes.values():  # compile, and one call each before timing
            jax.block_until_ready(step(model, params, x, y))
        times = {mode: [] for mode in modes}
        for _ in range(args.repeats):
            for mode, step in modes.items():
                times[mode].append(loop(step, model, params, x, y, args.steps))
        median = {mode: statistics.median(values) for mode, values in times.items()}
        ratio = median["on"] / median["off"]
        ok &= ratio <= args.target
        cells = ", ".join(f"{mode} {1e3 * value / args.steps:.2f} ms/step" for mode, value in median.items())
        print(f"{name}: median loop time {', '.join(f'{m} {v:.3f} s' for m, v in median.items())}")
        print(f"  per step: {cells}")
        others = ", ".join(
            f"{mode}/off = {median[mode] / median['off']:.3f}" for mode in ("raw", "host") if mode in median
        )
        print(f"  on/off = {ratio:.3f} (target <= {args.target})" + (f", {others}" if others else ""))
        print("  all loops (s): " + "; ".join(f"{m}: " + " ".join(f"{v:.3f}" for v in vs) for m, vs in times.items()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
