"""``emjax demo``: fit both symmetric models with every solver and print a convergence table.

Settings (docs/math.md §8 suggested defaults): x ~ N(0, I_d), d = 10, n = 5000, σ = 1. SymMoLinE has
‖w*‖ = ‖β*‖ = 2 (SNR 2); SymMoLogE has ‖w*‖ = ‖β*‖ = 4 (its MIM is near 1 for small norms). The
start is θ0 = θ* + δ with relative error 1 in each block. Step sizes: mirror descent η = 0.5;
gradient descent and gradient EM (3 inner steps) use :func:`emjax.safe_step_size`, the largest
step with guaranteed descent; Adam uses a learning rate of 0.05.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ._fit import fit
from ._likelihood import neg_log_likelihood, sample
from ._solvers import em, from_optax, gradient_descent, gradient_em, mirror_descent
from ._steps import safe_step_size
from .models import SymMoLinE, SymMoLogE
from .testing import perturb, random_params, relative_errors

DEMO_PROBLEMS = {"SymMoLinE": (SymMoLinE(sigma=1.0), 2.0, 2.0), "SymMoLogE": (SymMoLogE(), 4.0, 4.0)}


def demo_solvers(model, x) -> dict:
    """The solvers the demo compares, with the documented step sizes."""
    step = safe_step_size(model, x)
    return {
        "EM": em(),
        "MD eta=0.5": mirror_descent(0.5),
        "gradient EM": gradient_em(step, inner_steps=3),
        "GD": gradient_descent(step),
        "Adam": from_optax(optax.adam(0.05)),
    }


def run_demo(
    n: int = 5000,
    d: int = 10,
    num_steps: int = 100,
    seed: int = 0,
    dtype=jnp.float32,
    checkpoints=(0, 1, 5, 10, 25, 50, 100),
    models=tuple(DEMO_PROBLEMS),
) -> dict:
    """Fit every model with every solver; return ``{model: {solver: rows}}`` of metrics.

    Each row is ``(t, L(θ_t) - L(θ*), ‖w_t - w*‖/‖w*‖, ‖β_t - β*‖/‖β*‖)`` for t in ``checkpoints``.
    """
    out = {}
    for name in models:
        model, w_norm, beta_norm = DEMO_PROBLEMS[name]
        key_truth, key_data, key_init = jax.random.split(jax.random.key(seed), 3)
        truth = random_params(model, key_truth, d, w_norm, beta_norm, dtype=dtype)
        x, y = sample(model, truth, key_data, n)
        start = perturb(truth, key_init)
        reference = neg_log_likelihood(model, truth, x, y)
        out[name] = {}
        for label, solver in demo_solvers(model, x).items():
            result = fit(model, solver, start, x, y, num_steps, keep_history=True)
            w_err, b_err = relative_errors(result.params_history, truth)
            rows = [
                (t, float(result.losses[t] - reference), float(w_err[t]), float(b_err[t]))
                for t in checkpoints
                if t <= num_steps
            ]
            out[name][label] = rows
    return out


def format_demo(results: dict) -> str:
    """Render :func:`run_demo`'s output as plain-text tables."""
    lines = []
    for name, per_solver in results.items():
        lines.append(f"\n{name}: L(θ_t) - L(θ*) | ‖w_t - w*‖/‖w*‖ | ‖β_t - β*‖/‖β*‖")
        steps = [row[0] for row in next(iter(per_solver.values()))]
        lines.append(f"{'solver':<12}" + "".join(f"{'t=' + str(t):>28}" for t in steps))
        for label, rows in per_solver.items():
            cells = "".join(f"{f'{gap:+.2e} | {w:.3f} | {b:.3f}':>28}" for _, gap, w, b in rows)
            lines.append(f"{label:<12}{cells}")
    return "\n".join(lines)
