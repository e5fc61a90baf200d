r"""How often do data-driven starts of a hierarchical mixture of experts reach the truth's basin? (issue 19)

Problems: depth-2 trees of Gaussian leaves, branching (2, 2) and (3, 2), d = 3 with an intercept
(x = [1, u], u ~ N(0, I_2)), a well-separated random truth (``emjax.testing.random_params`` with gate norm
``--gate-norm`` (4) and expert norm 4, σ = 0.5; redrawn until every leaf has at least 5% of the prior mass),
n = ``--n`` (2000) rows; ``--seeds`` (10) data sets per tree.

On each data set: ``emjax.fit_restarts`` with ``--starts`` (10) starts (``emjax.init_params`` of the tree,
keys split from the seed), EM, at most 1000 steps, ``tol=1e-8``; ``restart_losses`` gives every start's final
loss. The reference is EM from the truth. A start "reaches the best basin" when its final loss (the mean
negative log-likelihood per row) is within 1e-3 of the best loss found on that data set (the starts and the
fit from the truth). Reported: the fraction of single starts that do (over seeds x starts), the probability
that the best of 5 (and of 10) random starts does (averaged over seeds; for 5, exactly, from the counts of
successful starts among the 10), and how often the truth's fit is itself the best.

``--init kmeans`` runs the same from the tree's previous start (k-means++ groups arranged on the tree, one
M-step: ``kmeans_start`` here), before ``init_params`` gained its flat EM steps, so the two can be compared.

How to run (from the repository root)::

    python benchmarks/hme_restarts.py                # writes benchmarks/results/hme_restarts.md
    python benchmarks/hme_restarts.py --seeds 4 --no-write
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import emjax

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "hme_restarts.md"
SAME_BASIN = 1e-3
MAX_STEPS = 1000
D = 3  # intercept + 2 covariates


def draw_truth(model, key, gate_norm, expert_norm=4.0, sigma=0.5, min_mass=0.05):
    """A random truth on d = 3 (intercept first) whose leaves each hold >= ``min_mass`` of the prior mass
    on a large sample; redrawn (keys folded in) until they do."""
    probe = design(jax.random.key(12345), 20_000)
    for attempt in range(100):
        truth = emjax.testing.random_params(
            model, jax.random.fold_in(key, attempt), D, gate_norm=gate_norm, expert_norm=expert_norm, sigma=sigma
        )
        mass = jnp.mean(jnp.exp(model.gate_log_probs(truth, probe)), axis=0)
        if float(jnp.min(mass)) >= min_mass:
            return truth
    raise RuntimeError("no truth with every leaf above the minimum mass")


def design(key, n):
    """x = [1, u], u ~ N(0, I_2)."""
    u = jax.random.normal(key, (n, D - 1))
    return jnp.concatenate([jnp.ones((n, 1)), u], axis=1)


def sample(model, truth, key, n):
    """Rows (x, y) of a Gaussian-leaf tree on the intercept design: z from the path prior, y = x.β_z + σ_z ε."""
    key_x, key_z, key_e = jax.random.split(key, 3)
    x = design(key_x, n)
    z = jax.random.categorical(key_z, model.gate_log_probs(truth, x), axis=-1)
    y = jnp.sum(x * truth.experts[z], axis=1) + truth.sigma[z] * jax.random.normal(key_e, (n,))
    return x, y


def problem(model, seed, n, gate_norm):
    key_truth, key_data = jax.random.split(jax.random.key(seed))
    truth = draw_truth(model, key_truth, gate_norm)
    x, y = sample(model, truth, key_data, n)
    return truth, x, y


def kmeans_start(model, key, x, y):
    """The tree's previous start (before the flat EM steps of ``init_params``): k-means++ on the standardised
    [x, y] into L groups, arranged on the tree by their centres in x, responsibility 1/2 on the sample's leaf
    plus 1/(2L) on every leaf, one tree M-step from zero (σ from the spread of y)."""
    from emjax.models._kmeans import cluster, standardise

    k = model.num_experts
    statistic = model.expert.statistic(y)
    features = standardise(x)
    labels = cluster(key, jnp.concatenate([features, standardise(statistic)], axis=1), k)
    onehot = jax.nn.one_hot(labels, k, dtype=x.dtype)
    centres = onehot.T @ features / jnp.maximum(jnp.sum(onehot, axis=0), 1)[:, None]
    weights = 0.5 * jax.nn.one_hot(model.tree.arrange(centres)[labels], k, dtype=x.dtype) + 0.5 / k
    start = model.placeholder(x.shape[1], x.dtype)
    start = emjax.HMEParams(
        gates=start.gates, experts=start.experts, sigma=jnp.full((k,), model.expert.initial_scale(y), x.dtype)
    )
    return model.solve(start, x, (weights, statistic[:, :, None] * weights[:, None, :]), model.free_mask(start))


def fit_starts(model, key, x, y, starts, init):
    if init == "library":
        result = emjax.fit_restarts(model, emjax.em(), key, x, y, starts, MAX_STEPS, tol=1e-8)
        return np.asarray(result.restart_losses)

    @jax.jit
    def one(key):
        return emjax.fit(model, emjax.em(), kmeans_start(model, key, x, y), x, y, MAX_STEPS, tol=1e-8).final_loss

    return np.asarray(jax.lax.map(one, jax.random.split(key, starts)))


def best_of(successes: int, total: int, k: int) -> float:
    """P(at least one success among k of the ``total`` starts drawn without replacement)."""
    return 1 - math.comb(total - successes, k) / math.comb(total, k)


def study(branching, args):
    model = emjax.HierarchicalMoE(emjax.GaussianExpert(), branching=branching)
    hits, truth_best, gaps = [], 0, []
    for seed in range(args.seeds):
        truth, x, y = problem(model, seed, args.n, args.gate_norm)
        from_truth = float(emjax.fit(model, emjax.em(), truth, x, y, MAX_STEPS, tol=1e-8).final_loss)
        losses = fit_starts(model, jax.random.key(1000 + seed), x, y, args.starts, args.init)
        best = min(from_truth, float(np.nanmin(losses)))
        hits.append(int(np.sum(losses <= best + SAME_BASIN)))
        truth_best += from_truth <= best + SAME_BASIN
        gaps.append(float(np.nanmedian(losses)) - best)
    single = sum(hits) / (args.seeds * args.starts)
    five = float(np.mean([best_of(h, args.starts, 5) for h in hits]))
    ten = float(np.mean([h > 0 for h in hits]))
    return model, hits, single, five, ten, truth_best, float(np.median(gaps))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--gate-norm", type=float, default=4.0)
    parser.add_argument("--init", choices=["library", "kmeans"], default="library")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # a script, not the library: it may configure JAX

    rows = []
    for branching in ((2, 2), (3, 2)):
        tic = time.perf_counter()
        model, hits, single, five, ten, truth_best, gap = study(branching, args)
        seconds = time.perf_counter() - tic
        rows.append(
            f"| {model.describe()} | {args.init} | {single:.2f} | {five:.2f} | {ten:.2f} | {truth_best}/{args.seeds} | "
            f"{gap:.3g} | {' '.join(map(str, hits))} | {seconds:.0f} |"
        )
        print(rows[-1], flush=True)
    lines = [
        f"### Starts: `--init {args.init}` (n = {args.n}, gate norm {args.gate_norm}, {args.seeds} seeds x "
        f"{args.starts} starts)",
        "",
        f"Command: `python benchmarks/hme_restarts.py --init {args.init}`. Machine: {platform.machine()}, "
        f"{jax.default_backend()}, jax {jax.__version__}, float64.",
        "",
        "| tree | start | single start reaches best | best of 5 | best of 10 | truth's fit is best | median gap of a "
        "start (loss/row) | successful starts per seed | time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        with RESULT.open("a") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
