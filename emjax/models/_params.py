"""Parameters of the symmetric two-expert models and of the K-expert mixtures."""

from __future__ import annotations

import equinox as eqx
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
