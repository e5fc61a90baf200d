"""Table 2 (docs/math.md §8): the Random-Invert experiment end to end, on a tiny Fashion-MNIST-format folder."""

import csv

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from emjax.cli import main
from emjax.datasets import ImageDataset, add_intercept, digits, random_invert
from emjax.experiments._table2 import Table2Cell, Table2Settings, flag_agreement
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
    np.testing.assert_allclose(emjax.predict_log_proba(emjax.MoLogE(2, 2), params, x), expected, rtol=1e-12)
    top = np.asarray(jnp.argmax(gate, axis=-1) == 1)  # [True, False, True]
    agreement, share = flag_agreement(params, x, jnp.asarray(~top))  # a swapped labelling agrees fully
    assert float(agreement) == 1.0 and float(share) == pytest.approx(2 / 3)


def test_settings_validate_their_data_source():
    with pytest.raises(ValueError, match="data must be one of"):
        Table2Settings(data="mnist")
    with pytest.raises(ValueError, match="unknown methods"):
        Table2Cell.from_settings(Table2Settings(), digits().subsample(20, 10), methods=("em", "newton"))


def test_settings_validate_start_and_validation():
    with pytest.raises(ValueError, match="start must be one of"):
        Table2Settings(start="zeros")
    for bad in (0.5, -0.1, "0.1"):
        with pytest.raises(ValueError, match="validation must be a fraction"):
            Table2Settings(validation=bad)
    assert Table2Settings.quick("digits", start="data", validation=0.2).validation == 0.2
    assert Table2Settings().sweep_name == "table2-digits"  # the defaults keep the folder of earlier runs
    assert Table2Settings(data="fmnist", start="data", validation=0.1).sweep_name == "table2-fmnist-data-v0.1"
    with pytest.raises(SystemExit):
        main(["reproduce", "table2", "--validation", "0.6"])


def test_data_start_and_validation_early_stopping():
    """start="data" is emjax.init_params for every method; with a validation split each method reports the
    iterate of lowest held-out loss, which an independent evaluation of every iterate confirms."""
    settings = Table2Settings(num_iterations=6, start="data", validation=0.2, methods=("em", "gd"))
    data = digits().subsample(250, 100, seed=1)
    cell = Table2Cell.from_settings(settings, data, step_sizes={"gd": 0.25})
    assert cell.x_train.shape[0] + cell.x_val.shape[0] == 250 and cell.x_val.shape[0] == 50
    key = jax.random.key(3)
    out = eqx.filter_jit(lambda cell, key: cell(key))(cell, key)
    assert out["validation_loss"].shape == (2, 7) and out["selected_iteration"].shape == (2,)

    # the same data, start and fits by hand
    key_train, _, key_init = jax.random.split(key, 3)
    x_train = add_intercept(random_invert(key_train, cell.x_train, 0.5)[0])
    y_train = cell.y_train.astype(x_train.dtype)
    x_val = add_intercept(random_invert(jax.random.fold_in(key, 3), cell.x_val, 0.5)[0])
    start = emjax.init_params(cell.model, key_init, x_train, y_train)
    np.testing.assert_allclose(out["train_loss"][:, 0], emjax.neg_log_likelihood(cell.model, start, x_train, y_train))
    result = emjax.fit(cell.model, emjax.em(), start, x_train, y_train, 6, keep_history=True)
    by_hand = [
        float(
            emjax.neg_log_likelihood(
                cell.model, jax.tree_util.tree_map(lambda leaf, t=t: leaf[t], result.params_history), x_val, cell.y_val
            )
        )
        for t in range(7)
    ]
    np.testing.assert_allclose(out["validation_loss"][0], by_hand, rtol=2e-5)
    assert int(out["selected_iteration"][0]) == int(np.argmin(by_hand))
    for m in range(2):
        assert int(out["selected_iteration"][m]) == int(np.nanargmin(out["validation_loss"][m]))
    assert float(out["train_loss"][0, 0]) < np.log(10) - 0.5  # the data-driven start is far from uniform


def test_large_data_is_saved_cell_by_cell():
    from emjax.experiments._table2 import table2_chunk_size

    small = digits()
    assert table2_chunk_size(small) is None  # digits: one compiled call for all instances
    large = ImageDataset(
        np.zeros((10_000, 4), np.float32),
        np.arange(10_000) % 10,
        np.zeros((10, 4), np.float32),
        np.arange(10) % 10,
        image_shape=(2, 2),
        num_classes=10,
        name="large",
    )
    assert table2_chunk_size(large) == jax.device_count()


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
