r"""Benchmark: throughput of a whole EM sweep (cells per second), emjax against loops in JAX, NumPy, PyTorch.

The sweep
---------
Every cell fits SymMoLinE (sigma = 1) by 100 EM steps: truth ``emjax.testing.random_params(model, key, d,
gate_norm=2, expert_norm=snr)`` (so ||w*|| = 2 and ||beta*|| = SNR), data x ~ N(0, I_d) and y from the
model (``emjax.sample``, n = 2000, d = 10), start ``emjax.testing.perturb(truth, key)`` (relative error 1 per
block). The grid is 8 SNRs x 50 seeds = 400 cells; each cell returns its final parameters, its loss
trace (101 values) and a status. It is run, in float32 and in float64, by

(a) ``emjax.sweep(cell, key, {"snr": snrs, "seed": arange(50)}, batch_size=b)``: one compiled program
    (``vmap`` over the chunk with ``batch_size=None``, ``lax.map`` over groups of b cells otherwise).
    Compilation (``result.compile_seconds``) is reported apart from running (``run_seconds``).
(b) a Python loop over the cells: a jitted draw (truth, data, start; the same keys as (a)) and
    ``emjax.fit(model, emjax.em(), start, x, y, 100)`` per cell; the first call (compilation) is
    reported apart and left out of the timed loop.
(c) a NumPy loop over the cells, the same algorithm as ``emjax.em_step`` for SymMoLinE, vectorised
    over samples: E-step posterior logits; beta = sigma^2 (X^T X)^{-1} X^T(tanh(logit/2) y / sigma^2)
    with (X^T X)^{-1} formed once per cell (the same Levenberg jitter as emjax's ``solve_psd``); w by
    soft-label logistic regression with damped Newton and Armijo backtracking (constant 1e-4, slack
    16 eps (|f|+1), at most 40 halvings), warm-started at the previous w, the Hessian jittered like
    ``solve_psd``, stopping when max|step| < 1e-10 (float64) / 1e-5 (float32) or after 50 steps; the
    loss L(theta_t) at every iterate, as ``emjax.fit`` records it. Two shortcuts a NumPy programmer
    would take and that do not change the iterates beyond round-off: x.u is carried from the accepted
    Armijo trial instead of recomputed, and the loss comes from the E-step's projections
    (log p = l0 - softplus(x.w) + softplus(logit), the same value as emjax's logaddexp form).
    Data are drawn per cell with NumPy's Generator (the same distribution as emjax.sample).
(d) the same as (c) in PyTorch on the CPU (torch threads = cores), skipped with a message when torch
    is not importable (``pip install torch --index-url https://download.pytorch.org/whl/cpu``).

(c) and (d) are checked against emjax on one cell (SNR 2): the script prints the max abs difference
of the final parameters and of the loss trace, and the mean number of Newton iterations and of
Armijo evaluations per EM step that the NumPy run took (used by the FLOP count).

Every measurement runs in its own subprocess (float64 through ``jax_enable_x64`` there), so the
peak resident memory (``ru_maxrss``) of each is its own; "base" is the process right after its
imports, so peak - base is what the work added.

The floor
---------
FLOPs of one EM step (k Newton iterations, a Armijo evaluations per EM step, measured by (c)):
E-step scores x.w and x.beta 4nd; beta right-hand side X^T v 2nd (X^T X is factored once per cell);
per Newton iteration the gradient X^T(p - t) 2nd and the Hessian X^T diag(p(1-p)) X 2nd^2; per
Armijo evaluation one matvec 2nd (x.u of the next iteration is that of the accepted trial).
Elementwise work (about ten exp/log1p per sample per step) is not counted: a floor is a lower
bound. Bytes: each pass over x streams n d s bytes (s = 4 or 8): the E-step, the beta right-hand
side and, per Newton iteration, the Hessian/gradient pass, plus one pass per Armijo evaluation.
The matmul rate is that of a 2048^2 matrix product (all cores), the bandwidth that of reading an
L2-resident array (one core, times the number of cores: a cell's 80 KB (float32) / 160 KB (float64)
of x fits in a core's 2 MB L2 cache, so cache bandwidth, not DRAM bandwidth, bounds a cell that keeps
its data there; DRAM bandwidth is printed too). floor per cell = steps x max(FLOPs / matmul rate,
bytes / bandwidth). Small (2000 x 10) products never reach the large-matrix rate; the script also
prints the rate XLA reaches on the Hessian's own shape, to show how much of the distance is that.

Prototypes
----------
``--prototypes`` (on by default) also measures changes recommended for emjax, written here without
touching emjax: (a2) ``emjax.sweep`` over two CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``; the cell axis is split with
``shard_map``, which today needs ``check_vma=False``: the script first tries without and reports the
error), and (p) ``proto_fit``: the same EM iterates with x stored feature-major once per fit, X^T X
factored once per fit, the loss taken from the E-step's projections, x.u and f carried through the
Newton loop, and no line search when the Newton step is already below the tolerance (the loop stops
after it); checked against ``emjax.fit`` on the verification cell. "batch_size=1 seq" runs it with
``batch_size=1`` turned into a plain ``lax.map`` (a scan over cells) instead of
``lax.map(..., batch_size=1)``, which vmaps groups of one cell and so turns every ``lax.cond`` into a
select that evaluates both branches.

How to run
----------
From the repository root with emjax installed (``pip install -e .``)::

    python benchmarks/sweep_throughput.py            # the full run (about 7 minutes on 2 idle cores)
    python benchmarks/sweep_throughput.py --quick    # 40 cells, no prototypes/profile/scaling (about 50 s)
    python benchmarks/sweep_throughput.py --help     # --seeds, --n, --d, --steps, --batch-sizes, --json, ...

The machine is shared and noisy: compare the ratios printed by one run, not seconds across runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

SNRS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
W_NORM = 2.0
SIGMA = 1.0
MAX_NEWTON = 50
ARMIJO = 1e-4
MAX_HALVINGS = 40
RESULT_TAG = "RESULT-JSON "


def newton_tolerance(bits: int) -> float:
    return 1e-10 if bits >= 64 else 1e-5


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ============================================================================ JAX side (a), (b), prototypes


def setup_jax(dtype: str, devices: int = 1):
    if devices > 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
        ).strip()
    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    return jax


def get_sweep():
    import emjax

    if hasattr(emjax, "sweep"):
        return emjax.sweep
    from emjax.sweeps import sweep  # before emjax.sweep is exported at the top level

    return sweep


def make_cell(n: int, d: int, steps: int, kind: str = "emjax"):
    """The lean cell: truth, data and start drawn from the cell's key, then 100 EM steps."""
    import jax
    import jax.numpy as jnp

    import emjax

    model = emjax.SymMoLinE(SIGMA)

    def cell(key, snr, seed):
        del seed  # the seed axis selects the key (fold_in of its index)
        k_truth, k_data, k_start = jax.random.split(key, 3)
        truth = emjax.testing.random_params(model, k_truth, d, gate_norm=W_NORM, expert_norm=snr)
        x, y = emjax.sample(model, truth, k_data, n)
        start = emjax.testing.perturb(truth, k_start)
        if kind == "proto":
            w, beta, losses, _ = proto_fit(x, y, start.w, start.beta, SIGMA, steps)
            ok = jnp.isfinite(losses[-1]) & jnp.all(jnp.isfinite(w)) & jnp.all(jnp.isfinite(beta))
            return {
                "params": emjax.SymParams(w=w, beta=beta),
                "losses": losses,
                "status": jnp.where(ok, 0, 2).astype(jnp.int32),
            }
        result = emjax.fit(model, emjax.em(), start, x, y, steps)
        return {"params": result.params, "losses": result.losses, "status": result.status}

    cell.__qualname__ = f"sweep_throughput_cell_{kind}"
    return cell


