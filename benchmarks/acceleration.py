r"""Benchmark: SQUAREM and Anderson acceleration against plain EM (issue 16), in map evaluations and wall time.

What is measured
----------------
Every fit is ``emjax.fit(model, solver, start, x, y, max_steps, tol=1e-8)`` with the default
stopping rule (``criterion="distance"``: Aitken's estimate of the distance to the fixed point,
``distance_estimate``, below ``tol * max|theta|``) on Hasselblad's data, and with ``tol=0,
atol=1e-8`` (an estimated distance below 1e-8, the issue's target) on the other problems, in
float64, for the solvers

* ``em()`` (plain EM),
* ``squarem(em())`` (step length ``method=1``, the default) and ``squarem(em(), method=3)`` (R's default),
* ``anderson(em())`` (DAAREM's default memory),
* ``squarem(em(), monotone=True)`` and ``anderson(em(), monotone=True)`` where marked (each is a
  separate compilation, so they run on the cheap problems only).
* for reference, L-BFGS on L (``optax.lbfgs`` with its zoom line search, over the free
  unconstrained coordinates; not an emjax solver), stopped when its last step is below the same
  tolerance; its *losses* count value-and-gradient evaluations, line search included.

The report opens with a table of issue 16's targets (met or not, with the measured value).

Per fit the script reports what ``FitResult`` says (``num_steps``: loop iterations, i.e. extrapolation
cycles for an accelerated solver; ``stats``: map evaluations, loss evaluations, fallbacks; ``status``;
``distance_estimate``; ``rate_estimate``) and what it does not know: the *true* distance, the
infinity norm over ``model.flatten`` coordinates between the returned parameters and a reference
fixed point, and n (L - L_ref). The reference is computed by ``squarem(em())`` and
``anderson(em())`` started at plain EM's answer with ``tol=1e-12`` (for Hasselblad's data also by
plain EM from the start with ``tol=1e-12``); the lowest final loss is the reference and "ref spread"
the largest distance between the runs, the resolution of the "true distance" column. EM's rate is
``emjax.em_rate`` (lambda_max of the missing-information matrix) at the reference.

Sections
--------
1. **Hasselblad's Poisson mixture** (deaths per day of women over 80 in London, 1910-1912; 0..9
   deaths on 162, 267, 271, 185, 111, 61, 27, 8, 3, 1 days; n = 1096) as ``MoPoE(2)`` with an
   intercept-only x: gate row 1 is log(pi_2 / pi_1), the experts hold log lambda_k. Starts
   (pi, lambda_1, lambda_2) = (0.3, 1, 5) and (0.5, 1, 3). When ``Rscript`` with the ``SQUAREM``
   package is present, R's ``fpiter`` and ``squarem`` (method 3, R's default, and method 1) run the
   same problem with ``control = list(tol = 1e-8)`` on the natural parameters (R stops when the
   2-norm of the last step is below tol); their fpevals / objfevals are reported and their answers
   measured against the same reference (mapped to emjax's coordinates). Without R the rows are
   skipped with a note.
2. **Slow problems** (EM's rate close to 1): SymMoLogE with low SNR (w = (0.3, 0), beta = (0, 0.6),
   n = 2000), MoLogE(2) with overlapping experts (``random_params`` with gate norm 1 and expert
   norm 0.8, d = 3, n = 2000) and MoLinE(3) with overlapping experts (gate norm 1, expert norm
   0.5, sigma 1, d = 3, n = 2000); starts from ``emjax.init_params``.
3. **Fast problems** (rate < 0.5): SymMoLinE at SNR 4 (w = e_1, beta = 4 e_2, d = 10, n = 20000)
   and MoLinE(3) with separated experts (gate norm 2, expert norm 4, sigma 0.5, d = 3, n = 2000):
   what the accelerators cost when EM is already fast.
4. **vmap**: 8 starts on Hasselblad's data and 8 on the slow SymMoLogE problem, each batch fitted
   in one ``jax.jit(jax.vmap(fit))`` with ``squarem(em())``, lane by lane against the unbatched fits
   (cycles, map and loss evaluations, parameters), and its wall time against a Python loop of the
   8 fits. ``--quick`` runs Hasselblad's starts only.

Timings
-------
Every solver is called once first (compilation and the run whose counts are reported), then the
solvers are timed in ``--repeats`` interleaved rounds (one call of each per round, each call up to
``jax.block_until_ready`` of the result); the table gives the median and "x EM", the ratio of
medians within this run. The machine is shared and noisy: compare ratios, not seconds across runs.
Every timed repeat must reproduce the first call's counts (the report says so).

How to run
----------
From the repository root, with emjax installed (``pip install -e .``)::

    python benchmarks/acceleration.py            # everything, about 2.5 minutes on 2 cores
    python benchmarks/acceleration.py --quick    # smaller problems, fewer solvers, under a minute
    python benchmarks/acceleration.py --no-r     # skip R even when it is installed

The report goes to ``benchmarks/results/acceleration.md`` and ``.json`` (``--out``, ``--json``;
``--quick`` writes ``acceleration_quick.md`` / ``.json`` unless told otherwise).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _harness import r_package_unavailable_reason  # a script's own folder is on sys.path

import emjax

HERE = os.path.dirname(os.path.abspath(__file__))
TOL = 1e-8
REFERENCE_TOL = 1e-12
# Sections 2-3 stop on the absolute estimate d̂ <= 1e-8, the target's ‖θ - θ̂‖∞ <= 1e-8 (tol=0, atol=1e-8);
# Hasselblad's section stops like R's comparison, tol=1e-8 relative (max|θ| is about 1 there).
ABSOLUTE_STOP = (0.0, TOL)

# Hasselblad (1969): deaths per day of women over 80 in London, 1910-1912; 0..9 deaths on these many days.
HASSELBLAD_DAYS = [162, 267, 271, 185, 111, 61, 27, 8, 3, 1]
HASSELBLAD_STARTS = [(0.3, 1.0, 5.0), (0.5, 1.0, 3.0)]
HASSELBLAD_FIXED_POINT = (0.35989, 1.25610, 2.66341)  # (pi, lambda_1, lambda_2), the published digits
HASSELBLAD_NLL = 1989.945860  # n L at the fixed point
HASSELBLAD_MAX_STEPS = 10_000
LBFGS = "lbfgs"  # stands for the L-BFGS reference (lbfgs_fit) in the solver tables


# ============================================================================ solvers


def solver_table(monotone: bool, method3: bool = True):
    """(label, solver) pairs; the monotone variants only when asked (each is one more compilation)."""
    solvers = [("EM", emjax.em()), ("SQUAREM m1", emjax.squarem(emjax.em()))]
    if method3:
        solvers.append(("SQUAREM m3", emjax.squarem(emjax.em(), method=3)))
    solvers.append(("Anderson", emjax.anderson(emjax.em())))
    if monotone:
        solvers.append(("SQUAREM m1 monotone", emjax.squarem(emjax.em(), monotone=True)))
        solvers.append(("Anderson monotone", emjax.anderson(emjax.em(), monotone=True)))
    solvers.append(("L-BFGS (optax)", LBFGS))
    return solvers


def counts(result) -> dict:
    if isinstance(result, LBFGSResult):
        return {
            "num_steps": int(result.num_steps),
            "status": "ok" if bool(result.converged) else "max_steps",
            "num_map_evaluations": 0,
            "num_loss_evaluations": int(result.num_loss_evaluations),
            "num_fallbacks": 0,
        }
    stats = {name: int(value) for name, value in result.stats.items()}
    return {"num_steps": int(result.num_steps), "status": emjax.Status(int(result.status)).name, **stats}


def flat(model, params) -> np.ndarray:
    return np.asarray(model.flatten(params))


def distance(model, params, reference) -> float:
    return float(np.max(np.abs(flat(model, params) - flat(model, reference))))


def finite_or_none(value):
    """JSON-safe floats: NaN and infinities become None."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_fit(model, solver, start, x, y, max_steps, tol, atol=0.0):
    if solver is LBFGS:
        return jax.block_until_ready(lbfgs_fit(model, start, x, y, max_steps, tol, atol))
    return jax.block_until_ready(emjax.fit(model, solver, start, x, y, max_steps, tol=tol, atol=atol))


