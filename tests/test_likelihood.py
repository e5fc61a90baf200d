"""E-step and loss: Bayes-rule oracles, numerical safety at extreme inputs, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from tests import reference
from tests.utils import MODELS, make_problem, random_point


def test_responsibilities_match_bayes_rule(kind):
    model, _, x, y = make_problem(kind, n=60, d=3, seed=1)
    rng = np.random.default_rng(0)
    for _ in range(5):
        point = random_point(rng, 3, scale=0.7)
        expected = reference.responsibilities(
            kind, np.asarray(point.w), np.asarray(point.beta), np.asarray(x), np.asarray(y)
        )
        got = emjax.responsibilities(model, point, x, y)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-14)


def test_loss_matches_direct_mixture_density(kind):
    model, _, x, y = make_problem(kind, n=60, d=3, seed=2)
    point = random_point(np.random.default_rng(1), 3)
    expected = reference.loss(kind, np.asarray(point.w), np.asarray(point.beta), np.asarray(x), np.asarray(y))
    np.testing.assert_allclose(emjax.neg_log_likelihood(model, point, x, y), expected, rtol=1e-13)


def test_linear_loss_includes_gaussian_constant():
    # With beta = 0 both experts are N(0, sigma^2): L = 0.5 log(2 pi sigma^2) + mean y^2 / (2 sigma^2).
    sigma = 0.7
    x = jnp.ones((3, 1))
    y = jnp.array([0.5, -1.0, 2.0])
    zero = emjax.SymParams(w=jnp.array([0.3]), beta=jnp.zeros(1))
    expected = 0.5 * np.log(2 * np.pi * sigma**2) + np.mean(np.asarray(y) ** 2) / (2 * sigma**2)
    np.testing.assert_allclose(emjax.neg_log_likelihood(emjax.SymMoLinE(sigma), zero, x, y), expected, rtol=1e-14)


@pytest.mark.parametrize("scale", [1e-2, 1.0, 1e3])
def test_extreme_scores_stay_finite(kind, scale):
    # |x.w| and |x.beta| up to 1e3 (SNR 1e-2 .. 1e3): exact 0/1 responsibilities, never NaN.
    model = MODELS[kind]
    x = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]])
    params = emjax.SymParams(w=jnp.array([scale, -scale]), beta=jnp.array([-scale, scale]))
    y = jnp.array([1.0, 0.0, 1.0, 0.0]) if kind == "log" else jnp.array([3.0, -2.0, 0.1, 1e3])
    for fn in (emjax.responsibilities, emjax.neg_log_likelihood, emjax.observed_information, emjax.missing_information):
        assert np.all(np.isfinite(np.asarray(fn(model, params, x, y)))), fn.__name__
    assert np.all(np.isfinite(np.asarray(emjax.complete_information(model, params, x, y))))
    assert np.isfinite(emjax.mirror_map(model, params, x))
    grad = emjax.neg_log_likelihood_grad(model, params, x, y)
    assert np.all(np.isfinite(np.asarray(grad.flatten())))


def test_extreme_responsibilities_are_exact_in_both_tails():
    model = emjax.SymMoLinE()
    x = jnp.array([[1.0]])
    params = emjax.SymParams(w=jnp.array([700.0]), beta=jnp.zeros(1))
    r = emjax.responsibilities(model, params, x, jnp.zeros(1))
    assert float(r[0, 1]) == 1.0
    assert 0.0 < float(r[0, 0]) < 1e-300  # sigmoid(-700) ~ 1e-304 is tiny but not rounded to 1 - 1
    loss = emjax.neg_log_likelihood(model, params, x, jnp.zeros(1))
    np.testing.assert_allclose(loss, 0.5 * np.log(2 * np.pi), rtol=1e-14)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_is_kept(kind, dtype):
    model, truth, x, y = make_problem(kind, n=50, d=2, dtype=dtype)
    assert x.dtype == dtype and y.dtype == dtype
    assert emjax.responsibilities(model, truth, x, y).dtype == dtype
    assert emjax.neg_log_likelihood(model, truth, x, y).dtype == dtype
    assert emjax.em_step(model, truth, x, y).w.dtype == dtype
    assert emjax.missing_information_matrix(model, truth, x, y).dtype == dtype


def test_sample_follows_the_model():
    # Law of large numbers: the fraction of z=1 and the label mean match their expectations.
    model = emjax.SymMoLogE()
    truth = emjax.SymParams(w=jnp.array([1.0, 0.0]), beta=jnp.array([0.0, 2.0]))
    x, y = emjax.sample(model, truth, jax.random.key(3), 200_000)
    xb, xw = np.asarray(x @ truth.beta), np.asarray(x @ truth.w)
    from scipy.special import expit

    p_y1 = expit(xw) * expit(xb) + (1 - expit(xw)) * expit(-xb)
    np.testing.assert_allclose(np.mean(np.asarray(y)), np.mean(p_y1), atol=5e-3)
    lin = emjax.SymMoLinE(sigma=0.5)
    x, y = emjax.sample(lin, truth, jax.random.key(4), 200_000)
    # E[y^2] = E[(x.beta)^2] + sigma^2 = |beta|^2 + sigma^2.
    np.testing.assert_allclose(np.mean(np.asarray(y) ** 2), 4.0 + 0.25, rtol=2e-2)
