"""Mirror map, Bregman divergence and gradients (docs/math.md §4, identities 1, 3 and 5 of §5.5)."""

import jax
import jax.numpy as jnp
import numpy as np

import emjax
from tests import reference
from tests.utils import flat_fn, make_problem, random_point


def test_gradient_matches_autodiff(kind):
    model, _, x, y = make_problem(kind, n=80, d=3, seed=3)
    point = random_point(np.random.default_rng(2), 3)
    auto = jax.grad(lambda p: emjax.neg_log_likelihood(model, p, x, y))(point)
    closed = emjax.neg_log_likelihood_grad(model, point, x, y)
    np.testing.assert_allclose(closed.flatten(), auto.flatten(), rtol=1e-11, atol=1e-13)
    mirror_auto = jax.grad(lambda p: emjax.mirror_map(model, p, x))(point)
    np.testing.assert_allclose(
        emjax.mirror_map_grad(model, point, x).flatten(), mirror_auto.flatten(), rtol=1e-11, atol=1e-13
    )


def _surrogate(model, u, theta, x, y):
    """Q(u | theta) = -mean_n sum_z P(z | x, y; theta) log p(y, z | x; u), written out directly."""
    r = emjax.responsibilities(model, theta, x, y)[:, 1]
    xw, xb = x @ u.w, x @ u.beta
    if isinstance(model, emjax.SymMoLinE):
        s2 = model.sigma**2
        log_e1 = -0.5 * jnp.log(2 * jnp.pi * s2) - (y - xb) ** 2 / (2 * s2)
        log_e0 = -0.5 * jnp.log(2 * jnp.pi * s2) - (y + xb) ** 2 / (2 * s2)
    else:
        log_e1 = jax.nn.log_sigmoid((2 * y - 1) * xb)
        log_e0 = jax.nn.log_sigmoid(-(2 * y - 1) * xb)
    joint1 = jax.nn.log_sigmoid(xw) + log_e1
    joint0 = jax.nn.log_sigmoid(-xw) + log_e0
    return -jnp.mean(r * joint1 + (1 - r) * joint0)


def test_fisher_identity(kind):
    model, _, x, y = make_problem(kind, n=80, d=3, seed=4)
    theta = random_point(np.random.default_rng(3), 3)
    grad_q = jax.grad(lambda u: _surrogate(model, u, theta, x, y))(theta)
    np.testing.assert_allclose(
        grad_q.flatten(), emjax.neg_log_likelihood_grad(model, theta, x, y).flatten(), rtol=1e-11, atol=1e-13
    )
    # Q(u | theta) = A(u) - <u, s_bar(theta)> + const (docs/math.md §4.3): the difference is constant in u.
    s_bar = emjax.posterior_statistics(model, theta, x, y).flatten()
    rng = np.random.default_rng(4)
    consts = [
        _surrogate(model, u, theta, x, y) - emjax.mirror_map(model, u, x) + u.flatten() @ s_bar
        for u in (random_point(rng, 3) for _ in range(3))
    ]
    np.testing.assert_allclose(consts, consts[0], rtol=1e-12, atol=1e-13)


def test_mirror_map_matches_reference(kind):
    model, _, x, y = make_problem(kind, n=50, d=3, seed=5)
    point = random_point(np.random.default_rng(5), 3)
    expected = reference.mirror_map(kind, np.asarray(point.w), np.asarray(point.beta), np.asarray(x))
    np.testing.assert_allclose(emjax.mirror_map(model, point, x), expected, rtol=1e-13)


def test_bregman_is_kl_with_reference_first(kind):
    model, _, x, _ = make_problem(kind, n=50, d=3, seed=6)
    rng = np.random.default_rng(6)
    theta, ref = random_point(rng, 3), random_point(rng, 3)
    got = emjax.bregman_divergence(model, theta, ref, x)
    pair = lambda p: (np.asarray(p.w), np.asarray(p.beta))  # noqa: E731
    kl_ref_first = reference.mean_kl(kind, pair(ref), pair(theta), np.asarray(x))
    kl_reverse = reference.mean_kl(kind, pair(theta), pair(ref), np.asarray(x))
    np.testing.assert_allclose(got, kl_ref_first, rtol=1e-12)
    assert abs(kl_ref_first - kl_reverse) > 1e-3 * kl_ref_first  # the direction is really tested
    # And the definition A(theta) - A(ref) - <grad A(ref), theta - ref>.
    definition = (
        emjax.mirror_map(model, theta, x)
        - emjax.mirror_map(model, ref, x)
        - emjax.mirror_map_grad(model, ref, x).flatten() @ (theta.flatten() - ref.flatten())
    )
    np.testing.assert_allclose(got, definition, rtol=1e-10)


def test_bregman_is_zero_on_the_diagonal_and_positive_off_it(kind):
    model, _, x, _ = make_problem(kind, n=40, d=2, seed=7)
    point = random_point(np.random.default_rng(7), 2)
    assert float(emjax.bregman_divergence(model, point, point, x)) == 0.0
    other = emjax.SymParams(w=point.w + 1e-3, beta=point.beta)
    assert float(emjax.bregman_divergence(model, other, point, x)) > 0.0


def test_complete_information_is_hessian_of_mirror_map(kind):
    model, _, x, y = make_problem(kind, n=60, d=3, seed=8)
    point = random_point(np.random.default_rng(8), 3)
    hess = jax.hessian(flat_fn(lambda p: emjax.mirror_map(model, p, x), 3))(point.flatten())
    np.testing.assert_allclose(emjax.complete_information(model, point, x, y), hess, rtol=1e-10, atol=1e-13)