class LBFGSResult(NamedTuple):
    """What :func:`lbfgs_fit` returns, shaped like the fields of ``FitResult`` the report reads."""

    params: object
    final_loss: jax.Array
    num_steps: jax.Array
    num_loss_evaluations: jax.Array
    converged: jax.Array
    distance_estimate: jax.Array  # the last step's max norm (L-BFGS has no rate estimate)
    rate_estimate: float = math.nan


@eqx.filter_jit  # the model may hold arrays (SymMoLinE's sigma): filter_jit traces them
def lbfgs_fit(model, start, x, y, max_steps, tol, atol):
    """L-BFGS (``optax.lbfgs``, zoom line search) on L over the free unconstrained coordinates.

    The reference of issue 16's table, not an emjax solver: a superlinear method on the same
    objective. It stops when its last step is at most ``atol + tol * max|theta|`` in the max norm
    (for a superlinear method the last step is the distance to the minimiser, up to higher order)
    or after ``max_steps`` iterations; it counts as converged only when it stopped on the step with
    a finite loss and gradient norm below ``sqrt(tol + atol)``. Every value-and-gradient evaluation is
    counted: the first one, then the line search's (``value_and_grad_from_state`` reuses the line
    search's last value and gradient, so an iteration costs exactly its line-search steps)."""
    like = model.to_unconstrained(start)

    def objective(u):
        return emjax.neg_log_likelihood(model, model.from_unconstrained(model.unflatten(u, like)), x, y)

    optimiser = optax.lbfgs(memory_size=10)
    value_and_grad = optax.value_and_grad_from_state(objective)
    u0 = model.flatten(like)

    def keep_going(state):
        _, _, k, step, evaluations = state
        return (k < max_steps) & (step > atol + tol * jnp.max(jnp.abs(state[0])))

    def iteration(state):
        u, opt_state, k, _, evaluations = state
        value, gradient = value_and_grad(u, state=opt_state)
        updates, opt_state = optimiser.update(gradient, opt_state, u, value=value, grad=gradient, value_fn=objective)
        extra = optax.tree_utils.tree_get(opt_state, "num_linesearch_steps")
        return u + updates, opt_state, k + 1, jnp.max(jnp.abs(updates)), evaluations + extra

    init = (u0, optimiser.init(u0), 0, jnp.asarray(jnp.inf, u0.dtype), 1)
    u, _, steps, step, evaluations = jax.lax.while_loop(keep_going, iteration, init)
    params = model.from_unconstrained(model.unflatten(u, like))
    loss, gradient = jax.value_and_grad(objective)(u)
    converged = (steps < max_steps) & jnp.isfinite(loss) & (jnp.max(jnp.abs(gradient)) <= jnp.sqrt(tol + atol))
    return LBFGSResult(params, loss, steps, evaluations, converged, step)


def relabelled(model, params, reference):
    """``params`` under the label permutation (K experts) or sign swap (symmetric models) nearest ``reference``."""
    if isinstance(params, emjax.MoEParams):
        return emjax.testing.match_experts(params, reference)
    swapped = emjax.SymParams(w=-params.w, beta=-params.beta)
    return swapped if distance(model, swapped, reference) < distance(model, params, reference) else params


def true_distance(model, params, reference) -> float:
    """Max-norm distance over ``model.flatten`` to the reference, up to the labels."""
    return distance(model, relabelled(model, params, reference), reference)


