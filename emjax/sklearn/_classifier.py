"""The classifier: softmax experts behind scikit-learn's ``fit`` / ``predict`` / ``predict_proba`` / ``score``."""

from __future__ import annotations

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from .._dtypes import default_float
from .._predict import predict_proba
from ..models import MoLogE
from ._base import FLOAT_DTYPES, MixtureOfExpertsBase, validate_data


class MixtureOfExpertsClassifier(ClassifierMixin, MixtureOfExpertsBase):
    r"""A mixture of softmax-classifier experts fitted by EM, as a scikit-learn classifier.

    With $\tilde x = [x, 1]$ (``fit_intercept=True``; $\tilde x = x$ otherwise), K = ``n_experts`` and the
    C classes of ``classes_`` (any labels: numbers, strings, ...; C >= 2, from the training data):

    $$P(y=c\mid x) = \sum_{k=1}^K \pi_k(x)\,\mathrm{softmax}_c(\tilde x B_k),\qquad
      \pi_k(x) = \mathrm{softmax}_k(\tilde x\cdot W_k)$$

    (:class:`emjax.MoLogE` with ``num_classes`` C, label c the index of the class in ``classes_``).
    ``fit`` runs EM from ``n_init`` data-driven starts (:func:`emjax.fit_restarts` with
    ``jax.random.key(random_state)``) and keeps the run with the highest log-likelihood.
    ``predict_proba`` is $P(y=c\mid x)$ (:func:`emjax.predict_proba`), ``predict`` the class of largest
    probability, ``score`` the accuracy (:class:`sklearn.base.ClassifierMixin`). ``n_experts=1`` is
    multinomial logistic regression.

    An expert whose data it separates perfectly has no finite maximum-likelihood coefficients; the fit
    then warns (``ConvergenceWarning``, status ``degenerate``). A small ``ridge`` keeps them bounded.
    Computes in float64 when ``jax_enable_x64`` is on, float32 otherwise (the estimator never changes
    JAX's configuration).

    Args:
        n_experts: K >= 1, the number of experts.
        n_init: number of EM runs from different starts (restarts); the best is kept.
        max_iter: EM steps per run at most (>= 0; 0 keeps the best start).
        tol: relative tolerance of emjax's stopping rule (the estimated distance to the fixed point,
            :func:`emjax.fit`), or None to run exactly ``max_iter`` steps (``converged_`` is then False).
        ridge: λ >= 0, an L2 penalty $\tfrac\lambda2(\|W\|^2 + \|B\|^2)$ on the mean negative log-likelihood.
        solver: ``"em"``, or EM accelerated by ``"squarem"`` or ``"anderson"``.
        fit_intercept: append a column of ones to X (an intercept in the gate and in every expert).
        random_state: an int (the seed of ``jax.random.key``), a ``numpy.random.RandomState``, or None
            (a seed drawn from NumPy's global generator, scikit-learn's convention).

    Attributes:
        classes_: the class labels, sorted (``numpy.unique`` of the training labels).
        model_: the emjax model, ``MoLogE(n_experts, num_classes=len(classes_))``.
        params_: the fitted :class:`emjax.MoEParams` (NumPy arrays): ``gate`` (K, d), ``experts`` (K, d, C)
            with class column 0 pinned at 0; d = n_features + 1 with ``fit_intercept`` (intercept last).
        result_: the :class:`emjax.FitResult` of the best run (NumPy arrays).
        lower_bound_: the best run's final mean log-likelihood $-L(\hat\theta)$.
        n_iter_: EM steps the best run applied.
        converged_: True when the best run met ``tol``.
        n_features_in_: number of features seen in ``fit``.
        feature_names_in_: the feature names, when X was a DataFrame with string column names.

    Example:
        >>> import numpy as np
        >>> from emjax.sklearn import MixtureOfExpertsClassifier
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(200, 2))
        >>> y = np.where(X[:, 0] * X[:, 1] + 0.3 * rng.normal(size=200) > 0, "same", "opposite")  # XOR-like
        >>> est = MixtureOfExpertsClassifier(n_experts=2, n_init=2, max_iter=50, ridge=1e-3, random_state=0)
        >>> est = est.fit(X, y)
        >>> est.classes_.tolist(), est.predict_proba(X[:2]).shape
        (['opposite', 'same'], (2, 2))
        >>> bool(est.score(X, y) > 0.8)
        True
    """

    def __init__(
        self,
        n_experts=2,
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
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.ridge = ridge
        self.solver = solver
        self.fit_intercept = fit_intercept
        self.random_state = random_state

    def fit(self, X, y, sample_weight=None):
        """Fit the mixture by EM from ``n_init`` starts and keep the best run.

        Args:
            X: features, shape (n_samples, n_features), n_samples >= 2; an array, list or DataFrame.
            y: class labels, shape (n_samples,), of at least two classes.
            sample_weight: optional observation weights >= 0, as for the regressor's ``fit``.

        Returns:
            self.

        Raises:
            ValueError: for invalid hyper-parameters or data (NaN, infinity, mismatched lengths, continuous
                targets, a single class).
        """
        settings = self._check_hyperparameters()
        X, y = validate_data(self, X, y, dtype=FLOAT_DTYPES, ensure_min_samples=2)
        check_classification_targets(y)
        classes, encoded = np.unique(y, return_inverse=True)
        if classes.shape[0] < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes; got 1 class ({classes[0]!r})")
        self.classes_ = classes
        dtype = default_float()
        model = MoLogE(settings["n_experts"], num_classes=int(classes.shape[0]), ridge=settings["ridge"])
        return self._fit_model(model, self._design(X, dtype), encoded.astype(dtype), settings, sample_weight)

    def _validated_xy(self, X, y):
        check_is_fitted(self)
        X, y = validate_data(self, X, y, reset=False, dtype=FLOAT_DTYPES)
        known = np.isin(y, self.classes_)
        if not np.all(known):
            unseen = np.unique(np.asarray(y)[~known])
            raise ValueError(
                f"y holds labels not seen in fit: {unseen[:5].tolist()}; classes_ = {self.classes_.tolist()}"
            )
        dtype = self.params_.gate.dtype
        return self._design(X, dtype), np.searchsorted(self.classes_, y).astype(dtype)

    def predict_proba(self, X) -> np.ndarray:
        r"""Class probabilities $P(y=c\mid x) = \sum_k\pi_k(x)\,p_k(c\mid x)$, shape (n_samples, n_classes),
        columns in the order of ``classes_`` (:func:`emjax.predict_proba`)."""
        x = self._validate_features(X)
        return self._per_row(predict_proba, x)

    def predict_log_proba(self, X) -> np.ndarray:
        """The logarithm of :meth:`predict_proba` (-inf where a probability underflows to 0)."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X) -> np.ndarray:
        """The most probable class of each sample (a label from ``classes_``), shape (n_samples,)."""
        proba = self.predict_proba(X)  # first: it checks that the estimator is fitted
        return self.classes_[np.argmax(proba, axis=1)]
