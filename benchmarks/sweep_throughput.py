r"""Benchmark: throughput of a whole EM sweep (cells per second), emjax against loops in JAX, NumPy, PyTorch.

The sweep
---------
Every cell fits a symmetric two-expert model by 100 EM steps from a perturbed truth:

* ``--model sym-line`` (default): ``emjax.SymMoLinE(1.0)``, y = (2z-1) x.beta + N(0, 1);
* ``--model sym-loge``: ``emjax.SymMoLogE()``, P(y=1 | x, z) = sigmoid((2z-1) x.beta);
* ``--model both``: one after the other, in the same run.

Truth ``emjax.testing.random_params(model, key, d, gate_norm=2, expert_norm=snr)`` (||w*|| = 2,
||beta*|| = SNR), data x ~ N(0, I_d) and y from the model (``emjax.sample``, n = 2000, d = 10), start
``emjax.testing.perturb(truth, key)`` (relative error 1 per block). The grid is 8 SNRs x 50 seeds =
400 cells; each cell returns its final parameters, its loss trace (101 values) and a status. It is
run, in float32 and in float64, by

(a) ``emjax.sweep(cell, 0, {"snr": snrs, "seed": arange(50)}, batch_size=b)``: one compiled program;
    b = "auto" (the library's default), None (``vmap`` over the whole chunk) or an int (``lax.map``
    over groups of b cells, ``vmap`` inside). Compilation (``result.compile_seconds``) is reported
    apart from running (``run_seconds``), with the number of XLA compilations the call made
    (``jax.monitoring``'s backend-compile events). (a2): the same over two host devices
    (``XLA_FLAGS=--xla_force_host_platform_device_count=2``), at the best single-device batch size;
    an error is reported as such (no patching of jax or emjax).
(b) a Python loop over the cells: a jitted draw (truth, data, start; the same keys as (a)) and
    ``emjax.fit(model, emjax.em(), start, x, y, 100)`` per cell; the first call (compilation) is
    reported apart and left out of the timed loop. Every (a) row reports the largest difference of
    its final parameters and loss traces from (b)'s, cell by cell ("same iterates").
(c) a NumPy loop over the cells, the same algorithm as ``emjax.em_step``, vectorised over samples:
    the E-step posterior logit (x.w + 2 y x.beta / sigma^2, or x.w + (2y-1) x.beta); every soft-label
    logistic regression (the gate w on r = sigmoid(logit); for SymMoLogE also the expert beta on
    q = sigmoid((2y-1) logit)) by damped Newton with Armijo backtracking exactly as emjax's
    ``soft_logistic_regression``: warm-started at the previous iterate, the Hessian shifted by
    sqrt(eps) times its mean diagonal (plus the smallest normal number), the step halved from 1
    until f(u + a d) <= f(u) + 1e-4 a g.d + 16 eps (|f| + 1) (at most 40 halvings; no step when no
    trial is finite), stopping when max|step| < 1e-10 (float64) / 1e-5 (float32) or after 50 steps;
    for SymMoLinE, beta = sigma^2 (X^T X)^{-1} X^T(tanh(logit/2) y / sigma^2) with (X^T X)^{-1}
    formed once per cell (emjax's eps jitter); the loss L(theta_t) at every iterate, as
    ``emjax.fit`` records it. Shortcuts a NumPy programmer would take that do not change the
    iterates beyond round-off: x.u is carried from the accepted Armijo trial instead of recomputed,
    each solve starts from the E-step's x.w / x.beta, the Newton system is solved by LU
    (``np.linalg.solve``) instead of Cholesky, and the loss comes from the E-step's projections
    (log p = l0 - softplus(x.w) + softplus(logit), with l0 = log p(y | x, z = 0); the same value as
    emjax's logaddexp form). Data are drawn per cell with NumPy's Generator (the same distribution
    as emjax.sample, other random numbers).
(d) the same as (c) in PyTorch on the CPU, with torch threads = cores, and (d1) with one thread;
    skipped with a message when torch is not importable
    (``pip install torch --index-url https://download.pytorch.org/whl/cpu``).

(c) and (d) are checked against ``emjax.fit`` on one cell (SNR 2, seed 0): the script prints the
max abs difference of the final parameters and of the loss trace, and the Newton iterations and
Armijo evaluations per EM step that the NumPy run took (used by the FLOP count).

Every measurement runs in its own subprocess (``benchmarks/_harness.py``; float64 through
``jax_enable_x64`` there), so the peak resident memory (``ru_maxrss``) of each is its own; "base"
is the process right after its imports, so peak - base is what the work added.

The floor
---------
FLOPs of one EM step, with k Newton iterations and a Armijo evaluations per EM step (all solves
together, measured by (c)): E-step scores x.w and x.beta 4nd; per Newton iteration the gradient
X^T(p - t) 2nd and the Hessian X^T diag(p(1-p)) X 2nd^2; per Armijo evaluation one matvec 2nd;
SymMoLinE also the beta right-hand side X^T v 2nd (X^T X is factored once per cell). Elementwise
work is not counted: a floor is a lower bound. Bytes: each pass over x streams n d s bytes (s = 4
or 8). The matmul rate is that of a 2048^2 product (all cores), the bandwidth that of reading an
L2-resident array (one core, times the number of cores: a cell's x fits in a core's L2).
floor per cell = steps x max(FLOPs / matmul rate, bytes / bandwidth).

Where the time goes inside one EM step (XLA ops and their times): ``benchmarks/profile_step.py``.

How to run
----------
From the repository root with emjax installed (``pip install -e .``)::

    python benchmarks/sweep_throughput.py                    # SymMoLinE, the full run
    python benchmarks/sweep_throughput.py --model both       # SymMoLinE, then SymMoLogE
    python benchmarks/sweep_throughput.py --quick            # 40 cells, batch sizes auto and None only
    python benchmarks/sweep_throughput.py --quick --emjax-path /tmp/before   # an older copy of emjax
    python benchmarks/sweep_throughput.py --help             # --seeds, --n, --d, --batch-sizes, --json, ...

``--emjax-path DIR`` imports emjax from DIR (a directory holding an ``emjax`` package) in every
worker, so the same script times an older copy of the library. The machine is shared and noisy:
compare the ratios printed by one run, not seconds across runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from _harness import error_line, min_time, rss_mb, run_worker, serve_worker, setup_jax, table

SNRS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
W_NORM = 2.0
SIGMA = 1.0
MAX_NEWTON = 50
ARMIJO = 1e-4
MAX_HALVINGS = 40
MODELS = {"sym-line": "SymMoLinE", "sym-loge": "SymMoLogE"}
# Targets of issue 15: (a)/(c) by (model, dtype), and (a)/(faster d).
TARGETS_C = {("sym-line", "float32"): 10, ("sym-line", "float64"): 4, ("sym-loge", "float32"): 6}
TARGET_D = 15


def newton_tolerance(bits: int) -> float:
    return 1e-10 if bits >= 64 else 1e-5


# ============================================================================ JAX side: (a), (b)


def make_model(emjax, name: str):
    return emjax.SymMoLinE(SIGMA) if name == "sym-line" else emjax.SymMoLogE()


def draw_cell(jax, emjax, model, key, d: int, n: int, snr):
    """One cell's truth, data and start from its key (the same in (a), (b) and the verification)."""
    k_truth, k_data, k_start = jax.random.split(key, 3)
    truth = emjax.testing.random_params(model, k_truth, d, gate_norm=W_NORM, expert_norm=snr)
    x, y = emjax.sample(model, truth, k_data, n)
    return x, y, emjax.testing.perturb(truth, k_start)