def reference_point(model, start, em_params, x, y, max_steps, extra_em: bool = False) -> dict:
    """EM's fixed point from ``start``: ``anderson(em())`` and ``squarem(em())`` at tol 1e-12, both
    started at plain EM's answer (tol 1e-8), so they refine the fixed point EM itself approaches;
    with ``extra_em`` also plain EM from ``start`` at tol 1e-12. The lowest final loss is the
    reference and "spread" the largest distance between the runs. The same ``max_steps`` as the
    benchmarked fits, so these reuse their compilations."""
    tic = time.perf_counter()
    runs = {
        "Anderson from EM": run_fit(model, emjax.anderson(emjax.em()), em_params, x, y, max_steps, REFERENCE_TOL),
        "SQUAREM m1 from EM": run_fit(model, emjax.squarem(emjax.em()), em_params, x, y, max_steps, REFERENCE_TOL),
    }
    if extra_em:
        runs[f"EM from start, tol {REFERENCE_TOL:g}"] = run_fit(
            model, emjax.em(), start, x, y, max_steps, REFERENCE_TOL
        )
    best = min(runs, key=lambda name: float(runs[name].final_loss))
    params = runs[best].params
    spread = max(true_distance(model, result.params, params) for result in runs.values())
    rate = float(emjax.em_rate(model, params, x, y))
    info = {
        "params": params,
        "loss": float(runs[best].final_loss),
        "from": best,
        "spread": spread,
        "runs": {
            name: {
                **counts(result),
                "final_loss": float(result.final_loss),
                "distance_estimate": float(result.distance_estimate),
            }
            for name, result in runs.items()
        },
        "em_rate": rate,
        "num_parameters": int(flat(model, params).size),
        "max_abs_theta": float(np.max(np.abs(flat(model, params)))),
        "seconds": time.perf_counter() - tic,
    }
    print(
        f"  reference: {best}; "
        + ", ".join(f"{name} {r['num_map_evaluations']} maps {r['status']}" for name, r in info["runs"].items())
        + f"; spread {spread:.1e}; EM rate {rate:.6f}; {info['seconds']:.1f} s",
        flush=True,
    )
    return info


def bench_solvers(
    label, model, solvers, start, x, y, max_steps, repeats, describe=None, extra_em=False, stop=(TOL, 0.0)
):
    """Each solver once (compile + the reported run), the reference from EM's answer, then ``repeats``
    interleaved timed rounds. ``describe(result, reference)`` adds fields of the reported run to its row.

    Returns (rows, reference)."""
    rows, results = [], {}
    n = int(y.shape[0])
    for name, solver in solvers:
        tic = time.perf_counter()
        result = run_fit(model, solver, start, x, y, max_steps, *stop)
        first = time.perf_counter() - tic
        results[name] = result
        row = {
            "problem": label,
            "solver": name,
            **counts(result),
            "first_call_s": first,
            "times_s": [],
            "final_loss": float(result.final_loss),
            "distance_estimate": float(result.distance_estimate),
            "rate_estimate": float(result.rate_estimate),
            "repeats_reproduce_counts": True,
        }
        rows.append(row)
        print(
            f"  {label:30s} {name:20s} cycles {row['num_steps']:6d}  maps {row['num_map_evaluations']:6d}"
            f"  fallbacks {row['num_fallbacks']:3d}  {row['status']:9s} first call {first:6.2f} s",
            flush=True,
        )
    reference = reference_point(model, start, results["EM"].params, x, y, max_steps, extra_em)
    for row in rows:
        params = results[row["solver"]].params
        row["true_distance"] = true_distance(model, params, reference["params"])
        row["raw_distance"] = distance(model, params, reference["params"])
        row["n_delta_loss"] = n * (row["final_loss"] - reference["loss"])
        if describe is not None:
            row.update(describe(results[row["solver"]], reference))
    for _ in range(repeats):
        for (_, solver), row in zip(solvers, rows, strict=True):
            tic = time.perf_counter()
            result = run_fit(model, solver, start, x, y, max_steps, *stop)
            row["times_s"].append(time.perf_counter() - tic)
            again = counts(result)
            row["repeats_reproduce_counts"] &= again == {key: row[key] for key in again}
    em_row = next(row for row in rows if row["solver"] == "EM")
    em_seconds = statistics.median(em_row["times_s"]) if em_row["times_s"] else math.nan
    for row in rows:
        row["median_s"] = statistics.median(row["times_s"]) if row["times_s"] else math.nan
        row["time_vs_em"] = row["median_s"] / em_seconds if em_row["times_s"] else math.nan
        maps = row["num_map_evaluations"]
        row["em_maps_over_maps"] = em_row["num_map_evaluations"] / maps if maps else math.nan
        print(
            f"  {label:30s} {row['solver']:20s} true dist {row['true_distance']:.1e}  d̂ {row['distance_estimate']:.1e}"
            f"  ρ̂ {row['rate_estimate']:.5f}  n ΔL {row['n_delta_loss']:+.1e}  median {row['median_s']:.4f} s"
            f" ({row['time_vs_em']:.2f}x EM)",
            flush=True,
        )
    return rows, reference


def public_reference(reference: dict) -> dict:
    return {key: value for key, value in reference.items() if key != "params"}


# ============================================================================ 1. Hasselblad


def hasselblad_data():
    y = jnp.asarray(np.repeat(np.arange(10), HASSELBLAD_DAYS), jnp.float64)
    return jnp.ones((y.size, 1), jnp.float64), y


def hasselblad_params(pi, rate1, rate2):
    """(pi, lambda_1, lambda_2) as MoPoE(2) parameters: gate row 0 pinned at 0, row 1 log(pi_2/pi_1)."""
    return emjax.MoEParams(
        gate=jnp.array([[0.0], [math.log((1 - pi) / pi)]], jnp.float64),
        experts=jnp.log(jnp.array([[rate1], [rate2]], jnp.float64)),
    )


def hasselblad_natural(params) -> list[float]:
    pi = 1 / (1 + math.exp(float(params.gate[1, 0])))
    return [pi, *(math.exp(float(v)) for v in np.asarray(params.experts[:, 0]))]


