r"""Top-k routing, routed log-weights, responsibilities and load statistics (docs/math.md §9, step 1).

Every expert is evaluated on every sample and the unrouted ones are masked out: this is *dense
compute with sparse weights*. True sparse dispatch (gathering each expert's samples into
capacity-limited buffers) is out of scope (docs/math.md §9), so the cost is that of the dense mixture;
the routing changes the model and its training signal, not the FLOPs.

Notation: $g(x)$ the gate logits, $T(x)$ the ``top_k`` experts with the largest logits (ties to the
lower index), $\log\tilde\pi_k(x) = g_k(x) - \mathrm{logsumexp}_{j\in T(x)} g_j(x)$ the routed
(renormalised) gate log-probabilities, and

$$\ell_{nk} = \log\tilde\pi_k(x_n) + \log p(y_n\mid x_n, k)\quad (k\in T_n),\qquad \ell_{nk} = -\infty\ (k\notin T_n).$$

Renormalising over $T_n$ shifts $\ell_{n\cdot}$ by a constant per sample, so the responsibilities
$\gamma_{nk} = \mathrm{softmax}_k(\ell_{n\cdot})$ are the same as with the full softmax $\log\pi_k$
(docs/math.md §9 step 1); for ``top_k = K`` nothing is masked and $\ell$ is the dense log-weight of docs/math.md §2.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from .._validation import data_arguments
from ._checks import as_working, check_data
from ._model import DeepMoE, expert_logits, gate_logits


class LoadStatistics(NamedTuple):
    """How the experts share the samples.

    Attributes:
        routed_fraction: (K,) fraction of samples whose top-k set contains expert k; sums to top_k.
        gate_mass: (K,) mean routed gate probability $\\mathrm{mean}_n\\tilde\\pi_{nk}$; sums to 1.
    """

    routed_fraction: Array
    gate_mass: Array


# ----------------------------------------------------------------------------- raw (unchecked) functions


def top_k_mask_raw(logits: Array, k: int) -> Array:
    """Boolean (n, K), exactly ``k`` True per row: the k largest logits, ties to the lower index."""
    num = logits.shape[-1]
    if k == num:
        return jnp.ones(logits.shape, bool)
    _, index = jax.lax.top_k(jax.lax.stop_gradient(logits), k)
    return jnp.any(jax.nn.one_hot(index, num, dtype=jnp.int32) > 0, axis=-2)


def routed_gate_log_probs_raw(logits: Array, mask: Array) -> Array:
    r"""$g_k - \mathrm{logsumexp}_{j\in T} g_j$ for every k (finite; only entries in T are meaningful)."""
    normaliser = jax.nn.logsumexp(jnp.where(mask, logits, -jnp.inf), axis=-1, keepdims=True)
    return logits - normaliser


def expert_log_probs_from_logits(logits: Array, y: Array) -> Array:
    """$\\log p(y_n\\mid x_n, k)$ (n, K) from expert logits (n, K, C) and labels (n,)."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    index = jnp.broadcast_to(y[:, None, None], log_probs.shape[:2] + (1,))
    return jnp.take_along_axis(log_probs, index, axis=-1)[..., 0]


class Routed(NamedTuple):
    """One forward pass: routing mask, routed gate log-probs, expert log-likelihoods (all (n, K))."""

    mask: Array
    log_gate: Array  # renormalised over the mask, finite everywhere
    log_expert: Array

    @property
    def log_weights(self) -> Array:
        return jnp.where(self.mask, self.log_gate + self.log_expert, -jnp.inf)

    def masked_sum(self, weights: Array) -> Array:
        r"""$\sum_{k\in T_n} w_{nk}(\log\tilde\pi_{nk} + \log p_{nk})$, shape (n,) (0 outside T, never NaN)."""
        return jnp.sum(jnp.where(self.mask, weights * (self.log_gate + self.log_expert), 0), axis=-1)


def forward(model: DeepMoE, x: Array, y: Array, mask: Array | None = None) -> Routed:
    """Gate and experts on every sample; ``mask`` defaults to the model's own top-k routing."""
    logits = gate_logits(model, x)
    if mask is None:
        mask = top_k_mask_raw(logits, model.top_k)
    log_expert = expert_log_probs_from_logits(expert_logits(model, x), y)
    return Routed(mask, routed_gate_log_probs_raw(logits, mask), log_expert)


def load_statistics_raw(mask: Array, log_gate: Array) -> LoadStatistics:
    fraction = jnp.mean(mask.astype(log_gate.dtype), axis=0)
    mass = jnp.mean(jnp.where(mask, jnp.exp(log_gate), 0), axis=0)
    return LoadStatistics(routed_fraction=fraction, gate_mass=mass)


@eqx.filter_jit
def _gate_log_probs(model, x):
    return jax.nn.log_softmax(gate_logits(model, x), axis=-1)


@eqx.filter_jit
def _expert_log_probs(model, x, y):
    return expert_log_probs_from_logits(expert_logits(model, x), y)


@eqx.filter_jit
def _routed_log_weights(model, x, y):
    return forward(model, x, y).log_weights


@eqx.filter_jit
def _load_statistics(model, x):
    logits = gate_logits(model, x)
    mask = top_k_mask_raw(logits, model.top_k)
    return load_statistics_raw(mask, routed_gate_log_probs_raw(logits, mask))


# ----------------------------------------------------------------------------- public functions