def grid_values(jax, seeds: int, snrs):
    import numpy as np

    float_dtype = jax.numpy.zeros(()).dtype
    return {"snr": np.asarray(snrs, float_dtype), "seed": np.arange(seeds)}


def patch_shard_map_check_vma(jax):
    """Prototype of the fix for emjax.sweep on several devices: shard_map(..., check_vma=False)."""
    original = jax.shard_map

    def shard_map(f, **kwargs):
        kwargs.setdefault("check_vma", False)
        return original(f, **kwargs)

    jax.shard_map = shard_map


def patch_sequential_map(jax):
    """Prototype for emjax.sweep: batch_size=1 as a plain lax.map (a scan), not lax.map(batch_size=1).

    lax.map(f, xs, batch_size=1) runs vmap(f) on groups of one cell: every lax.cond inside becomes a
    select that evaluates both branches, and every while_loop carries batched predicates."""
    original = jax.lax.map

    def sequential_map(f, xs, *, batch_size=None):
        return original(f, xs) if batch_size == 1 else original(f, xs, batch_size=batch_size)

    jax.lax.map = sequential_map


def worker_sweep(spec):
    """(a): one emjax.sweep call; prints compile and run seconds."""
    jax = setup_jax(spec["dtype"], spec.get("devices", 1))
    sweep = get_sweep()
    import numpy as np

    if spec.get("sequential_map"):
        patch_sequential_map(jax)

    base = rss_mb()
    cell = make_cell(spec["n"], spec["d"], spec["steps"], spec.get("kind", "emjax"))
    grid = grid_values(jax, spec["seeds"], spec["snrs"])
    out = {"base_mb": base, "devices": len(jax.devices())}

    def run():
        return sweep(cell, 0, grid, chunk_size=spec.get("chunk_size"), batch_size=spec["batch_size"], progress=False)

    try:
        result = run()
    except Exception as error:  # noqa: BLE001 - reported, then retried with the prototype fix
        if len(jax.devices()) == 1:
            raise
        out["unpatched_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        patch_shard_map_check_vma(jax)
        result = run()
    cells = int(np.prod(result.shape))
    losses = result.outputs["losses"]
    out.update(
        cells=cells,
        chunk_size=result.configuration["chunk_size"],
        compile_s=result.compile_seconds,
        run_s=result.run_seconds,
        cells_per_s=cells / result.run_seconds,
        final_loss_mean=float(np.nanmean(losses[..., -1])),
        status_ok=int(np.sum(result.outputs["status"] == 0)),
        peak_mb=rss_mb(),
    )
    return out


def worker_loop(spec):
    """(b): a Python loop calling emjax.fit per cell (jitted draw per cell, the same keys as (a))."""
    jax = setup_jax(spec["dtype"])
    import jax.numpy as jnp
    import numpy as np

    import emjax

    base = rss_mb()
    n, d, steps = spec["n"], spec["d"], spec["steps"]
    model = emjax.SymMoLinE(SIGMA)
    float_dtype = jnp.zeros(()).dtype

    @jax.jit
    def draw(key, snr):
        k_truth, k_data, k_start = jax.random.split(key, 3)
        truth = emjax.testing.random_params(model, k_truth, d, gate_norm=W_NORM, expert_norm=snr)
        x, y = emjax.sample(model, truth, k_data, n)
        return x, y, emjax.testing.perturb(truth, k_start)

    root = jax.random.key(0)

    def one(i, j):
        key = jax.random.fold_in(jax.random.fold_in(root, i), j)
        x, y, start = draw(key, jnp.asarray(spec["snrs"][i], float_dtype))
        result = emjax.fit(model, emjax.em(), start, x, y, steps)
        return np.asarray(result.losses), np.asarray(result.params.w), int(result.status)

    tic = time.perf_counter()
    one(0, 0)
    compile_s = time.perf_counter() - tic
    done, run_s = timed_loop(spec, one)
    last = [losses[-1] for losses, _, _ in done]
    return {
        "base_mb": base,
        "cells": len(done),
        "compile_s": compile_s,
        "run_s": run_s,
        "cells_per_s": len(done) / run_s,
        "final_loss_mean": float(np.nanmean(last)),
        "peak_mb": rss_mb(),
    }


def proto_fit(x, y, w0, b0, sigma, num_steps: int, max_newton: int = MAX_NEWTON):
    """Prototype of the recommended emjax changes: the same EM iterates as emjax.fit(model, em(), ...).

    * x is stored feature-major (``xt = x.T``, materialised once per fit): XLA's CPU dots on (d, n)
      contract over the contiguous axis and run 2-6x faster than on the (n, d) layout at d = 10.
    * X^T X is factored once per fit, not once per EM step.
    * The loss of iterate t comes from the E-step at t (one pass for both); with
      log p = l0 - softplus(x.w) + softplus(logit) it needs two softplus instead of two plus a logaddexp.
    * sigmoid, softplus and tanh(logit/2) share one exp(-|z|).
    * The Newton loop carries z = x.u and f(u) from the accepted Armijo trial; the beta right-hand
      side shares the first gradient's pass over x; a Newton step already below the tolerance is
      taken without a line search (the loop stops after it anyway).
    Returns (w, beta, losses (num_steps + 1,), Newton iterations per EM step (num_steps,)).
    """
    import jax.numpy as jnp
    from jax import lax
    from jax.scipy.linalg import cho_factor, cho_solve

    n, d = x.shape
    dt = x.dtype
    eps, tiny = jnp.finfo(dt).eps, jnp.finfo(dt).tiny
    tol = newton_tolerance(jnp.finfo(dt).bits)
    var = jnp.square(jnp.asarray(sigma, dt))
    count = jnp.asarray(n, dt)
    eye = jnp.eye(d, dtype=dt)
    xt = x.T
    gram = xt @ xt.T
    gram_factor = cho_factor(gram + (eps * jnp.trace(gram) / d + tiny) * eye, lower=True)
    const = -0.5 * jnp.log(2 * jnp.pi * var)

    def softplus_sigmoid(z):
        e = jnp.exp(-jnp.abs(z))
        inv = 1 / (1 + e)
        return jnp.maximum(z, 0) + jnp.log1p(e), jnp.where(z >= 0, inv, e * inv), e, inv

    def e_step(w, b):
        scores = jnp.stack([w, b]) @ xt
        xw, xb = scores[0], scores[1]
        logit = xw + 2 * y * xb / var
        sp_w, sig_w, _, _ = softplus_sigmoid(xw)
        sp_l, r, e_l, inv_l = softplus_sigmoid(logit)
        loss = -jnp.mean(const - jnp.square(y + xb) / (2 * var) - sp_w + sp_l)
        tanh_half = jnp.where(logit >= 0, 1 - e_l, e_l - 1) * inv_l  # tanh(logit / 2), exact in both tails
        return loss, xw, sp_w, sig_w, r, tanh_half * y / var

    def m_step(w, xw, sp_w, sig_w, r, expert_targets):
        def body(state):
            u, z, sig, f, _, k, rhs = state
            both = xt @ jnp.stack([sig - r, expert_targets], axis=1)
            g = both[:, 0] / count
            rhs = jnp.where(k == 0, both[:, 1], rhs)
            h = (xt * (sig * (1 - sig))) @ xt.T / count
            h = h + (eps * jnp.trace(h) / d + tiny) * eye
            direction = -cho_solve(cho_factor(h, lower=True), g)
            slope = g @ direction
            slack = 16 * eps * (jnp.abs(f) + 1)

            def full(_):
                return direction, z, sig, f

            def search(_):
                zd = direction @ xt

                def objective(alpha):
                    za = z + alpha * zd
                    sp, sg, _, _ = softplus_sigmoid(za)
                    return jnp.mean(sp - r * za), sg, za

                f1, s1, z1 = objective(jnp.ones((), dt))

                def reject(c):
                    alpha, fa, _, _, halvings = c
                    return ~(fa <= f + ARMIJO * alpha * slope + slack) & (halvings < MAX_HALVINGS)

                def halve(c):
                    alpha = c[0] / 2
                    fa, sa, za = objective(alpha)
                    return alpha, fa, sa, za, c[4] + 1

                alpha, fa, sa, za, _ = lax.while_loop(reject, halve, (jnp.ones((), dt), f1, s1, z1, 0))
                ok = jnp.isfinite(fa)
                return (
                    jnp.where(ok, alpha, 0) * direction,
                    jnp.where(ok, za, z),
                    jnp.where(ok, sa, sig),
                    jnp.where(ok, fa, f),
                )

            step, z, sig, f = lax.cond(jnp.max(jnp.abs(direction)) < tol, full, search, None)
            return u + step, z, sig, f, jnp.max(jnp.abs(step)), k + 1, rhs

        def keep_going(state):
            return (state[5] < max_newton) & (state[4] >= tol)

        f0 = jnp.mean(sp_w - r * xw)
        init = (w, xw, sig_w, f0, jnp.asarray(jnp.inf, dt), 0, jnp.zeros(d, dt))
        u, _, _, _, _, k, rhs = lax.while_loop(keep_going, body, init)
        return u, var * cho_solve(gram_factor, rhs), k

    def step(carry, _):
        w, b = carry
        loss, xw, sp_w, sig_w, r, expert_targets = e_step(w, b)
        w_new, b_new, k = m_step(w, xw, sp_w, sig_w, r, expert_targets)
        return (w_new, b_new), (loss, k)

    (w, b), (losses, iterations) = lax.scan(step, (w0, b0), None, length=num_steps)
    return w, b, jnp.concatenate([losses, e_step(w, b)[0][None]]), iterations


# ============================================================================ NumPy (c) and PyTorch (d)


def np_draw(rng, snr, n, d, dtype):
    """One cell's truth, data and start with NumPy (the same distribution as emjax)."""
    import numpy as np

    def direction():
        v = rng.standard_normal(d)
        return v / np.linalg.norm(v)

    w, beta = W_NORM * direction(), snr * direction()
    x = rng.standard_normal((n, d), dtype=dtype)
    xw, xb = x @ w.astype(dtype), x @ beta.astype(dtype)
    z = rng.random(n, dtype=dtype) * (1 + np.exp(-xw)) < 1  # z ~ Bernoulli(sigmoid(x.w))
    y = np.where(z, xb, -xb) + dtype(SIGMA) * rng.standard_normal(n, dtype=dtype)
    w0 = w + np.linalg.norm(w) * direction()
    b0 = beta + np.linalg.norm(beta) * direction()
    return x, y.astype(dtype), w0.astype(dtype), b0.astype(dtype)


def np_fit(x, y, w, beta, sigma, steps, counts):
    """(c): emjax's EM for SymMoLinE in NumPy, vectorised over samples (see the module docstring)."""
    import numpy as np

    dt = x.dtype.type
    n, d = x.shape
    info = np.finfo(x.dtype)
    eps, tiny = dt(info.eps), dt(info.tiny)
    tol = newton_tolerance(info.bits)
    var = dt(sigma) ** 2
    const = dt(-0.5 * math.log(2 * math.pi * float(var)))
    diag = np.diag_indices(d)

    def softplus_sigmoid(z):
        e = np.exp(-np.abs(z))
        inv = 1 / (1 + e)
        return np.maximum(z, 0) + np.log1p(e), np.where(z >= 0, inv, e * inv), e, inv

    gram = x.T @ x
    gram[diag] += eps * np.trace(gram) / d + tiny
    gram_inv = np.linalg.inv(gram)  # once per cell
    losses = np.empty(steps + 1, x.dtype)
    for t in range(steps + 1):
        scores = x @ np.stack([w, beta], axis=1)
        xw, xb = scores[:, 0], scores[:, 1]
        logit = xw + (2 / var) * y * xb
        sp_w, sig_w, _, _ = softplus_sigmoid(xw)
        sp_l, r, e_l, inv_l = softplus_sigmoid(logit)
        losses[t] = -np.mean(const - (y + xb) ** 2 / (2 * var) - sp_w + sp_l)
        if t == steps:
            break
        expert_targets = np.where(logit >= 0, 1 - e_l, e_l - 1) * inv_l * y / var
        beta_new = var * (gram_inv @ (x.T @ expert_targets))
        # w: damped Newton on mean[softplus(x.u) - r x.u], warm-started at w
        u, z, sig = w, xw, sig_w
        f = np.mean(sp_w - r * xw)
        for _ in range(MAX_NEWTON):
            g = x.T @ (sig - r) / dt(n)
            h = (x * (sig * (1 - sig))[:, None]).T @ x / dt(n)
            h[diag] += eps * np.trace(h) / d + tiny
            direction = -np.linalg.solve(h, g)
            slope = g @ direction
            slack = 16 * eps * (abs(f) + 1)
            zd = x @ direction
            alpha = dt(1)
            za = z + zd
            sp, sa, _, _ = softplus_sigmoid(za)
            fa = np.mean(sp - r * za)
            counts[1] += 1
            halvings = 0
            while not (fa <= f + dt(ARMIJO) * alpha * slope + slack) and halvings < MAX_HALVINGS:
                alpha = alpha / 2
                za = z + alpha * zd
                sp, sa, _, _ = softplus_sigmoid(za)
                fa = np.mean(sp - r * za)
                halvings += 1
                counts[1] += 1
            counts[0] += 1
            if np.isfinite(fa):
                step = alpha * direction
                z, sig, f = za, sa, fa
            else:
                step = np.zeros_like(direction)
            u = u + step
            if np.max(np.abs(step)) < tol:
                break
        counts[2] += 1
        w, beta = u, beta_new
    return w, beta, losses


def torch_fit(torch, x, y, w, beta, sigma, steps):
    """(d): the same as np_fit in PyTorch (CPU)."""
    dt = x.dtype
    n, d = x.shape
    info = torch.finfo(dt)
    eps, tiny = info.eps, info.tiny
    tol = newton_tolerance(info.bits)
    var = sigma**2
    const = -0.5 * math.log(2 * math.pi * var)
    eye = torch.eye(d, dtype=dt)

    def softplus_sigmoid(z):
        e = torch.exp(-torch.abs(z))
        inv = 1 / (1 + e)
        return torch.clamp_min(z, 0) + torch.log1p(e), torch.where(z >= 0, inv, e * inv), e, inv

    gram = x.T @ x
    gram = gram + (eps * torch.trace(gram) / d + tiny) * eye
    gram_inv = torch.linalg.inv(gram)
    losses = torch.empty(steps + 1, dtype=dt)
    for t in range(steps + 1):
        scores = x @ torch.stack([w, beta], dim=1)
        xw, xb = scores[:, 0], scores[:, 1]
        logit = xw + (2 / var) * y * xb
        sp_w, sig_w, _, _ = softplus_sigmoid(xw)
        sp_l, r, e_l, inv_l = softplus_sigmoid(logit)
        losses[t] = -torch.mean(const - (y + xb) ** 2 / (2 * var) - sp_w + sp_l)
        if t == steps:
            break
        expert_targets = torch.where(logit >= 0, 1 - e_l, e_l - 1) * inv_l * y / var
        beta_new = var * (gram_inv @ (x.T @ expert_targets))
        u, z, sig = w, xw, sig_w
        f = float(torch.mean(sp_w - r * xw))
        for _ in range(MAX_NEWTON):
            g = x.T @ (sig - r) / n
            h = (x * (sig * (1 - sig))[:, None]).T @ x / n
            h = h + (eps * torch.trace(h) / d + tiny) * eye
            direction = -torch.linalg.solve(h, g)
            slope = float(g @ direction)
            slack = 16 * eps * (abs(f) + 1)
            zd = x @ direction
            alpha = 1.0
            za = z + zd
            sp, sa, _, _ = softplus_sigmoid(za)
            fa = float(torch.mean(sp - r * za))
            halvings = 0
            while not (fa <= f + ARMIJO * alpha * slope + slack) and halvings < MAX_HALVINGS:
                alpha = alpha / 2
                za = z + alpha * zd
                sp, sa, _, _ = softplus_sigmoid(za)
                fa = float(torch.mean(sp - r * za))
                halvings += 1
            if math.isfinite(fa):
                step = alpha * direction
                z, sig, f = za, sa, fa
            else:
                step = torch.zeros_like(direction)
            u = u + step
            if float(torch.max(torch.abs(step))) < tol:
                break
        w, beta = u, beta_new
    return w, beta, losses


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


def worker_numpy(spec):
    import numpy as np

    base = rss_mb()
    dtype = np.dtype(spec["dtype"]).type
    counts = [0, 0, 0]  # Newton iterations, Armijo evaluations, EM steps

    def one(i, j):
        rng = np.random.default_rng([i, j])
        x, y, w0, b0 = np_draw(rng, spec["snrs"][i], spec["n"], spec["d"], dtype)
        return np_fit(x, y, w0, b0, SIGMA, spec["steps"], counts)[2][-1]

    last, run_s = timed_loop(spec, one)
    cells = len(last)
    return {
        "base_mb": base,
        "cells": cells,
        "run_s": run_s,
        "cells_per_s": cells / run_s,
        "final_loss_mean": float(np.nanmean(last)),
        "newton_per_step": counts[0] / counts[2],
        "armijo_per_step": counts[1] / counts[2],
        "peak_mb": rss_mb(),
    }


def import_torch(threads=None):
    try:
        import torch
    except Exception as error:  # noqa: BLE001 - any import failure means: skip (d)
        return None, f"{type(error).__name__}: {error}"
    torch.set_num_threads(threads or os.cpu_count() or 1)
    return torch, None


def worker_torch(spec):
    import numpy as np

    torch, why = import_torch(spec.get("threads"))
    if torch is None:
        return {"skipped": why}
    base = rss_mb()
    dtype = np.dtype(spec["dtype"]).type

    def one(i, j):
        rng = np.random.default_rng([i, j])
        x, y, w0, b0 = (torch.from_numpy(a) for a in np_draw(rng, spec["snrs"][i], spec["n"], spec["d"], dtype))
        return float(torch_fit(torch, x, y, w0, b0, SIGMA, spec["steps"])[2][-1])

    with torch.inference_mode():
        last, run_s = timed_loop(spec, one)
    cells = len(last)
    return {
        "base_mb": base,
        "cells": cells,
        "run_s": run_s,
        "cells_per_s": cells / run_s,
        "final_loss_mean": float(np.nanmean(last)),
        "threads": torch.get_num_threads(),
        "version": torch.__version__,
        "peak_mb": rss_mb(),
    }


# ============================================================================ verification, profile, machine


def verification_cell(jax, spec):
    import jax.numpy as jnp

    import emjax

    model = emjax.SymMoLinE(SIGMA)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 3), 0)  # SNR 2, seed 0
    k_truth, k_data, k_start = jax.random.split(key, 3)
    truth = emjax.testing.random_params(model, k_truth, spec["d"], gate_norm=W_NORM, expert_norm=jnp.asarray(2.0))
    x, y = emjax.sample(model, truth, k_data, spec["n"])
    return model, x, y, emjax.testing.perturb(truth, k_start)


