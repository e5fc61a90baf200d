r"""Benchmark: emjax best-of-10-restarts EM against R's flexmix on the same mixture-of-experts data.

What is compared
----------------
For every seed the script draws a fresh problem that no test of emjax uses (seeds 1000 and up by
default): a ground truth from ``emjax.testing.random_params`` (gate and expert norms 2, sigma 0.5),
x ~ N(0, I_d) and y from the model, n samples. Both programs then fit *the same model family* to
*the same numbers* (the data go to R through a CSV file written with 17 significant digits):

* ``--model gaussian`` (default): K linear-Gaussian experts, each with its own coefficients,
  intercept and sigma_k, and a multinomial-logit gate with intercept.
  emjax: ``MoLinE(K)`` on x with a column of ones appended.
  flexmix: ``FLXMRglm(y ~ x1 + ... + xd, family = "gaussian")`` with the concomitant model
  ``FLXPmultinom(~ x1 + ... + xd)``.
* ``--model logistic``: K logistic-regression experts (binary y) with the same gate.
  emjax: ``MoLogE(K, num_classes=2)``; flexmix: ``FLXMRglm(cbind(y, 1 - y) ~ ..., family = "binomial")``.

Both run EM from 10 starts and keep the best: emjax ``fit_restarts(model, em(), key, x, y,
num_restarts=10, num_steps=500, tol=1e-8)`` (10 data-driven k-means++ starts, vmapped) and flexmix
``stepFlexmix(..., k = K, nrep = 10, control = list(iter.max = 500, tolerance = 1e-8,
minprior = 0))`` (10 random-partition starts, run one after another). The stopping rules are the
same relative change of the log-likelihood (emjax: |L_t - L_t+1| <= tol |L_t+1|; flexmix:
|l_t - l_t-1| / (|l_t| + 0.1) < tol) with the same iteration cap.

Fairness choices:

* ``minprior = 0``: flexmix by default deletes a component whose mean prior falls below 0.05, which
  would fit a smaller model than emjax (a lower likelihood for reasons that are not the optimiser).
  With 0 both fit exactly K experts; the number of components flexmix kept is printed anyway
  (``--minprior`` changes it).
* flexmix's sigma update divides by (n - rank) instead of n (not the exact M-step), so its fixed
  point sits slightly below the maximum likelihood: about 1e-6 per sample at n = 2000, far below the
  1e-3 per sample tolerance, and the reason "diff/n" is a small positive number when both find the
  same optimum.
* The log-likelihoods are both the full Gaussian (or Bernoulli) log-likelihood with all constants:
  emjax's is ``-n * neg_log_likelihood(model, params, x, y)`` at the returned parameters, flexmix's
  is ``logLik(fit)`` of the best restart.

Timings
-------
* emjax "warm": ``fit_restarts`` on this data set, with the compiled program already in memory
  (it was compiled on a different data set of the same shape: a warm-up problem, or the previous
  seed), timed up to ``jax.block_until_ready`` of the result.
* emjax "1st call": the same fit again right after ``jax.clear_caches()``, so it includes tracing
  and XLA compilation (JAX itself is already initialised; the very first fit of the process, on
  the warm-up problem, is printed separately).
* flexmix: the R-side ``system.time`` elapsed seconds of the ``stepFlexmix`` call only (the table);
  "R proc" is the whole ``Rscript`` subprocess (R start-up, loading flexmix, reading the CSV).
* "speedup" is flexmix seconds / emjax warm seconds. JAX uses every core it sees (2 here); R runs
  single-threaded (reference BLAS).

Other columns: "diff/n" is (emjax - flexmix) log-likelihood per sample (>= 0: emjax is at least as
high); "em steps"/"em status" and "fx iter"/"fx conv" describe the returned (best) restart of each;
"fx K" is the number of components flexmix kept; "at best em/fx" counts, for each program, the
restarts that ended within the per-sample tolerance of the better of the two best log-likelihoods
(how often a single start finds the optimum). emjax's restarts run together under ``vmap``, each
stopping on its own, so the wall time follows the slowest restart: one start that crawls to a poor
local optimum for a few hundred steps makes that whole data set slower.

Timings on a shared machine are noisy: compare the ratios within one run, not absolute seconds
across runs or machines.

How to run
----------
From the repository root, with emjax installed (``pip install -e .``) and R with flexmix
(Debian: ``apt-get install r-base-core r-cran-flexmix``)::

    python benchmarks/flexmix_comparison.py              # 5 seeds, n=2000, d=3 (+ intercept), K=3
    python benchmarks/flexmix_comparison.py --quick      # 2 small problems, well under a minute
    python benchmarks/flexmix_comparison.py --seeds 10 --first-seed 2000 --n 5000 --d 5 --K 4
    python benchmarks/flexmix_comparison.py --model logistic --K 2 --seeds 3   # several minutes

Without ``Rscript`` or the flexmix package it prints why it skipped and exits with status 0.
The exit status is 1 when emjax's log-likelihood falls more than ``--per-sample-tol`` (1e-3) per
sample below flexmix's on any data set, so the script can serve as a check.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _harness import r_package_unavailable_reason  # a script's own folder is on sys.path

import emjax

NUM_RESTARTS = 10
WARMUP_SEED = 999  # the warm-up problem that compiles emjax before any timed warm fit
R_INSTALL_HINT = "install r-base-core r-cran-flexmix"


@dataclass
class Problem:
    seed: int
    x: jax.Array  # (n, d + 1), last column ones
    y: jax.Array  # (n,)


@dataclass
class EmjaxRun:
    loglik: float
    warm_seconds: float
    first_call_seconds: float
    best_steps: int
    best_status: str  # emjax.Status name of the returned restart
    restart_logliks: list[float]  # the final log-likelihood of every restart


@dataclass
class FlexmixRun:
    loglik: float
    fit_seconds: float  # R-side elapsed time of stepFlexmix
    process_seconds: float  # the whole Rscript subprocess
    components: int
    iterations: int
    converged: bool
    restart_logliks: list[float]  # the final log-likelihood of every restart (NaN: stopped with an R error)


# ----------------------------------------------------------------------------- availability


def flexmix_unavailable_reason() -> str | None:
    """Why the benchmark cannot run (no Rscript, no flexmix), or None when it can."""
    return r_package_unavailable_reason("flexmix", R_INSTALL_HINT)


# ----------------------------------------------------------------------------- problems


def make_model(kind: str, num_experts: int):
    if kind == "gaussian":
        return emjax.MoLinE(num_experts)
    return emjax.MoLogE(num_experts, num_classes=2)


def make_problem(model, seed: int, n: int, d: int) -> Problem:
    """A ground truth and n samples from it, x with an intercept column appended."""
    key_truth, key_data = jax.random.split(jax.random.key(seed))
    truth = emjax.testing.random_params(model, key_truth, d, gate_norm=2.0, expert_norm=2.0, sigma=0.5)
    x, y = emjax.sample(model, truth, key_data, n)
    x = jnp.concatenate([x, jnp.ones((n, 1), x.dtype)], axis=1)
    return Problem(seed, x, y)


# ----------------------------------------------------------------------------- emjax


BATCH_SIZE = None  # set from --batch-size in main()


def timed_emjax_fit(model, problem: Problem, num_steps: int, tol: float):
    key = jax.random.fold_in(jax.random.key(problem.seed), 1)
    start = time.perf_counter()
    result = emjax.fit_restarts(
        model,
        emjax.em(),
        key,
        problem.x,
        problem.y,
        num_restarts=NUM_RESTARTS,
        num_steps=num_steps,
        tol=tol,
        batch_size=BATCH_SIZE,
    )
    result = jax.block_until_ready(result)
    return result, time.perf_counter() - start


def run_emjax(model, problem: Problem, num_steps: int, tol: float) -> EmjaxRun:
    """A warm fit (compiled program reused), then the same fit after clearing JAX's caches."""
    result, warm_seconds = timed_emjax_fit(model, problem, num_steps, tol)
    jax.clear_caches()
    again, first_call_seconds = timed_emjax_fit(model, problem, num_steps, tol)
    n = problem.x.shape[0]
    loglik = -n * float(emjax.neg_log_likelihood(model, result.params, problem.x, problem.y))
    again_loglik = -n * float(emjax.neg_log_likelihood(model, again.params, problem.x, problem.y))
    if not math.isclose(loglik, again_loglik, rel_tol=1e-9, abs_tol=1e-9):
        print(f"warning: seed {problem.seed}: the warm and first-call fits differ ({loglik} vs {again_loglik})")
    return EmjaxRun(
        loglik=loglik,
        warm_seconds=warm_seconds,
        first_call_seconds=first_call_seconds,
        best_steps=int(result.num_steps),
        best_status=emjax.Status(int(result.status)).name,
        restart_logliks=[-n * float(loss) for loss in np.asarray(result.restart_losses)],
    )


