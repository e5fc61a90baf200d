r"""Ready-made sweep cells for the paper's experiments (docs/math.md §8): draw, start, run, measure.

:class:`ConvergenceCell` draws one problem instance at a given SNR from its key, runs every method
for ``num_steps`` iterations from the same start, and records everything the figures need:

* ``loss`` (methods, T+1): $L(\theta_t)$ on the instance's data; ``loss_truth``: $L(\theta^*)$;
* ``gate_error`` / ``expert_error`` (methods, T+1): $\|w_t - w^*\|/\|w^*\|$ and
  $\|\beta_t - \beta^*\|/\|\beta^*\|$ after undoing the label swap (symmetric models) or the label
  permutation (K-expert models, gate rows and expert coefficients);
* ``step_length`` (methods, T): $\|\theta_{t+1} - \theta_t\|/\|\theta^*\|$ over all parameters, from
  which the contraction rate is read off the trace without knowing the limit;
* ``rate_truth``: $\lambda_{\max}(M(\theta^*))$, ``rate_final`` (methods,): $\lambda_{\max}(M(\theta_T))$;
* ``status`` (methods,): each run's :class:`emjax.Status` code.

SNR (docs/math.md §6): $\|\beta^*\|/\sigma$ for Gaussian experts, $\|\beta^*\|$ otherwise; every expert
of a K-expert model gets that norm and every free gate row the norm ``gate_norm``. Data: x ~ N(0, I_d).
Start: $\theta_0 = \theta^* + \delta$ with each block moved by a random direction of norm
``start_error`` times its own norm (docs/math.md §8); σ starts at the truth.
"""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from .._fit import fit
from .._information import em_rate
from .._likelihood import neg_log_likelihood, sample
from .._solvers import em, from_optax, gradient_descent, gradient_em, mirror_descent
from ..models import MoEParams, SymParams
from ..testing import match_experts, perturb, random_params, relative_errors
from ..testing._problems import direction

#: Method name -> solver factory of one step size (ignored by EM). ``gradient_em`` takes 3 inner steps.
METHODS = {
    "em": lambda step: em(),
    "md": lambda step: mirror_descent(step),
    "gradient_em": lambda step: gradient_em(step, inner_steps=3),
    "gd": lambda step: gradient_descent(step),
    "adam": lambda step: from_optax(optax.adam(step)),
}

#: Readable labels for figures and tables.
METHOD_LABELS = {
    "em": "EM",
    "md": "mirror descent",
    "gradient_em": "gradient EM",
    "gd": "gradient descent",
    "adam": "Adam",
}

#: Methods that need a step size.
STEPPED = ("md", "gradient_em", "gd", "adam")


def expert_norm_for(model, snr, noise):
    """‖β*‖ for an SNR: SNR·σ for Gaussian experts (SymMoLinE, MoLinE), SNR otherwise (docs/math.md §6)."""
    return model.snr_expert_norm(snr, noise)


def draw_truth(model, key: Array, d: int, snr, gate_norm, *, noise=1.0, orthogonal=False, dtype=None):
    """θ* at the given SNR: random directions (``orthogonal``: w ⟂ β, symmetric models only)."""
    expert_norm = expert_norm_for(model, snr, noise)
    truth = random_params(model, key, d, gate_norm, expert_norm, noise, dtype)
    if orthogonal and isinstance(truth, SymParams):
        beta_dir = truth.beta / jnp.linalg.norm(truth.beta)
        w = truth.w - jnp.dot(truth.w, beta_dir) * beta_dir
        w = jnp.where(jnp.linalg.norm(w) > 0, w, direction(key, d, truth.w.dtype))
        truth = SymParams(w=jnp.asarray(gate_norm, truth.w.dtype) * w / jnp.linalg.norm(w), beta=truth.beta)
    return truth


def _draw_instance(cell, key_truth: Array, key_data: Array, snr, gate_norm):
    """(θ*, x, y, dtype) of one instance of ``cell`` (a ConvergenceCell or RateCell) at this SNR."""
    dtype = jnp.zeros((), float).dtype if cell.dtype is None else jnp.dtype(cell.dtype)
    gate_norm = cell.gate_norm if gate_norm is None else gate_norm
    truth = draw_truth(
        cell.model,
        key_truth,
        cell.d,
        jnp.asarray(snr, dtype),
        jnp.asarray(gate_norm, dtype),
        noise=cell.noise,
        orthogonal=cell.orthogonal,
        dtype=dtype,
    )
    x, y = sample(cell.model, truth, key_data, cell.n)
    return truth, x, y, dtype


