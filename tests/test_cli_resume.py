"""Re-running ``emjax reproduce`` into the same folder resumes: after a finished run and after a SIGKILL.

The CLI runs in subprocesses, as a user runs it. ``figure1 --quick`` is the cheapest target (two
sweeps: step-size tuning, one chunk; the figures, two chunks) and compiling dominates its time, so
the uninterrupted reference run goes on in the background while the killed run and its resumption
compile (two cores: about half the wall time of running the three one after another).

What is tested is resumption, not the figures' numbers, so each subprocess shrinks the rows and width
of the quick figures (``SMALL``: n = 400, d = 3 instead of 2000 and 10) before it calls the CLI's
``main``: the same sweeps, instances, iterations and chunks (one tuning chunk, two figure chunks),
the same compiled programs but for their shapes, and about a third less CPU time per run (what is
left is mostly compiling). The command line and everything after it are the user's.
"""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from emjax.sweeps._store import RECORD, ConfigurationMismatch, SweepStore, to_json
from tests.sweep_cells import GRID, em_cell

ROOT = Path(__file__).resolve().parents[1]
SMALL = """
import sys
from emjax.experiments import _synthetic
_synthetic.FigureSettings.quick = classmethod(lambda cls: cls(n=400, d=3, num_instances=12, tuning_instances=3))
from emjax.cli import main
sys.exit(main())
"""
COMMAND = [sys.executable, "-c", SMALL, "reproduce", "figure1", "--quick", "--no-progress"]
CSVS = ("figure1.csv", "figure2.csv", "step_sizes_figures.csv")
TIMEOUT = 300


def _start(out: Path, log: Path) -> subprocess.Popen:
    # Output to a file, not a pipe: nobody reads a pipe while we poll, and a full one would block the run.
    with open(log, "w") as stream:
        return subprocess.Popen([*COMMAND, "--out", str(out)], cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT)


def _finish(process: subprocess.Popen, log: Path) -> str:
    process.wait(timeout=TIMEOUT)
    output = log.read_text()
    assert process.returncode == 0, output
    return output


def _run(out: Path) -> str:
    log = out.parent / f"{out.name}.log"
    return _finish(_start(out, log), log)


def _csv_bytes(out: Path) -> dict:
    return {name: (out / name).read_bytes() for name in CSVS}


def _chunk_stamps(out: Path) -> dict:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted((out / "sweeps").rglob("chunk-*.npz"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, started now and awaited by ``reference()``: what every resumed run must match."""
    out = tmp_path_factory.mktemp("reference") / "out"
    log = out.parent / "out.log"
    process = _start(out, log)
    output = []

    def finished() -> Path:
        if not output:
            output.append(_finish(process, log))
            assert "(3 chunks computed, 0 loaded)" in output[0]
            assert "n=400, d=3" in output[0]  # SMALL took effect
        return out

    yield finished
    if process.poll() is None:  # a test failed before waiting for it
        process.kill()
        process.wait()


def test_a_killed_run_resumes_to_identical_csvs(reference, tmp_path):
    out = tmp_path / "killed"
    log = tmp_path / "killed.log"
    figures = out / "sweeps" / "quick" / "figures"
    # The figures sweep writes its record once the tuning sweep's chunk is on disk, then compiles for
    # seconds before its first chunk: a kill as soon as the record appears lands part-way, every time.
    process = _start(out, log)
    deadline = time.monotonic() + TIMEOUT
    while process.poll() is None and not (figures / RECORD).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"the run ended before it was killed:\n{log.read_text()}"
    assert list((out / "sweeps" / "quick" / "figures-tuning" / "chunks").glob("chunk-*.npz"))
    assert not list(figures.rglob("chunk-*.npz")) and not (out / "figure1.csv").exists()

    output = _run(out)
    assert "(2 chunks computed, 1 loaded)" in output
    assert _csv_bytes(out) == _csv_bytes(reference())


def test_rerunning_a_finished_folder_reuses_every_chunk(reference):
    finished = reference()
    csvs, stamps = _csv_bytes(finished), _chunk_stamps(finished)
    assert len(stamps) == 3
    output = _run(finished)
    assert "(0 chunks computed, 3 loaded)" in output
    assert _chunk_stamps(finished) == stamps  # read back, never rewritten
    assert _csv_bytes(finished) == csvs


CONFIGURATION = {
    "methods": ("em", "gd"),
    "pairs": (("SymMoLinE", 2.0), ("SymMoLogE", 4.0)),
    "step": np.float32(0.25),
    "count": np.int64(3),
    "dtype": np.dtype("float32"),
    "scalar_type": np.float64,
    "jax_type": jnp.float32,
    "grid": np.arange(3.0),
    "missing": float("nan"),
    "nested": {"b": (1, 2), "a": None},
}


def _record(configuration):
    return {"format": 1, "configuration": configuration}


def test_store_compares_a_configuration_with_its_own_json_form(tmp_path):
    SweepStore(tmp_path, _record(CONFIGURATION), 1).open()
    stored = json.loads((tmp_path / RECORD).read_text())["configuration"]
    assert math.isnan(stored.pop("missing"))
    assert stored == {
        "methods": ["em", "gd"],
        "pairs": [["SymMoLinE", 2.0], ["SymMoLogE", 4.0]],
        "step": 0.25,
        "count": 3,
        "dtype": "float32",
        "scalar_type": "float64",
        "jax_type": "float32",
        "grid": [0.0, 1.0, 2.0],
        "nested": {"a": None, "b": [1, 2]},
    }
    # A re-run builds the same tuples and NumPy values again; NaN is not equal to itself as a float.
    SweepStore(tmp_path, _record(CONFIGURATION), 1).open()
    SweepStore(tmp_path, _record(to_json(CONFIGURATION)), 1).open()
    with pytest.raises(ConfigurationMismatch, match=r'methods: was \["em", "gd"\], now \["em", "adam"\]'):
        SweepStore(tmp_path, _record(dict(CONFIGURATION, methods=("em", "adam"))), 1).open()
    with pytest.raises(TypeError, match="JSON-ready"):
        SweepStore(tmp_path / "other", _record({"cell": object()}), 1)


def test_sweep_with_a_tuple_config_resumes_and_returns_what_it_stored(tmp_path):
    config = {"settings": {"methods": ("em",), "step": np.float32(0.5)}}
    first = emjax.sweep(em_cell, 0, GRID, chunk_size=8, out=tmp_path, config=config, progress=False)
    again = emjax.sweep(em_cell, 0, GRID, chunk_size=8, out=tmp_path, config=config, progress=False)
    assert (again.computed_chunks, again.loaded_chunks) == (0, first.computed_chunks)
    assert again.configuration == json.loads((tmp_path / RECORD).read_text())["configuration"]
    assert again.configuration["user"] == {"settings": {"methods": ["em"], "step": 0.5}}
