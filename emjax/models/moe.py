r"""K-expert mixtures with a softmax gate (docs/math.md §1-§4): parameters and models.

$P(z=k\mid x) = \mathrm{softmax}_k(x\cdot W_k)$ with $W$ of shape (K, d), and expert k is any
:class:`~emjax.models.experts.AbstractExpertFamily` with parameters ``experts[k]`` (and
``sigma[k]`` for families with a scale).

**Over-parameterisation.** Adding one vector to every row of W leaves the model unchanged, so
emjax pins row 0 of the gate: it is never updated (it is 0 when parameters come from
:func:`emjax.init_params`; any fixed value gives the same model). Softmax-classifier experts pin
class column 0 of each $B_k$ the same way. Pinned entries are excluded from the flattened
parameter vector, the information matrices, standard errors and parameter counts.

**Intercepts.** Append a column of ones to x: column j of the gate and of the experts is then the
intercept of the gate logits and of each expert.

**Flattened order** (every gradient, information matrix, MIM and Jacobian over K-expert
parameters): the free gate rows ``gate[1:]`` row by row, then ``experts`` expert by expert
(row-major, pinned class column left out), then ``sigma`` when the family has a scale.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from .._dtypes import working_dtype
from .._minimize import METHODS, masked_minimize
from .._validation import check_finite, check_real, check_values, not_positive, shape_of
from . import _moe_solve
from ._kmeans import cluster, standardise
from ._model import AbstractModel, normalise, row_mean, weigh_rows
from ._params import MoEParams, flatten_unpinned, free_from_pinned, unflatten_unpinned
from .experts import VARIANCE_FLOOR, AbstractExpertFamily, GaussianExpert, PoissonExpert, SoftmaxExpert

_SOFTEN = 0.5  # initial responsibilities: half on the assigned expert, half spread evenly
SEPARATION_LOG_PROB = -1e-3


class MoECache(eqx.Module):
    """What every E- and M-step of a K-expert fit shares (:meth:`MixtureOfExperts.precompute`)."""

    xt: Array  # x.T, (d, n): feature-major, so every product over samples contracts a contiguous axis


def _projected_family(family) -> bool:
    """True for the built-in families whose log-density reads x only through ``x @ coef`` (reshaped
    to (d, S)): the E-step then takes the gate logits and every expert's projections from one product."""
    kind = type(family)
    if kind.log_prob is GaussianExpert.log_prob or kind.log_prob is SoftmaxExpert.log_prob:
        return True
    return kind.log_prob is AbstractExpertFamily.log_prob and kind.natural is PoissonExpert.natural


