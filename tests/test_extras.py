"""The core installs and runs without the ``experiments`` extra (matplotlib, scikit-learn)."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A finder that refuses the extra's packages, as if they were not installed.
BLOCK = textwrap.dedent("""
    import sys

    class Blocked:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("matplotlib", "sklearn"):
                raise ImportError(f"No module named {name!r} (blocked by the test)")

    sys.meta_path.insert(0, Blocked())
""")


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-c", BLOCK + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )


# One subprocess for both checks (each start pays JAX's import): the core first, with a marker printed once
# its assertions pass, then the CLI's ``reproduce``, which must stop at once, as the process's last act.
SCRIPT = """
    import jax
    import emjax, emjax.streaming, emjax.sweeps, emjax.parallel, emjax.deep, emjax.datasets, emjax.testing
    import emjax.experiments, emjax.cli  # importable too: the extra is needed only when they draw or load
    assert "matplotlib" not in sys.modules and "sklearn" not in sys.modules
    model = emjax.MoLinE(2)
    truth = emjax.testing.random_params(model, jax.random.key(0), 3)
    x, y = emjax.sample(model, truth, jax.random.key(1), 300)
    start = emjax.init_params(model, jax.random.key(2), x, y)
    result = emjax.fit(model, emjax.em(), start, x, y, 10)
    assert bool(result.losses[-1] <= result.losses[0])
    try:
        emjax.datasets.digits()
    except ImportError as error:
        print("digits:", error)
    else:
        raise AssertionError("digits() loaded without scikit-learn")
    print("CORE OK", flush=True)

    sys.argv = ["emjax", "reproduce", "figure1", "--quick", "--out", "unused"]
    sys.exit(emjax.cli.main())
"""


@pytest.fixture(scope="module")
def without_the_extra():
    return _run(SCRIPT)


def test_core_imports_and_fits_without_the_experiments_extra(without_the_extra):
    result = without_the_extra
    assert "CORE OK" in result.stdout, result.stderr  # every assertion of the core part passed
    assert 'pip install "emjax[experiments]"' in result.stdout.partition("CORE OK")[0]


def test_reproduce_without_the_extra_stops_at_once_with_the_install_command(without_the_extra):
    result = without_the_extra
    assert "CORE OK" in result.stdout, result.stderr  # it got as far as the CLI
    assert result.returncode != 0
    assert 'pip install "emjax[experiments]"' in result.stderr
    assert "Traceback" not in result.stderr
    assert not (ROOT / "unused").exists()
