r"""The two symmetric two-expert models of the paper (docs/math.md §1, §2, §4.1).

Both share the gate $P(z=1\mid x) = \mathrm{sigmoid}(x\cdot w)$ and differ in the expert:

* :class:`SymMoLinE`: $y = (2z-1)\,x\cdot\beta + \sigma\varepsilon$, $\varepsilon\sim N(0,1)$, σ known.
* :class:`SymMoLogE`: $y\in\{0,1\}$, $P(y=1\mid x,z) = \mathrm{sigmoid}((2z-1)\,x\cdot\beta)$.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.linalg import cho_solve

from .._linalg import psd_factor
from .._logistic import Logistic
from .._newton import gradient_and_hessian, soft_logistic_regression
from .._validation import check_real_scalar, check_values, is_concrete, not_binary
from ._params import SymParams
from ._predictive import GaussianPredictive, bernoulli_pair
from ._symmetric import AbstractSymmetricModel, softplus_bregman


class SymMoLinE(AbstractSymmetricModel):
    r"""Symmetric mixture of two linear experts, $y = \pm x\cdot\beta + \sigma\varepsilon$.

    Complete-data statistic $S = (z, (2z-1)y)$ with natural parameter $(x\cdot w, x\cdot\beta/\sigma^2)$
    and per-sample log-partition $A_x = \mathrm{softplus}(x\cdot w) + (x\cdot\beta)^2/(2\sigma^2)$.

    Args:
        sigma: the known noise standard deviation, > 0. A Python float or a scalar array
            (an array is traced under ``jit``, so a sweep over σ compiles once).

    Raises:
        ValueError: if ``sigma`` is not a positive finite scalar.

    Example:
        >>> import jax, jax.numpy as jnp, emjax
        >>> model = emjax.SymMoLinE(sigma=1.0)
        >>> truth = emjax.SymParams(w=jnp.array([1.0, 0.0]), beta=jnp.array([0.0, 2.0]))
        >>> x, y = emjax.sample(model, truth, jax.random.key(0), 100)
        >>> x.shape, y.shape
        ((100, 2), (100,))
    """

    sigma: Array

    def __init__(self, sigma=1.0):
        check_real_scalar(sigma, "sigma")
        if is_concrete(sigma):
            value = float(np.asarray(sigma))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"sigma must be a positive finite number; got {value}")
        self.sigma = jnp.asarray(sigma)

    def describe(self) -> str:
        """``SymMoLinE(sigma=0.5)`` (the class name alone when σ is traced or batched)."""
        if is_concrete(self.sigma) and np.ndim(self.sigma) == 0:
            return f"{type(self).__name__}(sigma={float(np.asarray(self.sigma)):.6g})"
        return type(self).__name__

    def _variance(self, like: Array) -> Array:
        return jnp.square(self.sigma).astype(like.dtype)

    def expert_log_likelihoods(self, xb, y):
        var = self._variance(xb)
        const = -0.5 * jnp.log(2 * jnp.pi * var)
        return const - jnp.square(y - xb) / (2 * var), const - jnp.square(y + xb) / (2 * var)

    def expert_log_ratio(self, xb, y):
        return 2 * y * xb / self._variance(xb)

    def expert_log_partition(self, xb):
        return jnp.square(xb) / (2 * self._variance(xb))

    def expert_mean(self, xb):
        return xb / self._variance(xb)

    def expert_curvature(self, xb):
        return jnp.ones_like(xb) / self._variance(xb)

    def expert_bregman(self, xb, xb_ref):
        return jnp.square(xb - xb_ref) / (2 * self._variance(xb))

    def expert_posterior_statistic(self, posterior, y):
        # E[(2z-1) y | x, y] / sigma^2 with 2r - 1 = tanh(logit / 2), exact in both tails.
        return posterior.tanh_half * y / self._variance(y)

    def missing_coefficient(self, y):
        return 2 * y / self._variance(y)

    def expert_precompute(self, x, xt):
        """The jittered Cholesky factor of $X^\top X$ (:func:`emjax._linalg.psd_factor`): one per fit."""
        # The blocked product (cache-sized scaled copies at large n) with no gradient column.
        _, gram = gradient_and_hessian(x, jnp.zeros((x.shape[0], 0), x.dtype), jnp.ones((x.shape[0], 1), x.dtype), xt)
        return psd_factor(gram[0])

    def expert_solve(self, x, targets, beta0, cache, scores):
        # mean (x.beta / sigma^2) x = mean t x  <=>  (X^T X) beta = sigma^2 X^T t, with X^T X factored
        # once per fit. With fewer samples than features beta is not identified; the jittered factor
        # keeps it finite and x.beta (hence the loss) is the least-squares fit.
        return cho_solve(cache.expert, cache.xt @ (self._variance(x) * targets))

    def signed_expert_predictive(self, signed_xb):
        r"""$y\mid x, z \sim N((2z-1)\,x\cdot\beta, \sigma^2)$."""
        scale = jnp.broadcast_to(self.sigma.astype(signed_xb.dtype), signed_xb.shape)
        return GaussianPredictive(loc=signed_xb, scale=scale)

    def sample_labels(self, key, xb, z):
        sign = 2 * z.astype(xb.dtype) - 1
        noise = jax.random.normal(key, xb.shape, xb.dtype)
        return sign * xb + self.sigma.astype(xb.dtype) * noise

    def expert_smoothness(self):
        return 1 / jnp.square(self.sigma)

    def snr_expert_norm(self, snr, noise):
        """SNR = ‖β‖/σ with the model's own σ."""
        return snr * self.sigma

    def init_params(self, key, x, y):
        r"""A spectral start: β along the top eigenvector of $\mathrm{mean}\,y^2 x x^\top$, its norm read off
        the eigenvalue, and a small random w.

        For x ~ N(0, I), $E[y^2 x x^\top] = (|\beta|^2 + \sigma^2) I + 2\beta\beta^\top$, so the top
        eigenvector is along β and its eigenvalue exceeds mean y² by 2|β|²."""
        n, d = x.shape
        key_w, key_b = jax.random.split(key)
        w = 0.1 * jax.random.normal(key_w, (d,), x.dtype) / jnp.sqrt(d)
        direction = jax.random.normal(key_b, (d,), x.dtype)
        direction = direction / jnp.linalg.norm(direction)
        moment = (x * jnp.square(y)[:, None]).T @ x / n
        values, vectors = jnp.linalg.eigh(moment)
        norm = jnp.sqrt(jnp.maximum((values[-1] - jnp.mean(jnp.square(y))) / 2, 1e-2))
        sign = jnp.where(vectors[:, -1] @ direction < 0, -1, 1).astype(x.dtype)
        return SymParams(w=w, beta=sign * norm * vectors[:, -1])


