"""emjax.summary: the printed fit summary and its numbers, against computations written out here."""

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import emjax

KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def lin_fit():
    model = emjax.MoLinE(2)
    truth = emjax.testing.random_params(model, jax.random.key(4), 2, gate_norm=1.5, expert_norm=2.0, sigma=0.5)
    x, y = emjax.sample(model, truth, jax.random.key(5), 300)
    result = emjax.fit(model, emjax.em(), truth, x, y, 400, tol=1e-10)
    assert int(result.status) == emjax.Status.ok
    return model, result, x, y


def _mixture_nll(gate, experts, sigma, x, y):
    """-mean log sum_k softmax(x W)_k N(y; x·β_k, σ_k²), written out."""
    log_gate = jax.nn.log_softmax(x @ gate.T, axis=1)
    mean = x @ experts.T
    variance = sigma[None, :] ** 2
    log_normal = -0.5 * jnp.log(2 * jnp.pi * variance) - (y[:, None] - mean) ** 2 / (2 * variance)
    return -jnp.mean(jax.nn.logsumexp(log_gate + log_normal, axis=1))


def test_header_numbers_match_direct_computations(lin_fit):
    model, result, x, y = lin_fit
    table = emjax.summary(model, result, x, y)
    p, n = result.params, x.shape[0]
    log_likelihood = -n * float(_mixture_nll(p.gate, p.experts, p.sigma, x, y))
    k = 2 + 4 + 2  # gate row 1 (d), two experts (d each), two σ
    assert table.model == "MoLinE(K=2)" and table.num_observations == n and table.num_parameters == k
    assert table.log_likelihood == pytest.approx(log_likelihood, rel=1e-12)
    assert table.aic == pytest.approx(-2 * log_likelihood + 2 * k, rel=1e-12)
    assert table.bic == pytest.approx(-2 * log_likelihood + k * math.log(n), rel=1e-12)
    assert table.status == emjax.Status.ok and table.status_name == "Status.ok"
    assert table.num_steps == int(result.num_steps) and table.converged is True
    assert table.final_loss == pytest.approx(-log_likelihood / n, rel=1e-12)
    assert table.best_restart is None and table.ridge == 0.0


def test_coefficients_match_the_inverse_hessian_and_normal_tails(lin_fit):
    model, result, x, y = lin_fit
    table = emjax.summary(model, result, x, y)
    p, n = result.params, x.shape[0]

    def nll(free):  # the free entries: gate row 1, experts, σ
        gate = jnp.concatenate([p.gate[:1], free[:2][None]])
        return _mixture_nll(gate, free[2:6].reshape(2, 2), free[6:], x, y)

    free = jnp.concatenate([p.gate[1], p.experts.reshape(-1), p.sigma])
    covariance = np.linalg.inv(n * np.asarray(jax.hessian(nll)(free)))
    errors = np.sqrt(np.diag(covariance))
    names = ["gate[1].x0", "gate[1].x1", "expert[0].x0", "expert[0].x1", "expert[1].x0", "expert[1].x1"]
    names += ["sigma[0]", "sigma[1]"]
    rows = {row.name: row for row in table.coefficients}
    assert [row.name for row in table.coefficients] == ["gate[0].x0", "gate[0].x1"] + names
    for j, name in enumerate(names):
        row = rows[name]
        assert row.fixed == ""
        assert row.estimate == pytest.approx(float(free[j]), rel=1e-14)
        assert row.std_error == pytest.approx(errors[j], rel=1e-6)
        assert row.z == pytest.approx(float(free[j]) / errors[j], rel=1e-6)
        expected_p = 2 * stats.norm.sf(abs(row.z))
        assert row.p_value == pytest.approx(expected_p, rel=1e-9, abs=1e-300)
    for name in ("gate[0].x0", "gate[0].x1"):
        row = rows[name]
        assert row.fixed == "pinned" and row.estimate == 0.0
        assert math.isnan(row.std_error) and math.isnan(row.z) and math.isnan(row.p_value)
    assert table.blocks == ("gate", "expert[0]", "expert[1]", "sigma")


