"""Test configuration: float64 and strict rank promotion for every test (never at library import)."""

import gc
import os

# The CLI's guard against XLA's CPU thread-pool wedge (see emjax.cli._avoid_cpu_pool_wedge), set
# before any JAX backend starts; subprocesses started by tests inherit it.
if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

from tests.utils import MODELS as MODELS  # noqa: E402  (after the config above)


@pytest.fixture(params=["lin", "log"])
def kind(request):
    return request.param


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Free each module's compiled programs when it ends.

    Every XLA CPU executable keeps memory mappings; the whole suite compiles enough programs to
    pass Linux's default vm.max_map_count (65530), which ends the process with a segfault."""
    yield
    jax.clear_caches()
    gc.collect()
