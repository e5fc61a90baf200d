"""Predictions (emjax._predict): the mixture's law of y given x against independent numpy/scipy oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

import emjax
from tests.test_contract import _TwoCoins
from tests.test_moe_steps import BernoulliExpert

N, D = 40, 3
QS = np.array([1e-9, 1e-3, 0.025, 0.3, 0.5, 0.77, 0.975, 1 - 1e-6])


def _x(seed=0, n=N, d=D, scale=1.0):
    return scale * np.random.default_rng(seed).normal(size=(n, d))


def _moe_params(kind, seed=0, k=3, d=D, classes=4):
    """Parameters with distinct experts and (for Gaussian experts) distinct scales; gate row 0 pinned at 0."""
    rng = np.random.default_rng(100 + seed)
    gate = np.vstack([np.zeros((1, d)), 1.5 * rng.normal(size=(k - 1, d))])
    if kind == "lin":
        return emjax.MoEParams(gate=gate, experts=2 * rng.normal(size=(k, d)), sigma=rng.uniform(0.3, 1.5, size=k))
    if kind == "poi":
        return emjax.MoEParams(gate=gate, experts=0.6 * rng.normal(size=(k, d)))
    experts = 2 * rng.normal(size=(k, d, classes))
    experts[:, :, 0] = 0
    return emjax.MoEParams(gate=gate, experts=experts)


def _softmax(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(t):
    return 1 / (1 + np.exp(-t))


def _gate_np(model, params, x):
    if isinstance(model, emjax.AbstractSymmetricModel):
        p1 = _sigmoid(x @ np.asarray(params.w))
        return np.stack([1 - p1, p1], axis=1)
    return _softmax(x @ np.asarray(params.gate).T)


def _gaussian_components_np(model, params, x):
    """Means (n, C) and scales (n, C) of each component, written from the models' definitions."""
    if isinstance(model, emjax.SymMoLinE):
        xb = x @ np.asarray(params.beta)
        sigma = float(model.sigma)
        return np.stack([-xb, xb], axis=1), np.full((x.shape[0], 2), sigma)
    return x @ np.asarray(params.experts).T, np.broadcast_to(np.asarray(params.sigma), (x.shape[0], model.num_experts))


GAUSSIAN_CASES = {
    "MoLinE3": lambda: (emjax.MoLinE(3), _moe_params("lin")),
    "SymMoLinE": lambda: (emjax.SymMoLinE(sigma=0.7), emjax.SymParams(w=[1.0, -0.5, 0.3], beta=[0.8, 1.2, -0.4])),
}


# ------------------------------------------------------------------------------------------------ the gate