def make_cell(jax, emjax, spec):
    model = make_model(emjax, spec["model"])

    def cell(key, snr, seed):
        del seed  # the seed axis selects the key (fold_in of its index)
        x, y, start = draw_cell(jax, emjax, model, key, spec["d"], spec["n"], snr)
        result = emjax.fit(model, emjax.em(), start, x, y, spec["steps"])
        return {"params": result.params, "losses": result.losses, "status": result.status}

    cell.__qualname__ = f"sweep_throughput_cell_{spec['model'].replace('-', '_')}"
    return cell


def grid_values(jax, seeds: int, snrs):
    import numpy as np

    return {"snr": np.asarray(snrs, jax.numpy.zeros(()).dtype), "seed": np.arange(seeds)}


def count_compilations(jax):
    """A list that grows by one ``[function name, seconds]`` per XLA backend compilation from now on."""
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append([str(kwargs.get("fun_name", "?")), duration])

    jax.monitoring.register_event_duration_secs_listener(listener)
    return compiles


def worker_sweep(spec):
    """(a): one emjax.sweep call; compile and run seconds, and every cell's final iterate and losses."""
    jax, emjax = setup_jax(spec["dtype"], spec.get("devices", 1), spec.get("emjax_path"))
    import numpy as np

    base = rss_mb()
    cell = make_cell(jax, emjax, spec)
    grid = grid_values(jax, spec["seeds"], spec["snrs"])
    out = {"base_mb": base, "devices": len(jax.devices())}
    compiles = count_compilations(jax)
    try:
        result = emjax.sweep(cell, 0, grid, batch_size=spec["batch_size"], progress=False)
    except Exception as error:  # noqa: BLE001 - reported in the table (e.g. several devices)
        return {**out, "error": error_line(error)}
    cells = int(np.prod(result.shape))
    params = result.outputs["params"]
    losses = result.outputs["losses"]
    out.update(
        cells=cells,
        chunk_size=result.configuration["chunk_size"],
        batch_size_used=result.configuration.get("batch_size"),
        compile_s=result.compile_seconds,
        compilations=len(compiles),
        # the sweep's own program(s): compilations that took over a tenth of a second (the rest are
        # small helpers: key folding, grid conversion)
        large_compilations=sum(seconds > 0.1 for _, seconds in compiles),
        compile_list=compiles,
        run_s=result.run_seconds,
        cells_per_s=cells / result.run_seconds,
        final_loss_mean=float(np.nanmean(losses[..., -1])),
        status_ok=int(np.sum(result.outputs["status"] == 0)),
        peak_mb=rss_mb(),
        # cell (i, j) = (SNR index, seed index): final [w, beta] and the loss trace
        theta=np.concatenate([params.w, params.beta], axis=-1).tolist(),
        losses=np.asarray(losses).tolist(),
    )
    return out


