r"""A synthetic study of hierarchical mixtures of experts (issue 19): parameter error against n, the tree against
a flat mixture with as many leaves, and the EM rate against the separation of the gates.

Problems are those of ``benchmarks/hme_restarts.py``: depth-2 trees of Gaussian leaves, branching (2, 2) and
(3, 2), d = 3 with an intercept (x = [1, u], u ~ N(0, I_2)), a random truth with gate norm 4, expert norm 4,
σ = 0.5, every leaf with at least 5% of the prior mass. float64 throughout.

1. **Parameter error against n** (n = 10^3 ... 10^5, ``--seeds`` data sets each): EM from the truth
   (``tol=1e-8``, at most 1000 steps), the relative error $\|\hat\theta - \theta^*\|/\|\theta^*\|$ of the flattened
   free parameters (gate rows, experts, σ; no relabelling is needed from the truth's start). Expected slope
   -1/2 on log-log axes. The time of the 10^5-row fit is reported.
2. **Tree against flat** (n = 10^4 training rows, 10^4 held out): the tree and ``MoLinE(L)`` (the same number
   of leaves; for these branchings the same number of free parameters), each the best of 5 data-driven
   starts (``fit_restarts``), and the tree from the truth: held-out log-likelihood per row and BIC.
3. **EM rate against gate separation** (the (2, 2) tree, n = 10^4): the truth's gate rows scaled by
   s in ``--scales``, EM from the truth, ``emjax.em_rate`` (the spectral radius of the missing-information
   matrix) at the fit.

Writes ``benchmarks/results/hme_study.md`` and ``benchmarks/results/hme_error_vs_n.png``,
``hme_em_rate.png``.

How to run (from the repository root)::

    python benchmarks/hme_study.py                     # about 10 minutes on two busy CPU cores
    python benchmarks/hme_study.py --fast --no-write   # a quick check
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import emjax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hme_restarts import draw_truth, sample  # noqa: E402  (a sibling script, not a package)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BRANCHINGS = ((2, 2), (3, 2))


def tree_model(branching):
    return emjax.HierarchicalMoE(emjax.GaussianExpert(), branching=branching)


def fit_from(model, start, x, y, steps=1000):
    return emjax.fit(model, emjax.em(), start, x, y, steps, tol=1e-8)


def relative_error(model, estimate, truth):
    return float(
        jnp.linalg.norm(model.flatten(estimate) - model.flatten(truth)) / jnp.linalg.norm(model.flatten(truth))
    )


def error_vs_n(ns, seeds):
    rows, timings = {}, {}
    for branching in BRANCHINGS:
        model = tree_model(branching)
        for n in ns:
            errors = []
            for seed in range(seeds):
                truth = draw_truth(model, jax.random.key(seed), 4.0)
                x, y = sample(model, truth, jax.random.key(100 + seed), n)
                tic = time.perf_counter()
                result = jax.block_until_ready(fit_from(model, truth, x, y))
                timings[(branching, n, seed)] = (time.perf_counter() - tic, int(result.num_steps))
                errors.append(relative_error(model, result.params, truth))
            rows[(branching, n)] = errors
            print(f"error {branching} n={n}: {np.mean(errors):.4f}", flush=True)
    return rows, timings


def tree_vs_flat(n, seeds):
    rows = []
    for branching in BRANCHINGS:
        tree = tree_model(branching)
        flat = emjax.MoLinE(tree.num_experts)
        for seed in range(seeds):
            truth = draw_truth(tree, jax.random.key(seed), 4.0)
            x, y = sample(tree, truth, jax.random.key(200 + seed), n)
            x_test, y_test = sample(tree, truth, jax.random.key(300 + seed), n)
            key = jax.random.key(400 + seed)
            fits = {
                "tree (truth start)": (tree, fit_from(tree, truth, x, y).params),
                "tree (best of 5)": (tree, emjax.fit_restarts(tree, emjax.em(), key, x, y, 5, 1000, tol=1e-8).params),
                f"flat MoLinE({tree.num_experts}) (best of 5)": (
                    flat,
                    emjax.fit_restarts(flat, emjax.em(), key, x, y, 5, 1000, tol=1e-8).params,
                ),
            }
            truth_test = -float(emjax.neg_log_likelihood(tree, truth, x_test, y_test))
            for name, (model, params) in fits.items():
                rows.append(
                    (
                        tree.describe(),
                        seed,
                        name,
                        -float(emjax.neg_log_likelihood(model, params, x, y)),
                        -float(emjax.neg_log_likelihood(model, params, x_test, y_test)),
                        truth_test,
                        float(emjax.bic(model, params, x, y)),
                        emjax.num_parameters(model, params),
                    )
                )
            print(f"tree vs flat {branching} seed {seed} done", flush=True)
    return rows


def rate_vs_separation(scales, n, seeds):
    model = tree_model((2, 2))
    rates = np.zeros((len(scales), seeds))
    for seed in range(seeds):
        base = draw_truth(model, jax.random.key(seed), 4.0)
        for i, scale in enumerate(scales):
            truth = emjax.HMEParams(gates=scale * base.gates, experts=base.experts, sigma=base.sigma)
            x, y = sample(model, truth, jax.random.key(500 + seed), n)
            fitted = fit_from(model, truth, x, y, 3000).params
            rates[i, seed] = float(emjax.em_rate(model, fitted, x, y))
        print(f"rates seed {seed}: {np.round(rates[:, seed], 3)}", flush=True)
    return rates


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--scales", type=str, default="0.25,0.5,1,2,4")
    parser.add_argument("--fast", action="store_true", help="n up to 10^4, one seed")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # a script, not the library: it may configure JAX
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [1000, 3000, 10_000] if args.fast else [1000, 3000, 10_000, 30_000, 100_000]
    seeds = 1 if args.fast else args.seeds
    scales = [float(s) for s in args.scales.split(",")]
    tic = time.perf_counter()
    errors, timings = error_vs_n(ns, seeds)
    comparison = tree_vs_flat(10_000, seeds)
    rates = rate_vs_separation(scales, 10_000, seeds)
    total = time.perf_counter() - tic

    lines = [
        "## Hierarchical mixtures of experts: a synthetic study",
        "",
        f"Command: `python benchmarks/hme_study.py`. Machine: {platform.machine()}, {jax.default_backend()}, jax "
        f"{jax.__version__}, float64; {seeds} seed(s) per cell; total {total:.0f} s. Problems as in "
        "`benchmarks/hme_restarts.py` (d = 3 with intercept, Gaussian leaves, gate and expert norms 4, σ = 0.5).",
        "",
        "### 1. Parameter error against n (EM from the truth)",
        "",
        "| tree | " + " | ".join(f"n = {n}" for n in ns) + " | slope (log-log) |",
        "|---|" + "---|" * len(ns) + "---|",
    ]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for branching in BRANCHINGS:
        means = [float(np.mean(errors[(branching, n)])) for n in ns]
        slope = float(np.polyfit(np.log(ns), np.log(means), 1)[0])
        name = tree_model(branching).describe()
        lines.append(f"| {name} | " + " | ".join(f"{m:.4f}" for m in means) + f" | {slope:.2f} |")
        ax.loglog(ns, means, "o-", label="x".join(map(str, branching)) + " tree")
    ax.loglog(ns, means[0] * np.sqrt(ns[0] / np.asarray(ns)), "k--", lw=0.8, label=r"$n^{-1/2}$")
    ax.set(xlabel="n", ylabel="relative parameter error", title="HME: error against n (EM from the truth)")
    ax.legend()
    fig.tight_layout()
    big = [(key, value) for key, value in timings.items() if key[1] == ns[-1]]
    lines += [
        "",
        f"Fit times at n = {ns[-1]}: "
        + "; ".join(
            f"{'x'.join(map(str, b))} seed {s}: {t:.2f} s ({steps} EM steps, {1000 * t / max(steps, 1):.1f} ms/step, "
            "first call includes compilation)"
            if s == 0
            else f"{'x'.join(map(str, b))} seed {s}: {t:.2f} s ({steps} steps)"
            for (b, _, s), (t, steps) in big
        )
        + ".",
        "",
        "### 2. Tree against a flat mixture with as many leaves (n = 10^4 train, 10^4 held out)",
        "",
        "| tree | seed | fit | train loglik/row | held-out loglik/row | truth held-out | BIC | parameters |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {t} | {s} | {f} | {a:.4f} | {b:.4f} | {c:.4f} | {d:.1f} | {p} |"
            for t, s, f, a, b, c, d, p in comparison
        ),
        "",
        "### 3. EM rate against gate separation ((2, 2) tree, n = 10^4, EM from the truth)",
        "",
        "The truth's gate rows are multiplied by s (s = 1: gate norm 4); the rate is the spectral radius of the "
        "missing-information matrix at the fit (`emjax.em_rate`).",
        "",
        "| s | " + " | ".join(f"seed {i}" for i in range(seeds)) + " | mean |",
        "|---|" + "---|" * (seeds + 1),
        *(
            f"| {s:g} | " + " | ".join(f"{r:.3f}" for r in rates[i]) + f" | {np.mean(rates[i]):.3f} |"
            for i, s in enumerate(scales)
        ),
        "",
    ]
    fig2, ax2 = plt.subplots(figsize=(5, 3.6))
    for seed in range(seeds):
        ax2.plot(scales, rates[:, seed], "o-", alpha=0.7, label=f"seed {seed}")
    ax2.set_xscale("log")
    ax2.set(xlabel="gate scale s (gate norm 4s)", ylabel="EM rate (spectral radius of the MIM)", ylim=(0, 1))
    ax2.set_title("2x2 HME: EM rate against gate separation")
    ax2.legend()
    fig2.tight_layout()
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        (RESULTS / "hme_study.md").write_text(text)
        fig.savefig(RESULTS / "hme_error_vs_n.png", dpi=120)
        fig2.savefig(RESULTS / "hme_em_rate.png", dpi=120)
        print("wrote benchmarks/results/hme_study.md, hme_error_vs_n.png, hme_em_rate.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