class SymMoLogE(AbstractSymmetricModel):
    r"""Symmetric mixture of two logistic experts, $P(y=1\mid x,z) = \mathrm{sigmoid}((2z-1)x\cdot\beta)$.

    Complete-data statistic $S = (z, 1[y=z])$ with natural parameter $(x\cdot w, x\cdot\beta)$ and
    per-sample log-partition $A_x = \mathrm{softplus}(x\cdot w) + \mathrm{softplus}(x\cdot\beta)$.
    Labels are 0/1 (any real or integer dtype holding only 0 and 1).

    Example:
        >>> import jax, jax.numpy as jnp, emjax
        >>> model = emjax.SymMoLogE()
        >>> truth = emjax.SymParams(w=jnp.array([1.0, 0.0]), beta=jnp.array([0.0, 3.0]))
        >>> x, y = emjax.sample(model, truth, jax.random.key(0), 50)
        >>> bool(jnp.all((y == 0) | (y == 1)))
        True
    """

    def check_labels(self, y) -> None:
        check_values(y, not_binary, "y must hold binary labels in {0, 1} for SymMoLogE")

    def expert_log_likelihoods(self, xb, y):
        # log sigmoid(±xb) = -softplus(∓xb): one exponential and one log1p for both.
        logistic = Logistic(xb)
        positive, negative = -logistic.softplus_negative, -logistic.softplus
        return jnp.where(y > 0.5, positive, negative), jnp.where(y > 0.5, negative, positive)

    def expert_log_ratio(self, xb, y):
        # log_sigmoid(c t) - log_sigmoid(-c t) = c t for c = 2y - 1.
        return (2 * y - 1) * xb

    def expert_log_partition(self, xb):
        return jax.nn.softplus(xb)

    def expert_mean(self, xb):
        return jax.nn.sigmoid(xb)

    def expert_curvature(self, xb):
        s = jax.nn.sigmoid(xb)
        return s * (1 - s)

    def expert_bregman(self, xb, xb_ref):
        return softplus_bregman(xb, xb_ref)

    def expert_posterior_statistic(self, posterior, y):
        # q = P(y = z | x, y) = y r + (1-y)(1-r) = sigmoid((2y-1) logit) for y in {0,1}.
        return jnp.where(y > 0.5, posterior.sigmoid, posterior.sigmoid_negative)

    def missing_coefficient(self, y):
        return 2 * y - 1

    def expert_warm_start(self, xb):
        # The same exponential as expert_log_likelihoods' (XLA computes it once).
        logistic = Logistic(xb)
        return jnp.mean(logistic.softplus), logistic.sigmoid

    def expert_solve(self, x, targets, beta0, cache, scores):
        value, probabilities = (None, None) if scores.expert_start is None else scores.expert_start
        return soft_logistic_regression(
            x, targets, beta0, scores=scores.xb, xt=cache.xt, value=value, probabilities=probabilities
        )

    def signed_expert_predictive(self, signed_xb):
        r"""Classes {0, 1} with $P(y=1\mid x, z) = \mathrm{sigmoid}((2z-1)\,x\cdot\beta)$."""
        return bernoulli_pair(signed_xb)

    def sample_labels(self, key, xb, z):
        sign = 2 * z.astype(xb.dtype) - 1
        return jax.random.bernoulli(key, jax.nn.sigmoid(sign * xb)).astype(xb.dtype)

    def expert_smoothness(self):
        return 0.25