def loop_cells(spec):
    """(SNR index, seed index), seed by seed, so a loop cut short by its time budget has whole SNR rounds."""
    return [(i, j) for j in range(spec["seeds"]) for i in range(len(spec["snrs"]))]


def timed_loop(spec, one):
    """Run ``one(i, j)`` over the cells; stop after a whole SNR round once ``budget_s`` has passed."""
    done = []
    tic = time.perf_counter()
    for index, (i, j) in enumerate(loop_cells(spec)):
        done.append(one(i, j))
        if (index + 1) % len(spec["snrs"]) == 0 and time.perf_counter() - tic > spec.get("budget_s", math.inf):
            break
    return done, time.perf_counter() - tic


def worker_loop(spec):
    """(b): a Python loop calling emjax.fit per cell (jitted draw per cell, the same keys as (a))."""
    jax, emjax = setup_jax(spec["dtype"], emjax_path=spec.get("emjax_path"))
    import jax.numpy as jnp
    import numpy as np

    base = rss_mb()
    model = make_model(emjax, spec["model"])
    float_dtype = jnp.zeros(()).dtype
    draw = jax.jit(lambda key, snr: draw_cell(jax, emjax, model, key, spec["d"], spec["n"], snr))
    root = jax.random.key(0)

    def one(i, j):
        key = jax.random.fold_in(jax.random.fold_in(root, i), j)
        x, y, start = draw(key, jnp.asarray(spec["snrs"][i], float_dtype))
        result = emjax.fit(model, emjax.em(), start, x, y, spec["steps"])
        theta = np.concatenate([np.asarray(result.params.w), np.asarray(result.params.beta)])
        return (i, j), theta.tolist(), np.asarray(result.losses).tolist()

    tic = time.perf_counter()
    one(0, 0)
    compile_s = time.perf_counter() - tic
    done, run_s = timed_loop(spec, one)
    return {
        "base_mb": base,
        "cells": len(done),
        "compile_s": compile_s,
        "run_s": run_s,
        "cells_per_s": len(done) / run_s,
        "final_loss_mean": float(np.nanmean([losses[-1] for _, _, losses in done])),
        "peak_mb": rss_mb(),
        "iterates": done,
    }


def same_iterates(sweep_result, loop_result):
    """Max |difference| of final parameters and of loss traces between (a) and (b), on (b)'s cells."""
    if "theta" not in sweep_result or "iterates" not in loop_result:
        return None, None
    import numpy as np

    theta, losses = np.asarray(sweep_result["theta"]), np.asarray(sweep_result["losses"])
    d_theta = d_loss = 0.0
    for (i, j), t, trace in loop_result["iterates"]:
        if j < theta.shape[1]:
            d_theta = max(d_theta, float(np.nanmax(np.abs(theta[i, j] - np.asarray(t)))))
            d_loss = max(d_loss, float(np.nanmax(np.abs(losses[i, j] - np.asarray(trace)))))
    return d_theta, d_loss


# ============================================================================ NumPy (c)


def np_softplus_sigmoid(np, z):
    """softplus(z), sigmoid(z) and the shared exp(-|z|), 1/(1 + exp(-|z|)) (exact in both tails)."""
    e = np.exp(-np.abs(z))
    inv = 1 / (1 + e)
    return np.maximum(z, 0) + np.log1p(e), np.where(z >= 0, inv, e * inv), e, inv


def np_logistic(x, t, u, z, counts):
    """emjax's soft_logistic_regression in NumPy: min_u mean[softplus(x.u) - t x.u] from u (z = x.u)."""
    import numpy as np

    dt = x.dtype.type
    n, d = x.shape
    info = np.finfo(x.dtype)
    eps, tiny, shift = dt(info.eps), dt(info.tiny), dt(math.sqrt(info.eps))
    tol = newton_tolerance(info.bits)
    diag = np.diag_indices(d)
    sp, sig, _, _ = np_softplus_sigmoid(np, z)
    f = np.mean(sp - t * z)
    for _ in range(MAX_NEWTON):
        g = x.T @ (sig - t) / dt(n)
        h = (x * (sig * (1 - sig))[:, None]).T @ x / dt(n)
        h[diag] += shift * np.trace(h) / d + tiny
        direction = -np.linalg.solve(h, g)
        slope = g @ direction
        slack = 16 * eps * (abs(f) + 1)
        zd = x @ direction
        alpha = dt(1)
        halvings = 0
        while True:
            za = z + alpha * zd
            sp, sa, _, _ = np_softplus_sigmoid(np, za)
            fa = np.mean(sp - t * za)
            counts[1] += 1
            if fa <= f + dt(ARMIJO) * alpha * slope + slack or halvings >= MAX_HALVINGS:
                break
            alpha, halvings = alpha / 2, halvings + 1
        counts[0] += 1
        if np.isfinite(fa):
            step = alpha * direction
            z, sig, f = za, sa, fa
        else:
            step = np.zeros_like(direction)
        u = u + step
        if np.max(np.abs(step)) < tol:
            break
    return u


