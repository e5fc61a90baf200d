"""Observation weights (issue 18, item 1): a frequency weight is the same as repeating the row.

Oracles: the expanded data set (row n repeated v_n times) for every quantity (fit, loss, steps, information,
standard errors, AIC/BIC with n = sum of the weights); removing rows for zero weights; invariance to scaling
the weights; a vmapped batch of weight vectors equal to one call per vector.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax

# Hasselblad (1969): deaths per day of women over 80 in the London Times, 1910-1912. Counts 0..9 seen on
# these many days; the classic two-component Poisson mixture on which EM is famously slow.
COUNTS = np.arange(10.0)
DAYS = np.array([162, 267, 271, 185, 111, 61, 27, 8, 3, 1.0])
MODEL = emjax.MoPoE(2)
START = emjax.MoEParams(gate=jnp.array([[0.0], [0.3]]), experts=jnp.array([[0.2], [1.2]]), sigma=None)


def _close(a, b, rtol=1e-10, atol=1e-12):
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


@pytest.fixture(scope="module")
def hasselblad():
    weighted = (np.ones((10, 1)), COUNTS, DAYS)
    expanded = (np.ones((int(DAYS.sum()), 1)), np.repeat(COUNTS, DAYS.astype(int)))
    # EM's rate here is 0.996: SQUAREM-accelerated EM reaches round-off in tens of cycles
    solver = emjax.squarem(emjax.em())
    fit_w = emjax.fit(MODEL, solver, START, *weighted[:2], 500, tol=1e-11, weights=DAYS)
    fit_e = emjax.fit(MODEL, solver, START, *expanded, 500, tol=1e-11)
    return weighted, expanded, fit_w, fit_e


def test_hasselblad_weighted_fit_equals_the_expanded_one(hasselblad):
    (x, y, v), expanded, fit_w, fit_e = hasselblad
    assert int(fit_w.status) == emjax.Status.ok and int(fit_e.status) == emjax.Status.ok
    _close(fit_w.params, fit_e.params)
    np.testing.assert_allclose(fit_w.final_loss, fit_e.final_loss, rtol=1e-12)
    np.testing.assert_allclose(fit_w.final_loss, emjax.neg_log_likelihood(MODEL, fit_e.params, *expanded), rtol=1e-12)
    # plain EM: the same iterates and losses, step by step
    em_w = emjax.fit(MODEL, emjax.em(), START, x, y, 20, weights=v)
    em_e = emjax.fit(MODEL, emjax.em(), START, *expanded, 20)
    _close(em_w.params, em_e.params)
    np.testing.assert_allclose(em_w.losses, em_e.losses, rtol=1e-13)
    assert np.all(np.diff(np.asarray(em_w.losses)) <= 1e-15)  # EM never increases the weighted loss
    # the classical answer: mixing weight about 0.36 on a rate of about 1.26, the rest on about 2.66
    rates = np.sort(np.exp(np.asarray(fit_w.params.experts[:, 0])))
    np.testing.assert_allclose(rates, [1.256, 2.663], atol=2e-3)


def test_hasselblad_inference_uses_the_sum_of_the_weights(hasselblad):
    (x, y, v), expanded, fit_w, _ = hasselblad
    p = fit_w.params
    _close(emjax.standard_errors(MODEL, p, x, y, weights=v), emjax.standard_errors(MODEL, p, *expanded))
    for criterion in (emjax.bic, emjax.aic):
        np.testing.assert_allclose(criterion(MODEL, p, x, y, weights=v), criterion(MODEL, p, *expanded), rtol=1e-12)
    n = DAYS.sum()
    k = emjax.num_parameters(MODEL, p)
    bic = 2 * n * float(emjax.neg_log_likelihood(MODEL, p, x, y, weights=v)) + k * np.log(n)
    np.testing.assert_allclose(emjax.bic(MODEL, p, x, y, weights=v), bic, rtol=1e-14)
    table = emjax.summary(MODEL, fit_w, x, y, weights=v)
    assert table.num_observations == n
    np.testing.assert_allclose(table.bic, emjax.bic(MODEL, p, *expanded), rtol=1e-12)
    np.testing.assert_allclose(table.log_likelihood, -n * float(fit_w.final_loss), rtol=1e-12)
    for name in ("complete_information", "missing_information", "missing_information_matrix", "mim_eigenvalues"):
        fn = getattr(emjax, name)
        _close(fn(MODEL, p, x, y, weights=v), fn(MODEL, p, *expanded))
    np.testing.assert_allclose(emjax.em_rate(MODEL, p, x, y, weights=v), emjax.em_rate(MODEL, p, *expanded), 1e-10)


def test_hasselblad_every_step_and_map_equals_the_expanded_one(hasselblad):
    (x, y, v), (xe, ye), _, _ = hasselblad
    pairs = [
        (emjax.em_step(MODEL, START, x, y, weights=v), emjax.em_step(MODEL, START, xe, ye)),
        (
            emjax.mirror_descent_step(MODEL, START, x, y, 0.4, weights=v),
            emjax.mirror_descent_step(MODEL, START, xe, ye, 0.4),
        ),
        (emjax.gradient_em_step(MODEL, START, x, y, 0.2, weights=v), emjax.gradient_em_step(MODEL, START, xe, ye, 0.2)),
        (
            emjax.gradient_descent_step(MODEL, START, x, y, 0.2, weights=v),
            emjax.gradient_descent_step(MODEL, START, xe, ye, 0.2),
        ),
        (
            emjax.neg_log_likelihood_grad(MODEL, START, x, y, weights=v),
            emjax.neg_log_likelihood_grad(MODEL, START, xe, ye),
        ),
        (emjax.posterior_statistics(MODEL, START, x, y, weights=v), emjax.posterior_statistics(MODEL, START, xe, ye)),
        (emjax.mirror_map(MODEL, START, x, weights=v), emjax.mirror_map(MODEL, START, xe)),
        (emjax.mirror_map_grad(MODEL, START, x, weights=v), emjax.mirror_map_grad(MODEL, START, xe)),
    ]
    for weighted, expanded in pairs:
        _close(weighted, expanded)
    other = emjax.em_step(MODEL, START, x, y)
    _close(
        emjax.bregman_divergence(MODEL, START, other, x, weights=v), emjax.bregman_divergence(MODEL, START, other, xe)
    )
    # EM with weights is still mirror descent with unit step
    _close(emjax.em_step(MODEL, START, x, y, weights=v), emjax.mirror_descent_step(MODEL, START, x, y, 1.0, weights=v))


# --------------------------------------------------------------------------- covariates, other families


def _linear_data(model, n=150, d=3, seed=0):
    truth = emjax.testing.random_params(model, jax.random.key(seed), d, expert_norm=2.0, sigma=0.5)
    x, y = emjax.sample(model, truth, jax.random.key(seed + 1), n)
    counts = np.asarray(jax.random.randint(jax.random.key(seed + 2), (n,), 0, 4), float)
    return truth, np.asarray(x), np.asarray(y), counts


@pytest.mark.parametrize(
    "model",
    [emjax.MoLinE(3), emjax.MoLogE(2, num_classes=3), emjax.HierarchicalMoE(emjax.PoissonExpert(), (2, 2))],
    ids=["linear", "softmax", "tree"],
)
def test_integer_weights_equal_repeated_rows_with_covariates(model):
    truth, x, y, counts = _linear_data(model)
    repeat = counts.astype(int)
    xe, ye = np.repeat(x, repeat, axis=0), np.repeat(y, repeat)
    # An arbitrary start: a second random point (random_params' program is already compiled for the truth).
    start = emjax.testing.random_params(model, jax.random.key(5), x.shape[1], expert_norm=2.0, sigma=0.5)
    kept = counts > 0  # zero weights remove rows: those rows might as well not be there
    weighted, expanded, without = start, start, start
    for _ in range(2):
        weighted = emjax.em_step(model, weighted, x, y, weights=counts)
        expanded = emjax.em_step(model, expanded, xe, ye)
        without = emjax.em_step(model, without, x[kept], y[kept], weights=counts[kept])
    _close(weighted, expanded, rtol=1e-9, atol=1e-10)
    _close(weighted, without, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(
        emjax.neg_log_likelihood(model, weighted, x, y, weights=counts),
        emjax.neg_log_likelihood(model, weighted, xe, ye),
        rtol=1e-12,
    )


def test_scaling_the_weights_changes_nothing_but_the_sample_size():
    model = emjax.MoLinE(2)
    truth, x, y, counts = _linear_data(model, n=120, d=2, seed=3)
    v = counts + 0.5
    one = emjax.em_step(model, truth, x, y, weights=v)
    _close(one, emjax.em_step(model, truth, x, y, weights=7.0 * v), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(
        emjax.neg_log_likelihood(model, truth, x, y, weights=v),
        emjax.neg_log_likelihood(model, truth, x, y, weights=7.0 * v),
        rtol=1e-13,
    )
    # unit weights are no weights
    _close(emjax.em_step(model, truth, x, y, weights=np.ones(120)), emjax.em_step(model, truth, x, y))
    k = emjax.num_parameters(model, truth)
    gap = emjax.bic(model, truth, x, y, weights=7.0 * v) - 7.0 * emjax.bic(model, truth, x, y, weights=v)
    expected = k * (np.log(7.0 * v.sum()) - 7.0 * np.log(v.sum()))
    np.testing.assert_allclose(gap, expected, rtol=1e-9)


def test_weights_batch_under_vmap_and_jit():
    """A Bayesian bootstrap: many weight vectors in one vmapped call, each equal to its own call."""
    model = emjax.MoLinE(2)
    truth, x, y, _ = _linear_data(model, n=100, d=2, seed=7)
    draws = jax.random.dirichlet(jax.random.key(0), jnp.ones(100), (3,)) * 100

    @jax.jit
    def fitted(w):
        return emjax.fit(model, emjax.em(), truth, x, y, 4, weights=w).params

    batched = jax.vmap(fitted)(draws)
    for i in range(3):
        _close(jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], batched), fitted(draws[i]), rtol=1e-11, atol=1e-12)
        _close(fitted(draws[i]), emjax.fit(model, emjax.em(), truth, x, y, 4, weights=draws[i]).params, 1e-11, 1e-12)


def test_restarts_with_weights_report_the_weighted_loss():
    x, y, v = np.ones((10, 1)), COUNTS, DAYS
    result = emjax.fit_restarts(MODEL, emjax.em(), jax.random.key(0), x, y, 3, 60, weights=v)
    np.testing.assert_allclose(
        result.final_loss, emjax.neg_log_likelihood(MODEL, result.params, x, y, weights=v), rtol=1e-12
    )
    assert float(result.final_loss) == float(np.min(result.restart_losses))


@pytest.mark.parametrize(
    "model",
    [emjax.MoLinE(3), emjax.HierarchicalMoE(emjax.GaussianExpert(), (2, 2))],
    ids=["MoLinE3", "tree2x2"],
)
def test_zero_weight_rows_change_neither_the_starts_nor_the_restarts(model):
    # The appended rows lie far from the data: a start that saw them (k-means++ draws far points first)
    # would put a centre, and so an expert, there. With weight 0 they are invisible, up to round-off.
    truth = emjax.testing.random_params(model, jax.random.key(0), d=3)
    x, y = emjax.sample(model, truth, jax.random.key(1), 300)
    far_x, far_y = np.full((40, 3), 7.0), np.full(40, 50.0)
    padded_x, padded_y = np.concatenate([x, far_x]), np.concatenate([y, far_y])
    ones, padded_weights = np.ones(300), np.concatenate([np.ones(300), np.zeros(40)])
    for seed in range(2):
        key = jax.random.key(seed)
        start = emjax.init_params(model, key, x, y, weights=ones)
        _close(emjax.init_params(model, key, padded_x, padded_y, weights=padded_weights), start, 1e-12, 1e-12)
        unweighted = emjax.init_params(model, key, padded_x, padded_y)
        assert float(jnp.max(jnp.abs(unweighted.experts - start.experts))) > 0.1  # the far rows matter unweighted
    runs = emjax.fit_restarts(model, emjax.em(), jax.random.key(5), x, y, 2, 15, weights=ones)
    padded = emjax.fit_restarts(model, emjax.em(), jax.random.key(5), padded_x, padded_y, 2, 15, weights=padded_weights)
    _close(padded.params, runs.params, 1e-10, 1e-11)
    np.testing.assert_allclose(padded.restart_losses, runs.restart_losses, rtol=1e-12)


def test_integer_weights_start_like_repeated_rows_in_distribution():
    # Weighted k-means++ draws row n with probability proportional to v_n D_n^2, as if it were repeated v_n
    # times: with one row of weight 1,000 among 20 of weight 1, the first centre is that row ~98% of the time.
    points = jnp.concatenate([jnp.zeros((1, 2)), 10.0 + jax.random.normal(jax.random.key(0), (20, 2))])
    weights = jnp.concatenate([jnp.array([1000.0]), jnp.ones(20)])
    from emjax.models._kmeans import cluster

    labels = jax.vmap(lambda key: cluster(key, points, 2, weights))(jax.random.split(jax.random.key(1), 400))
    # the heavy row always ends alone in its cluster, whichever label it has
    alone = jnp.all(labels[:, 1:] != labels[:, :1], axis=1)
    assert float(jnp.mean(alone)) > 0.95


def test_float32_weights():
    x, y = np.ones((10, 1), np.float32), COUNTS.astype(np.float32)
    start = jax.tree_util.tree_map(lambda leaf: leaf.astype(jnp.float32), START)
    new = emjax.em_step(MODEL, start, x, y, weights=DAYS)
    assert new.experts.dtype == jnp.float32
    expanded = emjax.em_step(MODEL, start, np.ones((1096, 1), np.float32), np.repeat(y, DAYS.astype(int)))
    _close(new, expanded, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (np.ones(9), "one entry per row"),
        (np.ones((10, 1)), "one entry per row"),
        (-np.ones(10), "finite and >= 0"),
        (np.r_[np.nan, np.ones(9)], "finite and >= 0"),
        (np.zeros(10), "positive sum"),
    ],
)
def test_bad_weights_raise(weights, message):
    with pytest.raises(ValueError, match=message):
        emjax.neg_log_likelihood(MODEL, START, np.ones((10, 1)), COUNTS, weights=weights)


def test_bad_weights_raise_in_fit_and_for_jax_arrays():
    with pytest.raises(ValueError, match="finite and >= 0"):
        emjax.fit(MODEL, emjax.em(), START, np.ones((10, 1)), COUNTS, 3, weights=jnp.asarray(-DAYS))
    with pytest.raises(ValueError, match="positive sum"):
        emjax.bic(MODEL, START, np.ones((10, 1)), COUNTS, weights=np.zeros(10))


def test_symmetric_models_refuse_weights():
    model = emjax.SymMoLinE()
    p = emjax.SymParams(w=jnp.zeros(2), beta=jnp.ones(2))
    with pytest.raises(ValueError, match="K-expert models"):
        emjax.em_step(model, p, np.ones((4, 2)), np.zeros(4), weights=np.ones(4))


def test_lists_and_pandas_weights():
    pd = pytest.importorskip("pandas")
    x = np.ones((10, 1))
    expected = emjax.neg_log_likelihood(MODEL, START, x, COUNTS, weights=DAYS)
    np.testing.assert_allclose(emjax.neg_log_likelihood(MODEL, START, x, COUNTS, weights=list(DAYS)), expected)
    np.testing.assert_allclose(emjax.neg_log_likelihood(MODEL, START, x, COUNTS, weights=pd.Series(DAYS)), expected)


def test_streamed_weighted_batches_reach_the_weighted_fit(hasselblad):
    from emjax.streaming import ArrayBatches, fit_stream

    (x, y, v), _, fit_w, _ = hasselblad
    batches = ArrayBatches(x, y, 4, weights=v)  # (x, y, weights) triples of 4, 4 and 2 rows
    result = fit_stream(MODEL, START, batches, num_epochs=2, polish_steps=30, polish_tol=1e-12)
    assert int(result.status) == emjax.Status.ok
    _close(result.params, fit_w.params, rtol=1e-8, atol=1e-9)
    # the polish's full-data loss is the weighted one
    np.testing.assert_allclose(result.polish_losses[-1], fit_w.final_loss, rtol=1e-12)
