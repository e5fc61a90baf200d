"""``emjax.sweep``: one compilation, equal to a loop, chunk/shard/resume invariant, safe on disk."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from emjax._progress import ChunkProgress
from emjax.sweeps import ConfigurationMismatch
from tests import sweep_cells
from tests.sweep_cells import GRID, em_cell

ROOT = Path(__file__).resolve().parents[1]


def _equal(a, b):
    chex.assert_trees_all_equal(a, b)


def test_sweep_compiles_once_and_equals_a_loop_over_cells():
    traced = chex.assert_max_traces(em_cell, n=1)
    chex.clear_trace_counter()
    result = emjax.sweep(traced, 7, GRID, chunk_size=4, progress=False)  # 15 cells, 4 chunks, the last padded
    assert result.computed_chunks == 4 and result.shape == (3, 5)
    assert result.outputs["loss"].shape == (3, 5, 9)
    one_cell = jax.jit(em_cell)
    base = jax.random.key(7)
    for i, snr in enumerate(GRID["snr"]):
        for j, seed in enumerate(GRID["seed"]):
            key = jax.random.fold_in(jax.random.fold_in(base, i), j)
            expected = one_cell(key, snr, seed)
            chex.assert_trees_all_close(
                jax.tree_util.tree_map(lambda leaf, i=i, j=j: leaf[i, j], result.outputs),
                expected,
                rtol=1e-10,
                atol=1e-12,
            )


def test_chunked_batched_and_unchunked_sweeps_agree():
    whole = emjax.sweep(em_cell, 3, GRID, batch_size=None, progress=False)  # one vmap over all 15 cells
    chunked = emjax.sweep(em_cell, 3, GRID, chunk_size=2, progress=False)
    grouped = emjax.sweep(em_cell, 3, GRID, chunk_size=6, batch_size=4, progress=False)
    assert whole.computed_chunks == 1 and chunked.computed_chunks == 8
    assert whole.configuration["batch_size"] is None and grouped.configuration["batch_size"] == 3
    chex.assert_trees_all_close(whole.outputs, chunked.outputs, rtol=1e-12, atol=1e-13)
    chex.assert_trees_all_close(whole.outputs, grouped.outputs, rtol=1e-12, atol=1e-13)


def test_key_axes_give_common_random_numbers():
    result = emjax.sweep(
        lambda key, snr, seed: {"u": jax.random.uniform(key)}, 0, GRID, key_axes=("seed",), progress=False
    )
    u = result.outputs["u"]
    np.testing.assert_array_equal(u[0], u[2])  # same seed, different SNR: same key
    assert len(np.unique(u[0])) == 5


def test_zipped_axis_spreads_into_keyword_arguments():
    def cell(key, snr, step, seed):
        return {"v": snr * 10 + step + 0 * seed}

    grid = {"setting": {"snr": jnp.array([1.0, 2.0]), "step": jnp.array([0.5, 0.25])}, "seed": jnp.arange(3)}
    result = emjax.sweep(cell, 0, grid, progress=False)
    np.testing.assert_allclose(result.outputs["v"], [[10.5] * 3, [20.25] * 3])


def test_same_configuration_is_bit_identical_and_resume_recomputes_only_missing_chunks(tmp_path):
    first = emjax.sweep(em_cell, 5, GRID, chunk_size=4, out=tmp_path / "a", progress=False)
    again = emjax.sweep(em_cell, 5, GRID, chunk_size=4, out=tmp_path / "b", progress=False)
    _equal(first.outputs, again.outputs)
    record = json.loads((tmp_path / "a" / "sweep.json").read_text())
    assert record["configuration"]["chunk_size"] == 4 and record["versions"]["emjax"]
    assert sorted(p.name for p in (tmp_path / "a" / "chunks").iterdir()) == [f"chunk-0000{i}.npz" for i in range(4)]
    (tmp_path / "a" / "chunks" / "chunk-00002.npz").unlink()
    resumed = emjax.sweep(em_cell, 5, GRID, chunk_size=4, out=tmp_path / "a", progress=False)
    assert (resumed.computed_chunks, resumed.loaded_chunks) == (1, 3)
    _equal(first.outputs, resumed.outputs)


def test_a_changed_configuration_is_refused(tmp_path):
    emjax.sweep(em_cell, 5, GRID, chunk_size=8, out=tmp_path, progress=False)
    with pytest.raises(ConfigurationMismatch, match=r"different configuration(.|\n)*key: was \[0, 5\], now \[0, 6\]"):
        emjax.sweep(em_cell, 6, GRID, chunk_size=8, out=tmp_path, progress=False)
    with pytest.raises(ConfigurationMismatch, match="grid.snr"):
        emjax.sweep(em_cell, 5, dict(GRID, snr=jnp.array([0.5, 1.0, 3.0])), chunk_size=8, out=tmp_path)
    with pytest.raises(ConfigurationMismatch, match="cell"):
        emjax.sweep(sweep_cells.slow_cell, 5, GRID, chunk_size=8, out=tmp_path)
    (tmp_path.parent / "other").mkdir()
    (tmp_path.parent / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigurationMismatch, match="not empty"):
        emjax.sweep(em_cell, 5, GRID, out=tmp_path.parent / "other")


def _python(code, **env):
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=dict(os.environ, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_killing_a_run_loses_at_most_the_chunk_in_flight(tmp_path):
    out = tmp_path / "run"
    code = (
        "import jax; jax.config.update('jax_enable_x64', True); import emjax, tests.sweep_cells as c; "
        f"emjax.sweep(c.slow_cell, 1, c.GRID, chunk_size=2, out={str(out)!r}, progress=False)"
    )
    process = _python(code)
    chunks = out / "chunks"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if chunks.exists() and len(list(chunks.glob("chunk-*.npz"))) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate()  # reaps the process and closes its pipes
    finished = sorted(chunks.glob("chunk-*.npz"))
    assert 2 <= len(finished) < 8, "the run was not interrupted in mid-sweep"
    resumed = emjax.sweep(sweep_cells.slow_cell, 1, GRID, chunk_size=2, out=out, progress=False)
    assert resumed.loaded_chunks == len(finished) and resumed.computed_chunks == 8 - len(finished)
    fresh = emjax.sweep(sweep_cells.slow_cell, 1, GRID, chunk_size=2, progress=False)
    _equal(fresh.outputs, resumed.outputs)


def test_four_host_devices_give_the_single_device_result(tmp_path):
    code = (
        "import jax; jax.config.update('jax_enable_x64', True); import numpy as np, emjax, tests.sweep_cells as c; "
        "r = emjax.sweep(c.em_cell, 2, c.GRID, chunk_size=8, progress=False); "
        "assert r.num_devices == 4 and len(jax.devices()) == 4, r.num_devices; "
        "g = emjax.sweep(c.em_cell, 2, c.GRID, chunk_size=8, batch_size=1, progress=False); "
        f"np.savez({str(tmp_path / 'four.npz')!r}, **r.outputs); "
        f"np.savez({str(tmp_path / 'grouped.npz')!r}, **g.outputs)"
    )
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    process = _python(code, XLA_FLAGS=flags.strip())
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    single = emjax.sweep(em_cell, 2, GRID, chunk_size=8, progress=False)
    assert single.num_devices == 1
    with np.load(tmp_path / "four.npz") as four, np.load(tmp_path / "grouped.npz") as grouped:
        chex.assert_trees_all_close(dict(four), single.outputs, rtol=1e-12, atol=1e-13)
        chex.assert_trees_all_close(dict(grouped), single.outputs, rtol=1e-12, atol=1e-13)


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="non-empty dict"):
        emjax.sweep(em_cell, 0, {})
    with pytest.raises(ValueError, match="leading axis"):
        emjax.sweep(em_cell, 0, {"snr": 1.0, "seed": jnp.arange(2)})
    with pytest.raises(ValueError, match="different lengths"):
        emjax.sweep(em_cell, 0, {"s": {"snr": jnp.ones(2), "seed": jnp.arange(3)}})
    with pytest.raises(ValueError, match="is empty"):
        emjax.sweep(em_cell, 0, {"snr": jnp.ones(0), "seed": jnp.arange(3)})
    with pytest.raises(ValueError, match="key_axes"):
        emjax.sweep(em_cell, 0, GRID, key_axes=("noise",))
    with pytest.raises(ValueError, match=r"cannot be called as cell\(key, snr=..., seed=...\)"):
        emjax.sweep(lambda key, snr: {"a": snr}, 0, GRID)
    with pytest.raises(ValueError, match="chunk_size"):
        emjax.sweep(em_cell, 0, GRID, chunk_size=0)
    with pytest.raises(ValueError, match="key must be"):
        emjax.sweep(em_cell, "seven", GRID)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_reports_chunks_and_rate_only_where_asked():
    quiet = io.StringIO()
    bar = ChunkProgress(2, 10, None, stream=quiet)
    bar.advance(5)
    assert quiet.getvalue() == ""  # not a terminal: silent by default
    terminal = _Terminal()
    bar = ChunkProgress(2, 10, None, stream=terminal)
    bar.skip(5)
    bar.advance(5)
    text = terminal.getvalue()
    assert "\r" in text and "2/2 chunks" in text and "10/10 cells" in text and "cells/s" in text
    assert text.endswith("\n")
    forced = io.StringIO()
    ChunkProgress(1, 3, True, stream=forced).advance(3)
    assert forced.getvalue().count("\n") == 1
    silent = _Terminal()
    ChunkProgress(1, 3, False, stream=silent).advance(3)
    assert silent.getvalue() == ""
