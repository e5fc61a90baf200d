"""Mixture-of-experts models: parameters and the per-model pieces of the math."""

from ._base import AbstractSymmetricModel as AbstractSymmetricModel
from ._params import SymParams as SymParams
from .symmetric import SymMoLinE as SymMoLinE
from .symmetric import SymMoLogE as SymMoLogE
from .symmetric import softplus_bregman as softplus_bregman