def np_fit(model, x, y, w, beta, steps, counts):
    """(c): emjax's EM for SymMoLinE / SymMoLogE in NumPy (module docstring). counts: [Newton, Armijo, EM]."""
    import numpy as np

    dt = x.dtype.type
    d = x.shape[1]
    losses = np.empty(steps + 1, x.dtype)
    if model == "sym-line":
        var = dt(SIGMA) ** 2
        const = dt(-0.5 * math.log(2 * math.pi * float(var)))
        gram = x.T @ x
        gram[np.diag_indices(d)] += np.finfo(x.dtype).eps * np.trace(gram) / d + np.finfo(x.dtype).tiny
        gram_inv = np.linalg.inv(gram)  # once per cell
    else:
        sign = 2 * y - 1
    for t in range(steps + 1):
        scores = x @ np.stack([w, beta], axis=1)
        xw, xb = scores[:, 0], scores[:, 1]
        sp_w = np_softplus_sigmoid(np, xw)[0]
        if model == "sym-line":
            logit = xw + (2 / var) * y * xb
            sp_l, r, e_l, inv_l = np_softplus_sigmoid(np, logit)
            losses[t] = -np.mean(const - (y + xb) ** 2 / (2 * var) - sp_w + sp_l)
        else:
            logit = xw + sign * xb
            sp_l, r, e_l, inv_l = np_softplus_sigmoid(np, logit)
            sp_0 = np_softplus_sigmoid(np, sign * xb)[0]  # -log p(y | x, z = 0)
            losses[t] = -np.mean(-sp_0 - sp_w + sp_l)
        if t == steps:
            break
        if model == "sym-line":
            expert_targets = np.where(logit >= 0, 1 - e_l, e_l - 1) * inv_l * y / var  # tanh(logit/2) y / var
            beta_new = var * (gram_inv @ (x.T @ expert_targets))
        else:
            q = np.where(sign * logit >= 0, inv_l, e_l * inv_l)  # sigmoid((2y - 1) logit)
            beta_new = np_logistic(x, q, beta, xb, counts)
        w = np_logistic(x, r, w, xw, counts)
        beta = beta_new
        counts[2] += 1
    return w, beta, losses


def np_draw(rng, model, snr, n, d, dtype):
    """One cell's truth, data and start with NumPy (the same distribution as emjax)."""
    import numpy as np

    def direction():
        v = rng.standard_normal(d)
        return v / np.linalg.norm(v)

    w, beta = W_NORM * direction(), snr * direction()
    x = rng.standard_normal((n, d), dtype=dtype)
    xw, xb = x @ w.astype(dtype), x @ beta.astype(dtype)
    z = rng.random(n, dtype=dtype) * (1 + np.exp(-xw)) < 1  # z ~ Bernoulli(sigmoid(x.w))
    signed = np.where(z, xb, -xb)
    if model == "sym-line":
        y = signed + dtype(SIGMA) * rng.standard_normal(n, dtype=dtype)
    else:
        y = (rng.random(n, dtype=dtype) * (1 + np.exp(-signed)) < 1).astype(dtype)  # Bernoulli(sigmoid)
    w0 = w + np.linalg.norm(w) * direction()
    b0 = beta + np.linalg.norm(beta) * direction()
    return x, y.astype(dtype), w0.astype(dtype), b0.astype(dtype)


def worker_numpy(spec):
    import numpy as np

    base = rss_mb()
    dtype = np.dtype(spec["dtype"]).type
    counts = [0, 0, 0]  # Newton iterations, Armijo evaluations, EM steps

    def one(i, j):
        rng = np.random.default_rng([i, j])
        x, y, w0, b0 = np_draw(rng, spec["model"], spec["snrs"][i], spec["n"], spec["d"], dtype)
        return np_fit(spec["model"], x, y, w0, b0, spec["steps"], counts)[2][-1]

    last, run_s = timed_loop(spec, one)
    return {
        "base_mb": base,
        "cells": len(last),
        "run_s": run_s,
        "cells_per_s": len(last) / run_s,
        "final_loss_mean": float(np.nanmean(last)),
        "newton_per_step": counts[0] / counts[2],
        "armijo_per_step": counts[1] / counts[2],
        "peak_mb": rss_mb(),
    }


# ============================================================================ PyTorch (d)


def import_torch(threads=None):
    try:
        import torch
    except Exception as error:  # noqa: BLE001 - any import failure means: skip (d)
        return None, error_line(error)
    torch.set_num_threads(threads or os.cpu_count() or 1)
    return torch, None


def torch_softplus_sigmoid(torch, z):
    e = torch.exp(-torch.abs(z))
    inv = 1 / (1 + e)
    return torch.clamp_min(z, 0) + torch.log1p(e), torch.where(z >= 0, inv, e * inv), e, inv


def torch_logistic(torch, x, t, u, z):
    """np_logistic in PyTorch."""
    n, d = x.shape
    info = torch.finfo(x.dtype)
    eps, tiny, shift = info.eps, info.tiny, math.sqrt(info.eps)
    tol = newton_tolerance(info.bits)
    eye = torch.eye(d, dtype=x.dtype)
    sp, sig, _, _ = torch_softplus_sigmoid(torch, z)
    f = float(torch.mean(sp - t * z))
    for _ in range(MAX_NEWTON):
        g = x.T @ (sig - t) / n
        h = (x * (sig * (1 - sig))[:, None]).T @ x / n
        h = h + (shift * float(torch.trace(h)) / d + tiny) * eye
        direction = -torch.linalg.solve(h, g)
        slope = float(g @ direction)
        slack = 16 * eps * (abs(f) + 1)
        zd = x @ direction
        alpha = 1.0
        halvings = 0
        while True:
            za = z + alpha * zd
            sp, sa, _, _ = torch_softplus_sigmoid(torch, za)
            fa = float(torch.mean(sp - t * za))
            if fa <= f + ARMIJO * alpha * slope + slack or halvings >= MAX_HALVINGS:
                break
            alpha, halvings = alpha / 2, halvings + 1
        if math.isfinite(fa):
            step = alpha * direction
            z, sig, f = za, sa, fa
        else:
            step = torch.zeros_like(direction)
        u = u + step
        if float(torch.max(torch.abs(step))) < tol:
            break
    return u


