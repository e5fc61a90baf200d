"""Ready-made cells, step tuning, trace summaries, and the ``emjax reproduce`` / ``emjax sweep`` commands."""

import csv
import dataclasses
import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from emjax.cli import main
from emjax.experiments import _synthetic
from emjax.experiments._summaries import iterations_to, measured_rate
from emjax.sweeps import ConvergenceCell, parameter_errors, tune_step_sizes

CELL = ConvergenceCell(emjax.SymMoLinE(), ("em", "gd"), num_steps=40, n=400, d=3, step_sizes={"gd": 0.5})


@pytest.fixture(scope="module")
def traces():
    return emjax.sweep(
        CELL, 0, {"snr": jnp.array([1.0, 4.0]), "seed": jnp.arange(3)}, key_axes=("seed",), progress=False
    ).outputs


def test_convergence_cell_records_every_trace(traces):
    assert traces["loss"].shape == (2, 3, 2, 41) and traces["step_length"].shape == (2, 3, 2, 40)
    assert traces["rate_final"].shape == (2, 3, 2) and traces["rate_truth"].shape == (2, 3)
    np.testing.assert_allclose(traces["expert_error"][..., 0], 1.0, rtol=1e-12)  # start: relative error 1
    np.testing.assert_allclose(traces["gate_error"][..., 0], 1.0, rtol=1e-12)
    assert np.all(traces["status"] == 0)
    em_losses = traces["loss"][:, :, 0]
    assert np.all(np.diff(em_losses, axis=-1) <= 1e-12)  # EM never increases L
    # The same start for every method, and the cell's truth is the data's: L(θ*) matches a direct call.
    np.testing.assert_array_equal(traces["loss"][..., 0, 0], traces["loss"][..., 1, 0])


def test_em_rate_read_from_traces_is_the_top_mim_eigenvalue_at_the_fixed_point(traces):
    measured = measured_rate(traces["step_length"][:, :, 0], floor=1e-9)
    theory = traces["rate_final"][:, :, 0]
    assert np.all(np.isfinite(measured))
    np.testing.assert_allclose(measured, theory, atol=0.03)
    assert np.all(theory[1] < theory[0])  # a higher SNR contracts faster


def test_parameter_errors_ignore_the_label_swap_and_permutation():
    truth = emjax.testing.random_params(emjax.SymMoLinE(), jax.random.key(0), 4, 2.0, 3.0)
    estimate = emjax.SymParams(w=-truth.w * 1.1, beta=-truth.beta)
    w_error, beta_error = parameter_errors(estimate, truth)
    np.testing.assert_allclose([w_error, beta_error], [0.1, 0.0], atol=1e-12)
    model = emjax.MoLinE(3)
    truth = emjax.testing.random_params(model, jax.random.key(1), 4)
    order = np.array([2, 0, 1])
    gate = truth.gate[order]
    swapped = emjax.MoEParams(gate=gate - gate[:1], experts=truth.experts[order], sigma=truth.sigma[order])
    errors = parameter_errors(jax.tree_util.tree_map(lambda leaf: jnp.stack([leaf, leaf]), swapped), truth)
    np.testing.assert_allclose(np.asarray(errors), 0.0, atol=1e-12)


