"""K-expert information matrices (docs/math.md §5.6), standard errors, AIC and BIC."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from tests.utils import MOE_MODELS, make_moe_problem, moe_flat_fn, moe_flatten


@pytest.fixture(params=sorted(MOE_MODELS))
def moe_kind(request):
    return request.param


# Every fit to round-off here is one compiled loop per family: n = 400 samples, EM bounded by 1000 steps at tol 1e-14.
N, STEPS = 400, 1000


def _fit(model, start, x, y):
    return emjax.fit(model, emjax.em(), start, x, y, STEPS, tol=1e-14).params


def _fitted(model, x, y):
    return _fit(model, emjax.init_params(model, jax.random.key(0), x, y), x, y)


@functools.partial(jax.jit, static_argnums=0)
def _louis(model, point, x, y):
    """jax.hessian(L) over the free parameters and I_c, I_miss, I_c - I_miss: one compiled program per family
    (eager autodiff dispatches op by op), shared by the Louis and standard-error tests."""
    hessian = jax.hessian(moe_flat_fn(model, lambda p: emjax.neg_log_likelihood(model, p, x, y), point))(
        moe_flatten(model, point)
    )
    complete = emjax.complete_information(model, point, x, y)
    missing = emjax.missing_information(model, point, x, y)
    return hessian, complete, missing, emjax.observed_information(model, point, x, y)


def test_louis_identity_observed_information_is_the_hessian(moe_kind):
    """I_c - I_miss equals jax.hessian(L) over the free parameters, at an arbitrary point."""
    model, truth, x, y = make_moe_problem(moe_kind, seed=40, n=N)  # the module's size: compiled programs shared
    point = emjax.init_params(model, jax.random.key(1), x, y)
    hessian, complete, missing, observed = _louis(model, point, x, y)
    np.testing.assert_allclose(complete - missing, hessian, atol=1e-10)
    np.testing.assert_allclose(observed, hessian, atol=1e-10)
    assert float(jnp.linalg.eigvalsh(missing)[0]) > -1e-12  # a covariance


def test_em_jacobian_at_a_fixed_point_is_the_missing_information_matrix(moe_kind):
    """DF(theta_hat) = I_c^{-1} I_miss (Dempster-Laird-Rubin), through the implicit M-step derivative."""
    # Problems whose MLE exists (no expert's classes separable) and where EM contracts fast enough
    # to reach its fixed point to round-off in 1000 steps.
    norm = {"lin": 2.0, "log": 5.0, "poi": 1.5}[moe_kind]
    model, truth, x, y = make_moe_problem(moe_kind, seed=41, n=N, expert_norm=norm)
    fitted = _fit(model, truth, x, y)

    # One compiled program for the step, the Jacobian and the three MIM functions (eager autodiff dispatches
    # op by op, and each public function would compile a program of its own).
    @jax.jit
    def at_the_fixed_point(fitted, x, y):
        step = moe_flatten(model, emjax.em_step(model, fitted, x, y)) - moe_flatten(model, fitted)
        jacobian = jax.jacobian(
            moe_flat_fn(model, lambda p: moe_flatten(model, emjax.em_step(model, p, x, y)), fitted)
        )(moe_flatten(model, fitted))
        mim = emjax.missing_information_matrix(model, fitted, x, y)
        eigenvalues = emjax.mim_eigenvalues(model, fitted, x, y)
        return step, jacobian, mim, eigenvalues, emjax.em_rate(model, fitted, x, y)

    step, jacobian, mim, eigenvalues, rate = at_the_fixed_point(fitted, x, y)
    assert float(jnp.max(jnp.abs(step))) < 1e-10
    np.testing.assert_allclose(jacobian, mim, atol=2e-6)
    assert float(eigenvalues[0]) > -1e-8 and float(eigenvalues[-1]) < 1
    np.testing.assert_allclose(rate, eigenvalues[-1], rtol=1e-12)
    np.testing.assert_allclose(np.sort(np.linalg.eigvals(np.asarray(jacobian)).real), eigenvalues, atol=1e-5)


def test_standard_errors_are_the_inverse_hessian_of_the_total_loss(moe_kind):
    model, _, x, y = make_moe_problem(moe_kind, seed=42, n=N)
    fitted = _fitted(model, x, y)
    n = x.shape[0]

    # The Hessian of the total loss n L is n times that of L (the Louis test's compiled program).
    expected = jnp.sqrt(jnp.diag(jnp.linalg.inv(n * _louis(model, fitted, x, y)[0])))
    errors = emjax.standard_errors(model, fitted, x, y)
    np.testing.assert_allclose(moe_flatten(model, errors), expected, rtol=1e-7)
    assert bool(jnp.all(errors.gate[0] == 0))  # the pinned row is not estimated


def test_standard_errors_drop_frozen_parameters():
    model, _, x, y = make_moe_problem("lin", seed=43, n=N)
    fitted = _fitted(model, x, y)
    mask = emjax.MoEParams(gate=False, experts=True, sigma=True)
    errors = emjax.standard_errors(model, fitted, x, y, trainable=mask)
    assert bool(jnp.all(errors.gate == 0))
    n = x.shape[0]
    free = moe_flatten(model, fitted)[6:]  # experts and sigma follow the two free gate rows

    def total(vector):
        full = jnp.concatenate([moe_flatten(model, fitted)[:6], vector])
        return n * emjax.neg_log_likelihood(model, moe_flat_fn(model, lambda p: p, fitted)(full), x, y)

    expected = jax.jit(lambda free: jnp.sqrt(jnp.diag(jnp.linalg.inv(jax.hessian(total)(free)))))(free)  # one program
    np.testing.assert_allclose(moe_flatten(model, errors)[6:], expected, rtol=1e-7)
    assert emjax.num_parameters(model, fitted, mask) == 9 + 3


def test_standard_errors_match_the_spread_over_repeated_data_sets():
    """Monte Carlo: the mean standard error is close to the spread of estimates over simulated data."""
    model = emjax.MoLinE(2)
    truth = emjax.testing.random_params(model, jax.random.key(7), 2, gate_norm=2.0, expert_norm=3.0, sigma=0.5)
    replicates, n = 150, 400

    def one(key):
        x, y = emjax.sample(model, truth, key, n)
        fitted = emjax.fit(model, emjax.em(), truth, x, y, 200, tol=1e-12).params
        return moe_flatten(model, fitted), moe_flatten(model, emjax.standard_errors(model, fitted, x, y))

    estimates, errors = jax.vmap(one)(jax.random.split(jax.random.key(8), replicates))
    spread = jnp.std(estimates, axis=0)
    ratio = jnp.mean(errors, axis=0) / spread
    assert bool(jnp.all((ratio > 0.75) & (ratio < 1.33))), ratio
    covered = jnp.abs(estimates - moe_flatten(model, truth)[None, :]) <= 1.96 * errors
    assert 0.88 < float(jnp.mean(covered)) < 0.99


def test_aic_and_bic_formulas(moe_kind):
    model, truth, x, y = make_moe_problem(moe_kind, seed=44, n=N)  # the module's size: compiled programs shared
    n, k = N, model.num_free_parameters(3)
    assert emjax.num_parameters(model, truth) == k
    loss = emjax.neg_log_likelihood(model, truth, x, y)
    np.testing.assert_allclose(emjax.aic(model, truth, x, y), 2 * n * loss + 2 * k, rtol=1e-12)
    np.testing.assert_allclose(emjax.bic(model, truth, x, y), 2 * n * loss + k * np.log(n), rtol=1e-12)
    sym = emjax.SymParams(w=jnp.zeros(3), beta=jnp.ones(3))
    assert emjax.num_parameters(emjax.SymMoLinE(), sym) == 6


def test_bic_chooses_the_number_of_experts():
    truth_model = emjax.MoLinE(3)
    truth = emjax.testing.random_params(truth_model, jax.random.key(3), 2, gate_norm=3.0, expert_norm=3.0, sigma=0.3)
    x, y = emjax.sample(truth_model, truth, jax.random.key(4), 600)
    scores = {}
    for k in (2, 3, 4):
        model = emjax.MoLinE(k)
        result = emjax.fit_restarts(model, emjax.em(), jax.random.key(5), x, y, num_restarts=4, num_steps=300, tol=1e-8)
        scores[k] = float(emjax.bic(model, result.params, x, y))
    assert min(scores, key=scores.get) == 3, scores


def test_jacobian_of_em_is_finite_where_responsibilities_underflow():
    """Well-separated experts: some responsibilities are subnormal. The σ M-step's b/a used to give the
    Jacobian a 1/a² that overflowed to NaN; it is the MIM at the fixed point (Dempster-Laird-Rubin)."""
    model = emjax.MoLinE(2)
    truth = emjax.testing.random_params(model, jax.random.key(0), 2, gate_norm=3.0, expert_norm=3.0, sigma=0.4)
    x, y = emjax.sample(model, truth, jax.random.key(1), 2000)
    assert float(jnp.min(emjax.responsibilities(model, truth, x, y))) < np.finfo(np.float64).tiny * 1e10
    fixed = emjax.fit(model, emjax.em(), truth, x, y, 500, tol=1e-14).params

    @jax.jit  # one compiled program (eager autodiff dispatches op by op)
    def jacobian_and_mim(fixed, x, y):
        vector = model.flatten(fixed)
        step = lambda v: model.flatten(emjax.em_step(model, model.unflatten(v, fixed), x, y))  # noqa: E731
        return jax.jacobian(step)(vector), emjax.missing_information_matrix(model, fixed, x, y)

    jacobian, mim = jacobian_and_mim(fixed, x, y)
    assert bool(jnp.all(jnp.isfinite(jacobian)))
    np.testing.assert_allclose(jacobian, mim, atol=1e-10)