def torch_fit(torch, model, x, y, w, beta, steps):
    """(d): np_fit in PyTorch (CPU)."""
    n, d = x.shape
    losses = torch.empty(steps + 1, dtype=x.dtype)
    if model == "sym-line":
        var = SIGMA**2
        const = -0.5 * math.log(2 * math.pi * var)
        gram = x.T @ x
        gram = gram + (torch.finfo(x.dtype).eps * torch.trace(gram) / d + torch.finfo(x.dtype).tiny) * torch.eye(
            d, dtype=x.dtype
        )
        gram_inv = torch.linalg.inv(gram)
    else:
        sign = 2 * y - 1
    for t in range(steps + 1):
        scores = x @ torch.stack([w, beta], dim=1)
        xw, xb = scores[:, 0], scores[:, 1]
        sp_w = torch_softplus_sigmoid(torch, xw)[0]
        if model == "sym-line":
            logit = xw + (2 / var) * y * xb
            sp_l, r, e_l, inv_l = torch_softplus_sigmoid(torch, logit)
            losses[t] = -torch.mean(const - (y + xb) ** 2 / (2 * var) - sp_w + sp_l)
        else:
            logit = xw + sign * xb
            sp_l, r, e_l, inv_l = torch_softplus_sigmoid(torch, logit)
            losses[t] = -torch.mean(-torch_softplus_sigmoid(torch, sign * xb)[0] - sp_w + sp_l)
        if t == steps:
            break
        if model == "sym-line":
            expert_targets = torch.where(logit >= 0, 1 - e_l, e_l - 1) * inv_l * y / var
            beta_new = var * (gram_inv @ (x.T @ expert_targets))
        else:
            q = torch.where(sign * logit >= 0, inv_l, e_l * inv_l)
            beta_new = torch_logistic(torch, x, q, beta, xb)
        w = torch_logistic(torch, x, r, w, xw)
        beta = beta_new
    return w, beta, losses


def worker_torch(spec):
    import numpy as np

    torch, why = import_torch(spec.get("threads"))
    if torch is None:
        return {"skipped": why}
    base = rss_mb()
    dtype = np.dtype(spec["dtype"]).type

    def one(i, j):
        rng = np.random.default_rng([i, j])
        data = np_draw(rng, spec["model"], spec["snrs"][i], spec["n"], spec["d"], dtype)
        x, y, w0, b0 = (torch.from_numpy(a) for a in data)
        return float(torch_fit(torch, spec["model"], x, y, w0, b0, spec["steps"])[2][-1])

    with torch.inference_mode():
        last, run_s = timed_loop(spec, one)
    return {
        "base_mb": base,
        "cells": len(last),
        "run_s": run_s,
        "cells_per_s": len(last) / run_s,
        "final_loss_mean": float(np.nanmean(last)),
        "threads": torch.get_num_threads(),
        "version": torch.__version__,
        "peak_mb": rss_mb(),
    }


# ============================================================================ verification, machine, scaling


def worker_verify(spec):
    """emjax.fit against (c) and (d) on one cell (SNR 2, seed 0): max abs differences."""
    jax, emjax = setup_jax(spec["dtype"], emjax_path=spec.get("emjax_path"))
    import jax.numpy as jnp
    import numpy as np

    model = make_model(emjax, spec["model"])
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), SNRS.index(2.0)), 0)
    x, y, start = draw_cell(jax, emjax, model, key, spec["d"], spec["n"], jnp.asarray(2.0))
    reference = emjax.fit(model, emjax.em(), start, x, y, spec["steps"])
    ref_theta = np.concatenate([np.asarray(reference.params.w), np.asarray(reference.params.beta)])
    ref_losses = np.asarray(reference.losses)
    xn, yn, w0, b0 = (np.asarray(a) for a in (x, y, start.w, start.beta))

    def diffs(w, b, losses):
        return {
            "params": float(np.max(np.abs(np.concatenate([np.asarray(w), np.asarray(b)]) - ref_theta))),
            "losses": float(np.max(np.abs(np.asarray(losses) - ref_losses))),
        }

    counts = [0, 0, 0]
    out = {"numpy": diffs(*np_fit(spec["model"], xn, yn, w0, b0, spec["steps"], counts))}
    out["numpy"]["newton_per_step"] = counts[0] / counts[2]
    torch, why = import_torch()
    if torch is None:
        out["torch"] = {"skipped": why}
    else:
        with torch.inference_mode():
            data = (torch.from_numpy(a.copy()) for a in (xn, yn, w0, b0))
            out["torch"] = diffs(*torch_fit(torch, spec["model"], *data, spec["steps"]))
    return out


