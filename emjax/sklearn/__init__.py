r"""Estimators with scikit-learn's conventions: mixtures of experts for ``Pipeline`` and ``GridSearchCV``.

:class:`MixtureOfExpertsRegressor` (Gaussian or Poisson experts) and :class:`MixtureOfExpertsClassifier`
(softmax experts) wrap :func:`emjax.fit_restarts` with EM behind ``fit`` / ``predict`` / ``score``:
hyper-parameters in the constructor (``get_params`` / ``set_params``), fitted attributes ending in
``_``, input validation by scikit-learn, and both pass ``sklearn.utils.estimator_checks``. Choose the
number of experts K by cross-validation (``GridSearchCV(est, {"n_experts": [1, 2, 3]})``) or by
:meth:`~MixtureOfExpertsRegressor.bic`.

The model is $p(y\mid x) = \sum_{k=1}^K \pi_k(x)\,p_k(y\mid x)$ with a softmax gate
$\pi_k(x) = \mathrm{softmax}_k(\tilde x\cdot W_k)$ and GLM experts on $\tilde x = [x, 1]$ (the 1 with
``fit_intercept=True``). Fitting maximises the mean log-likelihood by EM from ``n_init`` data-driven
starts and keeps the best (:func:`emjax.fit_restarts`).

**Precision.** The estimators compute in JAX's default float: float64 when ``jax_enable_x64`` is on
(``jax.config.update("jax_enable_x64", True)`` before fitting), float32 otherwise. They never change
JAX's configuration themselves. The fitted parameters (``params_``) are NumPy arrays of that dtype,
so fitted estimators pickle and clone like any scikit-learn estimator.

This sub-package needs scikit-learn, which emjax's core does not install:
``pip install "emjax[experiments]"`` (or ``pip install scikit-learn``); ``import emjax`` never imports it.
"""

from .._extras import require

require("sklearn", "emjax.sklearn (the scikit-learn estimators)")

from ._classifier import MixtureOfExpertsClassifier as MixtureOfExpertsClassifier  # noqa: E402
from ._regressor import MixtureOfExpertsRegressor as MixtureOfExpertsRegressor  # noqa: E402

__all__ = ["MixtureOfExpertsClassifier", "MixtureOfExpertsRegressor"]
