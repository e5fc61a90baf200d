"""Data-parallel EM on forced host devices and on two processes, each test in fresh subprocesses."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import emjax.parallel as parallel

WORKER = os.path.join(os.path.dirname(__file__), "sharded_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _result(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, output[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # The worker adds its device count to the suite's XLA_FLAGS (tests/conftest.py), which hold no count.
    return env


@pytest.fixture(scope="module")
def on_four_devices():
    done = subprocess.run([sys.executable, WORKER, "devices"], capture_output=True, text=True, timeout=600, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    return _result(done.stdout)


def test_sharded_em_gives_the_single_device_iterates(on_four_devices):
    assert on_four_devices["devices"] == 4
    for name in ("symlog", "mologe", "moline_20k"):
        assert on_four_devices[name]["x_spec"] == "P('data', None)"
        assert on_four_devices[name]["params"] < 1e-12, name  # same iterates up to the order of summation
        assert on_four_devices[name]["losses"] < 1e-12, name


def test_the_em_step_all_reduces_its_sums_and_never_gathers_the_rows(on_four_devices):
    assert on_four_devices["all_reduce"] >= 2
    assert on_four_devices["all_gather"] == 0 and on_four_devices["collective_permute"] == 0


def test_cells_and_data_axes_together_match_a_loop_of_fits(on_four_devices):
    assert on_four_devices["cells"] < 1e-12
    assert "split evenly" in on_four_devices["uneven"]


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def test_two_processes_with_two_devices_each_match_one_device():
    address = f"127.0.0.1:{_free_port()}"
    workers = [
        subprocess.Popen(
            [sys.executable, WORKER, "process", address, "2", str(index)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for index in range(2)
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
        results.append(_result(out))
    for result in results:
        assert result["processes"] == 2 and result["devices"] == 4
        assert result["losses"] < 1e-12 and result["params"] < 1e-12


def test_bad_meshes_and_arguments_are_refused():
    with pytest.raises(ValueError, match="num_cells"):
        parallel.data_mesh(num_cells=0)
    with pytest.raises(ValueError, match="divide"):
        parallel.data_mesh(num_cells=3, devices=[object(), object()])
    with pytest.raises(ValueError, match="'data' axis"):
        parallel.shard_rows("not a mesh", np.ones((2, 2)), np.ones(2))
    with pytest.raises(ValueError, match="x must be finite"):
        parallel.shard_rows(parallel.data_mesh(), np.full((2, 2), np.nan), np.ones(2))
    with pytest.raises(ValueError, match="coordinator_address"):
        parallel.initialize("no-port", 2, 0)
    with pytest.raises(ValueError, match="process_id"):
        parallel.initialize("127.0.0.1:1", 2, 5)