def test_printed_summary(lin_fit):
    model, result, x, y = lin_fit
    table = emjax.summary(model, result, x, y)
    text = str(table)
    assert text == repr(table)
    assert "Status.ok" in text and "Status: " in text
    assert f"{table.log_likelihood:.4f}" in text and f"{table.aic:.4f}" in text and f"{table.bic:.4f}" in text
    assert "Converged:" in text and text.count("(pinned)") == 2
    lines = text.splitlines()
    for block in table.blocks:
        assert any(line.startswith(block) and "std. error" in line and "P>|z|" in line for line in lines), block
    for row in table.coefficients:
        line = next(line for line in lines if line.startswith(row.name + " "))
        assert f"{row.estimate:.4f}" in line
        if not row.fixed:
            assert f"{row.std_error:.4f}" in line
    assert "Restarts:" not in text and "Ridge:" not in text


def test_data_views_and_feature_names(lin_fit):
    model, result, x, y = lin_fit
    frame = pd.DataFrame(np.asarray(x), columns=["age", "income"])
    table = emjax.summary(model, result, frame, pd.Series(np.asarray(y)))
    assert [row.name for row in table.coefficients][:4] == [
        "gate[0].age",
        "gate[0].income",
        "gate[1].age",
        "gate[1].income",
    ]
    assert "expert[1].income" in str(table)
    named = emjax.summary(model, result, x, y, feature_names=("a", "b"))
    assert named.coefficients[-3].name == "expert[1].b"
    plain = emjax.summary(model, result, x, y)
    columns = plain.to_dict()
    assert set(columns) == {"block", "name", "estimate", "std_error", "z", "p_value", "fixed"}
    np.testing.assert_array_equal(columns["estimate"], [row.estimate for row in plain.coefficients])
    df = plain.to_dataframe()
    assert list(df.index) == [row.name for row in plain.coefficients]
    np.testing.assert_array_equal(df["std_error"].to_numpy(), columns["std_error"])
    # The numbers do not depend on how the data came in.
    np.testing.assert_array_equal(table.to_dict()["std_error"], columns["std_error"])
    with pytest.raises(ValueError, match="feature_names must name the d = 2 columns"):
        emjax.summary(model, result, x, y, feature_names=["a"])


def test_to_dataframe_without_pandas(lin_fit, monkeypatch):
    model, result, x, y = lin_fit
    table = emjax.summary(model, result, x, y)
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(ImportError, match="needs pandas"):
        table.to_dataframe()


def test_params_alone_frozen_entries_and_refusals(lin_fit):
    model, result, x, y = lin_fit
    alone = emjax.summary(model, result.params, x, y)
    assert alone.status is None and "Status" not in str(alone) and "Steps:" not in str(alone)
    assert alone.log_likelihood == emjax.summary(model, result, x, y).log_likelihood
    trainable = emjax.MoEParams(gate=jnp.array([True, False]), experts=jnp.array([True, True]), sigma=None)
    frozen = emjax.summary(model, result.params, x, y, trainable)
    assert frozen.num_parameters == 6
    assert [row.fixed for row in frozen.coefficients[:4]] == ["pinned", "pinned", "frozen", "frozen"]
    assert str(frozen).count("(frozen)") == 2
    assert frozen.aic == pytest.approx(alone.aic - 4, rel=1e-12)
    batched = jax.tree_util.tree_map(lambda leaf: jnp.stack([leaf, leaf]), result)
    with pytest.raises(ValueError, match="summary takes one fit"):
        emjax.summary(model, batched, x, y)
    with pytest.raises(ValueError, match="params must be an emjax.MoEParams"):
        emjax.summary(model, emjax.SymParams(w=jnp.zeros(2), beta=jnp.zeros(2)), x, y)
    with pytest.raises(ValueError, match="call it outside jit"):
        jax.jit(lambda params: emjax.summary(model, params, x, y).aic)(result.params)