def worker_verify(spec):
    """emjax.fit against (c), (d) and the prototype on one cell: max abs differences."""
    jax = setup_jax(spec["dtype"])
    import numpy as np

    import emjax

    model, x, y, start = verification_cell(jax, spec)
    steps = spec["steps"]
    reference = emjax.fit(model, emjax.em(), start, x, y, steps)
    ref_params = np.concatenate([np.asarray(reference.params.w), np.asarray(reference.params.beta)])
    ref_losses = np.asarray(reference.losses)
    xn, yn, w0, b0 = (np.asarray(a) for a in (x, y, start.w, start.beta))
    out = {}

    def diffs(w, b, losses):
        return {
            "params": float(np.max(np.abs(np.concatenate([np.asarray(w), np.asarray(b)]) - ref_params))),
            "losses": float(np.max(np.abs(np.asarray(losses) - ref_losses))),
        }

    counts = [0, 0, 0]
    out["numpy"] = diffs(*np_fit(xn, yn, w0, b0, SIGMA, steps, counts))
    torch, why = import_torch()
    if torch is None:
        out["torch"] = {"skipped": why}
    else:
        with torch.inference_mode():
            out["torch"] = diffs(
                *torch_fit(torch, *(torch.from_numpy(a.copy()) for a in (xn, yn, w0, b0)), SIGMA, steps)
            )
    w, b, losses, _ = jax.jit(proto_fit, static_argnums=(5,))(x, y, start.w, start.beta, SIGMA, steps)
    out["proto"] = diffs(w, b, losses)
    return out


