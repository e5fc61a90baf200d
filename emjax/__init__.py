"""emjax: mixtures of experts trained by EM, seen as mirror descent, in JAX.

One EM iteration on a mixture of experts whose complete-data law is an exponential family is one
step of mirror descent with unit step and mirror map A(θ), the expected log-partition; the local
rate of EM is the top eigenvalue of the missing-information matrix M(θ) = (∇²A)⁻¹ I_miss.
Every public function is pure in (model, params, data) and works under ``jit``, ``vmap`` and ``grad``.

**Calling rule** (the whole package): arguments come in the order *model, params, PRNG key, data or
sizes, options*; an argument a function does not take is skipped, and a solver rides with the model
(``fit(model, solver, params, x, y, num_steps)``). So ``sample(model, params, key, n)``,
``init_params(model, key, x, y)``, ``fit_restarts(model, solver, key, x, y, num_restarts)``,
``deep.sample(model, key, n, d)``, ``deep.fit_em(model, key, x, y, ...)``,
``testing.random_params(model, key, d)`` and ``testing.perturb(params, key)``. Options are keywords.

Solvers are built by their factories (:func:`em`, :func:`mirror_descent`, :func:`gradient_descent`,
:func:`gradient_em`, :func:`from_optax`), which validate their arguments; :class:`AbstractSolver` is
the base class for solvers of one's own. Problem generators and test helpers live in
:mod:`emjax.testing`. ``emjax reproduce``, :mod:`emjax.experiments` and the scikit-learn estimators of
:mod:`emjax.sklearn` (imported only on request) need the optional extra
(``pip install "emjax[experiments]"``: matplotlib, scikit-learn); the rest of emjax does not.
"""

from importlib.metadata import PackageNotFoundError, version

from . import _backend
from . import datasets as datasets
from . import deep as deep
from . import parallel as parallel
from . import streaming as streaming
from . import sweeps as sweeps
from . import testing as testing
from ._acceleration import anderson as anderson
from ._acceleration import squarem as squarem
from ._covariates import Covariates as Covariates
from ._covariates import covariates as covariates
from ._fit import FitResult as FitResult
from ._fit import fit as fit
from ._formula import FormulaDesign as FormulaDesign
from ._formula import from_formula as from_formula
from ._inference import aic as aic
from ._inference import bic as bic
from ._inference import num_parameters as num_parameters
from ._inference import standard_errors as standard_errors
from ._information import complete_information as complete_information
from ._information import em_rate as em_rate
from ._information import mim_eigenvalues as mim_eigenvalues
from ._information import missing_information as missing_information
from ._information import missing_information_matrix as missing_information_matrix
from ._information import observed_information as observed_information
from ._init import init_params as init_params
from ._likelihood import neg_log_likelihood as neg_log_likelihood
from ._likelihood import responsibilities as responsibilities
from ._likelihood import sample as sample
from ._mirror import bregman_divergence as bregman_divergence
from ._mirror import mirror_map as mirror_map
from ._mirror import mirror_map_grad as mirror_map_grad
from ._mirror import neg_log_likelihood_grad as neg_log_likelihood_grad
from ._mirror import posterior_statistics as posterior_statistics
from ._predict import gate_probabilities as gate_probabilities
from ._predict import predict_log_proba as predict_log_proba
from ._predict import predict_mean as predict_mean
from ._predict import predict_proba as predict_proba
from ._predict import predict_quantiles as predict_quantiles
from ._predict import predict_variance as predict_variance
from ._restarts import fit_restarts as fit_restarts
from ._selection import BestIterate as BestIterate
from ._selection import best_iterate as best_iterate
from ._solvers import AbstractSolver as AbstractSolver
from ._solvers import em as em
from ._solvers import from_optax as from_optax
from ._solvers import gradient_descent as gradient_descent
from ._solvers import gradient_em as gradient_em
from ._solvers import mirror_descent as mirror_descent
from ._status import Status as Status
from ._steps import em_step as em_step
from ._steps import gradient_descent_step as gradient_descent_step
from ._steps import gradient_em_step as gradient_em_step
from ._steps import mirror_descent_step as mirror_descent_step
from ._steps import safe_step_size as safe_step_size
from ._summary import FitSummary as FitSummary
from ._summary import summary as summary
from .models import AbstractExpertFamily as AbstractExpertFamily
from .models import AbstractSymmetricModel as AbstractSymmetricModel
from .models import GaussianExpert as GaussianExpert
from .models import HierarchicalMoE as HierarchicalMoE
from .models import HMEParams as HMEParams
from .models import MixtureOfExperts as MixtureOfExperts
from .models import MoEParams as MoEParams
from .models import MoLinE as MoLinE
from .models import MoLogE as MoLogE
from .models import MoPoE as MoPoE
from .models import PoissonExpert as PoissonExpert
from .models import SoftmaxExpert as SoftmaxExpert
from .models import SymMoLinE as SymMoLinE
from .models import SymMoLogE as SymMoLogE
from .models import SymParams as SymParams
from .sweeps import ConfigurationMismatch as ConfigurationMismatch
from .sweeps import SweepResult as SweepResult
from .sweeps import sweep as sweep

_backend.warn_if_miscompiling()

try:
    __version__ = version("emjax")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "AbstractExpertFamily",
    "AbstractSolver",
    "BestIterate",
    "Covariates",
    "AbstractSymmetricModel",
    "FitResult",
    "FitSummary",
    "FormulaDesign",
    "GaussianExpert",
    "HierarchicalMoE",
    "HMEParams",
    "MixtureOfExperts",
    "MoEParams",
    "MoLinE",
    "MoLogE",
    "MoPoE",
    "PoissonExpert",
    "SoftmaxExpert",
    "Status",
    "SymMoLinE",
    "SymMoLogE",
    "SymParams",
    "aic",
    "best_iterate",
    "bic",
    "bregman_divergence",
    "complete_information",
    "covariates",
    "em",
    "em_rate",
    "em_step",
    "fit",
    "fit_restarts",
    "from_optax",
    "from_formula",
    "gate_probabilities",
    "squarem",
    "anderson",
    "gradient_descent",
    "gradient_descent_step",
    "gradient_em",
    "gradient_em_step",
    "init_params",
    "mim_eigenvalues",
    "mirror_descent",
    "mirror_descent_step",
    "mirror_map",
    "mirror_map_grad",
    "missing_information",
    "missing_information_matrix",
    "neg_log_likelihood",
    "neg_log_likelihood_grad",
    "num_parameters",
    "observed_information",
    "posterior_statistics",
    "predict_mean",
    "predict_log_proba",
    "predict_proba",
    "predict_quantiles",
    "predict_variance",
    "responsibilities",
    "safe_step_size",
    "sample",
    "standard_errors",
    "summary",
    "sweep",
    "datasets",
    "deep",
    "sweeps",
    "testing",
    "streaming",
    "parallel",
    "SweepResult",
    "ConfigurationMismatch",
]