# ----------------------------------------------------------------------------- flexmix

R_TEMPLATE = """\
suppressPackageStartupMessages(library(flexmix))
data <- read.csv("{csv}")
set.seed({seed})
timing <- system.time(
  fit <- stepFlexmix({response} ~ {terms}, data = data, k = {k}, nrep = {nrep}, verbose = FALSE, drop = FALSE,
                     model = FLXMRglm(family = "{family}"), concomitant = FLXPmultinom(~ {terms}),
                     control = list(iter.max = {iter_max}, tolerance = {tol}, minprior = {minprior}, verbose = 0))
)
best <- getModel(fit, which = 1)
cat("LOGLIK", format(as.numeric(logLik(best)), digits = 17), "\\n")
cat("ELAPSED", timing[["elapsed"]], "\\n")
cat("COMPONENTS", best@k, "\\n")
cat("ITERATIONS", best@iter, "\\n")
cat("CONVERGED", as.integer(best@converged), "\\n")
cat("RESTARTS", format(fit@logLiks[1, ], digits = 17), "\\n")
"""


def write_csv(path: Path, problem: Problem) -> list[str]:
    """Write y and the features without the intercept column (R adds its own); return the column names."""
    features = np.asarray(problem.x)[:, :-1]
    names = [f"x{j + 1}" for j in range(features.shape[1])]
    table = np.column_stack([np.asarray(problem.y), features])
    np.savetxt(path, table, delimiter=",", header=",".join(["y"] + names), comments="", fmt="%.17g")
    return names


