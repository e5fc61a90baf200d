"""Deep and sparse MoE: generalized EM (``emjax.deep.fit_em``) against Adam on L (``fit_end_to_end``).

Every method gets the same number of gradient evaluations (optax steps on a batch of the same
size), the same initialisations (one per seed) and the same learning-rate grid. The learning rate
is chosen per method and configuration by the mean cross-entropy over seeds on a held-out 20% of the
training set (never the test set); the reported numbers are the test metrics of those runs, mean ±
std over seeds. Methods:

* ``adam``: Adam on L, ``fit_end_to_end`` (one fresh batch of b samples per step);
* ``em``: ``fit_em`` as in docs/math.md §9: an E-step on a batch of b samples, then m Adam steps on J
  over that same batch (Adam state persisting across E-steps);
* ``em-sub``: ``fit_em`` with ``batch_size = m*b`` and ``inner_batch_size = b``: one E-step on m*b
  samples, then m Adam steps on J, each on its own b of them (as many samples seen as ``adam``).

Problems:

* **digits**: Random-Invert 8x8 digits (``emjax.datasets.digits``; train and test images inverted
  independently with probability 1/2), MLP gate and experts, K in {2, 3, 4}, top-k in {1, 2}.
  "flag" is how well the gate's top-1 expert recovers the hidden inversion flag on the test set:
  the best agreement over maps from experts to {inverted, not inverted} (chance ≈ 0.5).
* **synthetic**: a known nonlinear MoE (``emjax.deep.synthetic_nonlinear_moe``: K*=4 MLP experts,
  MLP gate, d=8, C=5, dense); "gap" is test cross-entropy minus the truth's (the Bayes floor);
  "latent" is the agreement of the fitted gate's top-1 expert with the truth's, best over expert
  relabellings.

Usage::

    python benchmarks/deep_moe.py            # the full comparison (several minutes on 2 CPU cores)
    python benchmarks/deep_moe.py --quick    # a smoke run (about two minutes, no ablations)

Prints Markdown tables and writes them to ``benchmarks/results/deep_moe.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import emjax.deep as deep
from emjax.datasets import digits, random_invert

METHODS = ("adam", "em", "em-sub")
# Ablations on one configuration per problem: name -> (uses EM, inner steps m, sub-batches, reset optimizer state).
ABLATIONS = {
    "em, m=1 (= adam)": (True, 1, False, False),
    "em, m=2": (True, 2, False, False),
    "em, m=10": (True, 10, False, False),
    "em, reset Adam": (True, None, False, True),
    "em-sub, m=2": (True, 2, True, False),
    "em-sub, m=10": (True, 10, True, False),
}
ABLATION_CONFIG = {"digits": (3, 2), "synthetic": (4, 2)}


def _spec(method: str, args):
    """(uses EM, m, sub-batches, reset) of a method name."""
    if method in ABLATIONS:
        em, m, sub, reset = ABLATIONS[method]
        return em, args.inner_steps if m is None else m, sub, reset
    return method != "adam", args.inner_steps, method == "em-sub", False


@dataclass(frozen=True)
class Problem:
    name: str
    x_train: jax.Array
    y_train: jax.Array
    x_val: jax.Array
    y_val: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    latent_test: jax.Array  # digits: inversion flags (bool); synthetic: the truth's top-1 expert (int)
    num_classes: int
    truth_ce: float | None = None
    truth_acc: float | None = None


def _hold_out(x, y, fraction: float, seed: int):
    order = np.random.default_rng(seed).permutation(x.shape[0])
    cut = int(round(x.shape[0] * (1 - fraction)))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def digits_problem(seed: int = 0) -> Problem:
    data = digits()
    key_train, key_test = jax.random.split(jax.random.key(seed))
    x_train, _ = random_invert(key_train, jnp.asarray(data.x_train))
    x_test, flags = random_invert(key_test, jnp.asarray(data.x_test))
    xt, yt, xv, yv = _hold_out(np.asarray(x_train), np.asarray(data.y_train), 0.2, seed)
    return Problem(
        "digits",
        jnp.asarray(xt),
        jnp.asarray(yt),
        jnp.asarray(xv),
        jnp.asarray(yv),
        x_test,
        jnp.asarray(data.y_test),
        flags,
        data.num_classes,
    )


def synthetic_problem(n_train: int, n_test: int, seed: int = 0) -> Problem:
    d, k, c = 8, 4, 5
    key_truth, key_test = jax.random.split(jax.random.key(1000 + seed))
    x, y, truth = deep.synthetic_nonlinear_moe(key_truth, n_train, d, k, c, gate_scale=10.0, expert_scale=30.0)
    x_test, y_test = deep.sample(truth, key_test, n_test, d)
    xt, yt, xv, yv = _hold_out(np.asarray(x), np.asarray(y), 0.2, seed)
    latent = jnp.argmax(jax.vmap(truth.gate)(x_test), axis=-1)
    return Problem(
        "synthetic",
        jnp.asarray(xt),
        jnp.asarray(yt),
        jnp.asarray(xv),
        jnp.asarray(yv),
        x_test,
        y_test,
        latent,
        c,
        float(deep.cross_entropy(truth, x_test, y_test)),
        float(deep.accuracy(truth, x_test, y_test)),
    )


def _recovery(top1, latent, num_experts: int, binary: bool):
    """Best agreement of the top-1 expert with the latent label over expert relabellings."""
    if binary:  # each expert maps to the flag value most of its samples carry (purity)
        counts = jnp.stack([jnp.sum((top1 == k) & latent) for k in range(num_experts)])
        sizes = jnp.stack([jnp.sum(top1 == k) for k in range(num_experts)])
        return jnp.sum(jnp.maximum(counts, sizes - counts)) / top1.shape[0]
    confusion = jnp.zeros((num_experts, num_experts)).at[top1, latent].add(1.0)
    perms = np.array(list(itertools.permutations(range(num_experts))))
    return jnp.max(confusion[np.arange(num_experts)[None, :], perms].sum(1)) / top1.shape[0]


def make_fit(problem: Problem, method: str, num_experts: int, top_k: int, args):
    """fit(lr, key) -> metrics, for one method and configuration (pure, jit- and vmap-able)."""
    d = problem.x_train.shape[1]
    uses_em, m, sub_batches, reset = _spec(method, args)
    b = args.batch_size
    budget = args.budget if problem.name == "digits" else args.synthetic_budget

    def fit(lr, key):
        key_init, key_fit = jax.random.split(key)
        model = deep.DeepMoE.mlp(
            key_init, d, problem.num_classes, num_experts, top_k, expert_width=args.width, gate_width=args.width
        )
        optimizer = optax.adam(lr)
        data = (model, key_fit, problem.x_train, problem.y_train)
        evaluation = dict(eval_data=(problem.x_test, problem.y_test))  # test CE after every fifth of the budget
        if not uses_em:
            fitted, history = deep.fit_end_to_end(
                *data, optimizer=optimizer, num_steps=budget, batch_size=b, eval_every=budget // 5, **evaluation
            )
        else:
            batches = dict(batch_size=m * b, inner_batch_size=b) if sub_batches else dict(batch_size=b)
            fitted, history = deep.fit_em(
                *data,
                optimizer=optimizer,
                num_em_steps=budget // m,
                inner_steps=m,
                reset_optimizer=reset,
                eval_every=budget // m // 5,
                **batches,
                **evaluation,
            )
        top1 = jnp.argmax(jax.vmap(fitted.gate)(problem.x_test), axis=-1)
        binary = problem.name == "digits"
        return {
            "val_ce": deep.cross_entropy(fitted, problem.x_val, problem.y_val),
            "test_ce": deep.cross_entropy(fitted, problem.x_test, problem.y_test),
            "test_ce_early": history.eval_loss[0],
            "test_acc": deep.accuracy(fitted, problem.x_test, problem.y_test),
            "routed": deep.load_statistics(fitted, problem.x_test).routed_fraction,
            "recovery": _recovery(top1, problem.latent_test, num_experts, binary)
            if binary or num_experts == 4
            else jnp.nan,
            "grads": history.gradient_evaluations[-1],
            "forwards": history.forward_passes[-1],
        }

    return fit


def run_configuration(problem: Problem, method: str, num_experts: int, top_k: int, args) -> dict:
    fit = make_fit(problem, method, num_experts, top_k, args)
    lrs = jnp.asarray(args.lrs, jnp.float32)
    keys = jax.random.split(jax.random.key(args.seed), args.seeds)  # the same inits for every method
    grid = eqx.filter_jit(eqx.filter_vmap(eqx.filter_vmap(fit, in_axes=(None, 0)), in_axes=(0, None)))
    start = time.perf_counter()
    out = jax.tree_util.tree_map(np.asarray, grid(lrs, keys))
    grid_seconds = time.perf_counter() - start
    best = int(np.argmin(out["val_ce"].mean(axis=1)))
    single = eqx.filter_jit(fit)
    jax.block_until_ready(single(lrs[best], keys[0]))  # compile
    start = time.perf_counter()
    jax.block_until_ready(single(lrs[best], keys[0]))
    fit_seconds = time.perf_counter() - start
    chosen = {name: value[best] for name, value in out.items()}
    return {
        "lr": float(lrs[best]),
        "grid_seconds": grid_seconds,
        "fit_seconds": fit_seconds,
        **chosen,
        "val_by_lr": out["val_ce"].mean(axis=1),
    }


def _pm(values, digits_=3) -> str:
    values = np.asarray(values, float)
    return f"{values.mean():.{digits_}f} ± {values.std():.{digits_}f}"


def _fractions(routed) -> str:
    mean = np.sort(np.asarray(routed), axis=1)[:, ::-1].mean(axis=0)  # sorted per seed: labels are arbitrary
    return " / ".join(f"{v:.2f}" for v in mean)


def table(problem: Problem, rows: list[tuple[int, int, str, dict]]) -> str:
    synthetic = problem.truth_ce is not None
    head = ["K", "top-k", "method", "lr", "test acc", "test CE", "test CE at 20%"]
    head += ["gap to truth CE", "latent recovery"] if synthetic else ["flag recovery"]
    head += ["routed fractions (test)", "grad evals", "extra fwd", "cost", "s / fit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, top_k, method, r in rows:
        cells = [
            str(k),
            str(top_k),
            method,
            f"{r['lr']:g}",
            _pm(r["test_acc"]),
            _pm(r["test_ce"]),
            _pm(r["test_ce_early"]),
        ]
        if synthetic:
            recovery = "–" if np.all(np.isnan(r["recovery"])) else _pm(r["recovery"], 2)
            cells += [_pm(np.asarray(r["test_ce"]) - problem.truth_ce), recovery]
        else:
            cells += [_pm(r["recovery"], 2)]
        grads, forwards = int(r["grads"][0]), int(r["forwards"][0])
        cells += [
            _fractions(r["routed"]),
            str(grads),
            str(forwards),
            f"{grads + forwards / 3:.0f}",
            f"{r['fit_seconds']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 seeds, small budgets, 2 rates")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=1500, help="gradient evaluations on digits")
    parser.add_argument("--synthetic-budget", type=int, default=3000, help="gradient evaluations on synthetic data")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--width", type=int, default=32, help="hidden width of the gate and expert MLPs")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2])
    parser.add_argument("--synthetic-n", type=int, default=20000, help="training samples (test: the same)")
    parser.add_argument("--only", choices=["digits", "synthetic"], default=None)
    parser.add_argument("--no-ablation", action="store_true", help="skip the inner-step / reset ablations")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "deep_moe.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.budget, args.synthetic_budget, args.lrs, args.synthetic_n = 2, 200, 200, [3e-3, 1e-2], 2000
        args.no_ablation = True
    steps = {args.inner_steps} | ({m for _, m, _, _ in ABLATIONS.values() if m} if not args.no_ablation else set())
    if any(args.budget % m or args.synthetic_budget % m for m in steps):
        parser.error(f"every inner-step count {sorted(steps)} must divide the budgets")

    start = time.perf_counter()
    configurations = {
        "digits": [(k, top) for k in (2, 3, 4) for top in (1, 2)],
        "synthetic": [(4, 1), (4, 2), (4, 4)],
    }
    if args.quick:
        configurations = {"digits": [(2, 1), (3, 2)], "synthetic": [(4, 2)]}
    sections = []
    for name, configs in configurations.items():
        if args.only not in (None, name):
            continue
        problem = (
            digits_problem(args.seed)
            if name == "digits"
            else synthetic_problem(args.synthetic_n, args.synthetic_n, args.seed)
        )

        def run(k, top_k, method, problem=problem, name=name):
            result = run_configuration(problem, method, k, top_k, args)
            print(
                f"{name} K={k} top-{top_k} {method:7s} lr={result['lr']:g} "
                f"test CE {_pm(result['test_ce'])} acc {_pm(result['test_acc'])} "
                f"(val CE by lr {np.round(result['val_by_lr'], 3).tolist()}, grid {result['grid_seconds']:.1f}s)",
                flush=True,
            )
            return (k, top_k, method, result)

        rows = [run(k, top_k, method) for k, top_k in configs for method in METHODS]
        ablation = [] if args.no_ablation else [run(*ABLATION_CONFIG[name], method) for method in ABLATIONS]
        budget = args.budget if name == "digits" else args.synthetic_budget
        title = (
            f"### {name}: n_train={problem.x_train.shape[0]} (+{problem.x_val.shape[0]} held out), "
            f"n_test={problem.x_test.shape[0]}, d={problem.x_train.shape[1]}, C={problem.num_classes}, "
            f"{budget} gradient evaluations of batch {args.batch_size}"
        )
        if problem.truth_ce is not None:
            title += f"; truth: test CE {problem.truth_ce:.3f}, accuracy {problem.truth_acc:.3f}"
        sections.append(title + "\n\n" + table(problem, rows))
        if ablation:
            k, top_k = ABLATION_CONFIG[name]
            sections.append(
                f"Ablation on {name}, K={k}, top-{top_k} (m = inner steps; the main table uses "
                f"m = {args.inner_steps} and keeps Adam's state across E-steps):\n\n" + table(problem, ablation)
            )
    total = time.perf_counter() - start
    command = "python benchmarks/deep_moe.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (
        "## Deep and sparse MoE: generalized EM vs Adam on L at an equal gradient budget\n\n"
        f"Command: `{command.strip()}`; {args.seeds} seeds; learning rates {args.lrs} chosen per method by "
        f"held-out CE; m = {args.inner_steps} inner steps; MLP width {args.width}, depth 1. "
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} on "
        f"{jax.devices()[0].platform}; total wall time {total / 60:.1f} min. "
        "'s / fit' is the warm wall time of one fit (compiled, one seed). 'extra fwd' counts E-step forward "
        "passes in units of one gradient batch; 'cost' = grad evals + extra fwd / 3, in gradient evaluations "
        "(a forward pass costs about a third of one). 'routed fractions' are sorted per seed, then averaged. "
        "'test CE at 20%' is measured after a fifth of the budget, with the learning rate chosen for the whole run.\n"
    )
    report = header + "\n" + "\n\n".join(sections) + "\n"
    print("\n" + report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
