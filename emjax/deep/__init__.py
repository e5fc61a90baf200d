r"""Deep and sparse mixtures of experts trained EM-style (docs/math.md §9, emjax's design).

A :class:`DeepMoE` has a gate network and K expert networks (one equinox module with a leading K
axis) and routes every sample to its ``top_k`` experts. :func:`fit_em` trains it by generalized
mini-batch EM: an E-step computes the routed responsibilities γ, then a few optax steps on the
surrogate J fit the gate to γ by cross-entropy and each expert to its γ-weighted loss.
:func:`fit_end_to_end` is the baseline, optax on the top-k renormalised likelihood L. With linear
networks, no biases and top_k = K the model is exactly ``emjax.MoLogE``.

Experts are evaluated densely and masked; sparse dispatch with capacity buffers and load-balancing
losses are out of scope.
"""

from ._model import DeepMoE as DeepMoE
from ._objectives import accuracy as accuracy
from ._objectives import cross_entropy as cross_entropy
from ._objectives import neg_log_likelihood as neg_log_likelihood
from ._objectives import predict_log_proba as predict_log_proba
from ._objectives import predict_proba as predict_proba
from ._objectives import surrogate as surrogate
from ._routing import LoadStatistics as LoadStatistics
from ._routing import expert_log_probs as expert_log_probs
from ._routing import gate_log_probs as gate_log_probs
from ._routing import load_statistics as load_statistics
from ._routing import responsibilities as responsibilities
from ._routing import routed_log_weights as routed_log_weights
from ._routing import top_k_mask as top_k_mask
from ._synthetic import sample as sample
from ._synthetic import synthetic_nonlinear_moe as synthetic_nonlinear_moe
from ._train import DeepFitResult as DeepFitResult
from ._train import TrainHistory as TrainHistory
from ._train import fit_em as fit_em
from ._train import fit_end_to_end as fit_end_to_end

__all__ = [
    "DeepFitResult",
    "DeepMoE",
    "LoadStatistics",
    "TrainHistory",
    "accuracy",
    "cross_entropy",
    "expert_log_probs",
    "fit_em",
    "fit_end_to_end",
    "gate_log_probs",
    "load_statistics",
    "neg_log_likelihood",
    "predict_log_proba",
    "predict_proba",
    "responsibilities",
    "routed_log_weights",
    "sample",
    "surrogate",
    "synthetic_nonlinear_moe",
    "top_k_mask",
]