class MixtureOfExperts(AbstractModel):
    r"""A softmax-gated mixture of ``num_experts`` experts of one family (see the module docstring).

    Args:
        expert: the expert family (e.g. ``GaussianExpert()``).
        num_experts: K >= 1. With K = 1 the gate has no free parameter (its one row is pinned,
            $\pi_1 = 1$) and EM is the plain fit of one GLM (least squares with σ² = RSS/n for
            linear experts, the Poisson or multinomial GLM otherwise), reached in one step; it
            is the baseline of a comparison across K by :func:`emjax.bic`.
        ridge: λ >= 0; the model's objective becomes $L + \tfrac{\lambda}{2}(\|W\|^2 + \|B\|^2)$ over
            the free gate and expert entries (σ excluded). Every solver minimises it: the EM and
            mirror-descent M-steps, gradient EM's surrogate steps, gradient descent and optax
            solvers (EM for a penalised likelihood is still monotone, in the penalised objective).
            :func:`emjax.neg_log_likelihood` and fit traces report L itself. Default 0: the exact
            EM of the likelihood. A small ridge keeps the parameters of an expert that has lost
            all its data, or whose data are separable, bounded.
        m_step_method: the inner solver of the gate and of iterative expert M-steps: ``"newton"``
            (dense, damped), ``"lbfgs"``, or ``"auto"`` (default: Newton for sub-problems of at most
            256 entries, L-BFGS above; see :mod:`emjax._minimize`). Closed-form M-steps (linear
            experts) ignore it.
        m_step_max_steps: bound on inner steps per sub-problem (default 50 Newton / 100 L-BFGS
            steps). With a small bound an L-BFGS M-step is a generalized EM step: it decreases
            the surrogate without minimising it, so L still never increases.
    """

    supports_weights = True

    expert: AbstractExpertFamily
    num_experts: int = eqx.field(static=True)
    ridge: float = eqx.field(static=True, default=0.0)
    m_step_method: str = eqx.field(static=True, default="auto")
    m_step_max_steps: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not isinstance(self.num_experts, int) or isinstance(self.num_experts, bool) or self.num_experts < 1:
            raise ValueError(f"num_experts must be a Python int >= 1; got {self.num_experts!r}")
        ridge_is_number = isinstance(self.ridge, (int, float)) and not isinstance(self.ridge, bool)
        if not (ridge_is_number and np.isfinite(self.ridge) and self.ridge >= 0):
            raise ValueError(f"ridge must be a finite number >= 0; got {self.ridge!r}")
        if self.m_step_method not in METHODS:
            raise ValueError(f"m_step_method must be one of {METHODS}; got {self.m_step_method!r}")
        steps = self.m_step_max_steps
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
            raise ValueError(f"m_step_max_steps must be None or a Python int >= 1; got {steps!r}")

    def describe(self) -> str:
        """``MoLinE(K=3)``, ``MoLogE(K=2, C=4)``: the class, K and, for classifier experts, the classes."""
        classes = getattr(self.expert, "num_classes", None)
        inside = f"K={self.num_experts}" + ("" if classes is None else f", C={classes}")
        return f"{type(self).__name__}({inside})"

    def minimize(self, objective, init, free):
        """The model's masked inner solver (see ``m_step_method``), as used by every M-step."""
        return masked_minimize(objective, init, free, self.m_step_method, self.m_step_max_steps)

    minimize._emjax_default = True  # subclasses that override it opt out of the linear-predictor fast path

    def pinned(self, d: int) -> MoEParams:
        """Boolean masks (numpy) of the entries fixed by convention: gate row 0, pinned expert entries."""
        gate = np.zeros((self.num_experts, d), bool)
        gate[0] = True
        experts = np.broadcast_to(self.expert.pinned(d), (self.num_experts,) + self.expert.coef_shape(d))
        sigma = np.zeros(self.num_experts, bool) if self.expert.has_scale else None
        return MoEParams(gate=gate, experts=np.array(experts), sigma=sigma)

    def to_unconstrained(self, params: MoEParams) -> MoEParams:
        """log σ in place of σ (families with a scale); the other blocks are already unconstrained."""
        if params.sigma is None:
            return params
        return MoEParams(gate=params.gate, experts=params.experts, sigma=jnp.log(params.sigma))

    def from_unconstrained(self, params: MoEParams) -> MoEParams:
        """σ = exp(log σ), kept at or above the M-step's variance floor."""
        if params.sigma is None:
            return params
        sigma = jnp.maximum(jnp.exp(params.sigma), jnp.sqrt(jnp.asarray(VARIANCE_FLOOR, params.sigma.dtype)))
        return MoEParams(gate=params.gate, experts=params.experts, sigma=sigma)

    def num_free_parameters(self, d: int) -> int:
        """Number of free (non-pinned) parameters."""
        pinned = self.pinned(d)
        leaves = [pinned.gate, pinned.experts] + ([pinned.sigma] if pinned.sigma is not None else [])
        return int(sum(np.sum(~leaf) for leaf in leaves))

    # ------------------------------------------------------------------ structure

    def placeholder(self, d: int, dtype=None) -> MoEParams:
        k = self.num_experts
        sigma = jnp.ones(k, dtype) if self.expert.has_scale else None
        return MoEParams(
            gate=jnp.zeros((k, d), dtype), experts=jnp.zeros((k,) + self.expert.coef_shape(d), dtype), sigma=sigma
        )

    def flatten(self, params: MoEParams) -> Array:
        """The free (non-pinned) entries in the documented order: gate rows 1.., experts, sigma."""
        return flatten_unpinned(params, self.pinned(params.dim))

    def unflatten(self, vector: Array, like: MoEParams) -> MoEParams:
        return unflatten_unpinned(vector, like, self.pinned(like.dim))

    def free_mask(self, params: MoEParams, trainable=None) -> MoEParams:
        return free_from_pinned(self.pinned(params.dim), trainable)

    # ------------------------------------------------------------------ likelihood

    def _per_expert(self, fn, params: MoEParams, *args):
        """``fn(coef_k, scale_k, *args)`` for every expert, stacked on a trailing K axis."""
        return jax.vmap(fn, in_axes=(0, 0) + (None,) * len(args), out_axes=-1)(params.experts, params.sigma, *args)

    def expert_log_probs(self, params: MoEParams, x: Array, y: Array) -> Array:
        r"""$\log p(y_n\mid x_n, z=k)$, shape (n, K)."""
        return self._per_expert(self.expert.log_prob, params, x, y)

    def gate_log_probs(self, params: MoEParams, x: Array) -> Array:
        r"""$\log\pi_k(x_n) = \log\mathrm{softmax}_k(x_n\cdot W_k)$, shape (n, K)."""
        return jax.nn.log_softmax(x @ params.gate.T, axis=-1)

    def log_joint(self, params: MoEParams, x: Array, y: Array) -> Array:
        return self.gate_log_probs(params, x) + self.expert_log_probs(params, x, y)

    def expert_predictive(self, params: MoEParams, x: Array):
        """The family's :meth:`~emjax.models.AbstractExpertFamily.predictive` of every expert, stacked on axis 1."""
        return jax.vmap(self.expert.predictive, in_axes=(0, 0, None), out_axes=1)(params.experts, params.sigma, x)

    def penalty(self, params: MoEParams, free: MoEParams):
        r"""$\tfrac{\lambda}{2}(\|W_F\|^2 + \|B_F\|^2)$ over the free gate and expert entries (σ excluded);
        None (not even a zero term) when the ridge is 0."""
        if not self.ridge:
            return None
        return (
            0.5
            * self.ridge
            * (
                jnp.sum(jnp.square(jnp.where(free.gate, params.gate, 0)))
                + jnp.sum(jnp.square(jnp.where(free.experts, params.experts, 0)))
            )
        )

    # ------------------------------------------------------------------ statistics and M-step

    def posterior_targets(self, params: MoEParams, x: Array, y: Array, weights: Array | None = None):
        r"""Weights $\gamma_{nk}$ (n, K) and expert statistics $\gamma_{nk}T(y_n)$ (n, S, K), times $w_n$ when
        weighted; scores: the gate logits."""
        _, targets, logits = self.expectation(params, x, y, weights=weights)
        return targets, logits

    def _logits_and_expert_log_probs(self, params: MoEParams, x: Array, y: Array, cache):
        """Gate logits and expert log-densities, (n, K) each; one product over x for the built-in families."""
        if not _projected_family(self.expert):
            logits = x @ params.gate.T if cache is None else (params.gate @ cache.xt).T
            return logits, self.expert_log_probs(params, x, y)
        k, d = params.gate.shape
        shape = self.expert.coef_shape(d)
        width = int(np.prod(shape[1:], dtype=int))
        rows = jnp.concatenate(
            [params.gate, params.experts.reshape(k, d, width).transpose(0, 2, 1).reshape(k * width, d)]
        )
        projections = x @ rows.T if cache is None else (rows @ cache.xt).T  # (n, K + K * width)
        logits = projections[:, :k]
        per_expert = projections[:, k:].reshape(x.shape[0], k, width)
        # The family's own log_prob on the projections: x @ coef becomes projection @ identity (exact).
        identity = jnp.eye(width, dtype=x.dtype) if len(shape) > 1 else jnp.ones((1,), x.dtype)
        scales = params.sigma if params.sigma is not None else jnp.zeros(k, x.dtype)

        def log_prob(projection, scale):
            return self.expert.log_prob(identity, None if params.sigma is None else scale, projection, y)

        return logits, jax.vmap(log_prob, in_axes=(1, 0), out_axes=-1)(per_expert, scales)

    def expectation(
        self, params: MoEParams, x: Array, y: Array, cache: MoECache | None = None, weights: Array | None = None
    ):
        """The loss and the posterior targets from one set of joint log-densities.

        The gate's logsumexp and softmax (its prior) share one exponential, the posterior's
        normaliser and responsibilities another (:func:`~emjax.models._moe_solve.log_softmax_parts`);
        the scores hand the gate's to the M-step (:class:`~emjax.models._moe_solve.GateScores`)."""
        logits, expert = self._logits_and_expert_log_probs(params, x, y, cache)
        gate_normaliser, prior = _moe_solve.log_softmax_parts(logits)
        log_likelihoods, gamma = _moe_solve.log_softmax_parts((logits - gate_normaliser[:, None]) + expert)
        stats = self.expert.statistic(y)[:, :, None] * gamma[:, None, :]
        targets = weigh_rows((gamma, stats), weights)
        return -row_mean(log_likelihoods, weights), targets, _moe_solve.GateScores(logits, gate_normaliser, prior)

    def prior_targets(self, params: MoEParams, x: Array, scores, weights: Array | None = None):
        r"""Weights $\pi_k(x_n)$ and statistics $\pi_k(x_n)\,E_k[T\mid x_n]$."""
        scores = _moe_solve.as_gate_scores(scores)
        if scores is not None and scores.probabilities is not None:
            prior = scores.probabilities
        else:
            logits = x @ params.gate.T if scores is None else scores.logits
            prior = jnp.exp(jax.nn.log_softmax(logits, axis=-1))
        stats = self._per_expert(self.expert.mean_statistic, params, x) * prior[:, None, :]
        return weigh_rows((prior, stats), weights)

    def precompute(self, x: Array, y: Array | None = None) -> MoECache:
        """x feature-major (:class:`MoECache`), computed once per fit."""
        return MoECache(xt=x.T)

    def solve(self, params: MoEParams, x: Array, targets, free: MoEParams, scores=None, cache=None) -> MoEParams:
        weights, stats = targets
        xt = None if cache is None else cache.xt
        return _moe_solve.solve_targets(self, params, x, weights, stats, free, scores, xt)

    # ------------------------------------------------------------------ mirror map

    def mirror_map(self, params: MoEParams, x: Array, weights: Array | None = None) -> Array:
        r"""$A(\theta) = \mathrm{mean}_n\,\mathrm{logsumexp}_k\,x_n\cdot W_k$ (docs/math.md §4.5)."""
        return row_mean(jax.nn.logsumexp(x @ params.gate.T, axis=-1), weights)

    def bregman_divergence(self, params: MoEParams, ref: MoEParams, x: Array, weights: Array | None = None) -> Array:
        r"""$\mathrm{mean}_n \mathrm{KL}(p_{ref}(y,z\mid x_n)\,\|\,p_\theta(y,z\mid x_n))$ =
        $\mathrm{KL}(\pi'\|\pi) + \sum_k \pi'_k \mathrm{KL}_k$, each expert KL the Bregman divergence of its
        log-partition in natural coordinates."""
        log_gate = jax.nn.log_softmax(x @ params.gate.T, axis=-1)
        log_gate_ref = jax.nn.log_softmax(x @ ref.gate.T, axis=-1)
        gate_ref = jnp.exp(log_gate_ref)
        gate_kl = jnp.sum(gate_ref * (log_gate_ref - log_gate), axis=-1)
        family = self.expert

        def expert_kl(coef, scale, coef_ref, scale_ref):
            natural, natural_ref = family.natural(coef, scale, x), family.natural(coef_ref, scale_ref, x)
            mean_ref = family.mean_statistic(coef_ref, scale_ref, x)
            return (
                family.log_partition(natural)
                - family.log_partition(natural_ref)
                - jnp.sum(mean_ref * (natural - natural_ref), axis=-1)
            )

        kls = jax.vmap(expert_kl, out_axes=-1)(params.experts, params.sigma, ref.experts, ref.sigma)
        per_sample = jnp.maximum(gate_kl, 0) + jnp.sum(gate_ref * jnp.maximum(kls, 0), axis=-1)
        return row_mean(per_sample, weights)

    # ------------------------------------------------------------------ sampling, starts, diagnostics

    def sample(self, params: MoEParams, key: Array, n: int):
        dtype = working_dtype(params)
        params = jax.tree_util.tree_map(lambda leaf: leaf.astype(dtype), params)
        key_x, key_z, key_y = jax.random.split(key, 3)
        x = jax.random.normal(key_x, (n, params.dim), dtype)
        z = jax.random.categorical(key_z, x @ params.gate.T, axis=-1)
        keys = jax.random.split(key_y, self.num_experts)
        draws = jax.vmap(self.expert.sample, in_axes=(0, 0, 0, None), out_axes=-1)(
            params.experts, params.sigma, keys, x
        )
        return x, jnp.take_along_axis(draws, z[:, None], axis=-1)[:, 0]

    def init_params(self, key: Array, x: Array, y: Array, weights: Array | None = None) -> MoEParams:
        r"""Cluster the rows of the standardised $[x, T(y)]$ into K groups (k-means++ and three Lloyd
        steps), give each sample responsibility 1/2 on its group plus 1/(2K) on every expert, and
        take one M-step from zero (σ from the spread of y). With observation ``weights`` every step
        weighs the rows (:mod:`emjax.models._kmeans`): a row of weight 0 changes nothing."""
        k = self.num_experts
        statistic = self.expert.statistic(y)
        points = jnp.concatenate([standardise(x, weights), standardise(statistic, weights)], axis=1)
        labels = cluster(key, points, k, weights)
        soft = weigh_rows((1 - _SOFTEN) * jax.nn.one_hot(labels, k, dtype=x.dtype) + _SOFTEN / k, weights)
        stats = statistic[:, :, None] * soft[:, None, :]
        scale = self.expert.initial_scale(y, weights)
        start = MoEParams(
            gate=jnp.zeros((k, x.shape[1]), x.dtype),
            experts=jnp.zeros((k,) + self.expert.coef_shape(x.shape[1]), x.dtype),
            sigma=None if scale is None else jnp.full((k,), scale, x.dtype),
        )
        return self.solve(start, x, (soft, stats), self.free_mask(start))

    def random_params(self, key: Array, d: int, gate_norm, expert_norm, sigma, dtype) -> MoEParams:
        """Gate rows 1..K-1 and every free expert column along uniform random directions of norms
        ``gate_norm`` and ``expert_norm``; gate row 0 and pinned class columns 0; σ_k = ``sigma``."""
        k = self.num_experts
        key_gate, key_expert = jax.random.split(key)

        def directions(key, shape):  # unit vectors along the feature axis (axis 1)
            v = jax.random.normal(key, shape, dtype)
            return v / jnp.linalg.norm(v, axis=1, keepdims=True)

        gate = (jnp.asarray(gate_norm, dtype) * directions(key_gate, (k, d))).at[0].set(0)
        experts = jnp.asarray(expert_norm, dtype) * directions(key_expert, (k,) + self.expert.coef_shape(d))
        experts = jnp.where(jnp.asarray(self.pinned(d).experts), 0, experts)
        scale = jnp.full((k,), sigma, dtype) if self.expert.has_scale else None
        return MoEParams(gate=gate, experts=experts, sigma=scale)

    def snr_expert_norm(self, snr, noise):
        """SNR = ‖β‖/σ with σ the noise of the drawn truth, for experts with a scale."""
        return snr * noise if self.expert.has_scale else snr

    def is_degenerate(
        self, params: MoEParams, x: Array, y: Array, weights: Array | None = None, free: MoEParams | None = None
    ) -> Array:
        """True when some expert has under one sample of responsibility mass, its weighted design is
        numerically singular, its σ has hit the variance floor, or (families without a scale) it
        predicts its own responsibility-weighted data almost perfectly, mean log-probability above
        -1e-3: the data it owns are separable, its M-step has no finite answer and its coefficients
        grow without bound. With a ridge every M-step has a unique bounded answer, so only the mass
        (and σ floor) tests apply; that also skips the O(n K d^2) weighted Gram matrices on wide data."""
        expert = self.expert_log_probs(params, x, y)
        gamma, _ = normalise(jax.nn.log_softmax(x @ params.gate.T, axis=-1) + expert)
        gamma = weigh_rows(gamma, weights)  # masses in rows' worth (weights of mean 1)
        mass = jnp.sum(gamma, axis=0)
        if self.ridge:
            flags = mass < 1
            if params.sigma is not None:
                flags = flags | (jnp.square(params.sigma) <= 2 * VARIANCE_FLOOR)
            return jnp.any(flags)
        grams = jnp.einsum("nk,ni,nj->kij", gamma, x, x)
        if free is not None:
            # Only the columns an expert estimates make its design (covariates frozen at 0, an offset at 1,
            # may repeat another direction): the frozen ones become a well-scaled identity block.
            k, d = params.gate.shape
            columns = jnp.any(jnp.broadcast_to(free.experts, params.experts.shape).reshape(k, d, -1), axis=-1)
            both = columns[:, :, None] & columns[:, None, :]
            scale = jnp.max(jnp.diagonal(grams, axis1=1, axis2=2), axis=-1)
            frozen = (~columns * scale[:, None]).astype(x.dtype)  # (K, d)
            grams = jnp.where(both, grams, 0) + jnp.eye(d, dtype=x.dtype)[None] * frozen[:, None, :]
        eigenvalues = jnp.linalg.eigvalsh(grams)
        singular = eigenvalues[:, 0] <= 100 * x.shape[1] * jnp.finfo(x.dtype).eps * eigenvalues[:, -1]
        flags = (mass < 1) | singular
        if params.sigma is not None:
            flags = flags | (jnp.square(params.sigma) <= 2 * VARIANCE_FLOOR)
        else:
            fit = jnp.sum(gamma * expert, axis=0) / jnp.maximum(mass, 1)
            flags = flags | (fit > SEPARATION_LOG_PROB)
        return jnp.any(flags)

    # ------------------------------------------------------------------ checks

    def check_params(self, params, d: int, name: str = "params") -> None:
        """An :class:`MoEParams` of shapes (K, d), (K, d[, C]), (K,) with finite values and σ > 0."""
        if not isinstance(params, MoEParams):
            raise ValueError(
                f"{name} must be an emjax.MoEParams(gate=..., experts=..., sigma=...) for "
                f"{type(self).__name__}; got {type(params).__name__}"
            )
        k = self.num_experts
        expected = {
            "gate": (k, d),
            "experts": (k,) + self.expert.coef_shape(d),
            "sigma": (k,) if self.expert.has_scale else None,
        }
        for field, shape in expected.items():
            value = getattr(params, field)
            if shape is None:
                if value is not None:
                    raise ValueError(f"{name}.{field} must be None for {type(self).__name__}; got an array")
                continue
            if value is None:
                raise ValueError(f"{name}.{field} must have shape {shape} for {type(self).__name__}; got None")
            if shape_of(value, f"{name}.{field}") != shape:
                raise ValueError(
                    f"{name}.{field} must have shape {shape} (K={k}, d={d} from x) for {type(self).__name__}; "
                    f"got shape {shape_of(value, f'{name}.{field}')}"
                )
            check_real(value, f"{name}.{field}")
            check_finite(value, f"{name}.{field}")
        if params.sigma is not None:
            check_values(params.sigma, not_positive, f"{name}.sigma must be positive")

    def check_labels(self, y) -> None:
        self.expert.check_labels(y)