def test_measured_rate_and_iterations_to_tolerance_on_known_sequences():
    t = np.arange(60)
    steps = np.stack([0.3 * 0.7**t, 2.0 * 0.2**t])
    np.testing.assert_allclose(measured_rate(steps, floor=1e-12), [0.7, 0.2], rtol=1e-10)
    assert np.isnan(measured_rate(np.full((1, 5), 1e-20), floor=1e-12)[0])
    gaps = np.array([[1.0, 0.1, 1e-7, 0.0], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(iterations_to(gaps, 1e-6), [2, 4])


def test_tuning_chooses_the_best_candidate_on_separate_instances():
    cell = ConvergenceCell(emjax.SymMoLinE(), ("em", "gd"), num_steps=20, n=300, d=3)
    tuned = tune_step_sizes(cell, 0, [2.0], num_instances=2, grids={"gd": (0.05, 0.5, 50.0)}, progress=False)
    scores = tuned.scores["gd"][0]
    assert np.isinf(scores[2]) or scores[2] > scores[1]  # a far too large step diverges
    assert scores[1] < scores[0]  # and a tiny one is slow
    assert tuned.step_sizes["gd"][0] == 0.5
    with pytest.raises(ValueError, match="same length"):
        tune_step_sizes(
            ConvergenceCell(emjax.SymMoLinE(), ("gd", "adam"), 5, 50, 2),
            0,
            [1.0],
            grids={"gd": (0.1, 1.0), "adam": (0.1,)},
        )


def test_convergence_cell_rejects_bad_configuration():
    with pytest.raises(ValueError, match="methods"):
        ConvergenceCell(emjax.SymMoLinE(), ("em", "newton"), 5, 50, 2)
    with pytest.raises(ValueError, match="num_steps"):
        ConvergenceCell(emjax.SymMoLinE(), ("em",), 0, 50, 2)
    with pytest.raises(ValueError, match="need a step size"):
        ConvergenceCell(emjax.SymMoLinE(), ("gd",), 5, 50, 2)(jax.random.key(0), 1.0)


def png_chunks(data: bytes) -> dict:
    """The chunks of a PNG file, {type: [data, ...]}, read with the format's own layout."""
    chunks, offset = {}, 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        chunks.setdefault(kind, []).append(data[offset + 8 : offset + 8 + length])
        offset += 12 + length
    return chunks


def test_reproduce_quick_writes_every_file(tmp_path, capsys, monkeypatch):
    # The synthetic experiments; Table 2 has its own, smaller, test (tests/test_table2.py). What is tested is the
    # command and its files, so the quick settings are shrunk further (as tests/test_cli_resume.py does): n = 400
    # and d = 3 instead of 2000 / 1000 and 10, 500 rows for the MIM curves instead of 5000, one MIM tuning
    # instance instead of two; the same sweeps, methods, SNR grid, instances and iterations. Measured: EM's β
    # error at iteration 100 is 0.036 (bound 0.1), and the measured EM rates are within 0.016 of λ_max(M) at EM's
    # final iterate (bound 0.05).
    figures = dataclasses.replace(_synthetic.FigureSettings.quick(), n=400, d=3)
    mim = dataclasses.replace(_synthetic.MimSettings.quick(), n=400, d=3, rate_n=500, tuning_instances=1)
    monkeypatch.setattr(_synthetic.FigureSettings, "quick", classmethod(lambda cls: figures))
    monkeypatch.setattr(_synthetic.MimSettings, "quick", classmethod(lambda cls: mim))
    assert main(["reproduce", "figure1", "figure2", "mim", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    expected = [
        "figure1.png",
        "figure2.png",
        "mim.png",
        "figure1.csv",
        "figure2.csv",
        "mim_rates.csv",
        "mim_fits.csv",
        "mim_iterations.csv",
        "step_sizes_figures.csv",
        "step_sizes_mim.csv",
        "reproduce.json",
    ]
    for name in expected:
        assert (tmp_path / name).stat().st_size > 0, name
    for name in ("figure1", "figure2", "mim"):  # a 300 dpi PNG and a PDF of each, no title drawn inside
        png, pdf = (tmp_path / f"{name}.png").read_bytes(), (tmp_path / f"{name}.pdf").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and pdf[:5] == b"%PDF-"
        chunks = png_chunks(png)
        x_per_metre, y_per_metre, unit = struct.unpack(">IIB", chunks[b"pHYs"][0])
        assert unit == 1 and round(x_per_metre * 0.0254) == round(y_per_metre * 0.0254) == 300
        caption = {"figure1": b"Figure 1: SymMoLinE", "figure2": b"Figure 2: SymMoLinE", "mim": b"MIM: "}[name]
        assert any(text.startswith(b"Title\x00" + caption) for text in chunks[b"tEXt"])  # metadata, not ink
    with open(tmp_path / "figure2.csv") as stream:
        rows = list(csv.DictReader(stream))
    em_final = [r for r in rows if r["method"] == "em" and r["iteration"] == "100"][0]
    assert float(em_final["beta_error_mean"]) < 0.1  # EM reaches the statistical plateau
    with open(tmp_path / "mim_fits.csv") as stream:
        fits = list(csv.DictReader(stream))
    linear = [r for r in fits if r["model"] == "SymMoLinE"]
    for row in linear:  # the rate read off EM's traces is λ_max(M) at EM's fixed point
        assert abs(float(row["rate_em_measured_median"]) - float(row["rate_em_final"])) < 0.05, row
    assert json.loads((tmp_path / "reproduce.json").read_text())["quick"] is True
    assert (tmp_path / "sweeps" / "quick" / "figures" / "sweep.json").exists()
    log = capsys.readouterr().out
    assert "wrote" in log
    assert "SymMoLinE, n=400, d=3," in log and "fits n=400," in log  # the shrunk settings were used


def test_sweep_command_writes_a_summary_and_refuses_a_changed_grid(tmp_path, capsys):
    args = [
        "sweep",
        "--snr",
        "1,4",
        "--seeds",
        "2",
        "--steps",
        "15",
        "--n",
        "200",
        "--d",
        "3",
        "--methods",
        "em,gd",
        "--step",
        "gd=0.5",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    assert main(args) == 0
    with open(tmp_path / "summary.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["snr"], r["method"]) for r in rows] == [("1", "em"), ("1", "gd"), ("4", "em"), ("4", "gd")]
    assert (tmp_path / "sweep" / "sweep.json").exists()
    assert main(args) == 0 and "1 loaded" in capsys.readouterr().out  # resumed from disk
    changed = [a if a != "1,4" else "1,5" for a in args]
    assert main(changed) == 2
    assert "different configuration" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", "--methods", "em,newton"])