def _time_min(fn, repeats):
    fn()
    best = math.inf
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - tic)
    return best


def worker_profile(spec):
    """Where an emjax EM step spends its time: per-call and in-loop (no dispatch) timings, in microseconds."""
    jax = setup_jax(spec["dtype"])
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    import emjax
    from emjax._likelihood import loss_raw
    from emjax._newton import soft_logistic_regression

    model, x, y, start = verification_cell(jax, spec)
    steps = spec["steps"]
    fitted = emjax.fit(model, emjax.em(), start, x, y, steps).params
    out = {}
    step = jax.jit(lambda p, x, y: emjax.em_step(model, p, x, y))
    for label, p in (("at start", start), ("at the fitted point", fitted)):
        out[f"em_step jit call, {label}"] = _time_min(lambda p=p: jax.block_until_ready(step(p, x, y)), 30) * 1e6

    xn, yn = np.asarray(x), np.asarray(y)
    for label, p in (("at start", start), ("at the fitted point", fitted)):
        w0, b0 = np.asarray(p.w), np.asarray(p.beta)
        out[f"NumPy EM step (+ loss), {label}"] = (
            _time_min(lambda w0=w0, b0=b0: np_fit(xn, yn, w0, b0, SIGMA, 1, [0, 0, 0]), 30) * 1e6
        )

    fit = lambda: jax.block_until_ready(emjax.fit(model, emjax.em(), start, x, y, steps))  # noqa: E731
    out["emjax.fit, per EM step"] = _time_min(fit, 5) / steps * 1e6
    proto = jax.jit(proto_fit, static_argnums=(5,))
    out["prototype fit, per EM step"] = (
        _time_min(lambda: jax.block_until_ready(proto(x, y, start.w, start.beta, SIGMA, steps)), 5) / steps * 1e6
    )
    w0, b0 = np.asarray(start.w), np.asarray(start.beta)
    out["NumPy fit, per EM step"] = _time_min(lambda: np_fit(xn, yn, w0, b0, SIGMA, steps, [0, 0, 0]), 3) / steps * 1e6

    # In-loop costs of the pieces (R repetitions inside one compiled fori_loop: no dispatch).
    reps = 500
    d = x.shape[1]
    xt = jnp.asarray(np.ascontiguousarray(xn.T))
    t = jax.nn.sigmoid(x @ fitted.w)

    def in_loop(body):
        # x, xt and t are arguments, not constants: XLA may give a constant any layout it likes
        f = jax.jit(lambda u, x, xt, t: lax.fori_loop(0, reps, lambda i, u: body(u, x, xt, t), u))
        u0 = fitted.w
        return _time_min(lambda: jax.block_until_ready(f(u0, x, xt, t)), 5) / reps * 1e6

    small = 1e-7
    pieces = [
        (
            "em_step (emjax) at the fitted point",
            lambda u, x, xt, t: emjax.em_step(model, emjax.SymParams(w=u, beta=fitted.beta), x, y).w,
        ),
        (
            "loss (emjax loss_raw)",
            lambda u, x, xt, t: u + small * loss_raw(model, emjax.SymParams(w=u, beta=fitted.beta), x, y),
        ),
        ("Newton solve (emjax), warm at the optimum", lambda u, x, xt, t: soft_logistic_regression(x, t, u)),
        ("X^T X (recomputed every EM step today)", lambda u, x, xt, t: u + small * ((x + small * u[0]).T @ x)[0]),
        (
            "Hessian (x*w).T @ x, (n, d) layout (today)",
            lambda u, x, xt, t: u + small * ((x * (t + u[0])[:, None]).T @ x)[0],
        ),
        ("Hessian (xt*w) @ xt.T, (d, n) layout", lambda u, x, xt, t: u + small * ((xt * (t + u[0])) @ xt.T)[0]),
        ("X^T v, (n, d) layout (today)", lambda u, x, xt, t: u + small * (x.T @ (t + u[0]))),
        ("X^T v, (d, n) layout", lambda u, x, xt, t: u + small * (xt @ (t + u[0]))),
        ("x @ u, (n, d) layout (today)", lambda u, x, xt, t: u + small * (x @ u)[:d]),
        ("x @ u, (d, n) layout", lambda u, x, xt, t: u + small * (u @ xt)[:d]),
        ("softplus of n values (+ mean)", lambda u, x, xt, t: u + small * jnp.mean(jax.nn.softplus(t * u[0]))),
        ("sigmoid of n values (+ mean)", lambda u, x, xt, t: u + small * jnp.mean(jax.nn.sigmoid(t * u[0]))),
    ]
    for label, body in pieces:
        out[f"loop: {label}"] = in_loop(body)
    return {"micro_s": out, "d": d}


