"""Test configuration: float64 and strict rank promotion for every test (never at library import)."""

import gc
import os

# Compile time dominates at test sizes: XLA's backend at -O0 compiles about 20% faster (same IEEE
# arithmetic; every comparison in the suite is between runs under the same flags). Benchmarks and users
# keep XLA's default. Subprocesses (notebooks, the CLI) inherit it; set the flag yourself to override.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402  (after XLA_FLAGS: the backend reads them when it starts)
import pytest

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


@pytest.fixture(autouse=True)
def _restore_xla_flags(monkeypatch):
    """``emjax.cli.main`` adds to XLA_FLAGS for its own process; keep in-process calls from leaking it."""
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
