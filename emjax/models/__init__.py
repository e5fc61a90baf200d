"""The models: one contract (:class:`AbstractModel`), the symmetric two-expert models, the K-expert mixtures and
the hierarchical mixtures of experts."""

from ._hme_tree import HMEParams as HMEParams
from ._model import AbstractModel as AbstractModel
from ._model import keep_frozen as keep_frozen
from ._params import MoEParams as MoEParams
from ._params import SymParams as SymParams
from ._predictive import AbstractPredictive as AbstractPredictive
from ._predictive import CategoricalPredictive as CategoricalPredictive
from ._predictive import GaussianPredictive as GaussianPredictive
from ._predictive import PoissonPredictive as PoissonPredictive
from ._symmetric import AbstractSymmetricModel as AbstractSymmetricModel
from ._symmetric import softplus_bregman as softplus_bregman
from .experts import AbstractExpertFamily as AbstractExpertFamily
from .experts import GaussianExpert as GaussianExpert
from .experts import PoissonExpert as PoissonExpert
from .experts import SoftmaxExpert as SoftmaxExpert
from .hierarchical import HierarchicalMoE as HierarchicalMoE
from .moe import MixtureOfExperts as MixtureOfExperts
from .moe import MoLinE as MoLinE
from .moe import MoLogE as MoLogE
from .moe import MoPoE as MoPoE
from .symmetric import SymMoLinE as SymMoLinE
from .symmetric import SymMoLogE as SymMoLogE