def worker_machine(spec):
    """Matmul rates (2048^2, all cores) and read bandwidth (DRAM and L2-resident), both dtypes."""
    jax = setup_jax("float64")
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    out = {"cores": os.cpu_count()}
    size = 2048
    n, d, reps = spec["n"], spec["d"], 500
    dot = jax.jit(lambda m: m @ m)
    hessians = jax.jit(
        lambda u, xt, wt: lax.fori_loop(0, reps, lambda i, u: u + 1e-7 * ((xt * (wt + u[0])) @ xt.T)[0], u)
    )
    for name in ("float32", "float64"):
        a = np.random.default_rng(0).standard_normal((size, size)).astype(name)
        aj = jnp.asarray(a)
        flops = 2 * size**3
        out[f"matmul_gflops_numpy_{name}"] = flops / _time_min(lambda a=a: a @ a, 3) / 1e9
        out[f"matmul_gflops_jax_{name}"] = flops / _time_min(lambda aj=aj: jax.block_until_ready(dot(aj)), 3) / 1e9
        # the Hessian's own shape, the best layout, no dispatch
        xt = jnp.asarray(np.random.default_rng(1).standard_normal((d, n)).astype(name))
        wt = jnp.asarray(np.random.default_rng(2).random(n).astype(name))
        u0 = jnp.zeros(d, name)
        seconds = _time_min(lambda u0=u0, xt=xt, wt=wt: jax.block_until_ready(hessians(u0, xt, wt)), 3) / reps
        out[f"hessian_shape_gflops_jax_{name}"] = 2 * n * d * d / seconds / 1e9
    # bandwidth: DRAM (2 x 128 MB, one core) and L2-resident (2 x 512 KB, one core), via BLAS dot
    big = np.random.default_rng(3).standard_normal(16 * 2**20)  # 128 MB float64
    big2 = big[::-1].copy()
    t_big = _time_min(lambda: big @ big2, 3)
    out["dram_read_gbs_one_core"] = 2 * big.nbytes / t_big / 1e9
    small = np.random.default_rng(4).standard_normal(2**16)  # 512 KB
    small2 = small[::-1].copy()
    reps = 2000

    def cache_reads():
        for _ in range(reps):
            small @ small2

    out["l2_read_gbs_one_core"] = 2 * small.nbytes * reps / _time_min(cache_reads, 3) / 1e9
    return out