R_SCRIPT = r"""
suppressMessages(library(SQUAREM))
y <- c(%(days)s)
i <- 0:(length(y) - 1)
em <- function(p, y) {
  a <- p[1] * exp(-p[2]) * p[2]^i
  b <- (1 - p[1]) * exp(-p[3]) * p[3]^i
  z <- a / (a + b)
  c(sum(y * z) / sum(y), sum(y * i * z) / sum(y * z), sum(y * i * (1 - z)) / sum(y * (1 - z)))
}
nll <- function(p, y) -sum(y * log(p[1] * dpois(i, p[2]) + (1 - p[1]) * dpois(i, p[3])))
starts <- list(%(starts)s)
for (s in starts) {
  for (m in c("fpiter", "squarem3", "squarem1")) {
    t <- system.time(r <- if (m == "fpiter") {
      fpiter(s, y = y, fixptfn = em, objfn = nll, control = list(tol = %(tol)s, maxiter = 50000))
    } else {
      squarem(s, y = y, fixptfn = em, objfn = nll,
              control = list(tol = %(tol)s, method = if (m == "squarem3") 3 else 1, maxiter = 50000))
    })
    objf <- if (is.null(r$objfevals)) -1L else r$objfevals
    cat(sprintf("RESULT %%s %%.17g %%.17g %%.17g %%d %%d %%s %%.17g %%.17g %%.17g %%.17g %%.6f\n", m, s[1], s[2], s[3],
        r$fpevals, objf, r$convergence, r$par[1], r$par[2], r$par[3], nll(r$par, y), t[["elapsed"]]))
  }
}
cat(sprintf("VERSION %%s SQUAREM %%s\n", R.version.string, as.character(packageVersion("SQUAREM"))))
"""


def run_r(starts) -> dict:
    """R's fpiter and squarem (methods 3 and 1) on Hasselblad's data; {"skipped": why} without R."""
    reason = r_package_unavailable_reason(
        "SQUAREM", "Debian: apt-get install r-base-core, then install.packages('SQUAREM')"
    )
    if reason:
        return {"skipped": reason}
    script = R_SCRIPT % {
        "days": ", ".join(str(d) for d in HASSELBLAD_DAYS),
        "starts": ", ".join(f"c({a!r}, {b!r}, {c!r})" for a, b, c in starts),
        "tol": repr(TOL),
    }
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "hasselblad.R")
        with open(path, "w") as handle:
            handle.write(script)
        tic = time.perf_counter()
        done = subprocess.run(["Rscript", "--vanilla", path], capture_output=True, text=True, timeout=600)
        process = time.perf_counter() - tic
    if done.returncode != 0:
        return {"skipped": "Rscript failed: " + " | ".join(done.stderr.strip().splitlines()[-3:])}
    runs, version = [], None
    for line in done.stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["RESULT"]:
            name = parts[1]
            start = tuple(float(v) for v in parts[2:5])
            runs.append(
                {
                    "solver": {"fpiter": "R fpiter", "squarem3": "R squarem m3", "squarem1": "R squarem m1"}[name],
                    "start": start,
                    "fpevals": int(parts[5]),
                    "objfevals": None if int(parts[6]) < 0 else int(parts[6]),
                    "converged": parts[7] == "TRUE",
                    "natural": [float(v) for v in parts[8:11]],
                    "n_loss": float(parts[11]),
                    "seconds": float(parts[12]),
                }
            )
        elif parts[:1] == ["VERSION"]:
            version = line[len("VERSION ") :]
    return {"runs": runs, "version": version, "process_s": process}


def section_hasselblad(args) -> dict:
    print("1. Hasselblad's Poisson mixture, MoPoE(2), intercept-only x", flush=True)
    model = emjax.MoPoE(2)
    x, y = hasselblad_data()
    n = int(y.size)
    solvers = solver_table(monotone=not args.quick, method3=not args.quick)
    out = {"n": n, "max_steps": HASSELBLAD_MAX_STEPS, "starts": []}
    references = {}
    for start_natural in HASSELBLAD_STARTS:
        start = hasselblad_params(*start_natural)
        print(f" start (pi, lambda1, lambda2) = {start_natural}", flush=True)

        def describe(result, reference):
            return {
                "natural": hasselblad_natural(relabelled(model, result.params, reference["params"])),
                "n_loss": n * float(result.final_loss),
            }

        rows, reference = bench_solvers(
            f"Hasselblad {start_natural}",
            model,
            solvers,
            start,
            x,
            y,
            HASSELBLAD_MAX_STEPS,
            args.repeats,
            describe=describe,
            extra_em=not args.quick,
        )
        references[start_natural] = reference["params"]
        out["starts"].append(
            {
                "start": start_natural,
                "reference": public_reference(reference)
                | {"natural": hasselblad_natural(reference["params"]), "n_loss": n * reference["loss"]},
                "rows": rows,
            }
        )
    if args.no_r:
        out["r"] = {"skipped": "--no-r was given"}
    else:
        out["r"] = run_r(HASSELBLAD_STARTS)
        for run in out["r"].get("runs", []):
            reference = references[tuple(run["start"])]
            run["true_distance"] = true_distance(model, hasselblad_params(*run["natural"]), reference)
            print(
                f"  {run['solver']:14s} start {run['start']}: fpevals {run['fpevals']}, objfevals "
                f"{run['objfevals']}, true dist {run['true_distance']:.1e}",
                flush=True,
            )
        if "skipped" in out["r"]:
            print(f"  R skipped: {out['r']['skipped']}", flush=True)
    return out


# ============================================================================ 2-3. slow and fast problems


def make_problem(spec: dict):
    """(model, x, y, start) of one named problem."""
    kind, n = spec["kind"], spec["n"]
    if kind in ("SymMoLogE", "SymMoLinE"):
        model = emjax.SymMoLogE() if kind == "SymMoLogE" else emjax.SymMoLinE()
        truth = emjax.SymParams(w=jnp.asarray(spec["w"], jnp.float64), beta=jnp.asarray(spec["beta"], jnp.float64))
    else:
        model = {"MoLogE": emjax.MoLogE, "MoLinE": emjax.MoLinE}[kind](spec["K"])
        truth = emjax.testing.random_params(
            model,
            jax.random.key(spec["truth_seed"]),
            spec["d"],
            gate_norm=spec["gate_norm"],
            expert_norm=spec["expert_norm"],
            sigma=spec.get("sigma", 0.5),
            dtype=jnp.float64,
        )
    x, y = emjax.sample(model, truth, jax.random.key(spec["data_seed"]), n)
    start = emjax.init_params(model, jax.random.key(spec["start_seed"]), x, y)
    return model, x, y, start


