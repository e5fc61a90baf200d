"""Mixture-of-experts models: parameters and the per-model pieces of the math."""

from ._base import AbstractSymmetricModel as AbstractSymmetricModel
from ._params import SymParams as SymParams
from .experts import AbstractExpertFamily as AbstractExpertFamily
from .experts import GaussianExpert as GaussianExpert
from .experts import PoissonExpert as PoissonExpert
from .experts import SoftmaxExpert as SoftmaxExpert
from .moe import MixtureOfExperts as MixtureOfExperts
from .moe import MoEParams as MoEParams
from .moe import MoLinE as MoLinE
from .moe import MoLogE as MoLogE
from .moe import MoPoE as MoPoE
from .symmetric import SymMoLinE as SymMoLinE
from .symmetric import SymMoLogE as SymMoLogE
from .symmetric import softplus_bregman as softplus_bregman
