r"""Symmetric two-expert models: the model contract in closed form (docs/math.md §1-§5).

A symmetric model fixes the gate, $P(z=1\mid x) = \mathrm{sigmoid}(x\cdot w)$, and the swap
expert(z=0) = -expert(z=1). What varies is the expert family, described entirely through the scalar
$x\cdot\beta$: its log-likelihoods, the log-partition of its complete-data statistic (the expert
part of the mirror map), the posterior statistic, and how to solve the expert half of an M-step.
The complete-data natural parameter is linear in θ, so every method of
:class:`~emjax.models.AbstractModel` has a closed form, written here once for both families:
with $\Delta_n = \ell_{n1} - \ell_{n0}$ the posterior log-odds of z=1, the responsibilities are
$r_n = \mathrm{sigmoid}(\Delta_n)$, the mirror map is $A = \mathrm{mean}_n[\mathrm{softplus}(x_n\cdot w) +
A^e(x_n\cdot\beta)]$, $\nabla L = \nabla A - \bar s$ (Fisher), and the information matrices are
weighted Gram matrices. Nothing is exponentiated before it is normalised, so $|x\cdot w|$ and
$|x\cdot\beta|$ of order $10^3$ give exact 0/1 responsibilities and a finite loss.
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.linalg import solve_triangular

from .._dtypes import working_dtype
from .._linalg import add_jitter
from .._logistic import Logistic
from .._newton import soft_logistic_regression
from .._validation import check_params as check_symmetric_params
from ._model import AbstractModel, keep_frozen
from ._params import SymParams


def softplus_bregman(a: Array, a_ref: Array) -> Array:
    """softplus(a) - softplus(a_ref) - sigmoid(a_ref)(a - a_ref) = KL_bern(sigmoid(a_ref) || sigmoid(a))."""
    value = jax.nn.softplus(a) - jax.nn.softplus(a_ref) - jax.nn.sigmoid(a_ref) * (a - a_ref)
    return jnp.maximum(value, 0)


def _mean_times_x(x: Array, coefficients: Array) -> Array:
    return x.T @ coefficients / x.shape[0]


def _weighted_gram(x: Array, weights: Array) -> Array:
    return (x * weights[:, None]).T @ x / x.shape[0]


class SymmetricCache(eqx.Module):
    """What every M-step of a symmetric model shares within one fit (:meth:`AbstractModel.precompute`).

    Attributes:
        xt: x.T laid out feature-major, (d, n): every product over the samples contracts over the
            contiguous axis.
        expert: whatever the expert's solve reuses (SymMoLinE: the Cholesky factor of $X^\top X$).
    """

    xt: Array
    expert: Any = None


class SymmetricScores(NamedTuple):
    """The projections an E-step computed, for the M-step that follows it."""

    xw: Array
    xb: Array
    gate_softplus: Array | None = None  # mean softplus(x.w): the gate solve's objective at its start
    gate_sigmoid: Array | None = None  # sigmoid(x.w): the gate solve's first gradient and Hessian
    expert_start: Any = None  # what the expert's solve reuses at its start (:meth:`expert_warm_start`)


class _Posterior(NamedTuple):
    xw: Array
    xb: Array
    gate: Logistic  # of x.w
    posterior: Logistic  # of the posterior log-odds


class AbstractSymmetricModel(AbstractModel):
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
    def expert_posterior_statistic(self, posterior: Logistic, y: Array) -> Array:
        """Posterior-expected expert statistic in theta-space; ``posterior.z`` is the log-odds of z=1."""

    @abc.abstractmethod
    def missing_coefficient(self, y: Array) -> Array:
        """``c`` with ``I_miss = mean r(1-r) [x; c x][x; c x]^T`` (docs/math.md §5.1)."""

    @abc.abstractmethod
    def expert_solve(self, x: Array, targets: Array, beta0: Array, cache: SymmetricCache, scores) -> Array:
        """Solve ``mean expert_mean(x.beta) x = mean targets x`` for beta (warm start beta0; ``scores``,
        a :class:`SymmetricScores` whose fields may be None, holds what the E-step computed at beta0:
        ``xb = x.beta0`` and :meth:`expert_warm_start`)."""

    def expert_warm_start(self, xb: Array):
        """What the E-step hands the expert's solve besides ``xb`` (default: nothing)."""
        return None

    def expert_precompute(self, x: Array, xt: Array):
        """The expert's part of :meth:`precompute` (default: nothing)."""
        return None

    def signed_expert_predictive(self, signed_xb: Array):
        r"""The experts' law of y given their scores: ``signed_xb`` is (n, 2), column 0 $-x\cdot\beta$ (z=0),
        column 1 $+x\cdot\beta$ (z=1); an :class:`~emjax.models.AbstractPredictive` of leaves (n, 2)
        (default: ``NotImplementedError``, for families that do not predict)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not define signed_expert_predictive(signed_xb), which the predict_* "
            "functions need"
        )

    @abc.abstractmethod
    def sample_labels(self, key: Array, xb: Array, z: Array) -> Array:
        """Draw y given ``xb`` and the latent labels z."""

    @abc.abstractmethod
    def expert_smoothness(self) -> float | Array:
        """Upper bound on ``expert_curvature`` (used for safe gradient step sizes, docs/math.md §7)."""

    # ------------------------------------------------------------------ the contract, in closed form

    def placeholder(self, d: int, dtype=None) -> SymParams:
        return SymParams(w=jnp.zeros(d, dtype), beta=jnp.zeros(d, dtype))

    def flatten(self, params: SymParams) -> Array:
        """``concat(w, beta)``, shape (2d,)."""
        return jnp.concatenate([jnp.ravel(params.w), jnp.ravel(params.beta)])

    def unflatten(self, vector: Array, like: SymParams) -> SymParams:
        d = like.w.shape[0]
        vector = jnp.asarray(vector, like.w.dtype)
        return SymParams(w=vector[:d], beta=vector[d:])

    def free_mask(self, params: SymParams, trainable=None) -> SymParams:
        """One scalar bool per block (``trainable.w``, ``trainable.beta``): a block is solved or frozen whole."""

        def block(mask):
            return jnp.asarray(True) if mask is None else jnp.asarray(mask, bool)

        if trainable is None:
            return SymParams(w=block(None), beta=block(None))
        return SymParams(w=block(trainable.w), beta=block(trainable.beta))

    def projections(self, params: SymParams, x: Array, cache: SymmetricCache | None = None) -> tuple[Array, Array]:
        """Gate and expert scores ``(x.w, x.beta)``, one pass over x (its feature-major copy, if cached)."""
        scores = jnp.stack([params.w, params.beta]) @ (x.T if cache is None else cache.xt)
        return scores[0], scores[1]

    def posterior_logit(self, xw: Array, xb: Array, y: Array) -> Array:
        r"""$\Delta = \log P(z=1\mid x,y) - \log P(z=0\mid x,y) = x\cdot w + (l_1 - l_0)$."""
        return xw + self.expert_log_ratio(xb, y)

    def _posterior(self, params: SymParams, x: Array, y: Array, cache: SymmetricCache | None = None):
        """The E-step's pieces from one pass over x: scores, the gate's and the posterior's logistics."""
        xw, xb = self.projections(params, x, cache)
        return _Posterior(xw, xb, Logistic(xw), Logistic(self.posterior_logit(xw, xb, y)))

    def log_joint(self, params: SymParams, x: Array, y: Array) -> Array:
        xw, xb = self.projections(params, x)
        l1, l0 = self.expert_log_likelihoods(xb, y)
        return jnp.stack([jax.nn.log_sigmoid(-xw) + l0, jax.nn.log_sigmoid(xw) + l1], axis=1)

    def _log_likelihoods(self, post: _Posterior, y: Array) -> Array:
        r"""$\log p(y\mid x) = \mathrm{logaddexp}(a, b)$, $a = l_1 - \mathrm{softplus}(-x\cdot w)$,
        $b = l_0 - \mathrm{softplus}(x\cdot w)$, written as $\max(a, b) + \mathrm{softplus}(-|a - b|)$
        with $a - b = \Delta$, the posterior log-odds: the E-step has the exponentials of Δ and x·w
        already, so the loss costs it two log1p (finite even at $x\cdot w = \pm\infty$)."""
        l1, l0 = self.expert_log_likelihoods(post.xb, y)
        upper = jnp.where(post.posterior.z >= 0, l1 - post.gate.softplus_negative, l0 - post.gate.softplus)
        return upper + post.posterior.softplus_negative_abs

    def gate_log_probs(self, params: SymParams, x: Array) -> Array:
        r"""Column 0 $\log\mathrm{sigmoid}(-x\cdot w)$ (z=0, expert $-\beta$), column 1
        $\log\mathrm{sigmoid}(x\cdot w)$ (z=1, expert $+\beta$), as in :meth:`log_joint`."""
        xw = x @ params.w
        return jnp.stack([jax.nn.log_sigmoid(-xw), jax.nn.log_sigmoid(xw)], axis=1)

    def expert_predictive(self, params: SymParams, x: Array):
        r""":meth:`signed_expert_predictive` of $(-x\cdot\beta, x\cdot\beta)$: the swap expert(z=0) = -expert(z=1)."""
        xb = x @ params.beta
        return self.signed_expert_predictive(jnp.stack([-xb, xb], axis=1))

    def e_step(self, params: SymParams, x: Array, y: Array) -> tuple[Array, Array]:
        r"""Column 1 is $r = \mathrm{sigmoid}(\Delta)$, column 0 $\mathrm{sigmoid}(-\Delta)$ (both tails exact)."""
        post = self._posterior(params, x, y)
        responsibilities = jnp.stack([post.posterior.sigmoid_negative, post.posterior.sigmoid], axis=1)
        return responsibilities, self._log_likelihoods(post, y)

    def loss(self, params: SymParams, x: Array, y: Array) -> Array:
        return -jnp.mean(self._log_likelihoods(self._posterior(params, x, y), y))

    def loss_gradient(self, params: SymParams, x: Array, y: Array) -> SymParams:
        r"""$\nabla A - \bar s$ in one pass: the prior and posterior statistics share the scores."""
        post = self._posterior(params, x, y)
        return SymParams(
            w=_mean_times_x(x, post.gate.sigmoid - post.posterior.sigmoid),
            beta=_mean_times_x(x, self.expert_mean(post.xb) - self.expert_posterior_statistic(post.posterior, y)),
        )

    def posterior_targets(self, params: SymParams, x: Array, y: Array):
        r"""Per sample $(r, E[\text{expert statistic}\mid x, y])$; scores $(x\cdot w, x\cdot\beta)$."""
        _, targets, scores = self.expectation(params, x, y)
        return targets, scores

    def expectation(self, params: SymParams, x: Array, y: Array, cache: SymmetricCache | None = None):
        """Loss and targets from one pass over x and two exponentials per sample (:mod:`emjax._logistic`)."""
        post = self._posterior(params, x, y, cache)
        loss = -jnp.mean(self._log_likelihoods(post, y))
        targets = (post.posterior.sigmoid, self.expert_posterior_statistic(post.posterior, y))
        scores = SymmetricScores(
            post.xw, post.xb, jnp.mean(post.gate.softplus), post.gate.sigmoid, self.expert_warm_start(post.xb)
        )
        return loss, targets, scores

    def prior_targets(self, params: SymParams, x: Array, scores):
        xw, xb = self.projections(params, x) if scores is None else scores[:2]
        return jax.nn.sigmoid(xw), self.expert_mean(xb)

    def precompute(self, x: Array, y: Array | None = None) -> SymmetricCache:
        """x feature-major and the expert's invariants (:class:`SymmetricCache`)."""
        xt = x.T
        return SymmetricCache(xt=xt, expert=self.expert_precompute(x, xt))

    def solve(self, params: SymParams, x: Array, targets, free, scores=None, cache=None) -> SymParams:
        """Gate: soft-label logistic regression (damped Newton, warm-started); expert: ``expert_solve``."""
        cache = self.precompute(x) if cache is None else cache
        gate_targets, expert_targets = targets
        scores = SymmetricScores(*scores) if scores is not None else SymmetricScores(None, None)
        new = SymParams(
            w=soft_logistic_regression(
                x,
                gate_targets,
                params.w,
                scores=scores.xw,
                xt=cache.xt,
                value=scores.gate_softplus,
                probabilities=scores.gate_sigmoid,
            ),
            beta=self.expert_solve(x, expert_targets, params.beta, cache, scores),
        )
        return keep_frozen(free, new, params)

    def surrogate_anchor(self, params: SymParams, x: Array, y: Array) -> SymParams:
        r"""$\bar s(\theta_t)$: the surrogate is $Q(u\mid\theta_t) = A(u) - \langle\bar s(\theta_t), u\rangle$
        plus a constant."""
        return self.posterior_statistics(params, x, y)

    def surrogate(self, u: SymParams, x: Array, y: Array, anchor: SymParams) -> Array:
        return self.mirror_map(u, x) - jnp.vdot(anchor.w, u.w) - jnp.vdot(anchor.beta, u.beta)

    def surrogate_gradient(self, u: SymParams, x: Array, y: Array, anchor: SymParams, free) -> SymParams:
        mirror = self.mirror_map_grad(u, x)
        grads = SymParams(w=mirror.w - anchor.w, beta=mirror.beta - anchor.beta)
        return jax.tree_util.tree_map(lambda g, f: jnp.where(f, g, 0), grads, free)

    def mirror_map(self, params: SymParams, x: Array) -> Array:
        xw, xb = self.projections(params, x)
        return jnp.mean(jax.nn.softplus(xw) + self.expert_log_partition(xb))

    def mirror_map_grad(self, params: SymParams, x: Array) -> SymParams:
        xw, xb = self.projections(params, x)
        return SymParams(w=_mean_times_x(x, jax.nn.sigmoid(xw)), beta=_mean_times_x(x, self.expert_mean(xb)))

    def posterior_statistics(self, params: SymParams, x: Array, y: Array) -> SymParams:
        (gate_targets, expert_targets), _ = self.posterior_targets(params, x, y)
        return SymParams(w=_mean_times_x(x, gate_targets), beta=_mean_times_x(x, expert_targets))

    def bregman_divergence(self, params: SymParams, ref: SymParams, x: Array) -> Array:
        """Sample by sample (Bernoulli and expert KLs), each term clipped at 0 against round-off."""
        xw, xb = self.projections(params, x)
        xw_ref, xb_ref = self.projections(ref, x)
        return jnp.mean(softplus_bregman(xw, xw_ref) + self.expert_bregman(xb, xb_ref))

    def complete_information(self, params: SymParams, x: Array, y: Array | None = None) -> Array:
        r"""$\nabla^2 A = \mathrm{blockdiag}(\mathrm{mean}\,p(1-p)xx^\top,
        \mathrm{mean}\,A^{e\prime\prime}(x\cdot\beta)xx^\top)$; it does not depend on y."""
        xw, xb = self.projections(params, x)
        p = jax.nn.sigmoid(xw)
        gate = _weighted_gram(x, p * (1 - p))
        expert = _weighted_gram(x, self.expert_curvature(xb))
        zeros = jnp.zeros_like(gate)
        return jnp.block([[gate, zeros], [zeros, expert]])

    def missing_information(self, params: SymParams, x: Array, y: Array) -> Array:
        r"""$\mathrm{mean}\,r(1-r)\,[x; c x][x; c x]^\top$ with c from :meth:`missing_coefficient`."""
        posterior = self._posterior(params, x, y).posterior
        v = posterior.sigmoid * posterior.sigmoid_negative
        stacked = jnp.concatenate([x, self.missing_coefficient(y)[:, None] * x], axis=1)
        return _weighted_gram(stacked, v)

    def information_inverse_root(self, complete: Array, missing: Array) -> Array:
        r"""$L^{-\top}$ from the Cholesky factor of $\nabla^2 A$ plus a round-off jitter.

        The jitter lets the factor exist even where every probability saturates (|x.w| ~ 1e3 makes
        p(1-p) underflow to 0); it scales with both matrices, so M stays finite (at most ~1/eps) and
        is unchanged to working precision whenever $\nabla^2 A$ is well conditioned. Smooth in θ, so
        ``jax.grad(em_rate)`` is defined even where eigenvalues of $\nabla^2 A$ repeat."""
        # A few ulps per row beyond solve_psd's shift: the Cholesky factor of a rank-deficient Gram
        # matrix needs room for the round-off of its own products.
        factor = jnp.linalg.cholesky(add_jitter(complete, 4 * (jnp.trace(complete) + jnp.trace(missing))))
        return solve_triangular(factor, jnp.eye(factor.shape[0], dtype=factor.dtype), lower=True).T

    def sample(self, params: SymParams, key: Array, n: int):
        dtype = working_dtype(params)
        key_x, key_z, key_y = jax.random.split(key, 3)
        x = jax.random.normal(key_x, (n, params.w.shape[0]), dtype)
        xw = x @ params.w.astype(dtype)
        xb = x @ params.beta.astype(dtype)
        z = jax.random.bernoulli(key_z, jax.nn.sigmoid(xw))
        return x, self.sample_labels(key_y, xb, z)

    def init_params(self, key: Array, x: Array, y: Array) -> SymParams:
        """A unit-norm random β and a small random w."""
        d = x.shape[1]
        key_w, key_b = jax.random.split(key)
        w = 0.1 * jax.random.normal(key_w, (d,), x.dtype) / jnp.sqrt(d)
        direction = jax.random.normal(key_b, (d,), x.dtype)
        return SymParams(w=w, beta=direction / jnp.linalg.norm(direction))

    def random_params(self, key: Array, d: int, gate_norm, expert_norm, sigma, dtype) -> SymParams:
        """``w`` and ``β`` along uniform random directions, of norms ``gate_norm`` and ``expert_norm``."""
        key_w, key_b = jax.random.split(key)

        def direction(key):
            v = jax.random.normal(key, (d,), dtype)
            return v / jnp.linalg.norm(v)

        return SymParams(
            w=jnp.asarray(gate_norm, dtype) * direction(key_w), beta=jnp.asarray(expert_norm, dtype) * direction(key_b)
        )

    def curvature_bound(self, dtype) -> Array:
        r"""$\max(1/4, \text{expert smoothness})$: each diagonal block of $\nabla^2 A$ is below it
        times $X^\top X/n$."""
        return jnp.maximum(0.25, jnp.asarray(self.expert_smoothness(), dtype))

    def check_params(self, params, d: int, name: str = "params") -> None:
        if not isinstance(params, SymParams):
            raise ValueError(f"{name} must be an emjax.SymParams(w=..., beta=...); got {type(params).__name__}")
        check_symmetric_params(params, d, name)

    def check_labels(self, y) -> None:
        """Raise ``ValueError`` for labels this model cannot have (default: any finite value)."""