SYMMOLOGE_SLOW = {
    "label": "SymMoLogE w=(0.3,0) β=(0,0.6)",
    "kind": "SymMoLogE",
    "w": [0.3, 0.0],
    "beta": [0.0, 0.6],
    "n": 2000,
    "data_seed": 3,
    "start_seed": 5,
    "max_steps": 50_000,
}
MOLINE_SPEC = {"kind": "MoLinE", "K": 3, "d": 3, "n": 2000, "max_steps": 20_000}  # slow and fast share compilations
SLOW = [
    SYMMOLOGE_SLOW,
    {
        "label": "MoLogE(2) overlapping",
        "kind": "MoLogE",
        "K": 2,
        "d": 3,
        "gate_norm": 1.0,
        "expert_norm": 0.8,
        "truth_seed": 50,
        "data_seed": 51,
        "start_seed": 52,
        "n": 2000,
        "max_steps": 20_000,
    },
    {
        **MOLINE_SPEC,
        "label": "MoLinE(3) overlapping",
        "gate_norm": 1.0,
        "expert_norm": 0.5,
        "sigma": 1.0,
        "truth_seed": 30,
        "data_seed": 31,
        "start_seed": 32,
    },
]
FAST = [
    {
        "label": "SymMoLinE SNR 4, d=10",
        "kind": "SymMoLinE",
        "w": [1.0] + [0.0] * 9,
        "beta": [0.0, 4.0] + [0.0] * 8,
        "n": 20_000,
        "data_seed": 3,
        "start_seed": 5,
        "max_steps": 2000,
    },
    {
        **MOLINE_SPEC,
        "label": "MoLinE(3) separated",
        "gate_norm": 2.0,
        "expert_norm": 4.0,
        "sigma": 0.5,
        "truth_seed": 30,
        "data_seed": 31,
        "start_seed": 32,
    },
]


def section_problems(title, specs, repeats, monotone_for=(), method3=True) -> list[dict]:
    print(title, flush=True)
    out = []
    for spec in specs:
        model, x, y, start = make_problem(spec)
        print(f" {spec['label']} (n={spec['n']})", flush=True)
        solvers = solver_table(monotone=spec["label"] in monotone_for, method3=method3)
        rows, reference = bench_solvers(
            spec["label"], model, solvers, start, x, y, spec["max_steps"], repeats, stop=ABSOLUTE_STOP
        )
        out.append({"spec": spec, "reference": public_reference(reference), "rows": rows})
    return out


# ============================================================================ 4. vmap


def vmap_check(label, model, solver, starts, x, y, max_steps, repeats, perturb: bool) -> dict:
    """``starts`` (a list) fitted in one jitted vmap and one by one; per-lane counts, parameters and times.

    With ``perturb`` every lane is also fitted alone from its start times (1 + 1e-15): how far the
    counts move under a round-off-sized change of the start (the yardstick for vmap's round-off)."""
    batch = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *starts)
    batched_fit = jax.jit(jax.vmap(lambda p: emjax.fit(model, solver, p, x, y, max_steps, tol=TOL)))
    tic = time.perf_counter()
    batched = jax.block_until_ready(batched_fit(batch))
    batched_first = time.perf_counter() - tic

    def loop():
        return [run_fit(model, solver, p, x, y, max_steps, TOL) for p in starts]

    tic = time.perf_counter()
    alone = loop()
    loop_first = time.perf_counter() - tic
    batched_times, loop_times = [], []
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(batched_fit(batch))
        batched_times.append(time.perf_counter() - tic)
        tic = time.perf_counter()
        loop()
        loop_times.append(time.perf_counter() - tic)
    rows = []
    for lane, result in enumerate(alone):
        lane_params = jax.tree_util.tree_map(lambda leaf, i=lane: leaf[i], batched.params)
        row = {
            "lane": lane,
            "unbatched": counts(result),
            "batched": {
                "num_steps": int(batched.num_steps[lane]),
                "status": emjax.Status(int(batched.status[lane])).name,
                **{name: int(value[lane]) for name, value in batched.stats.items()},
            },
            "max_param_difference": true_distance(model, lane_params, result.params),
            "rate_estimate": float(result.rate_estimate),
            "final_loss": float(result.final_loss),
        }
        row["counts_equal"] = row["batched"] == row["unbatched"]
        if perturb:
            nudged = jax.tree_util.tree_map(lambda leaf: leaf * (1 + 1e-15), starts[lane])
            row["perturbed"] = counts(run_fit(model, solver, nudged, x, y, max_steps, TOL))
        rows.append(row)
        print(
            f"  {label} lane {lane}: cycles/maps vmap {row['batched']['num_steps']}/"
            f"{row['batched']['num_map_evaluations']}, alone {row['unbatched']['num_steps']}/"
            f"{row['unbatched']['num_map_evaluations']}"
            + (
                f", alone from start·(1+1e-15) {row['perturbed']['num_steps']}/"
                f"{row['perturbed']['num_map_evaluations']}"
                if perturb
                else ""
            )
            + f"; max |Δθ| {row['max_param_difference']:.1e}",
            flush=True,
        )
    out = {
        "label": label,
        "lanes": len(starts),
        "rows": rows,
        "all_counts_equal": all(row["counts_equal"] for row in rows),
        "batched_first_call_s": batched_first,
        "loop_first_call_s": loop_first,
        "batched_median_s": statistics.median(batched_times) if batched_times else math.nan,
        "loop_median_s": statistics.median(loop_times) if loop_times else math.nan,
        "batched_times_s": batched_times,
        "loop_times_s": loop_times,
    }
    print(
        f"  {label}: all counts equal: {out['all_counts_equal']}; vmapped {out['batched_median_s']:.3f} s, "
        f"loop of {len(starts)} fits {out['loop_median_s']:.3f} s",
        flush=True,
    )
    return out