def run_flexmix(
    kind: str, problem: Problem, num_experts: int, num_steps: int, tol: float, minprior: float
) -> FlexmixRun:
    with tempfile.TemporaryDirectory(prefix="emjax_flexmix_") as folder:
        csv = Path(folder) / "data.csv"
        names = write_csv(csv, problem)
        script = Path(folder) / "fit.R"
        script.write_text(
            R_TEMPLATE.format(
                csv=csv.as_posix(),
                seed=problem.seed,
                k=num_experts,
                nrep=NUM_RESTARTS,
                iter_max=num_steps,
                tol=repr(tol),
                minprior=repr(minprior),
                terms=" + ".join(names),
                response="y" if kind == "gaussian" else "cbind(y, 1 - y)",
                family="gaussian" if kind == "gaussian" else "binomial",
            )
        )
        start = time.perf_counter()
        done = subprocess.run(["Rscript", "--vanilla", str(script)], capture_output=True, text=True)
        process_seconds = time.perf_counter() - start
    values = dict(line.split(maxsplit=1) for line in done.stdout.splitlines() if line.strip())
    if done.returncode != 0 or "LOGLIK" not in values:
        print(f"warning: seed {problem.seed}: flexmix failed (exit {done.returncode}):\n{done.stderr.strip()}")
        return FlexmixRun(math.nan, math.nan, process_seconds, 0, 0, False, [math.nan] * NUM_RESTARTS)
    return FlexmixRun(
        loglik=float(values["LOGLIK"]),
        fit_seconds=float(values["ELAPSED"]),
        process_seconds=process_seconds,
        components=int(values["COMPONENTS"]),
        iterations=int(values["ITERATIONS"]),
        converged=values["CONVERGED"].strip() == "1",
        restart_logliks=[math.nan if value == "NA" else float(value) for value in values["RESTARTS"].split()],
    )


# ----------------------------------------------------------------------------- report

COLUMNS = [
    ("seed", 5),
    ("n", 6),
    ("K", 2),
    ("emjax loglik", 13),
    ("flexmix loglik", 14),
    ("diff/n", 10),
    ("emjax warm s", 12),
    ("emjax 1st s", 11),
    ("flexmix s", 9),
    ("R proc s", 8),
    ("speedup", 7),
    ("em steps", 8),
    ("em status", 9),
    ("fx iter", 7),
    ("fx conv", 7),
    ("fx K", 4),
    ("at best em/fx", 13),
]


def format_row(cells) -> str:
    return " | ".join(str(cell).rjust(width) for cell, (_, width) in zip(cells, COLUMNS, strict=True))


def restarts_at_best(logliks: list[float], best: float, tolerance: float) -> int:
    """How many restarts ended within ``tolerance`` (total, not per sample) of ``best``; NaN counts as a miss."""
    return sum(1 for value in logliks if value >= best - tolerance)