def perturb_start(truth, key: Array, relative_error=1.0):
    """θ0 = θ* + δ, each block moved by ``relative_error`` times its norm (pinned entries and σ kept)."""
    if isinstance(truth, SymParams):
        return perturb(truth, key, relative_error)
    key_gate, key_experts = jax.random.split(key)
    gate_rows = truth.gate[1:]
    gate_step = jax.random.normal(key_gate, gate_rows.shape, gate_rows.dtype)
    gate_step = gate_step / jnp.linalg.norm(gate_step) * jnp.linalg.norm(gate_rows) * relative_error
    free = jnp.asarray(truth.experts != 0)  # pinned class columns are exactly 0 in a drawn truth
    expert_step = jnp.where(free, jax.random.normal(key_experts, truth.experts.shape, truth.experts.dtype), 0)
    expert_step = expert_step / jnp.linalg.norm(expert_step) * jnp.linalg.norm(truth.experts) * relative_error
    return MoEParams(gate=truth.gate.at[1:].add(gate_step), experts=truth.experts + expert_step, sigma=truth.sigma)


def parameter_errors(history, truth):
    """(gate error, expert error), relative, sign- or permutation-invariant; leading axes of ``history`` kept."""
    if isinstance(truth, SymParams):
        return relative_errors(history, truth)
    lead = history.gate.shape[:-2]
    flat = jax.tree_util.tree_map(lambda leaf: leaf.reshape((-1,) + leaf.shape[len(lead) :]), history)
    matched = jax.vmap(lambda estimate: match_experts(estimate, truth))(flat)
    count = matched.gate.shape[0]
    gate_error = jnp.linalg.norm((matched.gate - truth.gate[None]).reshape(count, -1), axis=-1)
    expert_error = jnp.linalg.norm((matched.experts - truth.experts[None]).reshape(count, -1), axis=-1)
    gate_error = gate_error / jnp.linalg.norm(truth.gate)
    expert_error = expert_error / jnp.linalg.norm(truth.experts)
    return gate_error.reshape(lead), expert_error.reshape(lead)


def _flat(params) -> Array:
    """Every floating parameter of one iterate as a vector."""
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(params) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.concatenate([leaf.reshape(-1) for leaf in leaves])