def section_vmap(args) -> list[dict]:
    lanes = args.vmap_lanes
    print(f"4. vmap: {lanes} starts per problem, squarem(em())", flush=True)
    solver = emjax.squarem(emjax.em())
    out = []
    # Hasselblad from random (pi, lambda_1, lambda_2): pi ~ U(0.1, 0.9), lambda ~ U(0.5, 5), sorted.
    rng = np.random.default_rng(16)
    x, y = hasselblad_data()
    starts = []
    for _ in range(lanes):
        pi = float(rng.uniform(0.1, 0.9))
        low, high = sorted(float(v) for v in rng.uniform(0.5, 5.0, 2))
        starts.append(hasselblad_params(pi, low, high))
    out.append(
        vmap_check(
            "Hasselblad", emjax.MoPoE(2), solver, starts, x, y, HASSELBLAD_MAX_STEPS, args.vmap_repeats, perturb=False
        )
    )
    out[-1]["starts"] = [hasselblad_natural(p) for p in starts]
    if args.quick:
        return out
    # The slow SymMoLogE data set from `lanes` init_params starts (keys 200, 201, ...).
    model, x, y, _ = make_problem(SYMMOLOGE_SLOW)
    starts = [emjax.init_params(model, jax.random.key(200 + lane), x, y) for lane in range(lanes)]
    out.append(
        vmap_check(
            SYMMOLOGE_SLOW["label"],
            model,
            solver,
            starts,
            x,
            y,
            SYMMOLOGE_SLOW["max_steps"],
            args.vmap_repeats,
            perturb=True,
        )
    )
    out[-1]["start_keys"] = [200 + lane for lane in range(lanes)]
    return out


# ============================================================================ report


def sci(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.1e}"


def number(value, spec: str) -> str:
    """``value`` formatted by ``spec``, or "-" where the JSON holds None (a NaN or infinity when it was written)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def ms(value) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{1e3 * value:.1f}"


COUNT_HEADERS = ("solver", "cycles", "maps", "losses", "fallbacks", "status")  # the columns of count_cells


def count_cells(row) -> list:
    """The solver's name and work counts, the cells every results table starts a row with."""
    return [
        row["solver"],
        row["num_steps"],
        f"**{row['num_map_evaluations']}**",
        row["num_loss_evaluations"],
        row["num_fallbacks"],
        row["status"],
    ]


def md_table(headers, rows) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def hasselblad_report(h) -> list[str]:
    lines = [
        "## 1. Hasselblad's Poisson mixture (MoPoE(2), intercept-only x, n = 1096)",
        "",
        f"Published fixed point: π = {HASSELBLAD_FIXED_POINT[0]}, λ = {HASSELBLAD_FIXED_POINT[1]}, "
        f"{HASSELBLAD_FIXED_POINT[2]}; n L = {number(HASSELBLAD_NLL, '.6f')}. EM's rate there: λ_max = "
        f"{number(h['starts'][0]['reference']['em_rate'], '.6f')}.",
        "",
    ]
    headers = [
        "start (π, λ₁, λ₂)",
        *COUNT_HEADERS,
        "n L",
        "π",
        "λ₁",
        "λ₂",
        "true dist",
        "d̂",
        "ms",
        "× EM",
    ]
    rows = []
    runs = h.get("r", {}).get("runs", [])
    for entry in h["starts"]:
        ref = entry["reference"]
        nat = ref["natural"]
        rows.append(
            [
                f"**{tuple(entry['start'])}**",
                f"reference ({ref['from']})",
                "",
                "",
                "",
                "",
                "",
                f"{number(ref['n_loss'], '.6f')}",
                f"{number(nat[0], '.5f')}",
                f"{number(nat[1], '.5f')}",
                f"{number(nat[2], '.5f')}",
                f"spread {sci(ref['spread'])}",
                "",
                "",
                "",
            ]
        )
        for row in entry["rows"]:
            nat = row["natural"]
            rows.append(
                [
                    "",
                    *count_cells(row),
                    f"{number(row['n_loss'], '.6f')}",
                    f"{number(nat[0], '.5f')}",
                    f"{number(nat[1], '.5f')}",
                    f"{number(nat[2], '.5f')}",
                    sci(row["true_distance"]),
                    sci(row["distance_estimate"]),
                    ms(row["median_s"]),
                    f"{number(row['time_vs_em'], '.3f')}",
                ]
            )
        for run in runs:
            if tuple(run["start"]) != tuple(entry["start"]):
                continue
            nat = run["natural"]
            rows.append(
                [
                    "",
                    run["solver"] + ("" if run["converged"] else " (not converged)"),
                    "-",
                    f"**{run['fpevals']}**",
                    "-" if run["objfevals"] is None else run["objfevals"],
                    "-",
                    "-",
                    f"{number(run['n_loss'], '.6f')}",
                    f"{number(nat[0], '.5f')}",
                    f"{number(nat[1], '.5f')}",
                    f"{number(nat[2], '.5f')}",
                    sci(run["true_distance"]),
                    "-",
                    f"{1e3 * run['seconds']:.0f}",
                    "-",
                ]
            )
    lines += md_table(headers, rows) + [""]
    r = h.get("r", {})
    if "skipped" in r:
        lines += [f"R rows skipped: {r['skipped']}.", ""]
    else:
        lines += [
            f"R: {r['version']}. `fpiter` and `squarem(p, fixptfn, objfn, control = list(tol = 1e-8, "
            "method = 3 or 1))` on the natural parameters (π, λ₁, λ₂), R's own EM map; its *maps* are `fpevals`, "
            "its *losses* `objfevals` (`fpiter` evaluates no objective). R stops when the 2-norm of its last "
            "step is below tol; its ms are R's `system.time` of plain interpreted R. The true distance of R's "
            "answers is measured like emjax's, in emjax's coordinates (logit π, log λ).",
            "",
        ]
    runs0 = h["starts"][0]["reference"]["runs"]
    lines += [
        "Reference (first start): "
        + "; ".join(
            f"{k}: {v['num_map_evaluations']} maps, {v['status']}, d̂ {sci(v['distance_estimate'])}"
            for k, v in runs0.items()
        )
        + ".",
        "",
    ]
    return lines


