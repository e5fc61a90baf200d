"""The regressor: Gaussian or Poisson experts behind scikit-learn's ``fit`` / ``predict`` / ``score``."""

from __future__ import annotations

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.utils.validation import check_is_fitted

from .._dtypes import default_float
from .._predict import predict_mean, predict_quantiles, predict_variance
from .._validation import check_values
from ..models import MixtureOfExperts, MoLinE, MoPoE, PoissonExpert
from ._base import FLOAT_DTYPES, MixtureOfExpertsBase, validate_data

FAMILIES = ("gaussian", "poisson")


def _negative(values):
    return values < 0


class NonNegativePoissonExpert(PoissonExpert):
    r"""Poisson experts that also take non-integer responses $y \ge 0$ (rates, averages of counts).

    The fit then maximises the Poisson quasi-likelihood $\sum_n y_n\eta - e^{\eta}$ (what
    scikit-learn's ``PoissonRegressor`` minimises as the Poisson deviance); ``log_base`` keeps
    $-\log\Gamma(y+1)$, which cancels from the responsibilities and the M-steps. For integer responses
    the estimator uses :class:`emjax.MoPoE` itself.
    """

    def check_labels(self, y):
        check_values(y, _negative, "y must be >= 0 for Poisson experts")


class MixtureOfExpertsRegressor(RegressorMixin, MixtureOfExpertsBase):
    r"""A mixture of linear-Gaussian or Poisson experts fitted by EM, as a scikit-learn regressor.

    With $\tilde x = [x, 1]$ (``fit_intercept=True``; $\tilde x = x$ otherwise) and K = ``n_experts``:

    $$p(y\mid x) = \sum_{k=1}^K \pi_k(x)\,p_k(y\mid x),\qquad \pi_k(x) = \mathrm{softmax}_k(\tilde x\cdot W_k),$$

    $p_k = N(\tilde x\cdot\beta_k, \sigma_k^2)$ (``family="gaussian"``, :class:`emjax.MoLinE`) or
    $\mathrm{Poisson}(e^{\tilde x\cdot\beta_k})$ (``family="poisson"``, :class:`emjax.MoPoE`; non-integer
    $y \ge 0$ are fitted by the Poisson quasi-likelihood). ``fit`` runs EM from ``n_init`` data-driven
    starts (:func:`emjax.fit_restarts` with ``jax.random.key(random_state)``) and keeps the run with the
    highest log-likelihood. ``predict`` is the predictive mean $E[y\mid x] = \sum_k\pi_k(x)\mu_k(x)$;
    ``score`` is $R^2$ (:class:`sklearn.base.RegressorMixin`). ``n_experts=1`` is one GLM: ordinary least
    squares for Gaussian experts.

    Computes in float64 when ``jax_enable_x64`` is on, float32 otherwise (the estimator never changes
    JAX's configuration).

    Args:
        n_experts: K >= 1, the number of experts.
        family: ``"gaussian"`` (linear-Gaussian experts) or ``"poisson"`` (log-linear Poisson experts;
            y >= 0).
        n_init: number of EM runs from different starts (restarts); the best is kept.
        max_iter: EM steps per run at most (>= 0; 0 keeps the best start).
        tol: relative tolerance of emjax's stopping rule (the estimated distance to the fixed point,
            :func:`emjax.fit`), or None to run exactly ``max_iter`` steps (``converged_`` is then False).
        ridge: λ >= 0, an L2 penalty $\tfrac\lambda2(\|W\|^2 + \|B\|^2)$ on the mean negative
            log-likelihood (σ excluded); keeps an expert that loses its data bounded.
        solver: ``"em"``, or EM accelerated by ``"squarem"`` or ``"anderson"`` (:func:`emjax.squarem`,
            :func:`emjax.anderson`; then ``n_iter_`` counts extrapolation cycles).
        fit_intercept: append a column of ones to X (an intercept in the gate and in every expert).
        random_state: an int (the seed of ``jax.random.key``), a ``numpy.random.RandomState``, or None
            (a seed drawn from NumPy's global generator, scikit-learn's convention).

    Attributes:
        model_: the emjax model (:class:`emjax.MoLinE` or :class:`emjax.MoPoE`).
        params_: the fitted :class:`emjax.MoEParams` (NumPy arrays): ``gate`` (K, d), ``experts`` (K, d),
            ``sigma`` (K,) for Gaussian experts; d = n_features + 1 with ``fit_intercept`` (intercept last).
        result_: the :class:`emjax.FitResult` of the best run (NumPy arrays): loss trace, status, the
            final loss of every restart.
        lower_bound_: the best run's final mean log-likelihood $-L(\hat\theta)$ (scikit-learn's
            ``GaussianMixture`` convention).
        n_iter_: EM steps the best run applied.
        converged_: True when the best run met ``tol``.
        n_features_in_: number of features seen in ``fit``.
        feature_names_in_: the feature names, when X was a DataFrame with string column names.

    Example:
        >>> import jax, numpy as np, emjax
        >>> from emjax.sklearn import MixtureOfExpertsRegressor
        >>> model = emjax.MoLinE(2)
        >>> truth = emjax.testing.random_params(model, jax.random.key(0), d=2, expert_norm=3.0, sigma=0.3)
        >>> x, y = emjax.sample(model, truth, jax.random.key(1), 200)
        >>> X, y = np.asarray(x), np.asarray(y)
        >>> est = MixtureOfExpertsRegressor(n_experts=2, n_init=2, max_iter=50, random_state=0).fit(X, y)
        >>> est.predict(X[:3]).shape, est.gate_proba(X[:3]).shape, est.params_.experts.shape
        ((3,), (3, 2), (2, 3))
        >>> est.converged_, bool(est.score(X, y) > 0.5)  # R² of the predictive mean
        (True, True)
    """

    def __init__(
        self,
        n_experts=2,
        family="gaussian",
        *,
        n_init=5,
        max_iter=200,
        tol=1e-6,
        ridge=0.0,
        solver="em",
        fit_intercept=True,
        random_state=None,
    ):
        self.n_experts = n_experts
        self.family = family
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.ridge = ridge
        self.solver = solver
        self.fit_intercept = fit_intercept
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.positive_only = self.family == "poisson"
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"requires_positive_y": self.family == "poisson"}

    def fit(self, X, y, sample_weight=None):
        r"""Fit the mixture by EM from ``n_init`` starts and keep the best run.

        Args:
            X: features, shape (n_samples, n_features), n_samples >= 2; an array, list or DataFrame.
            y: responses, shape (n_samples,) (>= 0 for ``family="poisson"``).
            sample_weight: optional observation weights >= 0, shape (n_samples,): EM maximises
                $\sum_n v_n \log p(y_n\mid x_n)$ (integer weights: row n repeated $v_n$ times;
                :func:`emjax.fit` ``weights=``). ``lower_bound_`` is then the weighted mean log-likelihood.

        Returns:
            self.

        Raises:
            ValueError: for invalid hyper-parameters or data (NaN, infinity, mismatched lengths, negative y
                for Poisson experts).
        """
        settings = self._check_hyperparameters()
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}; got {self.family!r}")
        X, y = validate_data(self, X, y, dtype=FLOAT_DTYPES, y_numeric=True, ensure_min_samples=2)
        dtype = default_float()
        x, y = self._design(X, dtype), np.asarray(y, dtype)
        k, ridge = settings["n_experts"], settings["ridge"]
        if self.family == "gaussian":
            model = MoLinE(k, ridge=ridge)
        elif np.any(y < 0):
            raise ValueError('family="poisson" needs responses y >= 0 (counts or rates); got negative values in y')
        elif np.all(y == np.round(y)):
            model = MoPoE(k, ridge=ridge)
        else:
            model = MixtureOfExperts(NonNegativePoissonExpert(), k, ridge=ridge)
        return self._fit_model(model, x, y, settings, sample_weight)

    def _validated_xy(self, X, y):
        check_is_fitted(self)
        X, y = validate_data(self, X, y, reset=False, dtype=FLOAT_DTYPES, y_numeric=True)
        dtype = self.params_.gate.dtype
        return self._design(X, dtype), np.asarray(y, dtype)

    def predict(self, X) -> np.ndarray:
        r"""The predictive mean $E[y\mid x] = \sum_k\pi_k(x)\,\mu_k(x)$, shape (n_samples,)
        (:func:`emjax.predict_mean`)."""
        return self._per_row(predict_mean, self._validate_features(X))

    def predict_variance(self, X) -> np.ndarray:
        r"""The predictive variance $\sum_k\pi_k\sigma_k^2 + \sum_k\pi_k(\mu_k - \bar\mu)^2$ of y given x, shape
        (n_samples,) (:func:`emjax.predict_variance`; Poisson experts: $\sigma_k^2 = \mu_k$)."""
        return self._per_row(predict_variance, self._validate_features(X))

    def predict_quantiles(self, X, q) -> np.ndarray:
        r"""Quantiles of y given x under the mixture, the smallest $t$ with $\sum_k\pi_k(x)F_k(t\mid x) \ge q$
        (:func:`emjax.predict_quantiles`).

        Args:
            X: features, shape (n_samples, n_features).
            q: one probability or a 1-D sequence of them, each strictly between 0 and 1.

        Returns:
            Shape (n_samples, len(q)) for a sequence q, (n_samples,) for a scalar.
        """
        return self._per_row(predict_quantiles, self._validate_features(X), None, q)
