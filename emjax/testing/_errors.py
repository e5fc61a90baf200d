"""Parameter errors up to the labels: the sign swap of symmetric models, the permutation of K experts."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
from jax import Array

from ..models import MoEParams, SymParams
from ._problems import check_sym


def relative_errors(estimate: SymParams, truth: SymParams) -> tuple[Array, Array]:
    r"""$(\|w - w^*\|/\|w^*\|,\ \|\beta - \beta^*\|/\|\beta^*\|)$ after resolving the label swap.

    The estimate is flipped to $-\theta$ when $\langle\hat\beta, \beta^*\rangle < 0$ (docs/math.md §1).
    Works on a single iterate or on a history with leading axes.
    """
    check_sym(estimate, "estimate")
    check_sym(truth, "truth")
    w_true = jnp.broadcast_to(truth.w, estimate.w.shape)
    beta_true = jnp.broadcast_to(truth.beta, estimate.beta.shape)
    sign = jnp.where(jnp.sum(estimate.beta * beta_true, axis=-1, keepdims=True) < 0, -1, 1)
    sign = sign.astype(estimate.w.dtype)
    w_error = jnp.linalg.norm(sign * estimate.w - w_true, axis=-1) / jnp.linalg.norm(truth.w, axis=-1)
    beta_error = jnp.linalg.norm(sign * estimate.beta - beta_true, axis=-1) / jnp.linalg.norm(truth.beta, axis=-1)
    return w_error, beta_error


def _check_matchable(estimate, truth) -> None:
    """Both arguments are MoEParams of one shape (the same K, d and, for classifiers, C)."""
    for name, value in (("estimate", estimate), ("truth", truth)):
        if not isinstance(value, MoEParams):
            raise ValueError(f"{name} must be an emjax.MoEParams (K-expert parameters); got {type(value).__name__}")
    for field in ("gate", "experts", "sigma"):
        a, b = getattr(estimate, field), getattr(truth, field)
        if (a is None) != (b is None) or (a is not None and jnp.shape(a) != jnp.shape(b)):
            raise ValueError(
                f"estimate.{field} and truth.{field} must have the same shape; got "
                f"{None if a is None else jnp.shape(a)} and {None if b is None else jnp.shape(b)}"
            )


def match_experts(estimate: MoEParams, truth: MoEParams) -> MoEParams:
    r"""Relabel the experts of ``estimate`` to match ``truth`` (the label permutation of a mixture).

    Picks the permutation minimising $\sum_k\|\hat\beta_{\pi(k)} - \beta_k\|^2$ (all K! of them, so
    meant for K up to about 7), permutes gate rows, experts and σ, and shifts the gate so that
    row 0 is 0 again (the same model). Works under ``jit``.
    """
    _check_matchable(estimate, truth)
    k = estimate.num_experts
    permutations = np.array(list(itertools.permutations(range(k))))
    flat_est = estimate.experts.reshape(k, -1)
    flat_true = truth.experts.reshape(k, -1)
    costs = jnp.sum(jnp.square(flat_est[:, None, :] - flat_true[None, :, :]), axis=-1)  # (est, true)
    totals = jnp.sum(costs[permutations, np.arange(k)[None, :]], axis=1)
    order = jnp.asarray(permutations)[jnp.argmin(totals)]
    gate = estimate.gate[order]
    return MoEParams(
        gate=gate - gate[:1],
        experts=estimate.experts[order],
        sigma=None if estimate.sigma is None else estimate.sigma[order],
    )
