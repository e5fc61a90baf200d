r"""Where fits start: data-driven initial parameters, random ground truths, and label matching.

:func:`init_params` is what :func:`emjax.fit_restarts` calls once per restart, so two keys give
two different, data-driven starts.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._checks import check_model, validate
from ._dtypes import working_dtype
from ._validation import check_features, check_int, check_key, check_labels, check_scale, public
from .models import MixtureOfExperts, MoEParams


def _validate_init(model, key, x, y, **_) -> None:
    check_key(key)
    n, d = check_features(x)
    check_labels(y, n)
    check_model(model)
    validate(model, model.placeholder(d), x, y)


@public(_validate_init)
def init_params(model, key: Array, x, y):
    r"""A data-driven starting point for a fit; different keys give different starts.

    K-expert models: cluster the rows of the standardised $[x, T(y)]$ ($T$ the expert statistic) into
    K groups (k-means++ seeding and three Lloyd steps), give each sample responsibility
    $\tfrac12$ on its group plus $\tfrac1{2K}$ on every expert, and take one M-step from zero
    (σ from the spread of y): the gate then separates the groups and each expert fits its own.
    SymMoLinE: a spectral start, β along the top eigenvector of $\mathrm{mean}\,y^2 x x^\top$ with its
    norm read off the eigenvalue, and a small random w. SymMoLogE: a unit-norm random β and a small w.

    Example:
        >>> import jax, emjax
        >>> model = emjax.MoLinE(2)
        >>> truth = emjax.random_moe_params(model, jax.random.key(0), d=3)
        >>> x, y = emjax.sample(model, truth, jax.random.key(1), 200)
        >>> start = emjax.init_params(model, jax.random.key(2), x, y)
        >>> start.gate.shape, start.sigma.shape
        ((2, 3), (2,))
    """
    dtype = working_dtype(x, y)
    return model.init_params(key, jnp.asarray(x, dtype), jnp.asarray(y, dtype))


def random_moe_params(model: MixtureOfExperts, key: Array, d: int, gate_norm=2.0, expert_norm=2.0, sigma=0.5,
                      dtype=None) -> MoEParams:
    r"""Random ground-truth parameters for a K-expert model (e.g. for simulations).

    Gate rows 1..K-1 and every free expert column are uniformly random directions of norm
    ``gate_norm`` and ``expert_norm``; gate row 0 and pinned class columns are 0; σ_k = ``sigma``.
    Norms may be traced (a grid under ``vmap`` compiles once).

    Example:
        >>> import jax, emjax
        >>> p = emjax.random_moe_params(emjax.MoLogE(3, num_classes=4), jax.random.key(0), d=2)
        >>> p.experts.shape
        (3, 2, 4)
    """
    if not isinstance(model, MixtureOfExperts):
        raise ValueError(f"model must be a K-expert model (MoLinE, MoLogE, MoPoE); got {model!r}")
    check_key(key)
    check_int(d, "d", 1)
    check_scale(gate_norm, "gate_norm", positive=False)
    check_scale(expert_norm, "expert_norm", positive=False)
    check_scale(sigma, "sigma", positive=True)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype such as jnp.float32; got {dtype!r}")
    dtype = jnp.zeros((), float).dtype if dtype is None else dtype
    k = model.num_experts
    key_gate, key_expert = jax.random.split(key)

    def directions(key, shape):  # unit vectors along the feature axis (axis 1)
        v = jax.random.normal(key, shape, dtype)
        return v / jnp.linalg.norm(v, axis=1, keepdims=True)

    gate = (jnp.asarray(gate_norm, dtype) * directions(key_gate, (k, d))).at[0].set(0)
    experts = jnp.asarray(expert_norm, dtype) * directions(key_expert, (k,) + model.expert.coef_shape(d))
    experts = jnp.where(jnp.asarray(model.pinned(d).experts), 0, experts)
    scale = jnp.full((k,), sigma, dtype) if model.expert.has_scale else None
    return MoEParams(gate=gate, experts=experts, sigma=scale)


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
