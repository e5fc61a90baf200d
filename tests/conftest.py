"""Test configuration: float64 and strict rank promotion for every test (never at library import)."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

from tests.utils import MODELS as MODELS  # noqa: E402  (after the config above)


@pytest.fixture(params=["lin", "log"])
def kind(request):
    return request.param