def problems_report(title, entries) -> list[str]:
    out = [title, ""]
    headers = [
        "problem",
        *COUNT_HEADERS,
        "ms (median)",
        "× EM",
        "EM maps / maps",
        "true dist",
        "d̂",
        "ρ̂",
        "n ΔL",
    ]
    rows = []
    for entry in entries:
        ref = entry["reference"]
        rows.append(
            [
                f"**{entry['spec']['label']}**, n = {entry['spec']['n']}, P = {ref['num_parameters']}",
                f"EM rate λ_max = **{number(ref['em_rate'], '.5f')}**",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                f"ref spread {sci(ref['spread'])}",
                "",
                "",
                "",
            ]
        )
        for row in entry["rows"]:
            rows.append(
                [
                    "",
                    *count_cells(row),
                    ms(row["median_s"]),
                    f"**{number(row['time_vs_em'], '.2f')}**",
                    f"{number(row['em_maps_over_maps'], '.1f')}",
                    sci(row["true_distance"]),
                    sci(row["distance_estimate"]),
                    f"{number(row['rate_estimate'], '.5f')}",
                    f"{number(row['n_delta_loss'], '+.1e')}",
                ]
            )
    return out + md_table(headers, rows) + [""]


def vmap_report(checks) -> list[str]:
    lines = [
        "## 4. vmap: one batch of starts, `squarem(em())`",
        "",
        "`jax.jit(jax.vmap(lambda p: emjax.fit(model, emjax.squarem(emjax.em()), p, x, y, max_steps, tol=1e-8)))` "
        "over a stack of starts, against the same fits one by one (*alone*). *max |Δθ|*: between the vmapped and "
        "the lone answer (up to labels). For SymMoLogE, *alone·(1+1e-15)* refits each lane alone from its start "
        "multiplied by 1 + 1e-15: the counts' sensitivity to a round-off-sized change.",
        "",
    ]
    for check in checks:
        perturbed = "perturbed" in check["rows"][0]
        headers = [
            "lane",
            "cycles vmap / alone",
            "maps vmap / alone",
            "losses vmap / alone",
            "fallbacks vmap / alone",
            "status",
            "equal",
        ]
        headers += ["cycles / maps alone·(1+1e-15)"] if perturbed else []
        headers += ["max |Δθ|", "ρ̂ (alone)"]
        rows = []
        for row in check["rows"]:
            b, u = row["batched"], row["unbatched"]
            cells = [
                row["lane"],
                f"{b['num_steps']} / {u['num_steps']}",
                f"{b['num_map_evaluations']} / {u['num_map_evaluations']}",
                f"{b['num_loss_evaluations']} / {u['num_loss_evaluations']}",
                f"{b['num_fallbacks']} / {u['num_fallbacks']}",
                b["status"],
                "yes" if row["counts_equal"] else "**no**",
            ]
            if perturbed:
                cells.append(f"{row['perturbed']['num_steps']} / {row['perturbed']['num_map_evaluations']}")
            cells += [sci(row["max_param_difference"]), f"{number(row['rate_estimate'], '.7f')}"]
            rows.append(cells)
        lines += [f"### {check['label']}, {check['lanes']} starts", ""] + md_table(headers, rows) + [""]
        lines += [
            f"All per-lane counts equal to the lone fits: **{check['all_counts_equal']}**. Wall time (median of "
            f"{len(check['batched_times_s'])}): one vmapped fit {ms(check['batched_median_s'])} ms, a loop of the "
            f"{check['lanes']} fits {ms(check['loop_median_s'])} ms (first calls "
            f"{number(check['batched_first_call_s'], '.1f')} s and {number(check['loop_first_call_s'], '.1f')} s).",
            "",
        ]
    return lines


R_PUBLISHED_MAPS = {(0.3, 1.0, 5.0): 54, (0.5, 1.0, 3.0): 66}  # R's SQUAREM (method 3), as issue 16 quotes
DEFAULT_ACCELERATORS = ("SQUAREM m1", "Anderson")  # emjax's defaults: squarem(em()) and anderson(em())


def target_checks(data) -> list[dict]:
    """Issue 16's targets, each as {"target", "case", "value", "passed"}, from the measured rows."""
    checks = []
    r_maps = {
        tuple(run["start"]): run["fpevals"]
        for run in data["hasselblad"]["r"].get("runs", [])
        if run["solver"] == "R squarem m3"
    }
    for entry in data["hasselblad"]["starts"]:
        start = tuple(entry["start"])
        bound = r_maps.get(start, R_PUBLISHED_MAPS[start])
        for row in entry["rows"]:
            if row["solver"] in DEFAULT_ACCELERATORS:
                checks.append(
                    {
                        "target": "Hasselblad: maps ≤ R's SQUAREM, same fixed point to 1e-7",
                        "case": f"{start} {row['solver']}",
                        "value": f"{row['num_map_evaluations']} maps (R {bound}), "
                        f"true dist {sci(row['true_distance'])}",
                        "passed": row["num_map_evaluations"] <= bound and row["true_distance"] <= 1e-7,
                    }
                )
    for entry in data["slow"]:
        for row in entry["rows"]:
            if row["solver"] in DEFAULT_ACCELERATORS or "monotone" in row["solver"]:
                checks.append(
                    {
                        "target": "slow: ≥ 10× fewer maps, ≥ 5× less wall time, true dist ≤ 1e-8",
                        "case": f"{entry['spec']['label']} {row['solver']}",
                        "value": f"{number(row['em_maps_over_maps'], '.0f')}× fewer maps, "
                        f"{1 / row['time_vs_em']:.0f}× less "
                        f"time, true dist {sci(row['true_distance'])}",
                        "passed": row["em_maps_over_maps"] >= 10
                        and row["time_vs_em"] <= 0.2
                        and row["true_distance"] <= 1e-8,
                    }
                )
    for entry in data["fast"]:
        for row in entry["rows"]:
            if row["solver"] in DEFAULT_ACCELERATORS:
                checks.append(
                    {
                        "target": "fast: wall time ≤ 2× EM's",
                        "case": f"{entry['spec']['label']} {row['solver']}",
                        "value": f"{number(row['time_vs_em'], '.2f')}× EM",
                        "passed": row["time_vs_em"] <= 2,
                    }
                )
    return checks