class ConvergenceCell(eqx.Module):
    r"""One instance of a convergence experiment: ``cell(key, snr) -> dict of traces``.

    Args (fields):
        model: any emjax model (``SymMoLinE(sigma)``, ``SymMoLogE()``, ``MoLinE(K)``, ...).
        methods: names from :data:`METHODS`, e.g. ``("em", "gradient_em", "gd", "adam")``.
        num_steps: iterations T per method. n, d: samples and features of each instance.
        step_sizes: ``{method: step}`` for the methods that need one (tuned ones come from
            :func:`emjax.sweeps.tune_step_sizes`); a cell call may override them per grid point.
        gate_norm: ‖w*‖ (symmetric) or the norm of every free gate row (K experts); the grid may
            override it per cell. noise: σ of MoLinE experts (SymMoLinE uses its own ``sigma``).
        start_error: relative error of the start in each block. orthogonal: draw w* ⟂ β*.
        dtype: floating dtype of the instance (default: JAX's default float).
        with_rates: compute λ_max(M) at the truth and at every final iterate (default True). For
            K-expert models the MIM is built by autodiff with memory growing fast in n; set False
            to skip it (the rates are then NaN).

    Calling: ``cell(key, snr, gate_norm=None, step_sizes=None, seed=None)``; ``seed`` is only an
    instance label (the sweep derives the key from it).

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> from emjax.sweeps import ConvergenceCell
        >>> cell = ConvergenceCell(emjax.SymMoLinE(), ("em", "gd"), num_steps=5, n=200, d=3,
        ...                        step_sizes={"gd": 0.5})
        >>> out = emjax.sweep(cell, 0, {"snr": jnp.array([1.0, 4.0]), "seed": jnp.arange(3)}, progress=False)
        >>> out.outputs["loss"].shape  # (snr, seed, method, T + 1)
        (2, 3, 2, 6)
    """

    model: object
    methods: tuple[str, ...] = eqx.field(static=True)
    num_steps: int = eqx.field(static=True)
    n: int = eqx.field(static=True)
    d: int = eqx.field(static=True)
    step_sizes: dict = eqx.field(default=None)
    gate_norm: float = eqx.field(static=True, default=2.0)
    noise: float = eqx.field(static=True, default=1.0)
    start_error: float = eqx.field(static=True, default=1.0)
    orthogonal: bool = eqx.field(static=True, default=False)
    dtype: str | None = eqx.field(static=True, default=None)
    with_rates: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        methods = tuple(self.methods)
        if not methods or any(m not in METHODS for m in methods) or len(set(methods)) != len(methods):
            raise ValueError(f"methods must be distinct names from {sorted(METHODS)}; got {self.methods!r}")
        for name, value in (("num_steps", self.num_steps), ("n", self.n), ("d", self.d)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive Python int; got {value!r}")
        steps = {} if self.step_sizes is None else self.step_sizes
        if not isinstance(steps, Mapping):
            raise ValueError(f"step_sizes must be a dict of method -> step; got {steps!r}")
        unknown = [m for m in steps if m not in METHODS]
        if unknown:
            raise ValueError(f"step_sizes names unknown methods {unknown}")

    def describe(self) -> dict:
        """JSON record of the cell (what a resumed sweep compares)."""
        steps = {} if self.step_sizes is None else self.step_sizes
        return {
            "cell": "emjax.sweeps.ConvergenceCell",
            "model": repr(self.model),
            "methods": list(self.methods),
            "num_steps": self.num_steps,
            "n": self.n,
            "d": self.d,
            "step_sizes": {m: np.asarray(s).tolist() for m, s in sorted(steps.items())},
            "gate_norm": self.gate_norm,
            "noise": self.noise,
            "start_error": self.start_error,
            "orthogonal": self.orthogonal,
            "dtype": self.dtype,
            "with_rates": self.with_rates,
        }

    def __call__(self, key: Array, snr, gate_norm=None, step_sizes=None, seed=None) -> dict:
        del seed
        steps = dict({} if self.step_sizes is None else self.step_sizes)
        steps.update({} if step_sizes is None else step_sizes)
        missing = [m for m in self.methods if m in STEPPED and m not in steps]
        if missing:
            raise ValueError(f"methods {missing} need a step size (step_sizes={{...}})")
        key_truth, key_data, key_start = jax.random.split(key, 3)
        truth, x, y, dtype = _draw_instance(self, key_truth, key_data, snr, gate_norm)
        start = perturb_start(truth, key_start, self.start_error)
        scale = jnp.linalg.norm(_flat(truth))

        records = []
        for method in self.methods:
            solver = METHODS[method](jnp.asarray(steps.get(method, 1.0), dtype))
            result = fit(self.model, solver, start, x, y, self.num_steps, keep_history=True)
            gate_error, expert_error = parameter_errors(result.params_history, truth)
            flat_history = jax.vmap(_flat)(result.params_history)
            records.append(
                {
                    "loss": result.losses,
                    "gate_error": gate_error,
                    "expert_error": expert_error,
                    "step_length": jnp.linalg.norm(jnp.diff(flat_history, axis=0), axis=-1) / scale,
                    "rate_final": self._rate(result.params, x, y),
                    "status": result.status,
                }
            )
        stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *records)
        stacked["loss_truth"] = neg_log_likelihood(self.model, truth, x, y)
        stacked["rate_truth"] = self._rate(truth, x, y)
        return stacked

    def _rate(self, params, x, y):
        if self.with_rates:
            return em_rate(self.model, params, x, y)
        return jnp.full((), jnp.nan, x.dtype)


class RateCell(eqx.Module):
    r"""$\lambda_{\max}(M(\theta^*))$ on a fresh data set of ``n`` samples: ``cell(key, snr, gate_norm=None)``.

    Cheap (no fitting), so it can use a large n to approach the population value (docs/math.md §6 tables).
    Returns ``{"rate": scalar}``.
    """

    model: object
    n: int = eqx.field(static=True)
    d: int = eqx.field(static=True)
    gate_norm: float = eqx.field(static=True, default=2.0)
    noise: float = eqx.field(static=True, default=1.0)
    orthogonal: bool = eqx.field(static=True, default=False)
    dtype: str | None = eqx.field(static=True, default=None)

    def describe(self) -> dict:
        return {
            "cell": "emjax.sweeps.RateCell",
            "model": repr(self.model),
            "n": self.n,
            "d": self.d,
            "gate_norm": self.gate_norm,
            "noise": self.noise,
            "orthogonal": self.orthogonal,
            "dtype": self.dtype,
        }

    def __call__(self, key: Array, snr, gate_norm=None, seed=None) -> dict:
        del seed
        truth, x, y, _ = _draw_instance(self, *jax.random.split(key), snr, gate_norm)
        return {"rate": em_rate(self.model, truth, x, y)}