@pytest.mark.parametrize("case", ["MoLinE3", "SymMoLinE", "MoPoE", "MoLogE", "SymMoLogE"])
def test_gate_probabilities_are_the_softmax_or_sigmoid_of_the_gate(case):
    model, params = {
        **GAUSSIAN_CASES,
        "MoPoE": lambda: (emjax.MoPoE(2), _moe_params("poi", k=2)),
        "MoLogE": lambda: (emjax.MoLogE(3, num_classes=4), _moe_params("log")),
        "SymMoLogE": lambda: (emjax.SymMoLogE(), emjax.SymParams(w=[2.0, 0.0, -1.0], beta=[1.0, 1.0, 1.0])),
    }[case]()
    x = _x(1)
    gate = np.asarray(emjax.gate_probabilities(model, params, x))
    np.testing.assert_allclose(gate, _gate_np(model, params, x), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(gate.sum(axis=1), 1, rtol=1e-14)


@pytest.mark.parametrize("case", ["MoLinE3", "SymMoLinE"])
def test_gate_probabilities_equal_the_responsibilities_when_the_experts_cannot_tell_y_apart(case):
    model, params = GAUSSIAN_CASES[case]()
    if isinstance(params, emjax.SymParams):
        params = emjax.SymParams(w=params.w, beta=jnp.zeros_like(params.beta))  # both experts N(0, σ²)
    else:
        params = emjax.MoEParams(
            gate=params.gate, experts=jnp.tile(params.experts[:1], (3, 1)), sigma=jnp.full(3, params.sigma[0])
        )
    x, y = _x(2), np.random.default_rng(3).normal(size=N)
    np.testing.assert_allclose(
        emjax.gate_probabilities(model, params, x), emjax.responsibilities(model, params, x, y), rtol=1e-12
    )


def test_symmetric_columns_follow_the_responsibilities_convention():
    """Column 1 is z=1, expert +β: a y far on the +x·β side makes column 1's responsibility ~1."""
    model = emjax.SymMoLinE(sigma=0.5)
    params = emjax.SymParams(w=[0.0, 0.0], beta=[2.0, 0.0])
    x = np.array([[1.0, 0.0]])
    gate = emjax.gate_probabilities(model, params, x)
    np.testing.assert_allclose(gate, [[0.5, 0.5]])
    r = emjax.responsibilities(model, params, x, np.array([2.0]))
    assert r[0, 1] > 0.999
    components = model.expert_predictive(params, jnp.asarray(x))
    np.testing.assert_allclose(components.loc, [[-2.0, 2.0]])


# ------------------------------------------------------------------------------------------------ mean, variance


@pytest.mark.parametrize("case", list(GAUSSIAN_CASES))
def test_gaussian_mean_and_variance_match_brute_force_and_numerical_integration(case):
    model, params = GAUSSIAN_CASES[case]()
    x = _x(4)
    mean = np.asarray(emjax.predict_mean(model, params, x))
    variance = np.asarray(emjax.predict_variance(model, params, x))
    pi = _gate_np(model, params, x)
    mu, sd = _gaussian_components_np(model, params, x)
    brute_mean = (pi * mu).sum(1)
    np.testing.assert_allclose(mean, brute_mean, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(variance, (pi * (sd**2 + mu**2)).sum(1) - brute_mean**2, rtol=1e-10, atol=1e-12)
    # The first and second moments of the mixture density, by quadrature, on a few rows.
    for row in range(5):

        def density(y, row=row):
            return np.sum(pi[row] * stats.norm.pdf(y, mu[row], sd[row]))

        lo, hi = (mu[row] - 12 * sd[row]).min(), (mu[row] + 12 * sd[row]).max()
        m1 = integrate.quad(lambda y, f=density: y * f(y), lo, hi, epsabs=1e-13, limit=200)[0]
        m2 = integrate.quad(lambda y, f=density: y * y * f(y), lo, hi, epsabs=1e-13, limit=200)[0]
        np.testing.assert_allclose(mean[row], m1, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(variance[row], m2 - m1**2, rtol=1e-9)


def test_poisson_mean_and_variance_match_direct_sums_over_the_counts():
    model, params = emjax.MoPoE(2), _moe_params("poi", k=2)
    x = _x(5)
    mean = np.asarray(emjax.predict_mean(model, params, x))
    variance = np.asarray(emjax.predict_variance(model, params, x))
    pi = _gate_np(model, params, x)
    rates = np.exp(x @ np.asarray(params.experts).T)
    assert rates.max() < 60  # 200 terms then hold the whole mass
    k = np.arange(201)
    pmf = np.einsum("nc,nck->nk", pi, stats.poisson.pmf(k[None, None, :], rates[:, :, None]))
    np.testing.assert_allclose(pmf.sum(1), 1, rtol=1e-13)
    m1, m2 = pmf @ k, pmf @ (k * k)
    np.testing.assert_allclose(mean, m1, rtol=1e-12)
    np.testing.assert_allclose(variance, m2 - m1**2, rtol=1e-10)
    np.testing.assert_allclose(mean, (pi * rates).sum(1), rtol=1e-13)


def test_variance_has_no_cancellation_for_far_means_and_small_noise():
    """Means near 1e6 with σ = 1e-3: Σπ(σ² + μ²) − mean² would lose every digit; the spread form keeps them."""
    model = emjax.SymMoLinE(sigma=1e-3)
    params = emjax.SymParams(w=[0.0, 0.0], beta=[0.0, 0.0])
    x = np.array([[1.0, 0.0]])
    np.testing.assert_allclose(emjax.predict_variance(model, params, x), [1e-6], rtol=1e-12)
    model = emjax.MoLinE(2)
    params = emjax.MoEParams(gate=np.zeros((2, 1)), experts=np.array([[1e6], [1e6 + 2e-3]]), sigma=np.array([1e-3] * 2))
    # two equal-weight components 2e-3 apart: variance σ² + (1e-3)² = 2e-6
    np.testing.assert_allclose(emjax.predict_variance(model, params, np.ones((1, 1))), [2e-6], rtol=1e-7)


# ------------------------------------------------------------------------------------------------ quantiles


def _gaussian_mixture_cdf_sf(pi, mu, sd, t):
    z = (t[:, None] - mu) / sd
    return (pi * stats.norm.cdf(z)).sum(1), (pi * stats.norm.sf(z)).sum(1)


@pytest.mark.parametrize("case", list(GAUSSIAN_CASES))
def test_gaussian_quantiles_solve_the_mixture_cdf(case):
    model, params = GAUSSIAN_CASES[case]()
    x = _x(6)
    t = np.asarray(emjax.predict_quantiles(model, params, x, QS))
    assert t.shape == (N, len(QS))
    assert np.all(np.diff(t, axis=1) > 0)
    pi = _gate_np(model, params, x)
    mu, sd = _gaussian_components_np(model, params, x)
    for j, q in enumerate(QS):
        cdf, sf = _gaussian_mixture_cdf_sf(pi, mu, sd, t[:, j])
        if q <= 0.5:
            np.testing.assert_allclose(cdf, q, rtol=1e-9)
        else:
            np.testing.assert_allclose(sf, 1 - q, rtol=1e-9)
    # A scalar q gives one column, dropped.
    np.testing.assert_allclose(emjax.predict_quantiles(model, params, x, 0.3), t[:, 3], rtol=1e-13, atol=1e-14)


def test_gaussian_quantiles_with_far_apart_components_and_a_flat_cdf_between_them():
    """Weights 0.25 / 0.75 on N(-50, 1) and N(50, 1): q just above 0.25 lies on the right component's far tail."""
    model = emjax.SymMoLinE(sigma=1.0)
    params = emjax.SymParams(w=[np.log(3.0)], beta=[50.0])
    x = np.ones((1, 1))
    q = np.array([0.1, 0.25 + 1e-9, 0.6])
    t = np.asarray(emjax.predict_quantiles(model, params, x, q))[0]
    for tq, qq in zip(t, q, strict=True):
        cdf = 0.25 * stats.norm.cdf(tq + 50) + 0.75 * stats.norm.cdf(tq - 50)
        np.testing.assert_allclose(cdf, qq, rtol=1e-9)


POISSON_CASES = {
    "small": lambda: (_x(7), _moe_params("poi", k=2)),
    # an intercept column with log rates near log(5e3) and log(2e4): large counts
    "large": lambda: (
        np.hstack([np.ones((8, 1)), 0.3 * _x(8, n=8, d=2)]),
        emjax.MoEParams(
            gate=np.array([[0.0, 0, 0], [0.2, 1.0, -1.0]]), experts=np.array([[8.5, 0.1, 0.2], [9.9, -0.1, 0.3]])
        ),
    ),
}


@pytest.mark.parametrize("case", list(POISSON_CASES))
def test_poisson_quantiles_are_the_smallest_count_whose_cdf_reaches_q(case):
    x, params = POISSON_CASES[case]()
    model = emjax.MoPoE(2)
    q = np.array([1e-12, 0.01, 0.3, 0.5, 0.77, 0.99, 1 - 1e-12])
    k = np.asarray(emjax.predict_quantiles(model, params, x, q))
    assert np.all(k == np.round(k)) and np.all(k >= 0)
    pi = _gate_np(model, params, x)
    rates = np.exp(x @ np.asarray(params.experts).T)

    def mixture_cdf(counts):
        return (pi * stats.poisson.cdf(counts[:, None], rates)).sum(1)

    def mixture_sf(counts):
        return (pi * stats.poisson.sf(counts[:, None], rates)).sum(1)

    for j, qq in enumerate(q):
        if qq <= 0.5:
            assert np.all(mixture_cdf(k[:, j] - 1) < qq) and np.all(mixture_cdf(k[:, j]) >= qq)
        else:
            assert np.all(mixture_sf(k[:, j] - 1) > 1 - qq) and np.all(mixture_sf(k[:, j]) <= 1 - qq)


def test_quantile_gradient_is_the_implicit_derivative():
    model, params = emjax.MoLinE(2), _moe_params("lin", k=2)
    x = _x(9, n=5)
    q = np.array([0.1, 0.6, 0.95])

    def total(experts, sigma, q):
        p = emjax.MoEParams(gate=params.gate, experts=experts, sigma=sigma)
        return jnp.sum(emjax.predict_quantiles(model, p, x, q))

    experts, sigma = jnp.asarray(params.experts), jnp.asarray(params.sigma)
    grads = jax.grad(total, argnums=(0, 1, 2))(experts, sigma, jnp.asarray(q))
    h = 1e-6
    for arg, grad in zip((0, 1, 2), grads, strict=True):
        base = [experts, sigma, jnp.asarray(q)]
        flat = np.asarray(base[arg]).ravel()
        numeric = np.zeros_like(flat)
        for i in range(flat.size):
            up, down = flat.copy(), flat.copy()
            up[i] += h
            down[i] -= h
            args_up, args_down = list(base), list(base)
            args_up[arg] = jnp.asarray(up.reshape(base[arg].shape))
            args_down[arg] = jnp.asarray(down.reshape(base[arg].shape))
            numeric[i] = (total(*args_up) - total(*args_down)) / (2 * h)
        np.testing.assert_allclose(np.asarray(grad).ravel(), numeric, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------------ classifiers


def test_molog_e_probabilities_match_a_brute_force_sum_over_experts():
    model, params = emjax.MoLogE(3, num_classes=4), _moe_params("log")
    x = _x(10)
    proba = np.asarray(emjax.predict_proba(model, params, x))
    pi = _gate_np(model, params, x)
    brute = np.zeros((N, 4))
    for c in range(3):
        brute += pi[:, [c]] * _softmax(x @ np.asarray(params.experts)[c])
    np.testing.assert_allclose(proba, brute, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-14)


def test_sym_mologe_probabilities_follow_the_model_formula():
    model = emjax.SymMoLogE()
    params = emjax.SymParams(w=[1.0, -2.0, 0.5], beta=[3.0, 0.5, -1.0])
    x = _x(11)
    proba = np.asarray(emjax.predict_proba(model, params, x))
    xw, xb = x @ np.asarray(params.w), x @ np.asarray(params.beta)
    p1 = _sigmoid(xw) * _sigmoid(xb) + _sigmoid(-xw) * _sigmoid(-xb)  # P(y=1|z) = sigmoid((2z-1) x.b)
    np.testing.assert_allclose(proba[:, 1], p1, rtol=1e-12)
    np.testing.assert_allclose(proba[:, 0], 1 - p1, rtol=1e-12)
    # Cross-check: P(y | x) from the likelihood, exp(-n L) on a single sample.
    for row in range(3):
        nll = emjax.neg_log_likelihood(model, params, x[row : row + 1], np.array([1.0]))
        np.testing.assert_allclose(np.exp(-float(nll)), proba[row, 1], rtol=1e-12)


# ------------------------------------------------------------------------------------------------ transforms, dtypes


def test_jit_and_vmap_over_parameter_batches_give_the_direct_answer():
    model = emjax.MoLinE(3)
    batch = [_moe_params("lin", seed=s) for s in range(3)]
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack([jnp.asarray(leaf) for leaf in leaves]), *batch)
    x = jnp.asarray(_x(12))
    q = jnp.asarray([0.1, 0.5, 0.9])
    for fn in (emjax.predict_mean, emjax.predict_variance, emjax.gate_probabilities):
        batched = jax.vmap(fn, in_axes=(None, 0, None))(model, stacked, x)
        jitted = jax.jit(fn, static_argnums=0)
        for s, params in enumerate(batch):
            direct = fn(model, params, x)
            np.testing.assert_allclose(batched[s], direct, rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(jitted(model, params, x), direct, rtol=1e-13, atol=1e-15)
    quantiles = jax.vmap(emjax.predict_quantiles, in_axes=(None, 0, None, None))(model, stacked, x, q)
    jitted = jax.jit(emjax.predict_quantiles, static_argnums=0)
    for s, params in enumerate(batch):
        direct = emjax.predict_quantiles(model, params, x, q)
        np.testing.assert_allclose(quantiles[s], direct, rtol=1e-13)
        np.testing.assert_allclose(jitted(model, params, x, q), direct, rtol=1e-13)
    # vmap over q and over Poisson parameters (the integer bisection runs as a while loop)
    poisson = emjax.MoPoE(2)
    pparams = [_moe_params("poi", seed=s, k=2) for s in range(2)]
    pstacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack([jnp.asarray(leaf) for leaf in leaves]), *pparams)
    counts = jax.vmap(emjax.predict_quantiles, in_axes=(None, 0, None, None))(poisson, pstacked, x, q)
    for s, params in enumerate(pparams):
        np.testing.assert_array_equal(counts[s], emjax.predict_quantiles(poisson, params, x, q))
    one_at_a_time = jax.vmap(lambda qq: emjax.predict_quantiles(model, batch[0], x, qq), out_axes=1)(q)
    np.testing.assert_allclose(one_at_a_time, emjax.predict_quantiles(model, batch[0], x, q), rtol=1e-14)


def test_new_q_values_reuse_the_compilation():
    model, params = emjax.MoLinE(3), _moe_params("lin")
    x = _x(13)
    emjax.predict_quantiles(model, params, x, [0.2, 0.4])
    traces = []
    original = emjax._predict._mixture_quantile

    def counting(*args):
        traces.append(1)
        return original(*args)

    emjax._predict._mixture_quantile = counting
    try:
        emjax.predict_quantiles(model, params, x, [0.3, 0.7])
        emjax.predict_quantiles(model, params, x, np.array([0.01, 0.99]))
    finally:
        emjax._predict._mixture_quantile = original
    assert traces == []


def test_float32_is_kept_and_close_to_float64():
    model, params = emjax.MoLinE(3), _moe_params("lin")
    x = _x(14)
    params32 = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, jnp.float32), params)
    x32 = jnp.asarray(x, jnp.float32)
    q = np.array([0.05, 0.5, 0.95, 0.99999999])  # the last rounds to 1 in float32: moved just inside
    for fn, tol in ((emjax.predict_mean, 1e-5), (emjax.predict_variance, 1e-5), (emjax.gate_probabilities, 1e-5)):
        out = fn(model, params32, x32)
        assert out.dtype == jnp.float32
        np.testing.assert_allclose(out, fn(model, params, x), rtol=tol, atol=tol)
    t32 = emjax.predict_quantiles(model, params32, x32, q)
    assert t32.dtype == jnp.float32 and np.all(np.isfinite(t32))
    np.testing.assert_allclose(t32[:, :3], emjax.predict_quantiles(model, params, x, q[:3]), rtol=1e-4, atol=1e-4)
    poisson, pparams = emjax.MoPoE(2), _moe_params("poi", k=2)
    pparams32 = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, jnp.float32), pparams)
    np.testing.assert_array_equal(
        emjax.predict_quantiles(poisson, pparams32, x32, q[:3]), emjax.predict_quantiles(poisson, pparams, x, q[:3])
    )
    proba = emjax.predict_proba(
        emjax.SymMoLogE(), emjax.SymParams(w=jnp.ones(3, jnp.float32), beta=-jnp.ones(3, jnp.float32)), x32
    )
    assert proba.dtype == jnp.float32
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-6)


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("q", [0.0, 1.0, 1.5, -0.1, np.nan, [0.5, 1.0], np.array([0.2, 0.0]), jnp.array([0.5, 1.0])])
def test_q_outside_the_open_unit_interval_is_refused(q):
    model, params = emjax.MoLinE(3), _moe_params("lin")
    with pytest.raises(ValueError, match="q must hold probabilities strictly between 0 and 1"):
        emjax.predict_quantiles(model, params, _x(15), q)


