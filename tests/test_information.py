"""Information matrices, the MIM and the EM rate (docs/math.md §5, identities 2, 6 and 7 of §5.5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from tests import reference
from tests.utils import flat_fn, make_problem, random_point


def _converged(model, truth, x, y, steps=400):
    start = emjax.testing.perturb(truth, jax.random.key(0), 0.5)
    result = emjax.fit(model, emjax.em(), start, x, y, steps)
    step = emjax.em_step(model, result.params, x, y)
    assert float(jnp.max(jnp.abs(step.flatten() - result.params.flatten()))) < 1e-11
    return result.params


def test_observed_information_is_hessian_of_loss(kind):
    model, _, x, y = make_problem(kind, n=80, d=3, seed=20)
    rng = np.random.default_rng(20)
    for _ in range(3):  # arbitrary points, not only optima
        point = random_point(rng, 3, scale=1.5)
        hess = jax.hessian(flat_fn(lambda p: emjax.neg_log_likelihood(model, p, x, y), 3))(point.flatten())
        observed = emjax.observed_information(model, point, x, y)
        np.testing.assert_allclose(observed, hess, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(
            observed,
            emjax.complete_information(model, point, x, y) - emjax.missing_information(model, point, x, y),
            atol=1e-15,
        )


def test_missing_information_is_posterior_covariance(kind):
    # I_miss = -mean E_{z|x,y} hess log P(z | x, y; theta): the Hessian of the posterior log-odds
    # machinery, checked with autodiff on the per-sample posterior entropy form.
    model, _, x, y = make_problem(kind, n=40, d=2, seed=21)
    point = random_point(np.random.default_rng(21), 2)
    r = emjax.responsibilities(model, point, x, y)

    def expected_log_posterior(theta):
        log_post = jnp.log(emjax.responsibilities(model, emjax.SymParams.unflatten(theta), x, y))
        return jnp.mean(jnp.sum(jax.lax.stop_gradient(r) * log_post, axis=1))

    hess = jax.hessian(expected_log_posterior)(point.flatten())
    np.testing.assert_allclose(emjax.missing_information(model, point, x, y), -hess, rtol=1e-9, atol=1e-12)


def test_em_jacobian_equals_dlr_formula_anywhere(kind):
    # jacobian(em_step)(theta) = hess A(F(theta))^-1 I_miss(theta)  (docs/math.md §5.3), at any theta.
    model, truth, x, y = make_problem(kind, n=300, d=3, seed=22)
    point = emjax.testing.perturb(truth, jax.random.key(1), 0.3)
    jac = jax.jacobian(lambda th: emjax.em_step(model, emjax.SymParams.unflatten(th), x, y).flatten())(point.flatten())
    mapped = emjax.em_step(model, point, x, y)
    expected = jnp.linalg.solve(
        emjax.complete_information(model, mapped, x, y), emjax.missing_information(model, point, x, y)
    )
    np.testing.assert_allclose(jac, expected, atol=1e-8)
    # Forward mode gives the same.
    jac_fwd = jax.jacfwd(lambda th: emjax.em_step(model, emjax.SymParams.unflatten(th), x, y).flatten())(
        point.flatten()
    )
    np.testing.assert_allclose(jac_fwd, jac, atol=1e-10)


def test_mim_at_a_fitted_optimum(kind):
    model, truth, x, y = make_problem(kind, n=800, d=3, seed=23)
    fitted = _converged(model, truth, x, y)
    eigenvalues = emjax.mim_eigenvalues(model, fitted, x, y)
    assert float(eigenvalues[0]) >= -1e-12 and float(eigenvalues[-1]) <= 1.0
    # The eigenvalues of M itself (never computed with eig in emjax) agree.
    mim = emjax.missing_information_matrix(model, fitted, x, y)
    np.testing.assert_allclose(np.sort(np.linalg.eigvals(np.asarray(mim)).real), eigenvalues, atol=1e-10)
    # The Jacobian of the EM map at the fixed point is M, and its spectral radius is em_rate.
    jac = jax.jacobian(lambda th: emjax.em_step(model, emjax.SymParams.unflatten(th), x, y).flatten())(fitted.flatten())
    np.testing.assert_allclose(jac, mim, atol=1e-8)
    radius = np.max(np.abs(np.linalg.eigvals(np.asarray(jac))))
    np.testing.assert_allclose(radius, emjax.em_rate(model, fitted, x, y), atol=1e-4)


def test_em_contracts_at_the_rate_of_the_mim():
    # ||theta_{t+1} - theta_hat|| / ||theta_t - theta_hat|| -> lambda_max(M(theta_hat)) (§5.5.7).
    model, truth, x, y = make_problem("lin", n=2000, d=3, seed=24, norms=(1.0, 1.0))
    fitted = _converged(model, truth, x, y, steps=600)
    rate = float(emjax.em_rate(model, fitted, x, y))
    assert 0.3 < rate < 0.99
    result = emjax.fit(
        model, emjax.em(), emjax.testing.perturb(truth, jax.random.key(5), 0.5), x, y, 200, keep_history=True
    )
    history = jnp.concatenate([result.params_history.w, result.params_history.beta], axis=1)
    distance = np.asarray(jnp.linalg.norm(history - fitted.flatten()[None, :], axis=1))
    window = (distance[:-1] < 1e-4) & (distance[:-1] > 1e-10)
    assert window.sum() >= 5
    ratios = distance[1:][window] / distance[:-1][window]
    np.testing.assert_allclose(np.median(ratios), rate, rtol=2e-2)


def test_mim_matches_reference(kind):
    model, truth, x, y = make_problem(kind, n=60, d=3, seed=25)
    point = emjax.testing.perturb(truth, jax.random.key(2), 0.5)
    args = (kind, np.asarray(point.w), np.asarray(point.beta), np.asarray(x), np.asarray(y))
    complete, missing = reference.information(*args)
    np.testing.assert_allclose(emjax.complete_information(model, point, x, y), complete, atol=1e-12)
    np.testing.assert_allclose(emjax.missing_information(model, point, x, y), missing, atol=1e-12)
    np.testing.assert_allclose(emjax.missing_information_matrix(model, point, x, y), reference.mim(*args), atol=1e-10)


def test_grad_of_em_rate_matches_finite_differences(kind):
    model, truth, x, y = make_problem(kind, n=300, d=3, seed=26)

    def rate_of_beta(beta):
        return emjax.em_rate(model, emjax.SymParams(w=truth.w, beta=beta), x, y)

    grad = jax.grad(rate_of_beta)(truth.beta)
    h = 1e-6
    for i in range(3):
        e = jnp.zeros(3).at[i].set(h)
        fd = (rate_of_beta(truth.beta + e) - rate_of_beta(truth.beta - e)) / (2 * h)
        np.testing.assert_allclose(grad[i], fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    ("kind_", "w_norm", "snr", "expected"),
    [
        ("lin", 1.0, 1.0, 0.663),
        ("lin", 2.0, 2.0, 0.436),
        ("lin", 0.5, 8.0, 0.106),
        ("log", 4.0, 4.0, 0.757),
        ("log", 2.0, 2.0, 0.935),
    ],
)
def test_rate_at_truth_matches_math_table(kind_, w_norm, snr, expected):
    # docs/math.md §6 Monte Carlo table (x ~ N(0, I_10), w* orthogonal to beta*); sanity ranges.
    model, _, _, _ = make_problem(kind_, n=10, d=10)
    d = 10
    truth = emjax.SymParams(w=jnp.zeros(d).at[0].set(w_norm), beta=jnp.zeros(d).at[1].set(snr))
    x, y = emjax.sample(model, truth, jax.random.key(7), 100_000)
    np.testing.assert_allclose(emjax.em_rate(model, truth, x, y), expected, atol=0.02)
