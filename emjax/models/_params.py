"""Parameters of the symmetric two-expert models and of the K-expert mixtures."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array


class SymParams(eqx.Module):
    r"""Parameters $\theta = (w, \beta)$ of a symmetric two-expert mixture.

    The gate is $P(z=1 \mid x) = \mathrm{sigmoid}(x \cdot w)$; expert $+\beta$ serves $z=1$ and
    expert $-\beta$ serves $z=0$. Every flattened vector, gradient, Hessian and information
    matrix in emjax uses the order ``concat(w, beta)`` (w first), see :meth:`flatten`.

    Args:
        w: gate weights, shape (d,).
        beta: expert weights, shape (d,).

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> p = emjax.SymParams(w=jnp.zeros(3), beta=jnp.ones(3))
        >>> p.flatten().shape
        (6,)
    """

    w: Array
    beta: Array

    def __init__(self, w, beta):
        # None is allowed so that a SymParams can also serve as a partial mask (e.g. ``trainable``).
        self.w = None if w is None else jnp.asarray(w)
        self.beta = None if beta is None else jnp.asarray(beta)

    def __check_init__(self):
        if self.w is not None and self.beta is not None and jnp.shape(self.w) != jnp.shape(self.beta):
            raise ValueError(
                f"SymParams: w and beta must have the same shape (d,); got w {jnp.shape(self.w)} "
                f"and beta {jnp.shape(self.beta)}"
            )

    @property
    def dim(self) -> int:
        """The feature dimension d."""
        return self.w.shape[-1]

    def flatten(self) -> Array:
        """The vector ``concat(w, beta)`` of shape (2d,)."""
        return jnp.concatenate([self.w, self.beta], axis=-1)

    @classmethod
    def unflatten(cls, theta: Array) -> SymParams:
        """Inverse of :meth:`flatten`: split a (2d,) vector into (w, beta)."""
        d = theta.shape[-1] // 2
        return cls(w=theta[..., :d], beta=theta[..., d:])

    def align_sign(self, reference: SymParams) -> SymParams:
        r"""Resolve the label swap $\theta \equiv -\theta$: flip when $\langle\beta, \beta_{ref}\rangle < 0$."""
        sign = jnp.where(jnp.vdot(self.beta, reference.beta) < 0, -1.0, 1.0).astype(self.w.dtype)
        return SymParams(w=sign * self.w, beta=sign * self.beta)


def expand_prefix(mask, shape) -> Array:
    """Broadcast a mask whose shape is a prefix of ``shape`` (e.g. (K,) for (K, d)) to ``shape``."""
    mask = jnp.asarray(mask, bool)
    return jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (len(shape) - mask.ndim)), shape)


def flatten_unpinned(params, pinned) -> Array:
    """The entries of ``params`` that ``pinned`` (NumPy booleans of the same structure) leaves free, leaf by
    leaf in field order, as one vector: the flattened order of the K-expert and hierarchical models."""
    leaves, masks = jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(pinned)
    return jnp.concatenate([leaf[~mask] for leaf, mask in zip(leaves, masks, strict=True)])


def unflatten_unpinned(vector: Array, like, pinned):
    """Inverse of :func:`flatten_unpinned`: ``like`` with its free entries taken from ``vector`` (cast to the
    dtype of ``like``'s first leaf); pinned entries keep ``like``'s values."""
    leaves, treedef = jax.tree_util.tree_flatten(like)
    vector = jnp.asarray(vector, leaves[0].dtype)
    out, start = [], 0
    for leaf, mask in zip(leaves, jax.tree_util.tree_leaves(pinned), strict=True):
        size = int(np.sum(~mask))
        segment = vector[start : start + size]
        start += size
        # a block with nothing pinned (σ) is the segment itself
        out.append(jnp.asarray(leaf).at[np.nonzero(~mask)].set(segment) if mask.any() else segment.reshape(leaf.shape))
    return jax.tree_util.tree_unflatten(treedef, out)


def free_from_pinned(pinned, trainable=None):
    """What may change: not ``pinned`` and, where a ``trainable`` mask is given (a field None = trainable; a
    mask whose shape is a prefix of the field's, e.g. per expert, broadcasts), trainable."""
    free = jax.tree_util.tree_map(lambda p: jnp.asarray(~p), pinned)
    if trainable is None:
        return free

    def combine(field):
        mask, allowed = getattr(trainable, field), getattr(free, field)
        if allowed is None or mask is None:
            return allowed
        return allowed & expand_prefix(mask, allowed.shape)

    return type(free)(**{field.name: combine(field.name) for field in dataclasses.fields(free)})


def _as_leaf(value):
    # NumPy arrays stay NumPy (static masks such as MixtureOfExperts.pinned must be usable as
    # indices under jit); everything else becomes a jax array.
    return value if isinstance(value, np.ndarray) else jnp.asarray(value)


class MoEParams(eqx.Module):
    r"""Parameters of a K-expert mixture.

    Args:
        gate: gate weights $W$, shape (K, d); row 0 is pinned (see the module docstring).
        experts: expert coefficients, shape (K, d) (linear, Poisson) or (K, d, C) (softmax classifier).
        sigma: noise standard deviations, shape (K,), for linear-Gaussian experts; None otherwise.

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> p = emjax.MoEParams(gate=jnp.zeros((3, 2)), experts=jnp.ones((3, 2)), sigma=jnp.ones(3))
        >>> p.num_experts, p.dim
        (3, 2)
    """

    gate: Array
    experts: Array
    sigma: Array | None = None

    def __init__(self, gate, experts, sigma=None):
        self.gate = _as_leaf(gate)
        self.experts = _as_leaf(experts)
        self.sigma = None if sigma is None else _as_leaf(sigma)

    @property
    def num_experts(self) -> int:
        """K."""
        return self.gate.shape[-2]

    @property
    def dim(self) -> int:
        """The feature dimension d."""
        return self.gate.shape[-1]
