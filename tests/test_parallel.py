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
    assert "pad=True" in on_four_devices["uneven"]
    assert "split evenly" in on_four_devices["uneven_weighted"] and "pad=True" in on_four_devices["uneven_weighted"]


def test_weighted_em_on_sharded_rows_gives_the_single_device_weighted_fit(on_four_devices):
    weighted = on_four_devices["weighted"]
    assert weighted["w_spec"] == "P('data',)"  # weights split like y
    assert weighted["params"] < 1e-10 and weighted["losses"] < 1e-10


def test_padding_with_zero_weights_gives_the_unpadded_fit(on_four_devices):
    padded = on_four_devices["padded"]
    assert padded["rows"] == 4000 and padded["weights"] == [1.0, 0.0]  # 3999 rows padded to 4 × 1000
    assert padded["tail_is_last_row"]
    assert padded["params"] < 1e-10 and padded["loss"] < 1e-10 and padded["losses"] < 1e-10


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
        assert "pad=True is for a single process" in result["pad"]


def test_bad_meshes_and_arguments_are_refused():
    with pytest.raises(ValueError, match="num_cells"):
        parallel.data_mesh(num_cells=0)
    with pytest.raises(ValueError, match="divide"):
        parallel.data_mesh(num_cells=3, devices=[object(), object()])
    with pytest.raises(ValueError, match="'data' axis"):
        parallel.shard_rows("not a mesh", np.ones((2, 2)), np.ones(2))
    with pytest.raises(ValueError, match="x must be finite"):
        parallel.shard_rows(parallel.data_mesh(), np.full((2, 2), np.nan), np.ones(2))
    mesh = parallel.data_mesh()
    x, y = np.ones((3, 2)), np.zeros(3)
    with pytest.raises(ValueError, match="weights must have one entry per row"):
        parallel.shard_rows(mesh, x, y, weights=np.ones(2))
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        parallel.shard_rows(mesh, x, y, weights=np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        parallel.shard_rows(mesh, x, y, weights=np.array([1.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="positive sum"):
        parallel.shard_rows(mesh, x, y, weights=np.zeros(3))
    with pytest.raises(ValueError, match="pad must be True or False"):
        parallel.shard_rows(mesh, x, y, pad=1)
    # One device divides every row count: pad=True pads nothing but still returns the weights (ones).
    xs, ys, ws = parallel.shard_rows(mesh, x, y, pad=True)
    assert xs.shape[0] % mesh.shape["data"] == 0 and np.asarray(ws).sum() == 3
    assert np.asarray(ws)[:3].tolist() == [1.0, 1.0, 1.0] and np.asarray(ws).dtype.kind == "f"
    xs, ws = parallel.shard_rows(mesh, x, weights=np.array([0, 2, 1]))
    assert np.asarray(ws).tolist() == [0, 2, 1] and xs.shape == (3, 2)
    with pytest.raises(ValueError, match="coordinator_address"):
        parallel.initialize("no-port", 2, 0)
    with pytest.raises(ValueError, match="process_id"):
        parallel.initialize("127.0.0.1:1", 2, 5)
