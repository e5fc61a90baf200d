r"""Observation weights: a model whose every average over rows is weighted.

With weights $v_n \ge 0$ the objective is the weighted negative log-likelihood

$$L_v(\theta) = -\frac{\sum_n v_n \log p(y_n\mid x_n;\theta)}{\sum_n v_n}
            = -\mathrm{mean}_n\, w_n \log p(y_n\mid x_n;\theta), \qquad w_n = \frac{n\,v_n}{\sum_m v_m},$$

so with integer frequency weights it is exactly the loss of the data set in which row n appears
$v_n$ times. Everything else follows from the same substitution $\mathrm{mean}_n \to
\mathrm{mean}_n w_n$: the E-step's targets are scaled by $w_n$ (the M-step minimises a mean that is
linear in them), the mirror map and the information matrices are weighted means, and the sample
size of standard errors and of BIC is $\sum_n v_n$ (:func:`emjax.bic`). For
frequency weights these are the expanded data's numbers exactly; for survey or importance weights
that do not count observations, rescale them so that they sum to the number of independent
observations (e.g. $n$) before reading standard errors or BIC.

:class:`Weighted` is how the public functions apply ``weights=``: they wrap the model once at the
boundary, and every loop, step and matrix written against the model contract runs unchanged.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from .._dtypes import as_arrays
from ._model import AbstractModel


class Weighted(AbstractModel):
    """``model`` with observation weights (module docstring); built by :func:`with_weights`.

    ``weights`` are normalised to mean 1 over the n rows. Every method that averages over rows passes
    the weights on to ``model``; the others are ``model``'s own, and any other attribute (``num_experts``,
    ``expert``, ...) is read from ``model``."""

    model: AbstractModel
    weights: Array

    supports_weights = True

    def __getattr__(self, name):
        if name.startswith("__") or name in ("model", "weights"):
            raise AttributeError(name)
        return getattr(self.model, name)

    # ------------------------------------------------------------------ what averages over rows: weighted

    def loss(self, params, x, y, weights=None):
        return self.model.loss(params, x, y, self.weights)

    def expectation(self, params, x, y, cache=None, weights=None):
        return self.model.expectation(params, x, y, cache, self.weights)

    def posterior_targets(self, params, x, y, weights=None):
        return self.model.posterior_targets(params, x, y, self.weights)

    def prior_targets(self, params, x, scores, weights=None):
        return self.model.prior_targets(params, x, scores, self.weights)

    def surrogate(self, u, x, y, anchor, weights=None):
        return self.model.surrogate(u, x, y, anchor, self.weights)

    def mirror_map(self, params, x, weights=None):
        return self.model.mirror_map(params, x, self.weights)

    def bregman_divergence(self, params, ref, x, weights=None):
        return self.model.bregman_divergence(params, ref, x, self.weights)

    def complete_information(self, params, x, y, weights=None):
        return self.model.complete_information(params, x, y, self.weights)

    def missing_information(self, params, x, y, weights=None):
        return self.model.missing_information(params, x, y, self.weights)

    def is_degenerate(self, params, x, y, weights=None, free=None):
        return self.model.is_degenerate(params, x, y, self.weights, free=free)

    def curvature_bound(self, dtype):
        return None  # a bound on X^T X / n says nothing of the weighted X^T W X / n

    # ------------------------------------------------------------------ per row or structural: the model's own

    def placeholder(self, d, dtype=None):
        return self.model.placeholder(d, dtype)

    def flatten(self, params):
        return self.model.flatten(params)

    def unflatten(self, vector, like):
        return self.model.unflatten(vector, like)

    def free_mask(self, params, trainable=None):
        return self.model.free_mask(params, trainable)

    def to_unconstrained(self, params):
        return self.model.to_unconstrained(params)

    def from_unconstrained(self, params):
        return self.model.from_unconstrained(params)

    def log_joint(self, params, x, y):
        return self.model.log_joint(params, x, y)

    def e_step(self, params, x, y):
        return self.model.e_step(params, x, y)

    def penalty(self, params, free):
        return self.model.penalty(params, free)

    def solve(self, params, x, targets, free, scores=None, cache=None):
        return self.model.solve(params, x, targets, free, scores, cache)

    def precompute(self, x, y):
        return self.model.precompute(x, y)

    def surrogate_anchor(self, params, x, y):
        return self.model.surrogate_anchor(params, x, y)

    def information_inverse_root(self, complete, missing):
        return self.model.information_inverse_root(complete, missing)

    def gate_log_probs(self, params, x):
        return self.model.gate_log_probs(params, x)

    def expert_predictive(self, params, x):
        return self.model.expert_predictive(params, x)

    def sample(self, params, key, n):
        return self.model.sample(params, key, n)

    def init_params(self, key, x, y):
        return self.model.init_params(key, x, y, self.weights)

    def random_params(self, key, d, gate_norm, expert_norm, sigma, dtype):
        return self.model.random_params(key, d, gate_norm, expert_norm, sigma, dtype)

    def snr_expert_norm(self, snr, noise):
        return self.model.snr_expert_norm(snr, noise)

    def check_params(self, params, d, name="params"):
        return self.model.check_params(params, d, name)

    def check_labels(self, y):
        return self.model.check_labels(y)

    def describe(self):
        return self.model.describe()


def with_weights(model: AbstractModel, weights, dtype=None) -> AbstractModel:
    """``model`` itself without weights; else :class:`Weighted` with the weights (cast to ``dtype``, the
    working dtype of the data) normalised to mean 1.

    Arguments are checked at the public boundary (:func:`emjax._checks.validate`), so this runs
    inside compiled code on traced weights too."""
    if weights is None:
        return model
    weights = jnp.asarray(weights, dtype)
    return Weighted(model=model, weights=weights * (weights.shape[0] / jnp.sum(weights)))


def weighted_arrays(model: AbstractModel, weights, params, x, y=None):
    """``(model, params, x[, y])`` with the data cast to their working dtype (:func:`emjax._dtypes.as_arrays`)
    and the model carrying ``weights`` (:func:`with_weights`): the first line of every public function
    of weighted data."""
    arrays = as_arrays(params, x, y)
    return (with_weights(model, weights, arrays[1].dtype), *arrays)
