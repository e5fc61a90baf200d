"""Separate gate and expert covariates and offsets (emjax.covariates): GLM oracles, frozen entries that stay
put, parameter counts, and flexmix's own concomitant-model example (the patent data)."""

import json
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

import emjax

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def poisson_data(n=300, seed=0):
    """An intercept, two expert covariates, one gate covariate and an exposure, with Poisson counts."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, 2))
    u = rng.normal(size=n)
    exposure = rng.uniform(0.5, 4.0, size=n)
    y = rng.poisson(exposure * np.exp(0.3 + 0.4 * v[:, 0] - 0.2 * v[:, 1])).astype(float)
    return np.ones(n), u, v, exposure, y


def irls_poisson(design, y, offset, steps=50):
    """Independent oracle: the Poisson GLM with log link and offset, by Newton (IRLS) in NumPy."""
    beta = np.zeros(design.shape[1])
    for _ in range(steps):
        mu = np.exp(design @ beta + offset)
        beta = beta + np.linalg.solve(design.T @ (mu[:, None] * design), design.T @ (y - mu))
    mu = np.exp(design @ beta + offset)
    return beta, np.sqrt(np.diag(np.linalg.inv(design.T @ (mu[:, None] * design))))


# --------------------------------------------------------------------------- oracles (K = 1: one GLM)


def test_intercept_and_offset_give_the_closed_form_rate():
    ones, _, _, exposure, y = poisson_data()
    cov = emjax.covariates(gate=ones[:, None], expert=ones[:, None], offset=np.log(exposure))
    assert cov.x.shape == (300, 2)  # the intercept is shared, then the offset
    model = emjax.MoPoE(1)
    result = emjax.fit(model, emjax.em(trainable=cov.trainable(model)), cov.fixed(model), cov.x, y, 5)
    # The MLE of log λ in y ~ Poisson(t λ) is log(Σy / Σt), not the mean of log(y / t).
    np.testing.assert_allclose(
        cov.expert_coefficients(result.params)[0, 0], np.log(y.sum() / exposure.sum()), rtol=1e-12
    )
    assert float(result.params.experts[0, 1]) == 1.0


def test_one_poisson_expert_with_offset_is_the_glm():
    ones, u, v, exposure, y = poisson_data()
    design = np.c_[ones, v]
    beta, se = irls_poisson(design, y, np.log(exposure))
    cov = emjax.covariates(gate=np.c_[ones, u], expert=design, offset=np.log(exposure))
    model = emjax.MoPoE(1)
    mask = cov.trainable(model)
    result = emjax.fit(model, emjax.em(trainable=mask), cov.fixed(model), cov.x, y, 5)
    np.testing.assert_allclose(cov.expert_coefficients(result.params)[0], beta, rtol=1e-8, atol=1e-10)
    # With K = 1 the observed information is the GLM's X'WX: the standard errors agree too.
    errors = emjax.standard_errors(model, result.params, cov.x, y, trainable=mask)
    np.testing.assert_allclose(cov.expert_coefficients(errors)[0], se, rtol=1e-6)
    assert float(errors.experts[0, -1]) == 0.0  # the offset's coefficient is not estimated


def test_one_gaussian_expert_with_offset_is_least_squares_of_the_shifted_response():
    ones, u, v, exposure, _ = poisson_data()
    offset = np.log(exposure)
    rng = np.random.default_rng(1)
    design = np.c_[ones, v]
    y = design @ np.array([1.0, -0.5, 2.0]) + offset + 0.3 * rng.normal(size=len(ones))
    beta = np.linalg.lstsq(design, y - offset, rcond=None)[0]  # E[y] = x·β + o
    sigma = np.sqrt(np.mean((y - offset - design @ beta) ** 2))
    cov = emjax.covariates(gate=np.c_[ones, u], expert=design, offset=offset)
    model = emjax.MoLinE(1)
    result = emjax.fit(model, emjax.em(trainable=cov.trainable(model)), cov.fixed(model), cov.x, y, 3)
    np.testing.assert_allclose(cov.expert_coefficients(result.params)[0], beta, rtol=1e-10)
    np.testing.assert_allclose(result.params.sigma[0], sigma, rtol=1e-10)


# --------------------------------------------------------------------------- K > 1: the frozen entries


def _two_expert_restarts(cov, y):
    """Three restarts of K = 2 Poisson EM with separate covariates and an offset: one compiled program for every
    data set of 400 rows and five columns (a gate covariate, two expert covariates, the intercept and the offset)."""
    model = emjax.MoPoE(2)
    mask = cov.trainable(model)
    result = emjax.fit_restarts(
        model, emjax.em(trainable=mask), jax.random.key(0), cov.x, y, 3, 300, params=cov.fixed(model), tol=1e-10
    )
    return model, mask, result


@pytest.fixture(scope="module")
def two_experts():
    """A K = 2 Poisson fit with separate covariates and an offset."""
    ones, u, v, exposure, _ = poisson_data(n=400, seed=3)
    rng = np.random.default_rng(4)
    z = rng.random(400) < 1 / (1 + np.exp(-2.0 * u))
    rate = np.where(z, np.exp(1.0 + 0.5 * v[:, 0]), np.exp(-0.5 - 0.5 * v[:, 1]))
    y = rng.poisson(exposure * rate).astype(float)
    cov = emjax.covariates(gate=np.c_[ones, u], expert=np.c_[ones, v], offset=np.log(exposure))
    model, mask, result = _two_expert_restarts(cov, y)
    return cov, model, mask, result, y


def test_frozen_entries_keep_their_values_bit_for_bit(two_experts):
    cov, model, mask, result, _ = two_experts
    assert int(result.status) == emjax.Status.ok
    params = result.params
    assert cov.x.shape == (400, 5)  # 1, u | v1, v2 | offset
    np.testing.assert_array_equal(np.asarray(params.gate)[:, 2:], 0.0)  # no expert covariate in the gate
    np.testing.assert_array_equal(np.asarray(params.experts)[:, 1], 0.0)  # no gate covariate in the experts
    np.testing.assert_array_equal(np.asarray(params.experts)[:, -1], 1.0)  # the offset's coefficient
    # The fit found the generating model: the gate leans on u (slope about ±2).
    assert abs(float(cov.gate_coefficients(params)[1, 1])) > 1.0
    # restrict() leaves estimated entries alone and resets frozen ones.
    moved = emjax.MoEParams(gate=params.gate + 1.0, experts=params.experts + 1.0)
    restricted = cov.restrict(model, moved)
    np.testing.assert_array_equal(np.where(mask.gate, moved.gate, params.gate), restricted.gate)
    np.testing.assert_array_equal(np.where(mask.experts, moved.experts, params.experts), restricted.experts)


def test_counts_and_standard_errors_see_only_the_estimated_entries(two_experts):
    cov, model, mask, result, y = two_experts
    n, k, d_g, d_e = 400, 2, 2, 3
    count = d_g * (k - 1) + k * d_e
    assert emjax.num_parameters(model, result.params, mask) == count
    loss = emjax.neg_log_likelihood(model, result.params, cov.x, y)
    np.testing.assert_allclose(
        emjax.bic(model, result.params, cov.x, y, trainable=mask), 2 * n * loss + count * np.log(n), rtol=1e-14
    )
    errors = emjax.standard_errors(model, result.params, cov.x, y, trainable=mask)
    frozen_gate, frozen_experts = ~mask.gate, ~mask.experts
    assert np.all(np.asarray(errors.gate)[frozen_gate] == 0) and np.all(np.asarray(errors.experts)[frozen_experts] == 0)
    estimated = np.r_[np.asarray(cov.gate_coefficients(errors))[1], np.asarray(cov.expert_coefficients(errors)).ravel()]
    assert np.all(np.isfinite(estimated)) and np.all(estimated > 0)
    table = emjax.summary(model, result, cov.x, y, trainable=mask, feature_names=cov.feature_names)
    assert table.num_parameters == count
    assert "frozen" in str(table) and "offset" in str(table)


def test_gaussian_counts_include_every_sigma():
    ones, u, v, _, _ = poisson_data(n=50)
    cov = emjax.covariates(gate=np.c_[ones, u], expert=np.c_[ones, v])
    model = emjax.MoLinE(3)
    params = cov.fixed(model)
    assert emjax.num_parameters(model, params, cov.trainable(model)) == 2 * 2 + 3 * 3 + 3


def test_same_columns_are_the_plain_model():
    model = emjax.MoLinE(2)
    truth = emjax.testing.random_params(model, jax.random.key(0), d=3)
    x, y = emjax.sample(model, truth, jax.random.key(1), 200)
    cov = emjax.covariates(gate=x, expert=x)
    np.testing.assert_array_equal(cov.x, x)  # shared columns appear once: no duplicate, singular design
    mask = cov.trainable(model)
    assert all(bool(np.all(leaf)) for leaf in jax.tree_util.tree_leaves(mask))
    start = emjax.testing.random_params(model, jax.random.key(2), d=3)  # a generic start (the truth's program)
    plain = emjax.fit(model, emjax.em(), start, x, y, 30)
    restricted = emjax.fit(model, emjax.em(trainable=mask), cov.restrict(model, start), cov.x, y, 30)
    np.testing.assert_array_equal(plain.losses, restricted.losses)
    assert int(restricted.status) == emjax.Status.ok


# --------------------------------------------------------------------------- flexmix's patent example


def test_patent_best_of_ten_reaches_flexmix():
    data = pd.read_csv(FIXTURES / "patent.csv")
    reference = json.loads((FIXTURES / "r_reference_fits.json").read_text())["patent"]
    n = len(data)
    ones = pd.DataFrame({"(Intercept)": np.ones(n)})
    cov = emjax.covariates(gate=ones.join(data[["RDS"]]), expert=ones.join(data[["lgRD"]]))
    assert cov.feature_names == ("(Intercept)", "RDS", "lgRD")
    model = emjax.MoPoE(3)
    mask = cov.trainable(model)
    assert emjax.num_parameters(model, cov.fixed(model), mask) == reference["df"]
    result = emjax.fit_restarts(
        model, emjax.em(trainable=mask), jax.random.key(0), cov.x, data["Patents"], 10, 2000, tol=1e-10,
        params=cov.fixed(model),
    )  # fmt: skip
    loglik = -n * float(result.final_loss)
    assert loglik >= reference["loglik"] - 1e-6 * n
    # Same optimum: flexmix's coefficients (it stops at a relative change of 1e-6) up to the label order.
    ours = np.asarray(cov.expert_coefficients(result.params))
    theirs = np.asarray(reference["coefficients"])
    order = [int(np.argmin(np.abs(theirs[:, 0] - b0))) for b0 in ours[:, 0]]
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(ours, theirs[order], atol=2e-2)
    gate = np.asarray(cov.gate_coefficients(result.params))
    concomitant = np.asarray(reference["concomitant"])[order]  # both logit vectors relative to their row 0
    np.testing.assert_allclose(gate - gate[0], concomitant - concomitant[0], rtol=5e-2, atol=5e-2)


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_with_a_clear_message():
    ones, u, v, exposure, _ = poisson_data(n=20)
    with pytest.raises(ValueError, match="gate has 20 rows, expert has 19"):
        emjax.covariates(gate=np.c_[ones, u], expert=v[:19])
    with pytest.raises(ValueError, match="offset must be finite"):
        emjax.covariates(gate=ones[:, None], expert=v, offset=np.where(np.arange(20) == 3, np.nan, 0.0))
    with pytest.raises(ValueError, match=r"offset must have shape \(n,\) = \(20,\)"):
        emjax.covariates(gate=ones[:, None], expert=v, offset=exposure[:, None])
    with pytest.raises(ValueError, match=r"gate must have shape \(n, d_g\)"):
        emjax.covariates(gate=u, expert=v)
    with pytest.raises(ValueError, match="expert must be finite"):
        emjax.covariates(gate=ones[:, None], expert=np.where(v > 1, np.inf, v))
    cov = emjax.covariates(gate=ones[:, None], expert=v, offset=np.log(exposure))
    with pytest.raises(ValueError, match="softmax classifier would add the offset to every class logit"):
        cov.trainable(emjax.MoLogE(2, num_classes=3))
    with pytest.raises(ValueError, match="need a K-expert model"):
        cov.trainable(emjax.SymMoLinE())
    with pytest.raises(ValueError, match=r"params.gate must have shape \(2, 4\)"):
        cov.restrict(emjax.MoPoE(2), emjax.MoPoE(2).placeholder(3))
    # Without an offset, softmax experts are fine: the class coefficients are masked per covariate.
    plain = emjax.covariates(gate=np.c_[ones, u], expert=v)
    mask = plain.trainable(emjax.MoLogE(2, num_classes=3))
    assert mask.experts.shape == (2, 4, 3) and not mask.experts[:, :2].any() and mask.experts[:, 2:].all()


def test_restricted_mim_is_the_jacobian_of_masked_em(two_experts):
    cov, model, mask, result, y = two_experts
    params = result.params  # a fixed point: the fit stopped at an estimated distance of 1e-10
    index = cov.estimated_index(model, params)
    assert index.size == emjax.num_parameters(model, params, mask)

    @jax.jit  # one program (eager, every primitive of the forward-mode pass would compile on its own)
    def jacobian(free, params, x, y, mask):
        def em_map(free):
            vector = model.flatten(params).at[index].set(free)
            return model.flatten(emjax.em_step(model, model.unflatten(vector, params), x, y, mask))[index]

        return jax.jacfwd(em_map)(free)

    jacobian = jacobian(model.flatten(params)[index], params, cov.x, y, mask)
    full = emjax.missing_information_matrix(model, params, cov.x, y, trainable=mask)
    matrix = full[np.ix_(index, index)]
    np.testing.assert_allclose(jacobian, matrix, atol=1e-7)
    frozen = np.setdiff1d(np.arange(full.shape[0]), index)
    np.testing.assert_allclose(full[frozen], 0, atol=1e-12)  # the frozen entries never move
    np.testing.assert_allclose(full[:, frozen], 0, atol=1e-12)
    rate = float(emjax.em_rate(model, params, cov.x, y, trainable=mask))
    np.testing.assert_allclose(rate, np.max(np.linalg.eigvals(np.asarray(matrix)).real), rtol=1e-10)
    assert 0 < rate < 1


def test_a_constant_offset_is_not_a_degenerate_fit():
    """A constant offset repeats the intercept's direction in the joint design; only the columns an expert
    estimates make its design, so the fit is healthy (it used to be flagged degenerate)."""
    rng = np.random.default_rng(0)
    n = 400
    u, v = rng.normal(size=n), rng.normal(size=(n, 2))
    ones, offset = np.ones((n, 1)), np.full(n, 0.7)
    first = rng.random(n) < 1 / (1 + np.exp(-2 * u))
    y = rng.poisson(np.exp(np.where(first, 1.0 + 0.5 * v[:, 0], -0.5 * v[:, 1]) + offset)).astype(float)
    cov = emjax.covariates(gate=np.c_[ones, u], expert=np.c_[ones, v], offset=offset)
    model, mask, result = _two_expert_restarts(cov, y)  # the fixture's compiled restarts: the same data shape
    assert int(result.status) == emjax.Status.max_steps or int(result.status) == emjax.Status.ok
    assert not bool(model.is_degenerate(result.params, cov.x, y, free=model.free_mask(result.params, mask)))
    assert bool(model.is_degenerate(result.params, cov.x, y))  # without the mask the design is singular


def test_new_rows_keep_the_layout():
    ones = np.ones((5, 1))
    u, v = np.arange(5.0)[:, None], np.arange(5.0)[::-1, None] + 0.5
    cov = emjax.covariates(gate=np.c_[ones, u], expert=np.c_[ones, v], offset=np.zeros(5))
    new = cov.new_rows(np.c_[[1.0], [7.0]], np.c_[[1.0], [1.0]], offset=np.array([0.3]))
    # one row whose expert covariate equals the intercept: still its own column, as when fitted
    np.testing.assert_array_equal(new.x, [[1.0, 7.0, 1.0, 0.3]])
    assert new.feature_names == cov.feature_names and new.expert_columns == cov.expert_columns
    with pytest.raises(ValueError, match="widths"):
        cov.new_rows(ones, np.c_[ones, v], offset=np.zeros(5))
    with pytest.raises(ValueError, match="offset"):
        cov.new_rows(np.c_[ones, u], np.c_[ones, v])
    with pytest.raises(ValueError, match="values differ"):
        cov.new_rows(np.c_[ones, u], np.c_[2 * ones, v], offset=np.zeros(5))
