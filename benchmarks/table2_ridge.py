"""Choose Table 2's ridge (and L-BFGS cap) on a validation split of the digits training set (never on the test split).

For each λ in a grid, EM (the method the ridge matters most for: it is the one that converges) is run
for 100 iterations on Random-Invert digits, training on 80% of the fixed training split and scoring
on the other 20% (a stratified split with its own seed), over several instances. The λ with the
lowest mean validation cross-entropy is the one `emjax reproduce table2` uses.

    python benchmarks/table2_ridge.py [--instances 8] [--ridges 1e-5,1e-4,3e-4,1e-3,3e-3] [--lbfgs-steps 3,5,10,20,50]
                                      [--init-scales 0.01]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={os.cpu_count() or 1}")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import emjax  # noqa: E402
from emjax.datasets import ImageDataset, digits, stratified_split  # noqa: E402
from emjax.experiments._table2 import Table2Cell, Table2Settings  # noqa: E402


def validation_data() -> ImageDataset:
    data = digits()
    fit_index, validation_index = stratified_split(data.y_train, 0.2, seed=1)
    return ImageDataset(
        x_train=data.x_train[fit_index],
        y_train=data.y_train[fit_index],
        x_test=data.x_train[validation_index],
        y_test=data.y_train[validation_index],
        image_shape=data.image_shape,
        num_classes=data.num_classes,
        name="digits-validation",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--ridges", default="1e-5,1e-4,3e-4,1e-3,3e-3")
    parser.add_argument("--lbfgs-steps", default="3,5,10,20,50", help="comma-separated L-BFGS step caps per M-step")
    parser.add_argument("--init-scales", default="0.01", help="comma-separated scales of the random start")
    args = parser.parse_args()
    data = validation_data()
    print(f"{data!r}; EM, 100 iterations, {args.instances} instances per ridge, devices {jax.devices()}")
    print(
        "| ridge | L-BFGS steps | init scale | validation cross-entropy | validation accuracy | gate finds the flag "
        "| train L | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    grid = [
        (float(r), int(s), float(i))
        for r in args.ridges.split(",")
        for s in args.lbfgs_steps.split(",")
        for i in args.init_scales.split(",")
    ]
    for ridge, steps, scale in grid:
        settings = dataclasses.replace(
            Table2Settings(), ridge=ridge, lbfgs_steps=steps, init_scale=scale, methods=("em",)
        )
        cell = Table2Cell.from_settings(settings, data)
        tic = time.perf_counter()
        out = emjax.sweep(cell, 0, {"instance": np.arange(args.instances)}, progress=False).outputs
        seconds = time.perf_counter() - tic
        loss, accuracy = out["test_loss"][:, 0, -1], out["test_accuracy"][:, 0, -1]
        print(
            f"| {ridge:g} | {steps} | {scale:g} | {loss.mean():.3f} ± {loss.std():.3f} | "
            f"{100 * accuracy.mean():.1f}% ± {100 * accuracy.std():.1f} | "
            f"{100 * out['flag_agreement'][:, 0].mean():.1f}% | "
            f"{out['train_loss'][:, 0, -1].mean():.3f} | {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
