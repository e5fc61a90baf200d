"""Table 2 (docs/math.md §8): the Random-Invert experiment end to end, on a tiny Fashion-MNIST-format folder."""

import csv

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emjax.cli import main
from emjax.datasets import digits
from emjax.experiments._table2 import Table2Cell, Table2Settings, flag_agreement, predictive_log_probs
from emjax.models import MoEParams
from tests.test_datasets import fake_fashion, real_fashion_mnist_folder


def test_predictive_distribution_and_flag_agreement_by_hand():
    x = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    params = MoEParams(
        gate=jnp.array([[0.0, 0.0], [2.0, -1.0]]),
        experts=jnp.array([[[0.0, 1.0], [0.0, -1.0]], [[0.0, 0.5], [0.0, 2.0]]]),
    )
    gate = jax.nn.softmax(x @ params.gate.T, axis=-1)
    experts = jnp.stack([jax.nn.softmax(x @ params.experts[k], axis=-1) for k in range(2)], axis=1)
    expected = jnp.log(jnp.sum(gate[:, :, None] * experts, axis=1))
    np.testing.assert_allclose(predictive_log_probs(params, x), expected, rtol=1e-12)
    top = np.asarray(jnp.argmax(gate, axis=-1) == 1)  # [True, False, True]
    agreement, share = flag_agreement(params, x, jnp.asarray(~top))  # a swapped labelling agrees fully
    assert float(agreement) == 1.0 and float(share) == pytest.approx(2 / 3)


def test_settings_validate_their_data_source():
    with pytest.raises(ValueError, match="data must be one of"):
        Table2Settings(data="mnist")
    with pytest.raises(ValueError, match="unknown methods"):
        Table2Cell.from_settings(Table2Settings(), digits().subsample(20, 10), methods=("em", "newton"))


def test_fashion_mnist_without_a_path(no_default_fashion, monkeypatch):
    with pytest.raises(SystemExit, match="apt-get install dataset-fashion-mnist"):
        main(["reproduce", "table2", "--data", "fmnist", "--quick", "--out", str(no_default_fashion / "out")])
    with pytest.raises(FileNotFoundError, match="EMJAX_FASHION_MNIST"):
        Table2Settings(data="fmnist").load()
    arrays = fake_fashion(no_default_fashion / "fm")
    monkeypatch.setenv("EMJAX_FASHION_MNIST", str(no_default_fashion / "fm"))
    np.testing.assert_array_equal(Table2Settings(data="fmnist").load().y_train, arrays["train-labels-idx1-ubyte"])


def test_table2_cell_on_real_fashion_mnist():
    """A small cell on the real files (600 / 300 images, 10 iterations): EM learns, the baseline descends."""
    real_fashion_mnist_folder()
    settings = Table2Settings(data="fmnist", num_iterations=10, n_train=600, n_test=300)
    data = settings.load()
    assert (data.n_train, data.n_test, data.image_shape) == (600, 300, (28, 28))
    cell = Table2Cell.from_settings(settings, data, step_sizes={"gd": 0.05}, methods=("em", "gd"))
    out = eqx.filter_jit(lambda cell, key: cell(key))(cell, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(out["status"]), 0)
    accuracy, train_loss = np.asarray(out["test_accuracy"]), np.asarray(out["train_loss"])
    assert np.all(accuracy[:, 0] < 0.3)  # the small random start is near chance (0.1)
    assert accuracy[0, -1] > 0.6  # EM after 10 iterations
    assert train_loss[0, -1] < 0.2 * train_loss[0, 0]
    assert np.all(np.diff(train_loss[0]) <= 1e-5)  # EM never increases its objective (float32)
    assert train_loss[1, -1] < train_loss[1, 0]  # gradient descent descends


def test_reproduce_table2_on_a_fashion_mnist_format_folder(tmp_path, capsys):
    fake_fashion(tmp_path / "fm", n_train=80, n_test=30, size=(5, 5), compressed=("train-images-idx3-ubyte",))
    out = tmp_path / "out"
    args = [
        "reproduce",
        "table2",
        "--data",
        "fmnist",
        "--path",
        str(tmp_path / "fm"),
        "--quick",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    for name in ("table2.md", "table2.csv", "table2_trajectory.csv", "table2.png", "table2.pdf", "reproduce.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "table2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "table2.md").read_text()
    for label in ("| EM |", "| gradient EM |", "| gradient descent |", "| Adam |"):
        assert label in markdown
    with open(out / "table2_trajectory.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 4 * 101
    em = [r for r in rows if r["method"] == "em"]
    assert float(em[0]["cross_entropy_mean"]) == pytest.approx(np.log(10), abs=0.05)  # a near-uniform start
    starts = {r["train_loss_mean"] for r in rows if r["iteration"] == "0"}
    assert len(starts) == 1  # every method starts from the same point
    assert float(em[-1]["train_loss_mean"]) < float(em[0]["train_loss_mean"]) - 0.5
    with open(out / "table2.csv") as stream:
        summary = {r["method"]: r for r in csv.DictReader(stream)}
    assert set(summary) == {"em", "gradient_em", "gd", "adam"}
    assert all(0.5 <= float(r["flag_agreement_mean"]) <= 1.0 for r in summary.values())
    assert summary["em"]["step"] == "" and float(summary["gd"]["step"]) > 0
    capsys.readouterr()
    assert main(args) == 0  # a re-run resumes every sweep from disk
    assert "0 chunks computed, 1 loaded" in capsys.readouterr().out