def test_restarts_softmax_experts_and_a_status_note():
    model = emjax.MoLogE(2, 3)
    truth = emjax.testing.random_params(model, jax.random.key(6), 2, expert_norm=2.0)
    x, y = emjax.sample(model, truth, jax.random.key(7), 200)
    result = emjax.fit_restarts(model, emjax.em(), KEY, x, y, 2, 2, tol=0.0)  # tol 0 is never met
    table = emjax.summary(model, result, x, y)
    text = str(table)
    assert table.status_name == "Status.max_steps" and "Status.max_steps: the tolerance was not met" in text
    assert f"Restarts:               best of 2 (#{int(result.best_restart)})" in text
    assert table.model == "MoLogE(K=2, C=3)" and table.blocks == ("gate", "expert[0]", "expert[1]")
    pinned = [row.name for row in table.coefficients if row.fixed == "pinned"]
    assert pinned == ["gate[0].x0", "gate[0].x1"] + [f"expert[{k}].class0.x{j}" for k in (0, 1) for j in (0, 1)]
    assert table.num_parameters == 2 + 2 * 2 * 2
    row = next(row for row in table.coefficients if row.name == "expert[1].class2.x1")
    assert row.estimate == pytest.approx(float(result.params.experts[1, 1, 2]), rel=1e-14)


def test_symmetric_model_and_one_expert_baseline():
    model = emjax.SymMoLinE()
    truth = emjax.SymParams(w=jnp.array([1.0, 0.0]), beta=jnp.array([0.0, 2.0]))
    x, y = emjax.sample(model, truth, jax.random.key(0), 300)
    fitted = emjax.fit(model, emjax.em(), truth, x, y, 100).params
    table = emjax.summary(model, fitted, x, y)
    assert table.blocks == ("w", "beta") and [row.name for row in table.coefficients][2:] == ["beta.x0", "beta.x1"]
    se = emjax.standard_errors(model, fitted, x, y)
    assert table.coefficients[3].std_error == pytest.approx(float(se.beta[1]), rel=1e-14)

    one = emjax.MoLinE(1)
    fit = emjax.fit(one, emjax.em(), emjax.init_params(one, KEY, x, y), x, y, 1)
    baseline = emjax.summary(one, fit, x, y)
    assert baseline.num_parameters == 3 and all(row.fixed == "pinned" for row in baseline.coefficients[:2])
    assert "gate[0].x1" in str(baseline)


def test_a_tree_names_its_gate_rows_by_their_path():
    model = emjax.HierarchicalMoE(emjax.GaussianExpert(), (2, 3))
    truth = emjax.testing.random_params(model, jax.random.key(0), 2, expert_norm=2.0, sigma=0.5)
    x, y = emjax.sample(model, truth, jax.random.key(1), 300)
    names = [row.name for row in emjax.summary(model, truth, x, y).coefficients if row.block == "gates"]
    paths = ["0", "1", "0.0", "0.1", "0.2", "1.0", "1.1", "1.2"]  # breadth-first: the root's gate, then level 1's
    assert names == [f"gate[{path}].x{j}" for path in paths for j in range(2)]
    experts = [row.name for row in emjax.summary(model, truth, x, y).coefficients if row.block.startswith("expert")]
    assert experts[:2] == ["expert[0].x0", "expert[0].x1"] and len(experts) == 12


def test_a_non_uniform_tree_prints_its_long_description():
    # "HierarchicalMoE(3x(2,1,3), GaussianExpert)" is longer than half the header: it used to fail to format
    model = emjax.HierarchicalMoE(emjax.GaussianExpert(), (3, (2, 1, 3)))
    truth = emjax.testing.random_params(model, jax.random.key(0), 2, expert_norm=2.0, sigma=0.5)
    x, y = emjax.sample(model, truth, jax.random.key(1), 300)
    table = emjax.summary(model, truth, x, y)
    text = str(table)
    assert model.describe() in text and "gate[2.2].x1" in text
    paths = ["0", "1", "2", "0.0", "0.1", "1.0", "2.0", "2.1", "2.2"]  # breadth-first; node 1 has one child
    assert [row.name for row in table.coefficients if row.block == "gates"] == [
        f"gate[{path}].x{j}" for path in paths for j in range(2)
    ]
