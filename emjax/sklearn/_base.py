"""What the two estimators share: hyper-parameter checks, data validation, the fit, and the inference methods."""

from __future__ import annotations

import numbers
import warnings

import jax
import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import _check_sample_weight, check_is_fitted

from .._acceleration import anderson, squarem
from .._inference import aic, bic
from .._likelihood import responsibilities
from .._padding import bucket_rows, pad_rows
from .._predict import gate_probabilities
from .._restarts import fit_restarts
from .._solvers import em
from .._status import Status
from .._summary import summary
from ..datasets import add_intercept

try:
    from sklearn.utils.validation import validate_data
except ImportError:  # scikit-learn < 1.6: the estimator's own method

    def validate_data(estimator, /, X="no_validation", y="no_validation", **kwargs):
        return estimator._validate_data(X, y, **kwargs)


FLOAT_DTYPES = (np.float64, np.float32)  # what validate_data keeps; ints, bools and objects become float64
SOLVERS = ("em", "squarem", "anderson")


def _check_int(value, name: str, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def _check_real(value, name: str, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not np.isfinite(value) or value < 0:
        accepted = "None or a finite number >= 0" if allow_none else "a finite number >= 0"
        raise ValueError(f"{name} must be {accepted}; got {value!r}")
    return float(value)


def _key(random_state):
    """``jax.random.key(random_state)`` for an int; otherwise a seed drawn from ``check_random_state(random_state)``
    (None: NumPy's global generator, scikit-learn's convention; a ``RandomState``: its next draw)."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return jax.random.key(int(random_state))
    generator = check_random_state(random_state)
    return jax.random.key(int(generator.randint(np.iinfo(np.int32).max)))


def _solver(name: str):
    return {"em": em, "squarem": lambda: squarem(em()), "anderson": lambda: anderson(em())}[name]()


class MixtureOfExpertsBase(BaseEstimator):
    """The shared part of :class:`~emjax.sklearn.MixtureOfExpertsRegressor` and
    :class:`~emjax.sklearn.MixtureOfExpertsClassifier` (not public; subclasses set ``__init__``)."""

    # ------------------------------------------------------------------ checks

    def _check_hyperparameters(self) -> dict:
        """The constructor's arguments, checked (scikit-learn validates in ``fit``, not in ``__init__``)."""
        if not isinstance(self.fit_intercept, (bool, np.bool_)):
            raise ValueError(f"fit_intercept must be True or False; got {self.fit_intercept!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}; got {self.solver!r}")
        return {
            "n_experts": _check_int(self.n_experts, "n_experts", 1),
            "n_init": _check_int(self.n_init, "n_init", 1),
            "max_iter": _check_int(self.max_iter, "max_iter", 0),
            "tol": _check_real(self.tol, "tol", allow_none=True),
            "ridge": _check_real(self.ridge, "ridge"),
            "key": _key(self.random_state),
        }

    def _design(self, X, dtype) -> np.ndarray:
        """Validated features as the design matrix: cast to ``dtype``, with ``fit_intercept`` a column of ones last."""
        X = np.asarray(X, dtype)
        return add_intercept(X) if self.fit_intercept else X

    def _validate_features(self, X) -> np.ndarray:
        """Features for a fitted estimator: same number (and names) as in ``fit``, as the design matrix."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=FLOAT_DTYPES)
        return self._design(X, self.params_.gate.dtype)

    def _validated_xy(self, X, y):
        """``(design, y as the model's responses)`` for a fitted estimator (per estimator)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ fit

    def _fit_model(self, model, x, y, settings: dict, sample_weight=None):
        """Run :func:`emjax.fit_restarts` and set the fitted attributes; warns when the best run is not healthy.

        The rows are padded to a bucketed count (:func:`emjax._padding.bucket_rows`) with rows of weight 0,
        which changes nothing but round-off (:mod:`emjax._padding`), so that fits on data of many sizes
        (cross-validation folds, learning curves) reuse a few compiled programs."""
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, x, dtype=x.dtype, ensure_non_negative=True)
        n = x.shape[0]
        x, y, weights = pad_rows(bucket_rows(n) - n, x, y, sample_weight)
        result = fit_restarts(
            model,
            _solver(self.solver),
            settings["key"],
            x,
            y,
            settings["n_init"],
            settings["max_iter"],
            tol=settings["tol"],
            weights=weights,
        )
        result = jax.tree_util.tree_map(np.asarray, result)  # host copies: pickles, clones, no device buffers
        self.model_ = model
        self.params_ = result.params
        self.result_ = result
        self.n_iter_ = int(result.num_steps)
        self.converged_ = bool(result.converged)
        self.lower_bound_ = -float(result.final_loss)
        status = int(result.status)
        name = type(self).__name__
        if status == Status.max_steps:
            warnings.warn(
                f"{name} did not converge: the best of n_init={settings['n_init']} runs had not met tol="
                f"{settings['tol']} after max_iter={settings['max_iter']} EM steps; increase max_iter or tol",
                ConvergenceWarning,
                stacklevel=3,
            )
        elif status in (Status.nonfinite, Status.degenerate):
            warnings.warn(
                f"{name}: the best of n_init={settings['n_init']} runs ended with {Status.name_of(status)} (an expert "
                "with almost no data, a collapsed variance, or data it separates perfectly, so that its coefficients "
                "grow without bound); try fewer experts (n_experts), ridge > 0 or more data",
                ConvergenceWarning,
                stacklevel=3,
            )
        return self

    # ------------------------------------------------------------------ shared methods

    def _per_row(self, function, x, y=None, *args) -> np.ndarray:
        """``function(model_, params_, x[, y], *args)`` of a row-wise emjax function, as a NumPy array.

        The rows are padded to a bucketed count (copies of the last row) and the padding is cut off the
        result, so that predictions on many data sizes reuse a few compiled programs."""
        n = x.shape[0]
        padded_x, padded_y, _ = pad_rows(bucket_rows(n) - n, x, y)
        data = (padded_x,) if y is None else (padded_x, padded_y)
        return np.asarray(function(self.model_, self.params_, *data, *args))[:n]

    def gate_proba(self, X) -> np.ndarray:
        r"""The gate's probabilities $\pi_k(x) = P(z=k\mid x)$ of each expert, shape (n_samples, n_experts).

        Args:
            X: features, shape (n_samples, n_features).

        Returns:
            Rows summing to 1 (:func:`emjax.gate_probabilities`).
        """
        return self._per_row(gate_probabilities, self._validate_features(X))

    def responsibilities(self, X, y) -> np.ndarray:
        r"""The posterior probabilities $P(z=k\mid x, y)$ of each expert, shape (n_samples, n_experts).

        Args:
            X: features, shape (n_samples, n_features).
            y: responses (class labels from ``classes_`` for the classifier), shape (n_samples,).

        Returns:
            Rows summing to 1 (:func:`emjax.responsibilities`).
        """
        return self._per_row(responsibilities, *self._validated_xy(X, y))

    def aic(self, X, y) -> float:
        r"""Akaike's criterion $-2\ell + 2k$ on ``(X, y)`` (lower is better), $\ell$ the total log-likelihood and
        $k$ the number of estimated parameters (:func:`emjax.aic`)."""
        x, y = self._validated_xy(X, y)
        return float(aic(self.model_, self.params_, x, y))

    def bic(self, X, y) -> float:
        r"""Schwarz's criterion $-2\ell + k\log n$ on ``(X, y)`` (lower is better; consistent for choosing
        ``n_experts``), $\ell$ the total log-likelihood, $k$ the number of estimated parameters (:func:`emjax.bic`)."""
        x, y = self._validated_xy(X, y)
        return float(bic(self.model_, self.params_, x, y))

    def summary(self, X, y):
        r"""The coefficient tables of the fit: estimates, standard errors, Wald z and p-values, with AIC, BIC and
        the run's status (:func:`emjax.summary`).

        The standard errors come from the observed information at the fitted parameters on the data given, so
        pass the training data (estimators keep no copy of it). Features are named by ``feature_names_in_``
        (a DataFrame's columns) or ``x0, x1, ...``; the intercept column is ``intercept``.

        Args:
            X: the training features, shape (n_samples, n_features).
            y: the training responses, shape (n_samples,).

        Returns:
            An :class:`emjax.FitSummary` (``print`` it, or read ``.coefficients`` or ``.to_dataframe()``).
        """
        x, y = self._validated_xy(X, y)
        names = getattr(self, "feature_names_in_", None)
        names = [f"x{j}" for j in range(self.n_features_in_)] if names is None else [str(n) for n in names]
        if self.fit_intercept:
            names.append("intercept")
        return summary(self.model_, self.result_, x, y, feature_names=names)
