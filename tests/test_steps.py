"""EM and mirror-descent steps (docs/math.md §3, §4.4, identities 4 and 8 of §5.5) and the baselines."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from tests import reference
from tests.utils import make_problem, random_point

# The public steps compile once per model, data shape and dtype: the tests use one size (n = 200, d = 3) unless the
# property needs another (random dimensions, fewer samples than features), so they share those programs.


def test_em_step_matches_exact_m_step(kind):
    # The M-step solved independently (SciPy trust-region Newton, least squares), float64, 1e-8.
    model, truth, x, y = make_problem(kind, n=200, d=3, seed=10)
    rng = np.random.default_rng(10)
    for _ in range(3):
        point = emjax.testing.perturb(truth, jax.random.key(int(rng.integers(1 << 30))), 0.8)
        w_ref, b_ref = reference.em_step(
            kind, np.asarray(point.w), np.asarray(point.beta), np.asarray(x), np.asarray(y)
        )
        new = emjax.em_step(model, point, x, y)
        np.testing.assert_allclose(new.w, w_ref, atol=1e-8)
        np.testing.assert_allclose(new.beta, b_ref, atol=1e-8)


def test_m_step_satisfies_moment_matching(kind):
    model, truth, x, y = make_problem(kind, n=200, d=3, seed=11)
    point = emjax.testing.perturb(truth, jax.random.key(1))
    new = emjax.em_step(model, point, x, y)
    np.testing.assert_allclose(
        emjax.mirror_map_grad(model, new, x).flatten(),
        emjax.posterior_statistics(model, point, x, y).flatten(),
        atol=1e-11,
    )


def test_mirror_step_with_unit_step_is_em(kind):
    model, truth, x, y = make_problem(kind, n=200, d=3, seed=12)
    for seed in range(3):
        point = emjax.testing.perturb(truth, jax.random.key(seed))
        np.testing.assert_allclose(
            emjax.mirror_descent_step(model, point, x, y, 1.0).flatten(),
            emjax.em_step(model, point, x, y).flatten(),
            rtol=0,
            atol=1e-10,
        )


@pytest.mark.parametrize("eta", [0.1, 0.5, 0.9])
def test_mirror_step_solves_the_mirror_equation(kind, eta):
    # grad A(theta+) = grad A(theta) - eta grad L(theta)  (docs/math.md §4.4).
    model, truth, x, y = make_problem(kind, n=200, d=3, seed=13)
    point = emjax.testing.perturb(truth, jax.random.key(2))
    new = emjax.mirror_descent_step(model, point, x, y, eta)
    lhs = emjax.mirror_map_grad(model, new, x).flatten()
    rhs = (
        emjax.mirror_map_grad(model, point, x).flatten()
        - eta * emjax.neg_log_likelihood_grad(model, point, x, y).flatten()
    )
    np.testing.assert_allclose(lhs, rhs, atol=1e-11)

    # ... and it is the argmin of <grad L, u> + D_A(u, theta)/eta: the objective's gradient vanishes.
    def objective(u):
        return (
            emjax.neg_log_likelihood_grad(model, point, x, y).flatten() @ u.flatten()
            + emjax.bregman_divergence(model, u, point, x) / eta
        )

    np.testing.assert_allclose(jax.grad(objective)(new).flatten(), 0.0, atol=1e-10)


@pytest.mark.parametrize("seed", range(6))
def test_em_and_mirror_descent_never_increase_the_loss(kind, seed):
    # Per-step decrease L(t) - L(t+1) >= D_A(theta_t, theta_{t+1}) / eta >= 0 (docs/math.md §5.4, §5.5.8),
    # over random problems, random starts (including far from the truth) and several steps.
    rng = np.random.default_rng(100 + seed)
    model, _, x, y = make_problem(
        kind,
        n=200,
        d=int(rng.integers(1, 5)),
        seed=200 + seed,
        norms=(float(rng.uniform(0.3, 5)), float(rng.uniform(0.3, 5))),
    )
    d = x.shape[1]
    for eta in (1.0, 0.5):
        params = random_point(rng, d, scale=2.0)
        for _ in range(8):
            new = emjax.mirror_descent_step(model, params, x, y, eta)
            decrease = emjax.neg_log_likelihood(model, params, x, y) - emjax.neg_log_likelihood(model, new, x, y)
            divergence = emjax.bregman_divergence(model, params, new, x)
            assert divergence >= 0
            assert decrease >= divergence / eta - 1e-12, (eta, float(decrease), float(divergence))
            params = new


def test_gradient_em_with_one_inner_step_is_gradient_descent(kind):
    model, truth, x, y = make_problem(kind, n=200, d=3, seed=14)
    point = emjax.testing.perturb(truth, jax.random.key(3))
    np.testing.assert_allclose(
        emjax.gradient_em_step(model, point, x, y, 0.3, inner_steps=1).flatten(),
        emjax.gradient_descent_step(model, point, x, y, 0.3).flatten(),
        rtol=1e-13,
    )


def test_gradient_em_definition(kind):
    # m steps u <- u - eta (grad A(u) - s_bar(theta_t)), responsibilities frozen at theta_t.
    model, truth, x, y = make_problem(kind, n=200, d=3, seed=15)
    point = emjax.testing.perturb(truth, jax.random.key(4))
    eta = emjax.SymParams(w=jnp.asarray(0.4), beta=jnp.asarray(0.2))
    target = emjax.posterior_statistics(model, point, x, y).flatten()
    u = point.flatten()
    etas = jnp.concatenate([jnp.full(3, 0.4), jnp.full(3, 0.2)])
    for _ in range(3):
        u = u - etas * (emjax.mirror_map_grad(model, emjax.SymParams.unflatten(u), x).flatten() - target)
    got = emjax.gradient_em_step(model, point, x, y, eta, inner_steps=3)
    np.testing.assert_allclose(got.flatten(), u, rtol=1e-13)


def test_gradient_descent_step_definition(kind):
    model, truth, x, y = make_problem(kind, n=200, d=3, seed=16)
    point = emjax.testing.perturb(truth, jax.random.key(5))
    grad = jax.grad(lambda p: emjax.neg_log_likelihood(model, p, x, y))(point)
    got = emjax.gradient_descent_step(model, point, x, y, 0.7)
    np.testing.assert_allclose(got.flatten(), point.flatten() - 0.7 * grad.flatten(), rtol=1e-12)


def test_safe_step_size_gives_monotone_gradient_descent(kind):
    model, _, x, y = make_problem(kind, n=200, d=3, seed=17)
    step = emjax.safe_step_size(model, x)
    params = random_point(np.random.default_rng(17), 3, scale=2.0)
    result = emjax.fit(model, emjax.gradient_descent(step), params, x, y, 30)
    assert np.all(np.diff(np.asarray(result.losses)) <= 1e-13)
    # And docs/math.md's formula: 1 / (c lambda_max(X^T X / n)).
    c = 1.0 if kind == "lin" else 0.25
    np.testing.assert_allclose(step, 1 / (c * np.linalg.eigvalsh(np.asarray(x.T @ x) / 200)[-1]), rtol=1e-12)


def test_steps_work_under_jit_and_vmap(kind):
    model, truth, x, y = make_problem(kind, n=200, d=3, seed=18)
    points = jax.vmap(lambda k: emjax.testing.perturb(truth, k))(jax.random.split(jax.random.key(6), 4))
    batched = jax.jit(jax.vmap(lambda p: emjax.em_step(model, p, x, y)))(points)
    for i in range(4):
        single = emjax.em_step(model, jax.tree_util.tree_map(lambda a, i=i: a[i], points), x, y)
        np.testing.assert_allclose(batched.flatten()[i], single.flatten(), atol=1e-12)
    etas = jnp.array([0.25, 0.5, 1.0])
    steps = jax.vmap(lambda eta: emjax.mirror_descent_step(model, truth, x, y, eta))(etas)
    np.testing.assert_allclose(steps.flatten()[2], emjax.em_step(model, truth, x, y).flatten(), atol=1e-10)


def test_float32_newton_reaches_its_tolerance(kind):
    model, truth, x, y = make_problem(kind, n=200, d=3, seed=19, dtype=jnp.float32)
    point = emjax.testing.perturb(truth, jax.random.key(7))
    new32 = emjax.em_step(model, point, x, y)
    cast = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
    p64 = emjax.SymParams(w=cast(point.w), beta=cast(point.beta))
    new64 = emjax.em_step(model, p64, cast(x), cast(y))
    np.testing.assert_allclose(new32.flatten(), new64.flatten(), atol=2e-4)


def test_fewer_samples_than_features_stays_finite(kind):
    # A singular Gram matrix / flat logistic Hessian: not identified, but finite and still descending.
    model, truth, x, y = make_problem(kind, n=3, d=6, seed=60)
    for step in (emjax.em_step(model, truth, x, y), emjax.mirror_descent_step(model, truth, x, y, 0.5)):
        assert np.all(np.isfinite(np.asarray(step.flatten())))
    assert (
        emjax.neg_log_likelihood(model, emjax.em_step(model, truth, x, y), x, y)
        <= emjax.neg_log_likelihood(model, truth, x, y) + 1e-12
    )