def table_row(problem: Problem, num_experts: int, em: EmjaxRun, fx: FlexmixRun, per_sample_tol: float) -> str:
    n = problem.x.shape[0]
    best = max(em.loglik, fx.loglik) if not math.isnan(fx.loglik) else em.loglik
    hits = (
        f"{restarts_at_best(em.restart_logliks, best, per_sample_tol * n)}/"
        f"{restarts_at_best(fx.restart_logliks, best, per_sample_tol * n)}"
    )
    return format_row(
        [
            problem.seed,
            n,
            num_experts,
            f"{em.loglik:.4f}",
            f"{fx.loglik:.4f}",
            f"{(em.loglik - fx.loglik) / n:+.2e}",
            f"{em.warm_seconds:.3f}",
            f"{em.first_call_seconds:.3f}",
            f"{fx.fit_seconds:.3f}",
            f"{fx.process_seconds:.2f}",
            f"{fx.fit_seconds / em.warm_seconds:.1f}x",
            em.best_steps,
            em.best_status,
            fx.iterations,
            "yes" if fx.converged else "no",
            fx.components,
            hits,
        ]
    )


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run: 2 seeds, n=500, K=2")
    parser.add_argument("--seeds", type=int, default=None, help="number of data sets (default 5; 2 with --quick)")
    parser.add_argument("--first-seed", type=int, default=1000, help="seeds are first-seed, first-seed + 1, ...")
    parser.add_argument("--n", type=int, default=None, help="samples per data set (default 2000; 500 with --quick)")
    parser.add_argument("--d", type=int, default=3, help="features, without the intercept (default 3)")
    parser.add_argument("--K", type=int, default=None, help="experts (default 3; 2 with --quick)")
    parser.add_argument("--model", choices=["gaussian", "logistic"], default="gaussian")
    parser.add_argument("--steps", type=int, default=500, help="EM iteration cap of every restart (default 500)")
    parser.add_argument("--tol", type=float, default=1e-8, help="relative log-likelihood tolerance (default 1e-8)")
    parser.add_argument(
        "--batch-size",
        default="auto",
        help="fit_restarts batch_size: 'all' (one vmap over the restarts), an int (chunks), or "
        "'auto' (default: 1 on a CPU, where a vmapped while-loop waits for its slowest lane; "
        "'all' on an accelerator)",
    )
    parser.add_argument("--minprior", type=float, default=0.0, help="flexmix's minprior (default 0: keep K)")
    parser.add_argument(
        "--per-sample-tol",
        type=float,
        default=1e-3,
        help="emjax must reach flexmix's log-likelihood within this per sample (default 1e-3)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.seeds = args.seeds if args.seeds is not None else (2 if quick else 5)
    args.n = args.n if args.n is not None else (500 if quick else 2000)
    args.K = args.K if args.K is not None else (2 if quick else 3)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    reason = flexmix_unavailable_reason()
    if reason is not None:
        print(f"flexmix benchmark skipped: {reason}")
        return 0
    jax.config.update("jax_enable_x64", True)
    global BATCH_SIZE
    if args.batch_size == "auto":
        BATCH_SIZE = "auto"  # fit_restarts' default: 1 on a CPU, one vmap on an accelerator
    else:
        BATCH_SIZE = None if args.batch_size == "all" else int(args.batch_size)

    model = make_model(args.model, args.K)
    print(
        f"emjax {args.model} mixture of {args.K} experts vs flexmix stepFlexmix; d = {args.d} + intercept, "
        f"{NUM_RESTARTS} restarts, <= {args.steps} EM steps, tol {args.tol:g}, flexmix minprior {args.minprior:g}"
    )
    layout = "all restarts in one vmap" if BATCH_SIZE is None else "per backend" if BATCH_SIZE == "auto" else "chunks"
    print(
        f"CPU cores: {os.cpu_count()}; JAX devices: {jax.devices()}; float64; "
        f"fit_restarts batch_size={BATCH_SIZE} ({layout})"
    )

    warmup = make_problem(model, WARMUP_SEED, args.n, args.d)
    _, cold_seconds = timed_emjax_fit(model, warmup, args.steps, args.tol)
    print(
        f"emjax first fit of the process (warm-up problem, seed {WARMUP_SEED}; JAX start-up + compile + run): "
        f"{cold_seconds:.2f} s\n"
    )

    print(format_row([name for name, _ in COLUMNS]))
    print("-" * len(format_row([name for name, _ in COLUMNS])))
    differences, speedups, speedups_first = [], [], []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        problem = make_problem(model, seed, args.n, args.d)
        em = run_emjax(model, problem, args.steps, args.tol)
        fx = run_flexmix(args.model, problem, args.K, args.steps, args.tol, args.minprior)
        print(table_row(problem, args.K, em, fx, args.per_sample_tol), flush=True)
        differences.append((em.loglik - fx.loglik) / args.n)
        speedups.append(fx.fit_seconds / em.warm_seconds)
        speedups_first.append(fx.fit_seconds / em.first_call_seconds)

    at_least_as_good = all(diff >= -args.per_sample_tol for diff in differences)
    print()
    print(
        f"emjax >= flexmix - {args.per_sample_tol:g} per sample on all {len(differences)} data sets: "
        f"{'yes' if at_least_as_good else 'NO'} (worst diff/n {min(differences):+.2e}, best {max(differences):+.2e})"
    )
    print(
        f"median speed ratio flexmix / emjax: {statistics.median(speedups):.1f}x (warm), "
        f"{statistics.median(speedups_first):.1f}x (emjax first call incl. compile)"
    )
    return 0 if at_least_as_good else 1


if __name__ == "__main__":
    sys.exit(main())