def worker_machine(spec):
    """Matmul rates (2048^2, all cores) and read bandwidth (DRAM and L2-resident), both dtypes."""
    jax, _ = setup_jax("float64")
    import jax.numpy as jnp
    import numpy as np

    out = {"cores": os.cpu_count()}
    size = 2048
    dot = jax.jit(lambda m: m @ m)
    for name in ("float32", "float64"):
        a = np.random.default_rng(0).standard_normal((size, size)).astype(name)
        aj = jnp.asarray(a)
        flops = 2 * size**3
        out[f"matmul_gflops_numpy_{name}"] = flops / min_time(lambda a=a: a @ a, 3) / 1e9
        out[f"matmul_gflops_jax_{name}"] = flops / min_time(lambda aj=aj: jax.block_until_ready(dot(aj)), 3) / 1e9
    # bandwidth: DRAM (2 x 128 MB, one core) and L2-resident (2 x 512 KB, one core), via BLAS dot
    big = np.random.default_rng(3).standard_normal(16 * 2**20)
    big2 = big[::-1].copy()
    out["dram_read_gbs_one_core"] = 2 * big.nbytes / min_time(lambda: big @ big2, 3) / 1e9
    small = np.random.default_rng(4).standard_normal(2**16)
    small2 = small[::-1].copy()
    reps = 2000

    def cache_reads():
        for _ in range(reps):
            small @ small2

    out["l2_read_gbs_one_core"] = 2 * small.nbytes * reps / min_time(cache_reads, 3) / 1e9
    return out


def worker_scaling(spec):
    """(a) at one batch size for several (cells, n, d); one subprocess, one compilation per shape."""
    jax, emjax = setup_jax(spec["dtype"], emjax_path=spec.get("emjax_path"))
    import numpy as np

    rows = []
    for seeds, n, d in spec["configs"]:
        cell = make_cell(jax, emjax, {**spec, "n": n, "d": d})
        result = emjax.sweep(cell, 0, grid_values(jax, seeds, spec["snrs"]), batch_size=spec["batch_size"])
        cells = int(np.prod(result.shape))
        rows.append(
            {
                "cells": cells,
                "n": n,
                "d": d,
                "compile_s": result.compile_seconds,
                "run_s": result.run_seconds,
                "cells_per_s": cells / result.run_seconds,
                "ms_per_cell": 1e3 * result.run_seconds / cells,
            }
        )
    return {"rows": rows, "peak_mb": rss_mb()}


WORKERS = {
    "sweep": worker_sweep,
    "loop": worker_loop,
    "numpy": worker_numpy,
    "torch": worker_torch,
    "verify": worker_verify,
    "machine": worker_machine,
    "scaling": worker_scaling,
}


# ============================================================================ the count and the report


def count_step(model, n, d, bytes_per_value, newton, armijo):
    """FLOPs and bytes of one EM step (module docstring), with measured iteration counts."""
    rhs = 2 * n * d if model == "sym-line" else 0
    flops = 4 * n * d + rhs + newton * (2 * n * d + 2 * n * d * d) + armijo * 2 * n * d
    passes = 1 + (model == "sym-line") + newton + armijo
    return flops, passes * n * d * bytes_per_value + 6 * n * bytes_per_value


def parse_batch_sizes(text):
    def one(b):
        b = b.strip().lower()
        return None if b == "none" else b if b == "auto" else int(b)

    return [one(b) for b in text.split(",")]