def targets_report(data) -> list[str]:
    checks = target_checks(data)
    rows = [[c["target"], c["case"], c["value"], "yes" if c["passed"] else "**no**"] for c in checks]
    verdict = "all met" if all(c["passed"] for c in checks) else "**not all met**"
    return (
        [
            f"## Targets of issue 16: {verdict}",
            "",
            "For emjax's default accelerators, `squarem(em())` (SQUAREM m1) and `anderson(em())`, and the "
            "monotone variants where they ran. R's count is the one measured in this run where R ran, else "
            "the issue's (54, 66).",
            "",
        ]
        + md_table(["target", "case", "measured", "met"], rows)
        + [""]
    )


def report(data) -> list[str]:
    lines = [
        "# EM acceleration: SQUAREM and Anderson against plain EM (issue 16)",
        "",
        f"Command: `{data['command']}`  ",
        f"Date: {data['date']}  ",
        f"Machine: {data['machine']}; jax {data['jax']}, emjax {data['emjax']} (commit {data['commit']}); float64.  ",
        f"Wall time of the whole run: {number(data['total_s'], '.0f')} s.",
        "",
        f"Every fit: `emjax.fit(model, solver, start, x, y, max_steps, tol={TOL:g})` with the default stopping rule "
        "(estimated distance to the fixed point ≤ tol·max|θ|) on Hasselblad's data; on the slow and fast problems "
        f"`tol=0, atol={TOL:g}`, i.e. stop at an estimated ‖θ − θ̂‖∞ ≤ {TOL:g}, the distance of the targets. "
        "*cycles* = loop iterations (`num_steps`: one "
        "extrapolation cycle for an accelerated solver); *maps*, *losses*, *fallbacks* = `stats`; *true dist* = "
        "max-norm distance over `model.flatten` (up to the labels) to the reference fixed point; *d̂*, *ρ̂* = "
        "`distance_estimate`, `rate_estimate`; *n ΔL* = n (L − L_ref), total log-likelihood. The reference is "
        f"EM's fixed point from the same start: `anderson(em())` and `squarem(em())` run from plain EM's answer to "
        f"tol {REFERENCE_TOL:g} (for Hasselblad also plain EM from the start); *spread* = the largest "
        "distance between those runs. EM's rate λ_max = `emjax.em_rate` at the reference. Times: median of "
        "interleaved repeats after a first (compiling) call; *× EM* = ratio of medians within this run "
        "(shared 2-core machine: compare ratios, not seconds across runs).",
        "",
    ]
    lines += targets_report(data)
    lines += hasselblad_report(data["hasselblad"])
    lines += problems_report("## 2. Slow problems (EM's rate close to 1)", data["slow"])
    if data["fast"]:
        lines += problems_report("## 3. Fast problems (EM's rate below 0.5)", data["fast"])
    groups = [e["rows"] for e in data["slow"] + data["fast"] + data["hasselblad"]["starts"]]
    reproduced = all(row["repeats_reproduce_counts"] for rows in groups for row in rows)
    lines += [f"Every timed repeat reproduced its first call's counts: {reproduced}.", ""]
    lines += vmap_report(data["vmap"])
    return lines


def git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", HERE, "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=30
        )
        return done.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer problems and solvers, one timed round (about a minute)"
    )
    parser.add_argument("--no-r", action="store_true", help="skip R's SQUAREM even when it is installed")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed rounds, Hasselblad and slow problems (3; quick 1)"
    )
    parser.add_argument("--fast-repeats", type=int, default=None, help="timed rounds, fast problems (9; quick 5)")
    parser.add_argument("--vmap-lanes", type=int, default=None, help="starts in each vmap check (8; quick 4)")
    parser.add_argument("--out", default=None, help="markdown report (default benchmarks/results/acceleration.md)")
    parser.add_argument("--json", default=None, help="JSON data (default benchmarks/results/acceleration.json)")
    args = parser.parse_args(argv)
    suffix = "_quick" if args.quick else ""
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    args.fast_repeats = args.fast_repeats if args.fast_repeats is not None else (5 if args.quick else 9)
    args.vmap_lanes = args.vmap_lanes if args.vmap_lanes is not None else (4 if args.quick else 8)
    args.vmap_repeats = 1 if args.quick else 3
    args.out = args.out or os.path.join(HERE, "results", f"acceleration{suffix}.md")
    args.json = args.json or os.path.join(HERE, "results", f"acceleration{suffix}.json")
    return args


def main(argv=None) -> int:
    jax.config.update("jax_enable_x64", True)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    tic = time.perf_counter()
    data = {
        "command": " ".join(["python benchmarks/acceleration.py", *argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {jax.devices()[0].platform}",
        "jax": jax.__version__,
        "emjax": emjax.__version__,
        "commit": git_commit(),
        "tol": TOL,
        "reference_tol": REFERENCE_TOL,
    }
    data["hasselblad"] = section_hasselblad(args)
    if args.quick:
        data["slow"] = section_problems("2. Slow problems", [SYMMOLOGE_SLOW], args.repeats, method3=False)
        data["fast"] = []
    else:
        data["slow"] = section_problems("2. Slow problems", SLOW, args.repeats, monotone_for=(SYMMOLOGE_SLOW["label"],))
        data["fast"] = section_problems("3. Fast problems", FAST, args.fast_repeats)
    data["vmap"] = section_vmap(args)
    data["total_s"] = time.perf_counter() - tic
    lines = report(data)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    with open(args.json, "w") as handle:
        json.dump(finite_or_none(data), handle, indent=1, default=float)
    print(f"wrote {args.out} and {args.json} ({data['total_s']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