def _check_classes(num_classes) -> int:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be a Python int >= 2; got {num_classes!r}")
    return num_classes


class MoLinE(MixtureOfExperts):
    r"""Mixture of K linear-Gaussian experts, $y\mid x, z=k \sim N(x\cdot\beta_k, \sigma_k^2)$.

    Parameters: ``MoEParams(gate=(K, d), experts=(K, d), sigma=(K,))``. The M-step is weighted least
    squares with σ_k² = weighted residual variance, floored at 1e-8.

    Example:
        >>> import jax, emjax
        >>> model = emjax.MoLinE(3)
        >>> truth = emjax.testing.random_params(model, jax.random.key(0), d=2)
        >>> x, y = emjax.sample(model, truth, jax.random.key(1), 100)
        >>> truth.experts.shape, truth.sigma.shape
        ((3, 2), (3,))
    """

    def __init__(
        self, num_experts: int, ridge: float = 0.0, m_step_method: str = "auto", m_step_max_steps: int | None = None
    ):
        self.expert = GaussianExpert()
        self.num_experts = num_experts
        self.ridge = ridge
        self.m_step_method = m_step_method
        self.m_step_max_steps = m_step_max_steps


class MoLogE(MixtureOfExperts):
    r"""Mixture of K softmax-classifier experts, $P(y=c\mid x, z=k) = \mathrm{softmax}_c(x B_k)$.

    Parameters: ``MoEParams(gate=(K, d), experts=(K, d, C))`` with column 0 of each $B_k$ pinned.
    Labels are integers in {0, ..., C-1}. The M-step is a weighted multinomial regression, solved by
    Newton while $d\cdot C \le 256$ and by L-BFGS above (``m_step_method``, ``m_step_max_steps``).
    """

    def __init__(
        self,
        num_experts: int,
        num_classes: int = 2,
        ridge: float = 0.0,
        m_step_method: str = "auto",
        m_step_max_steps: int | None = None,
    ):
        self.expert = SoftmaxExpert(num_classes=_check_classes(num_classes))
        self.num_experts = num_experts
        self.ridge = ridge
        self.m_step_method = m_step_method
        self.m_step_max_steps = m_step_max_steps


class MoPoE(MixtureOfExperts):
    r"""Mixture of K Poisson regression experts, $y\mid x, z=k \sim \mathrm{Poisson}(\exp(x\cdot\beta_k))$.

    Parameters: ``MoEParams(gate=(K, d), experts=(K, d))``. Built only from the generic expert
    interface (:class:`~emjax.models.experts.PoissonExpert`).
    """

    def __init__(
        self, num_experts: int, ridge: float = 0.0, m_step_method: str = "auto", m_step_max_steps: int | None = None
    ):
        self.expert = PoissonExpert()
        self.num_experts = num_experts
        self.ridge = ridge
        self.m_step_method = m_step_method
        self.m_step_max_steps = m_step_max_steps
