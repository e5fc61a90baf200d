"""The interface a symmetric two-expert model implements.

A symmetric model fixes the gate, ``P(z=1|x) = sigmoid(x.w)``, and the swap ``expert(z=0) =
-expert(z=1)``. What varies is the expert family, described entirely through the scalar
``xb = x . beta``: its log-likelihoods, the log-partition of its complete-data statistic (the
expert part of the mirror map), the posterior statistic, and how to solve the expert half of an
M-step. Every public function in emjax (E-step, losses, mirror map, M-steps, information
matrices) is written once against this interface.
"""

from __future__ import annotations

import abc

import equinox as eqx
from jax import Array


class AbstractSymmetricModel(eqx.Module):
    """A symmetric two-expert mixture whose complete-data law is an exponential family.

    Per sample, with ``xb = x . beta``, the expert part of the complete-data log-partition is
    ``expert_log_partition(xb)``; its derivatives in ``xb`` are ``expert_mean`` and
    ``expert_curvature``. In theta-space the expert natural parameter is ``c_scale * x.beta``
    where the statistic is scaled accordingly, so ``grad_beta A = mean expert_mean(xb) x``.
    """

    @abc.abstractmethod
    def expert_log_likelihoods(self, xb: Array, y: Array) -> tuple[Array, Array]:
        """Per-sample ``(log p(y|x,z=1), log p(y|x,z=0))``."""

    @abc.abstractmethod
    def expert_log_ratio(self, xb: Array, y: Array) -> Array:
        """``log p(y|x,z=1) - log p(y|x,z=0)``, written without cancellation."""

    @abc.abstractmethod
    def expert_log_partition(self, xb: Array) -> Array:
        """Expert part of ``A_x``: its mean over samples is the expert part of the mirror map."""

    @abc.abstractmethod
    def expert_mean(self, xb: Array) -> Array:
        """Derivative of ``expert_log_partition`` in ``xb`` (the prior-expected statistic)."""

    @abc.abstractmethod
    def expert_curvature(self, xb: Array) -> Array:
        """Second derivative of ``expert_log_partition`` in ``xb``."""

    @abc.abstractmethod
    def expert_bregman(self, xb: Array, xb_ref: Array) -> Array:
        """Per-sample Bregman divergence of ``expert_log_partition`` (a KL, argument order as A's)."""

    @abc.abstractmethod
    def expert_posterior_statistic(self, logit: Array, y: Array) -> Array:
        """Posterior-expected expert statistic in theta-space given ``logit = log-odds of z=1``."""

    @abc.abstractmethod
    def missing_coefficient(self, y: Array) -> Array:
        """``c`` with ``I_miss = mean r(1-r) [x; c x][x; c x]^T`` (MATH.md §5.1)."""

    @abc.abstractmethod
    def expert_solve(self, x: Array, targets: Array, beta0: Array) -> Array:
        """Solve ``mean expert_mean(x.beta) x = mean targets x`` for beta (warm start beta0)."""

    @abc.abstractmethod
    def sample_labels(self, key: Array, xb: Array, z: Array) -> Array:
        """Draw y given ``xb`` and the latent labels z."""

    @abc.abstractmethod
    def expert_smoothness(self) -> float | Array:
        """Upper bound on ``expert_curvature`` (used for safe gradient step sizes, MATH.md §7)."""

    def check_labels(self, y) -> None:
        """Raise ``ValueError`` for labels this model cannot have (default: any finite value)."""