@pytest.mark.parametrize("q", [np.zeros((2, 2)) + 0.5, np.zeros(0), True, "0.5"])
def test_q_of_the_wrong_shape_or_type_is_refused(q):
    with pytest.raises(ValueError, match="q must"):
        emjax.predict_quantiles(emjax.MoLinE(3), _moe_params("lin"), _x(15), q)


def test_q_is_checked_inside_jit():
    model, params = emjax.MoLinE(3), _moe_params("lin")
    with pytest.raises(Exception, match="q must hold probabilities strictly between 0 and 1"):
        jax.jit(lambda q: emjax.predict_quantiles(model, params, _x(15), q))(jnp.array([0.5, 1.0])).block_until_ready()


def test_classifiers_and_regressions_point_to_the_other_predictions():
    x = _x(16)
    for model, params in ((emjax.MoLinE(3), _moe_params("lin")), (emjax.MoPoE(2), _moe_params("poi", k=2))):
        with pytest.raises(ValueError, match="predict_proba is for classifier experts.*use emjax.predict_mean"):
            emjax.predict_proba(model, params, x)
    classifiers = (
        (emjax.MoLogE(3, num_classes=4), _moe_params("log")),
        (emjax.SymMoLogE(), emjax.SymParams(w=np.ones(D), beta=np.ones(D))),
    )
    for model, params in classifiers:
        for fn in (emjax.predict_mean, emjax.predict_variance):
            with pytest.raises(ValueError, match=f"{fn.__name__} needs a numeric response.*emjax.predict_proba"):
                fn(model, params, x)
        with pytest.raises(ValueError, match="predict_quantiles needs a numeric response.*emjax.predict_proba"):
            emjax.predict_quantiles(model, params, x, [0.5])