def top_k_mask(gate_logits: Array, k: int) -> Array:
    r"""Top-k routing: True for the ``k`` largest logits of each row, exactly ``k`` per row.

    Ties are broken towards the lower expert index (``jax.lax.top_k``), so a row of equal logits
    routes to experts $0, \dots, k-1$. The selection is piecewise constant: no gradient flows
    through it (``stop_gradient`` on the logits).

    Args:
        gate_logits: (n, K) (any leading shape, experts on the last axis).
        k: a Python int, 1 <= k <= K.

    Returns:
        Boolean array of the shape of ``gate_logits``.

    Example:
        >>> import jax.numpy as jnp, emjax.deep as deep
        >>> deep.top_k_mask(jnp.array([[0.0, 2.0, 1.0], [1.0, 1.0, 1.0]]), 2).astype(int).tolist()
        [[0, 1, 1], [1, 1, 0]]
    """
    shape = jnp.shape(gate_logits)
    if len(shape) < 1:
        raise ValueError("gate_logits must have the experts on a last axis; got a scalar")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= shape[-1]:
        raise ValueError(f"k must be a Python int with 1 <= k <= K = {shape[-1]}; got {k!r}")
    return top_k_mask_raw(jnp.asarray(gate_logits), k)


@data_arguments
def gate_log_probs(model: DeepMoE, x) -> Array:
    r"""The full (dense) gate log-probabilities $\log\pi_k(x_n) = \mathrm{log\_softmax}_k\, g(x_n)$, shape (n, K).

    Example:
        >>> import jax, jax.numpy as jnp, emjax.deep as deep
        >>> model = deep.DeepMoE.mlp(jax.random.key(0), 2, 3, 4, top_k=2)
        >>> bool(jnp.allclose(jnp.exp(deep.gate_log_probs(model, jnp.ones((5, 2)))).sum(-1), 1.0))
        True
    """
    check_data(model, x)
    return _gate_log_probs(model, as_working(model, x))


@data_arguments
def expert_log_probs(model: DeepMoE, x, y) -> Array:
    r"""$\log p(y_n\mid x_n, k) = \mathrm{log\_softmax}(f_k(x_n))_{y_n}$ for every sample and expert, (n, K).

    Computed densely: every expert on every sample (``vmap`` over samples and experts).

    Example:
        >>> import jax, jax.numpy as jnp, emjax.deep as deep
        >>> model = deep.DeepMoE.mlp(jax.random.key(0), 2, 3, 4, top_k=2)
        >>> deep.expert_log_probs(model, jnp.ones((5, 2)), jnp.zeros(5, int)).shape
        (5, 4)
    """
    check_data(model, x, y)
    return _expert_log_probs(model, *as_working(model, x, y))


@data_arguments
def routed_log_weights(model: DeepMoE, x, y) -> Array:
    r"""$\ell_{nk} = \log\tilde\pi_k(x_n) + \log p(y_n\mid x_n, k)$ for $k\in T_n$, $-\infty$ otherwise, (n, K).

    $\tilde\pi$ is the gate renormalised over the routed set (module docstring); with
    ``top_k = K`` this is the dense log-weight $\log\pi_k + \log p_k$ of docs/math.md §2, and
    $-\mathrm{mean}_n\mathrm{logsumexp}_k\ell_{nk}$ is :func:`neg_log_likelihood` for every k.

    Example:
        >>> import jax, jax.numpy as jnp, emjax.deep as deep
        >>> model = deep.DeepMoE.mlp(jax.random.key(0), 2, 3, 4, top_k=2)
        >>> ell = deep.routed_log_weights(model, jnp.ones((5, 2)), jnp.zeros(5, int))
        >>> jnp.isfinite(ell).sum(axis=1).tolist()
        [2, 2, 2, 2, 2]
    """
    check_data(model, x, y)
    return _routed_log_weights(model, *as_working(model, x, y))


@data_arguments
def responsibilities(model: DeepMoE, x, y) -> Array:
    r"""$\gamma_{nk} = \mathrm{softmax}_k(\ell_{n\cdot})$ under ``stop_gradient``, shape (n, K); 0 outside $T_n$.

    Example:
        >>> import jax, jax.numpy as jnp, emjax.deep as deep
        >>> model = deep.DeepMoE.mlp(jax.random.key(0), 2, 3, 4, top_k=2)
        >>> gamma = deep.responsibilities(model, jnp.ones((5, 2)), jnp.zeros(5, int))
        >>> bool(jnp.allclose(gamma.sum(-1), 1.0)), (gamma > 0).sum(axis=1).tolist()
        (True, [2, 2, 2, 2, 2])
    """
    return jax.lax.stop_gradient(jax.nn.softmax(routed_log_weights(model, x, y), axis=-1))


@data_arguments
def load_statistics(model: DeepMoE, x) -> LoadStatistics:
    r"""Routing fractions (top-k membership / n, summing to top_k) and mean routed gate mass (summing to 1).

    Example:
        >>> import jax, jax.numpy as jnp, emjax.deep as deep
        >>> model = deep.DeepMoE.mlp(jax.random.key(0), 2, 3, 4, top_k=2)
        >>> stats = deep.load_statistics(model, jax.random.normal(jax.random.key(1), (100, 2)))
        >>> round(float(stats.routed_fraction.sum()), 6), round(float(stats.gate_mass.sum()), 6)
        (2.0, 1.0)
    """
    check_data(model, x)
    return _load_statistics(model, as_working(model, x))
