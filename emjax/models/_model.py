r"""The one contract every emjax model implements (docs/math.md §1-§5).

A model is a latent-label mixture whose complete-data law $p(y, z\mid x;\theta)$ has C components.
Every public function of emjax (responsibilities, losses and gradients, the EM, mirror-descent,
gradient-EM and gradient-descent steps, the mirror map and its Bregman divergence, the information
matrices and the MIM, standard errors and information criteria) is written once against this
class. A model supplies:

* **Structure**: :meth:`~AbstractModel.placeholder`, :meth:`~AbstractModel.flatten` /
  :meth:`~AbstractModel.unflatten` (the flattened order of every gradient, information matrix and
  Jacobian) and :meth:`~AbstractModel.free_mask` (entries that may change: not pinned, trainable).
* **Likelihood**: :meth:`~AbstractModel.log_joint`, the per-component joint log-density
  $\ell_{nc} = \log p(y_n, z=c\mid x_n;\theta)$ (gate plus expert). Responsibilities, the loss
  $L = -\mathrm{mean}_n\,\mathrm{logsumexp}_c\,\ell_{nc}$ and its gradient default to it.
* **Expected statistics and the M-step**: :meth:`~AbstractModel.posterior_targets` and
  :meth:`~AbstractModel.prior_targets` (the complete-data statistics expected under the posterior
  and under the prior, per sample), and :meth:`~AbstractModel.solve`, the M-step that fits the
  parameters to any such targets. EM fits the posterior targets; mirror descent with step η fits
  the blend ``prior + η (posterior - prior)``; both are written once (:mod:`emjax._steps`).
* **Mirror map**: :meth:`~AbstractModel.mirror_map` $A(\theta)$; its gradient and Bregman
  divergence default to autodiff and to the Bregman formula.
* **Sampling and starts**: :meth:`~AbstractModel.sample`, :meth:`~AbstractModel.init_params`.
* **Prediction** (optional): :meth:`~AbstractModel.gate_log_probs`, the gate's prior
  $\log P(z=c\mid x)$, and :meth:`~AbstractModel.expert_predictive`, each component's law of y given
  x (:mod:`emjax.models._predictive`); :func:`emjax.predict_mean` and the other predictions of the
  mixture are written once against them (:mod:`emjax._predict`).

* **Observation weights** (optional): a model whose methods honour their ``weights`` argument
  (every mean over rows through :func:`row_mean`, targets through :func:`weigh_rows`) sets
  ``supports_weights = True``; the public functions' ``weights=`` then wrap it in
  :class:`~emjax.models._weighted.Weighted`. Models without it are called without weights, as before.

Generic defaults come from autodiff; closed forms are overrides on the model class (the
symmetric models override almost everything, the K-expert models the M-step and the KL form of
the Bregman divergence). Methods take arrays already cast to one working dtype and run no
argument checks: those happen once, at the public entry points.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array


def keep_frozen(free, new, old):
    """``new`` where ``free``, else ``old`` (bit-identical), leaf by leaf."""
    return jax.tree_util.tree_map(jnp.where, free, new, old)


def row_mean(values: Array, weights: Array | None = None) -> Array:
    r"""$\mathrm{mean}_n v_n$, or with observation weights (normalised to mean 1) $\mathrm{mean}_n w_n v_n$.

    Every average over rows in the contract goes through here, so a frequency weight w is the same
    as w copies of the row (docs/guides/after_fit.md, "Observation weights")."""
    if weights is None:
        return jnp.mean(values, axis=0)
    return jnp.mean(weights.reshape((-1,) + (1,) * (jnp.ndim(values) - 1)) * values, axis=0)


def weigh_rows(tree, weights: Array | None):
    r"""Every leaf of ``tree`` (leading axis: rows) times its row's weight; ``tree`` itself when unweighted.

    The M-step minimises $\mathrm{mean}_n[a_n A(\phi_n) - \langle\phi_n, t_n\rangle]$, linear in the
    targets $(a_n, t_n)$, so scaling them by $w_n$ (mean 1) makes it the weighted M-step."""
    if weights is None:
        return tree
    return jax.tree_util.tree_map(lambda leaf: weights.reshape((-1,) + (1,) * (leaf.ndim - 1)) * leaf, tree)


def call_weighted(method, *args, weights=None):
    """``method(*args)`` without weights, ``method(*args, weights)`` with them: a model written before
    weights existed (no ``weights`` argument) keeps working wherever no weights are given."""
    return method(*args) if weights is None else method(*args, weights)


def normalise(log_joint: Array) -> tuple[Array, Array]:
    """Responsibilities (n, C) and per-sample log-likelihoods (n,) from joint log-densities (n, C)."""
    total = jax.nn.logsumexp(log_joint, axis=-1)
    return jnp.exp(log_joint - total[:, None]), total


class AbstractModel(eqx.Module):
    """A mixture of experts whose complete-data law is an exponential family (module docstring)."""

    # True when every method below that averages over rows honours its ``weights`` argument (observation
    # weights of mean 1, :func:`row_mean`); the public functions' ``weights=`` needs it.
    supports_weights = False

    # ------------------------------------------------------------------------------ structure

    @abc.abstractmethod
    def placeholder(self, d: int, dtype=None):
        """Parameters of the right shapes for d features (zeros; unit scales), in ``dtype``."""

    @abc.abstractmethod
    def flatten(self, params) -> Array:
        """The free (non-pinned) entries of ``params`` as one vector, in the model's documented order."""

    @abc.abstractmethod
    def unflatten(self, vector: Array, like):
        """Inverse of :meth:`flatten`; pinned entries are taken from ``like``."""

    @abc.abstractmethod
    def free_mask(self, params, trainable=None):
        """Booleans with the structure of ``params`` (each leaf broadcastable to the parameter's shape):
        True where an entry may change (not pinned, trainable)."""

    def to_unconstrained(self, params):
        """Coordinates in which any real value is valid (default: the parameters themselves).

        Extrapolating solvers (:func:`emjax.squarem`, :func:`emjax.anderson`) combine iterates in
        these coordinates, so constraints such as σ > 0 hold at every extrapolated point."""
        return params

    def from_unconstrained(self, params):
        """Inverse of :meth:`to_unconstrained` (default: the identity)."""
        return params

    def flat_free_mask(self, params, trainable=None) -> Array:
        """:meth:`free_mask` flattened like the parameters (True where the flat entry may change)."""
        free = jax.tree_util.tree_map(
            lambda f, p: jnp.broadcast_to(f, jnp.shape(p)).astype(jnp.float32),
            self.free_mask(params, trainable),
            params,
        )
        return self.flatten(free) > 0

    # ------------------------------------------------------------------------------ likelihood

    @abc.abstractmethod
    def log_joint(self, params, x: Array, y: Array) -> Array:
        r"""$\ell_{nc} = \log P(z=c\mid x_n) + \log p(y_n\mid x_n, z=c)$, shape (n, C)."""

    def e_step(self, params, x: Array, y: Array) -> tuple[Array, Array]:
        """Responsibilities (n, C) and per-sample log-likelihoods (n,), in log space throughout."""
        return normalise(self.log_joint(params, x, y))

    def loss(self, params, x: Array, y: Array, weights: Array | None = None) -> Array:
        r"""$L(\theta) = -\mathrm{mean}_n \log p(y_n\mid x_n;\theta)$ (weighted: $-\mathrm{mean}_n w_n\log p$)."""
        return -row_mean(jax.nn.logsumexp(self.log_joint(params, x, y), axis=-1), weights)

    def loss_gradient(self, params, x: Array, y: Array):
        r"""$\nabla L(\theta)$ over every entry, shaped like ``params`` (default: autodiff)."""
        return jax.grad(self.loss)(params, x, y)

    def penalty(self, params, free):
        """A penalty the model adds to L in every solver (e.g. a ridge); None when it has none."""
        return None

    def objective_gradient(self, params, x: Array, y: Array, free):
        r"""$\nabla (L + \text{penalty})$, zero where ``free`` is False: what gradient descent follows."""
        grads = self.loss_gradient(params, x, y)
        if self.penalty(params, free) is not None:
            penalty_grads = jax.grad(lambda p: self.penalty(p, free))(params)
            grads = jax.tree_util.tree_map(jnp.add, grads, penalty_grads)
        return jax.tree_util.tree_map(lambda g, f: jnp.where(f, g, 0), grads, free)

    # ------------------------------------------------------------------------------ statistics, M-step

    @abc.abstractmethod
    def posterior_targets(self, params, x: Array, y: Array, weights: Array | None = None):
        """``(targets, scores)``: the per-sample complete-data statistics expected under the posterior
        of z (times each row's weight, :func:`weigh_rows`, when ``weights`` are given), and the
        projections of x the E-step computed (reused by :meth:`prior_targets` and :meth:`solve` so
        that neither reads x again)."""

    @abc.abstractmethod
    def prior_targets(self, params, x: Array, scores, weights: Array | None = None):
        """The same statistics expected under the model's own law of (y, z) given x (weighted alike)."""

    @abc.abstractmethod
    def solve(self, params, x: Array, targets, free, scores=None, cache=None):
        r"""The M-step for ``targets``: the θ whose expected statistics match them, $\nabla A(\theta) =
        \mathrm{mean}_n J_n^\top t_n$, warm-started at ``params``; entries not ``free`` are returned
        unchanged. ``scores`` is what :meth:`posterior_targets` returned with the targets, ``cache``
        what :meth:`precompute` returned for this x (both optional: they only save work)."""

    # ------------------------------------------------------------------------------ the lean step

    def precompute(self, x: Array, y: Array):
        """What every M-step on this data can share, computed once per fit (default: nothing).

        :func:`emjax.fit` calls it once, outside its loop, and hands the result to every
        :meth:`expectation` and :meth:`solve`; a model returns any pytree of arrays (SymMoLinE: x in
        the feature-major layout and the Cholesky factor of $X^\top X$). A model's answers must not
        depend on whether the cache is given; only the work does."""
        return None

    def expectation(self, params, x: Array, y: Array, cache=None, weights: Array | None = None):
        r"""The E-step and the loss together: ``(L(θ), targets, scores)``, the loss at ``params`` and
        what :meth:`posterior_targets` returns.

        An EM iteration needs both, and :func:`emjax.fit` records the loss of every iterate; the
        default reads x twice (:meth:`loss` and :meth:`posterior_targets`), a model that has both from
        one pass overrides it (the symmetric models: $\log p = \max(a, b) +
        \mathrm{softplus}(-|a - b|)$ with $a - b$ the posterior log-odds the E-step computes anyway).
        The loss must equal :meth:`loss` to round-off."""
        targets, scores = call_weighted(self.posterior_targets, params, x, y, weights=weights)
        return call_weighted(self.loss, params, x, y, weights=weights), targets, scores

    def surrogate_anchor(self, params, x: Array, y: Array):
        r"""What the EM surrogate $Q(\cdot\mid\theta_t)$ keeps from $\theta_t$ (default: the responsibilities)."""
        return self.e_step(params, x, y)[0]

    def surrogate(self, u, x: Array, y: Array, anchor, weights: Array | None = None) -> Array:
        r"""$Q(u\mid\theta_t) = -\mathrm{mean}_n\sum_c \gamma_{nc}\,\ell_{nc}(u)$, γ the anchor's responsibilities."""
        return -row_mean(jnp.sum(anchor * self.log_joint(u, x, y), axis=-1), weights)

    def surrogate_gradient(self, u, x: Array, y: Array, anchor, free):
        r"""$\nabla_u (Q(u\mid\theta_t) + \text{penalty})$, zero where ``free`` is False (default: autodiff)."""

        def objective(p):
            value = self.surrogate(p, x, y, anchor)
            penalty = self.penalty(p, free)
            return value if penalty is None else value + penalty

        grads = jax.grad(objective)(u)
        return jax.tree_util.tree_map(lambda g, f: jnp.where(f, g, 0), grads, free)

    # ------------------------------------------------------------------------------ mirror map

    @abc.abstractmethod
    def mirror_map(self, params, x: Array, weights: Array | None = None) -> Array:
        r"""$A(\theta) = \mathrm{mean}_n A_{x_n}(\theta)$, the expected complete-data log-partition."""

    def mirror_map_grad(self, params, x: Array):
        r"""$\nabla A(\theta)$, shaped like ``params`` (default: autodiff)."""
        return jax.grad(self.mirror_map)(params, x)

    def posterior_statistics(self, params, x: Array, y: Array):
        r"""$\bar s(\theta) = \nabla A(\theta) - \nabla L(\theta)$ (Fisher's identity), shaped like ``params``."""
        return jax.tree_util.tree_map(jnp.subtract, self.mirror_map_grad(params, x), self.loss_gradient(params, x, y))

    def bregman_divergence(self, params, ref, x: Array, weights: Array | None = None) -> Array:
        r"""$D_A(\theta, \theta') = A(\theta) - A(\theta') - \langle\nabla A(\theta'), \theta - \theta'\rangle$."""

        def mirror(p):
            return call_weighted(self.mirror_map, p, x, weights=weights)

        # unweighted: the model's own gradient, a closed form where it has one
        gradient = self.mirror_map_grad(ref, x) if weights is None else jax.grad(mirror)(ref)
        inner = sum(
            jnp.vdot(g, p - r)
            for g, p, r in zip(
                jax.tree_util.tree_leaves(gradient),
                jax.tree_util.tree_leaves(params),
                jax.tree_util.tree_leaves(ref),
                strict=True,
            )
        )
        return jnp.maximum(mirror(params) - mirror(ref) - inner, 0)

    # ------------------------------------------------------------------------------ information

    def _as_flat(self, fn, params):
        return lambda vector: fn(self.unflatten(vector, params))

    def complete_information(self, params, x: Array, y: Array, weights: Array | None = None) -> Array:
        r"""$I_c = -\nabla^2_u Q(u\mid\theta)|_{u=\theta}$ over the flattened free parameters (default: autodiff)."""
        anchor = jax.lax.stop_gradient(self.surrogate_anchor(params, x, y))
        objective = self._as_flat(lambda p: call_weighted(self.surrogate, p, x, y, anchor, weights=weights), params)
        return jax.hessian(objective)(self.flatten(params))

    def missing_information(self, params, x: Array, y: Array, weights: Array | None = None) -> Array:
        r"""$I_{miss} = \mathrm{mean}_n\mathrm{Cov}_{z\mid x_n,y_n}[\nabla\log p(y_n, z\mid x_n)]$ (Louis), PSD.

        Default: forward-mode scores of :meth:`log_joint`, P passes of cost O(nC) each, where reverse
        mode would hold n·C cotangents of size n."""
        vector = self.flatten(params)
        scores = jax.jacfwd(self._as_flat(lambda p: self.log_joint(p, x, y), params))(vector)  # (n, C, P)
        gamma = self.e_step(params, x, y)[0]
        centred = scores - jnp.einsum("nc,ncp->np", gamma, scores)[:, None, :]
        return jnp.einsum("nc,ncp,ncq->pq", weigh_rows(gamma, weights), centred, centred) / x.shape[0]

    def information_inverse_root(self, complete: Array, missing: Array) -> Array:
        r"""$R$ with $R R^\top = I_c^{-1}$, so $M = R R^\top I_{miss}$ and its eigenvalues are those of
        the symmetric $R^\top I_{miss} R$. Default: an eigendecomposition with eigenvalues floored at
        round-off level, finite where $I_c$ is singular or (away from a fixed point, for curved
        families) indefinite; at a fixed point it is the exact inverse root."""
        values, vectors = jnp.linalg.eigh((complete + complete.T) / 2)
        finfo = jnp.finfo(complete.dtype)
        floor = finfo.eps * (jnp.max(jnp.abs(values)) + jnp.trace(missing)) + finfo.tiny
        return vectors / jnp.sqrt(jnp.maximum(values, floor))[None, :]

    # ------------------------------------------------------------------------------ prediction

    def gate_log_probs(self, params, x: Array) -> Array:
        r"""The gate's prior $\log P(z=c\mid x_n)$, shape (n, C), columns ordered as :meth:`log_joint`'s.

        Needed by :func:`emjax.gate_probabilities` and the ``predict_*`` functions only; the default
        raises ``NotImplementedError``."""
        raise NotImplementedError(
            f"{type(self).__name__} does not define gate_log_probs(params, x), the gate's log P(z=c | x) of "
            "shape (n, C), which emjax.gate_probabilities and the predict_* functions need"
        )

    def expert_predictive(self, params, x: Array):
        r"""Each component's law of y given $x_n$ and $z=c$: an
        :class:`~emjax.models.AbstractPredictive` whose leaves have leading shape (n, C), columns
        ordered as :meth:`gate_log_probs`'.

        Needed by the ``predict_*`` functions only; the default raises ``NotImplementedError``."""
        raise NotImplementedError(
            f"{type(self).__name__} does not define expert_predictive(params, x), each component's law of y "
            "given x (an emjax.models.AbstractPredictive such as GaussianPredictive(loc, scale) with leaves "
            "of shape (n, C)), which the predict_* functions need"
        )

    # ------------------------------------------------------------------------------ sampling, starts, checks

    @abc.abstractmethod
    def sample(self, params, key: Array, n: int) -> tuple[Array, Array]:
        """Draw ``(x, y)``: x ~ N(0, I_d), then z from the gate, then y from expert z."""

    @abc.abstractmethod
    def init_params(self, key: Array, x: Array, y: Array):
        """A data-driven start for a fit; different keys give different starts. Models that take
        observation weights (``supports_weights``) take them here too, as ``init_params(key, x, y, weights)``
        (:class:`~emjax.models._weighted.Weighted` passes them on)."""

    @abc.abstractmethod
    def random_params(self, key: Array, d: int, gate_norm, expert_norm, sigma, dtype):
        """Random ground-truth parameters: gate and expert directions uniform, of the given norms
        (arguments checked by :func:`emjax.testing.random_params`)."""

    def snr_expert_norm(self, snr, noise):
        """The expert norm at a signal-to-noise ratio (docs/math.md §6): SNR itself unless the experts
        carry a noise scale."""
        return snr

    def is_degenerate(self, params, x: Array, y: Array, free=None) -> Array:
        """True when the fitted model has lost an expert (no finite M-step); default never. ``free``: the
        mask the fit ran with (:meth:`free_mask`; None: nothing frozen), so frozen entries do not count."""
        return jnp.asarray(False)

    def curvature_bound(self, dtype) -> Array | None:
        r"""$c$ with $\nabla^2 L \preceq c\,\mathrm{blockdiag}(X^\top X/n)$ for every θ, or None where none exists."""
        return None

    @abc.abstractmethod
    def check_params(self, params, d: int, name: str = "params") -> None:
        """Raise ``ValueError`` unless ``params`` has this model's parameter type and shapes for d features."""

    def describe(self) -> str:
        """A short readable name for printed output such as :func:`emjax.summary` (default: the class name)."""
        return type(self).__name__

    def check_labels(self, y) -> None:
        """Raise ``ValueError`` for labels this model cannot have (default: any finite value)."""