def test_bad_arguments_are_refused_at_the_boundary():
    model, params = emjax.MoLinE(3), _moe_params("lin")
    with pytest.raises(ValueError, match="x must have shape"):
        emjax.predict_mean(model, params, np.ones(3))
    with pytest.raises(ValueError, match="must have shape"):
        emjax.predict_variance(model, params, np.ones((4, 2)))
    with pytest.raises(ValueError, match="x must be finite"):
        emjax.gate_probabilities(model, params, np.full((2, D), np.nan))
    with pytest.raises(ValueError, match="model must be an emjax model"):
        emjax.predict_mean("MoLinE", params, _x(0))


def test_models_and_families_without_the_prediction_contract_say_what_is_missing():
    model = _TwoCoins()
    params = emjax.MoEParams(gate=np.zeros((2, 2)), experts=np.ones((2, 2)))
    with pytest.raises(NotImplementedError, match="gate_log_probs"):
        emjax.gate_probabilities(model, params, np.ones((3, 2)))
    custom = emjax.MixtureOfExperts(expert=BernoulliExpert(), num_experts=2)
    params = emjax.testing.random_params(custom, jax.random.key(0), 2)
    np.testing.assert_allclose(emjax.gate_probabilities(custom, params, np.ones((3, 2))).sum(1), 1)
    with pytest.raises(NotImplementedError, match="BernoulliExpert does not define predictive"):
        emjax.predict_mean(custom, params, np.ones((3, 2)))


def test_poisson_cdf_helpers_match_scipy():
    """The components' CDF and survival at integers, negative counts included (independent of the mixture)."""
    rates = jnp.asarray([[0.5, 3.0], [40.0, 1e4]])
    components = emjax.models.PoissonPredictive(rate=rates)
    for t in ([-1.0, 0.0], [2.0, 9990.0], [35.0, 1e4 + 250]):
        t = np.asarray(t)
        np.testing.assert_allclose(components.cdf(jnp.asarray(t)), stats.poisson.cdf(t[:, None], rates), rtol=1e-10)
        np.testing.assert_allclose(components.survival(jnp.asarray(t)), stats.poisson.sf(t[:, None], rates), rtol=1e-9)
