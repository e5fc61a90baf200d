r"""softplus and sigmoid of one array from a single exponential (and tanh(z/2) beside them).

With $e = \exp(-|z|) \in (0, 1]$:

* $\mathrm{softplus}(\pm z) = \max(\pm z, 0) + \mathrm{log1p}(e)$,
* $\mathrm{sigmoid}(z) = 1/(1+e)$ for $z \ge 0$ and $e/(1+e)$ otherwise,
* $\tanh(z/2) = 2\,\mathrm{sigmoid}(z) - 1$ (computed by ``tanh``, see :attr:`Logistic.tanh_half`).

Each is exact in both tails (no $1 - $ a number near 1, no overflow). The EM step of a symmetric
model needs all three of the same logits; transcendental functions dominate its cost at moderate n
(XLA's float64 ``exp`` and ``log1p`` cost several nanoseconds per value on a CPU), so computing
the exponential once matters.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array


class Logistic:
    """``softplus`` and ``sigmoid`` of ``z`` sharing ``exp(-|z|)``, and ``tanh_half``."""

    __slots__ = ("z", "e", "inverse")

    def __init__(self, z: Array):
        self.z = z
        self.e = jnp.exp(-jnp.abs(z))
        self.inverse = 1 / (1 + self.e)

    @property
    def softplus(self) -> Array:
        return jnp.maximum(self.z, 0) + jnp.log1p(self.e)

    @property
    def softplus_negative(self) -> Array:
        """softplus(-z) = max(-z, 0) + log1p(e): the same log1p as :attr:`softplus`."""
        return jnp.maximum(-self.z, 0) + jnp.log1p(self.e)

    @property
    def sigmoid(self) -> Array:
        return jnp.where(self.z >= 0, 1, self.e) * self.inverse

    @property
    def sigmoid_negative(self) -> Array:
        """sigmoid(-z)."""
        return jnp.where(self.z >= 0, self.e, 1) * self.inverse

    @property
    def tanh_half(self) -> Array:
        # Not ±(1 - e)/(1 + e): near z = 0 the difference 1 - e would keep only the digits of e
        # beyond z's (relative error eps/|z|); XLA's tanh is a cheap rational approximation.
        return jnp.tanh(self.z / 2)

    @property
    def softplus_negative_abs(self) -> Array:
        r"""$\mathrm{softplus}(-|z|) = \mathrm{log1p}(e)$."""
        return jnp.log1p(self.e)
