"""How long Table 2's Fashion-MNIST setting takes on this machine, without the data if need be.

Without ``--path`` the script writes a Fashion-MNIST-shaped folder (60,000 + 10,000 gzipped 28×28
IDX images drawn around 10 class prototypes) to a temporary directory: the timings depend on the
shapes, not on the pixels. It then

1. times ``emjax reproduce table2 --data fmnist --quick`` end to end (a fresh process);
2. times one iteration of every method at full size (n = 60,000, d = 785, two 10-class experts),
   one instance per device as the CLI runs them, and extrapolates the full run (tuning on 3
   instances × 9 candidates, then 25 instances × 100 iterations) over the devices.

    python benchmarks/table2_fmnist_timing.py [--path DIR] [--iterations 3]
"""

from __future__ import annotations

import argparse
import gzip
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={os.cpu_count() or 1}")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from emjax.experiments._table2 import TABLE2_STEP_GRIDS, Table2Cell, Table2Settings  # noqa: E402


def write_fake_fashion_mnist(folder: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0, 255, (10, 28, 28))
    for split, n in (("train", 60_000), ("t10k", 10_000)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.clip(0.6 * prototypes[labels] + rng.normal(0, 60, (n, 28, 28)), 0, 255).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            with gzip.open(folder / f"{split}-{kind}-ubyte.gz", "wb") as stream:
                stream.write(header + array.tobytes())


def seconds_per_iteration(settings: Table2Settings, data, method: str, iterations: int) -> float:
    settings = Table2Settings(**{**settings.__dict__, "num_iterations": iterations})
    cell = Table2Cell.from_settings(
        settings, data, step_sizes={"gd": 0.01, "gradient_em": 0.01, "adam": 0.001}, methods=(method,)
    )
    run = eqx.filter_jit(lambda c, key: c(key))
    jax.block_until_ready(run(cell, jax.random.key(0)))  # compile
    tic = time.perf_counter()
    jax.block_until_ready(run(cell, jax.random.key(1)))
    return (time.perf_counter() - tic) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default=None, help="a folder with the real files (default: write a fake one)")
    parser.add_argument("--iterations", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = args.path
        if path is None:
            path = Path(scratch) / "fashion-mnist"
            path.mkdir()
            write_fake_fashion_mnist(path)
        tic = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "emjax",
                "reproduce",
                "table2",
                "--data",
                "fmnist",
                "--path",
                str(path),
                "--quick",
                "--no-progress",
                "--out",
                str(Path(scratch) / "out"),
            ],
            check=True,
        )
        quick = time.perf_counter() - tic
        settings = Table2Settings(data="fmnist", path=str(path))
        data = settings.load()
        devices = len(jax.devices())
        # One instance per device at a time: measure with every device busy, as in the CLI's sweep.
        per_iteration = {m: seconds_per_iteration(settings, data, m, args.iterations) for m in settings.methods}
    t = settings.num_iterations
    tuning = sum(per_iteration[m] for m in ("gradient_em", "gd", "adam")) * t * 3 * len(TABLE2_STEP_GRIDS["gd"])
    runs = sum(per_iteration.values()) * t * settings.num_instances
    print(f"\ndevices: {devices}; quick run (`--quick`, 3,000/1,000 images, 2 instances): {quick:.0f} s wall")
    print(
        "full size, seconds per iteration (one instance on one device): "
        + ", ".join(f"{m} {s:.2f}" for m, s in per_iteration.items())
    )
    print(
        f"full run estimate: tuning {tuning / devices / 60:.0f} min + 25 instances x 100 iterations "
        f"{runs / devices / 60:.0f} min over {devices} devices"
    )


if __name__ == "__main__":
    main()
