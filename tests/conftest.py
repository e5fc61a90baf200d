"""Test configuration: float64 and strict rank promotion for every test (never at library import)."""

import atexit
import gc
import os
import shutil
import tempfile

# Compile time dominates at test sizes. Three XLA CPU settings cut it without changing what is computed
# (IEEE arithmetic either way; every comparison in the suite is between runs under the same flags, or against
# an oracle with a tolerance): the backend at -O0 (about 20% less compile time); the classic elemental
# emitters instead of the newer fusion emitters (about half the CPU time of compiling emjax's solver loops,
# measured on em_step, init_params, fit and em_rate); and one code-generation thread per program (the suite
# already runs one worker per core). Benchmarks and users keep XLA's defaults. Subprocesses (notebooks, the
# CLI) inherit them; set a flag yourself to override it.
TEST_XLA_FLAGS = {
    "xla_backend_optimization_level": "0",
    "xla_cpu_use_fusion_emitters": "false",
    "xla_cpu_parallel_codegen_split_count": "1",
}
for _name, _value in TEST_XLA_FLAGS.items():
    if _name not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --{_name}={_value}").strip()

# One persistent compilation cache per test session, in a temporary folder removed at its end: the xdist workers
# and the subprocesses (notebook kernels, the CLI) inherit the variable, so a program one of them compiled (at least
# 0.2 s of compile time: below that, reading the cache costs about as much) is loaded, not compiled again, by the
# others. A cache the user already set is used as it is.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="emjax-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)

import jax  # noqa: E402  (after XLA_FLAGS: the backend reads them when it starts)
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

from tests.utils import MODELS as MODELS  # noqa: E402  (after the config above)


@pytest.fixture(params=["lin", "log"])
def kind(request):
    return request.param


def _memory_map_budget() -> tuple[int, int] | None:
    """(mappings this process holds, half of the kernel's limit), or None where /proc cannot say (not Linux)."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            held = sum(1 for _ in maps)
        with open("/proc/sys/vm/max_map_count") as limit:
            return held, int(limit.read()) // 2
    except (OSError, ValueError):
        return None


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Free the compiled programs at the end of a module once they hold half the process's memory-map limit.

    Every XLA CPU executable keeps memory mappings; one worker compiles enough programs over the suite to pass
    Linux's default vm.max_map_count (65530), which ends the process with a segfault. Clearing after every module
    instead would recompile (and re-trace) every program the next modules share: about 80 CPU seconds of the
    suite's compilation, measured."""
    yield
    budget = _memory_map_budget()
    if budget is None or budget[0] > budget[1]:
        jax.clear_caches()
        gc.collect()


@pytest.fixture(autouse=True)
def _restore_xla_flags(monkeypatch):
    """``emjax.cli.main`` adds to XLA_FLAGS for its own process; keep in-process calls from leaking it."""
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))


# ----------------------------------------------------------------------------- pytest-xdist scheduling
# ``--dist loadfile`` sends whole files to workers, by default in order of their number of tests. That puts the
# costliest files, which hold few tests (notebooks, subprocess runs of sharded EM and the CLI, the large-n path
# comparisons), at the end, where one worker runs them alone while the other idles. Here the costly files go first,
# and four files whose tests share no module fixture are split into one work unit per test (test_paths.py's restart
# test stays with the case whose compiled fit it reuses), so that their tests spread over the workers. The other
# files keep loadfile's grouping: their tests share module fixtures and compiled programs. Which tests run, and
# how, is unchanged.

# Roughly costliest first (CPU seconds on 2 cores); files not named follow, largest number of tests first.
COSTLY_FIRST = (
    "tests/test_paths.py",
    "tests/test_notebooks.py",
    "tests/test_sklearn.py",
    "tests/test_properties.py",
    "tests/test_acceleration.py",
    "tests/test_parallel.py",
    "tests/test_cli_resume.py",
    "tests/test_sweeps.py",
    "tests/test_experiments.py",
    "tests/test_deep.py",
    "tests/test_streaming.py",
    "tests/test_moe_fit.py",
    "tests/test_large_m_steps.py",
    "tests/test_linear_newton.py",
    "tests/test_table2.py",
    "tests/test_restarts.py",
    "tests/test_readme.py",
)
SPLIT_PER_TEST = ("tests/test_paths.py", "tests/test_notebooks.py", "tests/test_properties.py", "tests/test_sklearn.py")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: without it (-p no:xdist) nothing to do
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    if not all(hasattr(LoadFileScheduling, name) for name in ("_pending_of", "_assign_work_unit", "_reschedule")):
        return None  # another pytest-xdist layout: its own loadfile scheduling

    class CostlyFirstScheduling(LoadFileScheduling):
        ordered = False

        def _split_scope(self, nodeid):
            file = nodeid.split("::", 1)[0]
            if file == "tests/test_paths.py" and "::test_fit_restarts" in nodeid:
                # It reuses the compiled fit of the first case's monotone check (CASES[0]): same worker.
                return "tests/test_paths.py::test_every_path_gives_the_direct_answer[MoLinE3-float64-n20000]"
            return nodeid if file in SPLIT_PER_TEST else file

        def _rank(self, item):
            scope, tests = item
            file = scope.split("::", 1)[0]
            if file in COSTLY_FIRST:
                return (COSTLY_FIRST.index(file), 0)
            return (len(COSTLY_FIRST), -len(tests))

        def _assign_work_unit(self, node):
            if not self.ordered:  # the queue is complete on the first call (xdist's schedule())
                ordered = sorted(self.workqueue.items(), key=self._rank)  # stable: file order within a file
                self.workqueue.clear()
                self.workqueue.update(ordered)
                self.ordered = True
            super()._assign_work_unit(node)

        def _reschedule(self, node):
            # A worker holds back its last test until it knows the next one (or is told to stop), so one
            # pending test is the least it can be left with; xdist's default keeps two, which hands a worker
            # still busy with a costly test the next costly unit while the other worker runs dry.
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            self._assign_work_unit(node)

    return CostlyFirstScheduling(config, log)


@pytest.fixture
def no_default_fashion(monkeypatch, tmp_path):
    """No environment variable and an empty stand-in for Debian's folder: nothing to find by default."""
    monkeypatch.delenv("EMJAX_FASHION_MNIST", raising=False)
    monkeypatch.setattr("emjax.datasets._idx.DEBIAN_FASHION_MNIST", tmp_path / "debian-empty")
    return tmp_path