def worker_scaling(spec):
    """(a) at one batch size for several (cells, n, d); one subprocess, one compilation per shape."""
    jax = setup_jax(spec["dtype"])
    sweep = get_sweep()
    import numpy as np

    rows = []
    for seeds, n, d in spec["configs"]:
        cell = make_cell(n, d, spec["steps"])
        grid = grid_values(jax, seeds, spec["snrs"])
        result = sweep(cell, 0, grid, batch_size=spec["batch_size"], progress=False)
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
    "profile": worker_profile,
    "machine": worker_machine,
    "scaling": worker_scaling,
}


def run_worker(spec, timeout=900):
    """Run one measurement in a fresh Python process; return its JSON result (or an error record)."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    tic = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG) :])
            result["process_s"] = time.perf_counter() - tic
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail) or f"exit status {proc.returncode}"}


# ============================================================================ the count and the report


def count_step(n, d, bytes_per_value, newton, armijo):
    """FLOPs and bytes of one EM step (see the module docstring), with measured iteration counts."""
    flops = 4 * n * d + 2 * n * d + newton * (2 * n * d + 2 * n * d * d) + armijo * 2 * n * d
    passes = 2 + newton + armijo  # E-step, beta rhs, Hessian/gradient per Newton iteration, Armijo trials
    data_bytes = passes * n * d * bytes_per_value + 6 * n * bytes_per_value  # x passes + y, r, targets, z
    return flops, data_bytes, passes


def fmt(value, digits=3):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, str):
        return value
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="5 seeds (40 cells), no prototypes, profile or scaling: about 50 s"
    )
    parser.add_argument("--seeds", type=int, default=None, help="seeds per SNR (default 50, --quick 5)")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--d", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument(
        "--batch-sizes",
        default=None,
        help="comma-separated, 'none' = vmap the whole chunk (default none,1,4,16,64; --quick none,4)",
    )
    parser.add_argument(
        "--loop-seeds",
        type=int,
        default=None,
        help="seeds per SNR for the loops (b), (c), (d) (default: the same as --seeds)",
    )
    parser.add_argument(
        "--loop-budget",
        type=float,
        default=None,
        help="seconds after which a loop (b, c, d) stops at the end of an SNR round "
        "(default 60, --quick 10); cells/s is over the cells it did",
    )
    parser.add_argument(
        "--no-prototypes", action="store_true", help="skip the two-device runs and proto_fit (skipped by --quick)"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the where-the-time-goes table")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling table")
    parser.add_argument(
        "--scaling-dtype", default=None, help="dtype of the scaling table (default: the first of --dtypes)"
    )
    parser.add_argument("--json", default=None, help="also write every measurement to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        spec = json.loads(args.worker)
        result = WORKERS[spec["task"]](spec)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0

    seeds = args.seeds or (5 if args.quick else 50)
    loop_seeds = args.loop_seeds or seeds
    batch_text = args.batch_sizes or ("none,4" if args.quick else "none,1,4,16,64")
    budget = args.loop_budget if args.loop_budget is not None else (10.0 if args.quick else 60.0)
    prototypes = not (args.no_prototypes or args.quick)
    profile = not (args.no_profile or args.quick)
    scaling = not (args.no_scaling or args.quick)
    batch_sizes = [None if b.strip().lower() == "none" else int(b) for b in batch_text.split(",")]
    dtypes = [s.strip() for s in args.dtypes.split(",")]
    scaling_dtype = args.scaling_dtype or dtypes[0]
    common = {"n": args.n, "d": args.d, "steps": args.steps, "snrs": list(SNRS)}
    report = {"args": vars(args), "seeds": seeds, "loop_seeds": loop_seeds, "dtypes": {}}
    start_time = time.perf_counter()

    def say(text=""):
        print(text, flush=True)

    say(
        f"Sweep throughput: SymMoLinE, {len(SNRS)} SNRs x {seeds} seeds = {len(SNRS) * seeds} cells, "
        f"{args.steps} EM steps, n = {args.n}, d = {args.d}; loops (b, c, d) on {len(SNRS) * loop_seeds} cells"
    )
    machine = run_worker({"task": "machine", **common})
    report["machine"] = machine
    if "error" in machine:
        say(f"machine measurement failed: {machine['error']}")
        machine = {}
    else:
        m = machine
        say(
            f"machine: {m['cores']} cores; matmul 2048^2 GFLOP/s float32 numpy {m['matmul_gflops_numpy_float32']:.0f}"
            f" / jax {m['matmul_gflops_jax_float32']:.0f}, float64 numpy {m['matmul_gflops_numpy_float64']:.0f}"
            f" / jax {m['matmul_gflops_jax_float64']:.0f}; Hessian shape ({args.d}x{args.n})({args.n}x{args.d})"
            f" jax float32 {m['hessian_shape_gflops_jax_float32']:.1f},"
            f" float64 {m['hessian_shape_gflops_jax_float64']:.1f};"
            f" read GB/s one core: L2-resident {m['l2_read_gbs_one_core']:.0f}, DRAM {m['dram_read_gbs_one_core']:.0f}"
        )

    for dtype in dtypes:
        say(f"\n=== {dtype} ===")
        base = {**common, "dtype": dtype, "seeds": seeds}
        loop_base = {**base, "seeds": loop_seeds, "budget_s": budget}
        res = {"a": {}, "a2": {}, "p": {}}
        res["verify"] = run_worker({"task": "verify", **base})
        say(f"verification cell (SNR 2, seed 0), max |difference| to emjax.fit: {json.dumps(res['verify'])}")
        for b in batch_sizes:
            r = run_worker({"task": "sweep", **base, "batch_size": b})
            res["a"][str(b)] = r
            say(f"(a) emjax.sweep batch_size={b}: {json.dumps(r)}")
        ok = {k: v for k, v in res["a"].items() if "cells_per_s" in v}
        best_key = max(ok, key=lambda k: ok[k]["cells_per_s"]) if ok else None
        res["best_batch_size"] = best_key
        best_int = None if best_key in (None, "None") else int(best_key)
        res["b"] = run_worker({"task": "loop", **loop_base})
        say(f"(b) loop of emjax.fit: {json.dumps(res['b'])}")
        res["c"] = run_worker({"task": "numpy", **loop_base})
        say(f"(c) NumPy loop: {json.dumps(res['c'])}")
        res["d"] = run_worker({"task": "torch", **loop_base})
        if "skipped" in res["d"]:
            say(
                f"(d) PyTorch loop skipped: torch is not importable ({res['d']['skipped']}); install it with "
                "pip install torch --index-url https://download.pytorch.org/whl/cpu"
            )
            res["d1"] = res["d"]
        else:
            say(f"(d) PyTorch loop, threads = cores: {json.dumps(res['d'])}")
            res["d1"] = run_worker({"task": "torch", **loop_base, "threads": 1})
            say(f"(d1) PyTorch loop, 1 thread: {json.dumps(res['d1'])}")
        if prototypes:
            # label -> (batch_size, plain lax.map for batch_size 1)
            variants = {"1": (1, False), "1 seq": (1, True), "4": (4, False), "16": (16, False)}
            for label, (b, sequential) in variants.items():
                r = run_worker(
                    {"task": "sweep", **base, "batch_size": b, "kind": "proto", "sequential_map": sequential}
                )
                res["p"][label] = r
                say(f"(p) emjax.sweep of proto_fit, batch_size={label}: {json.dumps(r)}")
            okp = {k: v for k, v in res["p"].items() if "cells_per_s" in v}
            best_p = max(okp, key=lambda k: okp[k]["cells_per_s"]) if okp else None
            res["best_proto_batch_size"] = best_p
            emjax_variant = (best_int, False)
            proto_variant = variants.get(best_p, (1, True))
            for kind, (b, sequential) in (("emjax", emjax_variant), ("proto", proto_variant)):
                r = run_worker(
                    {"task": "sweep", **base, "batch_size": b, "kind": kind, "devices": 2, "sequential_map": sequential}
                )
                label = f"{b}{' seq' if sequential else ''}"
                res["a2"][kind] = {**r, "batch_size": label}
                say(f"(a2) two CPU devices, {kind}, batch_size={label}: {json.dumps(r)}")
        if profile:
            res["profile"] = run_worker({"task": "profile", **base})
        if scaling and dtype == scaling_dtype:
            configs = [
                (6, args.n, args.d),
                (12, args.n, args.d),
                (50, args.n, args.d),
                (12, args.n // 4, args.d),
                (12, args.n * 4, args.d),
                (12, args.n, max(1, args.d // 2)),
                (12, args.n, args.d * 4),
            ]
            res["scaling"] = run_worker({"task": "scaling", **base, "configs": configs, "batch_size": best_int})
        report["dtypes"][dtype] = res

    # ------------------------------------------------------------------ summary
    say("\n" + "=" * 100)
    say(
        f"SUMMARY ({len(SNRS) * seeds} cells x {args.steps} EM steps, n = {args.n}, d = {args.d}; "
        f"loops on {len(SNRS) * loop_seeds} cells; total wall {time.perf_counter() - start_time:.0f} s)"
    )
    rows = []
    for dtype, res in report["dtypes"].items():
        for b, r in res["a"].items():
            rows.append(
                [
                    dtype,
                    f"(a) emjax.sweep batch_size={b}",
                    r.get("cells_per_s"),
                    r.get("compile_s"),
                    r.get("run_s"),
                    r.get("peak_mb"),
                    r.get("base_mb"),
                    r.get("error", "")[:80],
                ]
            )
        for label, key in (
            ("(b) loop of emjax.fit", "b"),
            ("(c) NumPy loop", "c"),
            ("(d) PyTorch loop, threads = cores", "d"),
            ("(d1) PyTorch loop, 1 thread", "d1"),
        ):
            r = res[key]
            note = r.get("skipped") or r.get("error", "")
            if "cells" in r:
                note = f"{r['cells']} cells; " + note
            rows.append(
                [
                    dtype,
                    label,
                    r.get("cells_per_s"),
                    r.get("compile_s"),
                    r.get("run_s"),
                    r.get("peak_mb"),
                    r.get("base_mb"),
                    note[:80],
                ]
            )
        for b, r in res["p"].items():
            rows.append(
                [
                    dtype,
                    f"(p) sweep of proto_fit batch_size={b}",
                    r.get("cells_per_s"),
                    r.get("compile_s"),
                    r.get("run_s"),
                    r.get("peak_mb"),
                    r.get("base_mb"),
                    r.get("error", "")[:80],
                ]
            )
        for kind, r in res["a2"].items():
            note = "needed check_vma=False" if "unpatched_error" in r else ""
            rows.append(
                [
                    dtype,
                    f"(a2) 2 CPU devices, {kind}, batch_size={r.get('batch_size')}",
                    r.get("cells_per_s"),
                    r.get("compile_s"),
                    r.get("run_s"),
                    r.get("peak_mb"),
                    r.get("base_mb"),
                    (r.get("error") or note)[:80],
                ]
            )
    say(table(["dtype", "method", "cells/s", "compile s", "run s", "peak MB", "base MB", "note"], rows))

    say("")
    rows = []
    for dtype, res in report["dtypes"].items():
        best = res["a"].get(str(res["best_batch_size"]), {})
        a = best.get("cells_per_s")
        bits = 64 if dtype == "float64" else 32

        def ratio(x, y):
            return x / y if x and y else None

        c, bb = res["c"].get("cells_per_s"), res["b"].get("cells_per_s")
        torch_rates = [res[k].get("cells_per_s") for k in ("d", "d1") if res[k].get("cells_per_s")]
        dd = max(torch_rates) if torch_rates else None  # the faster PyTorch configuration
        newton, armijo = res["c"].get("newton_per_step"), res["c"].get("armijo_per_step")
        floor_cps = flops = data_bytes = None
        if newton is not None and machine:
            flops, data_bytes, _ = count_step(args.n, args.d, bits // 8, newton, armijo)
            rate = 1e9 * max(machine[f"matmul_gflops_numpy_{dtype}"], machine[f"matmul_gflops_jax_{dtype}"])
            bandwidth = 1e9 * machine["l2_read_gbs_one_core"] * machine["cores"]
            per_cell = args.steps * max(flops / rate, data_bytes / bandwidth)
            floor_cps = 1 / per_cell
        best_p = res["p"].get(str(res.get("best_proto_batch_size")), {}).get("cells_per_s")
        best_2 = max([v.get("cells_per_s") or 0 for v in res["a2"].values()] or [0]) or None
        res["summary"] = {
            "a": a,
            "best_batch_size": res["best_batch_size"],
            "a_over_c": ratio(a, c),
            "a_over_d": ratio(a, dd),
            "a_over_b": ratio(a, bb),
            "newton_per_step": newton,
            "armijo_per_step": armijo,
            "flops_per_step": flops,
            "bytes_per_step": data_bytes,
            "floor_cells_per_s": floor_cps,
            "floor_over_a": ratio(floor_cps, a),
            "proto_over_c": ratio(best_p, c),
            "proto_2dev_over_c": ratio(best_2, c),
            "floor_over_best_prototype": ratio(floor_cps, max(best_p or 0, best_2 or 0) or None),
        }
        s = res["summary"]
        rows.append(
            [
                dtype,
                a,
                str(res["best_batch_size"]),
                s["a_over_c"],
                s["a_over_d"],
                s["a_over_b"],
                newton,
                armijo,
                flops and flops / 1e6,
                data_bytes and data_bytes / 1e6,
                floor_cps,
                s["floor_over_a"],
                s["proto_over_c"],
                s["proto_2dev_over_c"],
                s["floor_over_best_prototype"],
            ]
        )
    say(
        table(
            [
                "dtype",
                "(a) cells/s",
                "best batch",
                "(a)/(c)",
                "(a)/(best d)",
                "(a)/(b)",
                "Newton it/step",
                "Armijo ev/step",
                "MFLOP/step",
                "MB/step",
                "floor cells/s",
                "floor/(a)",
                "(p)/(c)",
                "(p, 2 dev)/(c)",
                "floor/best prototype",
            ],
            rows,
        )
    )
    say("targets (issue 4): (a)/(c) >= 15, (a)/(d) >= 20, floor/(a) <= 3")

    for dtype, res in report["dtypes"].items():
        prof = res.get("profile", {})
        if "micro_s" in prof:
            say(f"\nwhere the time goes, {dtype} (microseconds; 'loop:' = inside one compiled loop, no dispatch)")
            say(table(["what", "us"], [[k, v] for k, v in prof["micro_s"].items()]))
        scaling = res.get("scaling", {})
        if "rows" in scaling:
            say(f"\nscaling of (a), {dtype}, batch_size={res['best_batch_size']}")
            say(
                table(
                    ["cells", "n", "d", "compile s", "run s", "cells/s", "ms/cell"],
                    [
                        [r["cells"], r["n"], r["d"], r["compile_s"], r["run_s"], r["cells_per_s"], r["ms_per_cell"]]
                        for r in scaling["rows"]
                    ],
                )
            )
        elif scaling:
            say(f"\nscaling {dtype}: {scaling}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1, default=str)
        say(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