def summarise(args, report, machine, say):
    """The two summary tables (per method; ratios and floor) from ``report["runs"]``."""
    rows = []
    for (model, dtype), res in report["runs"].items():
        label = MODELS[model]
        for b, r in list(res["a"].items()) + [(f"{r.get('batch_size')}, 2 devices", r) for r in res["a2"].values()]:
            note = r.get("error") or (
                f"{r.get('large_compilations')} compilation(s) > 0.1 s ({r.get('compilations')} in all); "
                f"status ok {r.get('status_ok')}/{r.get('cells')}"
            )
            rows.append(
                [label, dtype, f"(a) emjax.sweep batch_size={b}", r.get("cells_per_s"), r.get("compile_s")]
                + [r.get("run_s"), r.get("peak_mb"), r.get("base_mb"), r.get("same_theta"), r.get("same_loss")]
                + [note[:90]]
            )
        for name, key in (
            ("(b) loop of emjax.fit", "b"),
            ("(c) NumPy loop", "c"),
            ("(d) PyTorch loop, threads = cores", "d"),
            ("(d1) PyTorch loop, 1 thread", "d1"),
        ):
            r = res[key]
            note = r.get("skipped") or r.get("error", "")
            if "cells" in r:
                note = f"{r['cells']} cells" + (f"; {note}" if note else "")
            rows.append(
                [label, dtype, name, r.get("cells_per_s"), r.get("compile_s"), r.get("run_s"), r.get("peak_mb")]
                + [r.get("base_mb"), None, None, note[:90]]
            )
    headers = ["model", "dtype", "method", "cells/s", "compile s", "run s", "peak MB", "base MB"]
    say(table(headers + ["max Δθ vs (b)", "max Δloss vs (b)", "note"], rows))

    say("")
    rows = []
    for (model, dtype), res in report["runs"].items():
        rates = {b: r["cells_per_s"] for b, r in res["a"].items() if "cells_per_s" in r}
        best = max(rates, key=rates.get) if rates else None
        a = rates.get(best)
        c, bb = res["c"].get("cells_per_s"), res["b"].get("cells_per_s")
        torch_rates = [res[k]["cells_per_s"] for k in ("d", "d1") if "cells_per_s" in res[k]]
        dd = max(torch_rates) if torch_rates else None
        a2 = max([r.get("cells_per_s") or 0 for r in res["a2"].values()] or [0]) or None
        newton, armijo = res["c"].get("newton_per_step"), res["c"].get("armijo_per_step")
        flops = data_bytes = floor_cps = None
        if newton is not None and machine:
            flops, data_bytes = count_step(model, args.n, args.d, 8 if dtype == "float64" else 4, newton, armijo)
            rate = 1e9 * max(machine[f"matmul_gflops_numpy_{dtype}"], machine[f"matmul_gflops_jax_{dtype}"])
            bandwidth = 1e9 * machine["l2_read_gbs_one_core"] * machine["cores"]
            floor_cps = 1 / (args.steps * max(flops / rate, data_bytes / bandwidth))

        def ratio(x, y):
            return x / y if x and y else None

        res["summary"] = summary = {
            "best_batch_size": best,
            "a": a,
            "a_over_c": ratio(a, c),
            "a_over_d": ratio(a, dd),
            "a_over_b": ratio(a, bb),
            "a2_over_c": ratio(a2, c),
            "newton_per_step": newton,
            "armijo_per_step": armijo,
            "flops_per_step": flops,
            "bytes_per_step": data_bytes,
            "floor_cells_per_s": floor_cps,
            "floor_over_a": ratio(floor_cps, a),
        }
        rows.append(
            [MODELS[model], dtype, a, str(best), summary["a_over_c"], summary["a_over_d"], summary["a_over_b"]]
            + [summary["a2_over_c"], newton, armijo, flops and flops / 1e6, data_bytes and data_bytes / 1e6]
            + [floor_cps, summary["floor_over_a"]]
        )
    headers = ["model", "dtype", "(a) cells/s", "best batch", "(a)/(c)", "(a)/(best d)", "(a)/(b)", "(a2)/(c)"]
    headers += ["Newton it/step", "Armijo ev/step", "MFLOP/step", "MB/step", "floor cells/s", "floor/(a)"]
    say(table(headers, rows))
    targets = ", ".join(f"{MODELS[m]} {t} (a)/(c) >= {v}" for (m, t), v in TARGETS_C.items())
    say(f"targets (issue 15): {targets}; (a)/(d) >= {TARGET_D}; iterates equal to (b) to 1e-6 (float32) / 1e-12")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5 seeds (40 cells), batch sizes auto,none, no scaling")
    parser.add_argument("--model", default="sym-line", choices=("sym-line", "sym-loge", "both"))
    parser.add_argument("--seeds", type=int, default=None, help="seeds per SNR (default 50, --quick 5)")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--d", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument(
        "--batch-sizes",
        default=None,
        help="comma-separated; 'none' = vmap the whole chunk, 'auto' = emjax's default "
        "(default auto,none,1,4,16,64; --quick auto,none)",
    )
    parser.add_argument(
        "--two-devices",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run (a) over two host devices at the best batch size (default: on, off with --quick)",
    )
    parser.add_argument(
        "--loop-seeds", type=int, default=None, help="seeds per SNR for (b), (c), (d) (default --seeds)"
    )
    parser.add_argument(
        "--loop-budget",
        type=float,
        default=None,
        help="seconds after which a loop (b, c, d) stops at the end of an SNR round "
        "(default 60, --quick 10); cells/s is over the cells it did",
    )
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling table (skipped by --quick)")
    parser.add_argument("--emjax-path", default=None, help="import emjax from this directory (e.g. an older copy)")
    parser.add_argument("--json", default=None, help="also write every measurement to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        return serve_worker(WORKERS, args.worker)

    seeds = args.seeds or (5 if args.quick else 50)
    loop_seeds = args.loop_seeds or seeds
    batch_sizes = parse_batch_sizes(args.batch_sizes or ("auto,none" if args.quick else "auto,none,1,4,16,64"))
    budget = args.loop_budget if args.loop_budget is not None else (10.0 if args.quick else 60.0)
    two_devices = (not args.quick) if args.two_devices is None else args.two_devices
    scaling = not (args.no_scaling or args.quick)
    models = list(MODELS) if args.model == "both" else [args.model]
    dtypes = [s.strip() for s in args.dtypes.split(",")]
    common = {"n": args.n, "d": args.d, "steps": args.steps, "snrs": list(SNRS), "emjax_path": args.emjax_path}
    report = {"args": vars(args), "seeds": seeds, "loop_seeds": loop_seeds, "runs": {}}
    start_time = time.perf_counter()
    script = __file__

    def say(text=""):
        print(text, flush=True)

    def brief(result):
        return json.dumps({k: v for k, v in result.items() if k not in ("theta", "losses", "iterates")})

    say(
        f"Sweep throughput: {', '.join(MODELS[m] for m in models)}; {len(SNRS)} SNRs x {seeds} seeds = "
        f"{len(SNRS) * seeds} cells, {args.steps} EM steps, n = {args.n}, d = {args.d}; loops (b, c, d) on up to "
        f"{len(SNRS) * loop_seeds} cells; emjax from {args.emjax_path or 'the installed package'}"
    )
    machine = run_worker(script, {"task": "machine"})
    report["machine"] = machine
    if "error" in machine:
        say(f"machine measurement failed: {machine['error']}")
        machine = {}
    else:
        m = machine
        say(
            f"machine: {m['cores']} cores; matmul 2048^2 GFLOP/s float32 numpy {m['matmul_gflops_numpy_float32']:.0f}"
            f" / jax {m['matmul_gflops_jax_float32']:.0f}, float64 numpy {m['matmul_gflops_numpy_float64']:.0f}"
            f" / jax {m['matmul_gflops_jax_float64']:.0f}; read GB/s one core: L2-resident "
            f"{m['l2_read_gbs_one_core']:.0f}, DRAM {m['dram_read_gbs_one_core']:.0f}"
        )

    for model in models:
        for dtype in dtypes:
            say(f"\n=== {MODELS[model]}, {dtype} ===")
            base = {**common, "model": model, "dtype": dtype, "seeds": seeds}
            loop_base = {**base, "seeds": loop_seeds, "budget_s": budget}
            res = {"a": {}, "a2": {}}
            res["verify"] = run_worker(script, {"task": "verify", **base})
            say(f"verification cell (SNR 2, seed 0), max |difference| to emjax.fit: {json.dumps(res['verify'])}")
            res["b"] = run_worker(script, {"task": "loop", **loop_base})
            say(f"(b) loop of emjax.fit: {brief(res['b'])}")
            for b in batch_sizes:
                r = run_worker(script, {"task": "sweep", **base, "batch_size": b})
                r["same_theta"], r["same_loss"] = same_iterates(r, res["b"])
                res["a"][str(b)] = r
                say(f"(a) emjax.sweep batch_size={b}: {brief(r)}")
            rates = {b: r["cells_per_s"] for b, r in res["a"].items() if "cells_per_s" in r}
            best = max(rates, key=rates.get) if rates else None
            best_value = parse_batch_sizes(best)[0] if best else None
            if two_devices and best is not None:
                r = run_worker(script, {"task": "sweep", **base, "batch_size": best_value, "devices": 2})
                r["same_theta"], r["same_loss"] = same_iterates(r, res["b"])
                r["batch_size"] = best
                res["a2"][best] = r
                say(f"(a2) emjax.sweep over two host devices, batch_size={best}: {brief(r)}")
            res["c"] = run_worker(script, {"task": "numpy", **loop_base})
            say(f"(c) NumPy loop: {brief(res['c'])}")
            res["d"] = run_worker(script, {"task": "torch", **loop_base})
            if "skipped" in res["d"]:
                say(
                    f"(d) PyTorch loop skipped: torch is not importable ({res['d']['skipped']}); install it with "
                    "pip install torch --index-url https://download.pytorch.org/whl/cpu"
                )
                res["d1"] = res["d"]
            else:
                say(f"(d) PyTorch loop, threads = cores: {brief(res['d'])}")
                res["d1"] = run_worker(script, {"task": "torch", **loop_base, "threads": 1})
                say(f"(d1) PyTorch loop, 1 thread: {brief(res['d1'])}")
            if scaling and model == models[0] and dtype == dtypes[0] and best is not None:
                configs = [(6, args.n, args.d), (12, args.n, args.d), (50, args.n, args.d)]
                configs += [(12, args.n // 4, args.d), (12, args.n * 4, args.d)]
                configs += [(12, args.n, max(1, args.d // 2)), (12, args.n, args.d * 4)]
                res["scaling"] = run_worker(
                    script, {"task": "scaling", **base, "configs": configs, "batch_size": best_value}
                )
            report["runs"][model, dtype] = res

    say("\n" + "=" * 100)
    say(
        f"SUMMARY ({len(SNRS) * seeds} cells x {args.steps} EM steps, n = {args.n}, d = {args.d}; "
        f"loops on up to {len(SNRS) * loop_seeds} cells; total wall {time.perf_counter() - start_time:.0f} s; "
        f"emjax from {args.emjax_path or 'the installed package'})"
    )
    summarise(args, report, machine, say)
    for (model, dtype), res in report["runs"].items():
        rows = res.get("scaling", {}).get("rows")
        if rows:
            say(f"\nscaling of (a), {MODELS[model]}, {dtype}, batch_size={res['summary']['best_batch_size']}")
            keys = ["cells", "n", "d", "compile_s", "run_s", "cells_per_s", "ms_per_cell"]
            say(
                table(
                    ["cells", "n", "d", "compile s", "run s", "cells/s", "ms/cell"],
                    [[r[k] for k in keys] for r in rows],
                )
            )
        elif "scaling" in res:
            say(f"\nscaling: {res['scaling']}")
    if args.json:
        with open(args.json, "w") as handle:
            runs = {f"{m} {t}": res for (m, t), res in report["runs"].items()}
            json.dump({**report, "runs": runs}, handle, indent=1, default=str)
        say(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
