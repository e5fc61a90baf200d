"""emjax against the independent NumPy/SciPy implementation (tests/reference.py), float64, 1e-8.

The problems are drawn here with NumPy (not with emjax.sample), at random sizes, scales and
points, so they are problems emjax's own tests never see.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from tests import reference

TOL = 1e-8


def _problem(kind, seed):
    rng = np.random.default_rng(1000 + seed)
    n, d = int(rng.integers(20, 200)), int(rng.integers(1, 6))
    sigma = float(rng.uniform(0.3, 2.0)) if kind == "lin" else 1.0
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0)
    w_true, b_true = rng.normal(size=d) * 1.5, rng.normal(size=d) * 1.5
    z = rng.uniform(size=n) < 1 / (1 + np.exp(-x @ w_true))
    sign = np.where(z, 1.0, -1.0)
    if kind == "lin":
        y = sign * (x @ b_true) + sigma * rng.normal(size=n)
        model = emjax.SymMoLinE(sigma)
    else:
        y = (rng.uniform(size=n) < 1 / (1 + np.exp(-sign * (x @ b_true)))).astype(float)
        model = emjax.SymMoLogE()
    point = (w_true + 0.5 * rng.normal(size=d), b_true + 0.5 * rng.normal(size=d))
    other = (rng.normal(size=d), rng.normal(size=d))
    return model, sigma, x, y, point, other


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_independent_implementation(kind, seed):
    model, sigma, x, y, (w, b), (w2, b2) = _problem(kind, seed)
    params = emjax.SymParams(w=jnp.asarray(w), beta=jnp.asarray(b))
    ref = emjax.SymParams(w=jnp.asarray(w2), beta=jnp.asarray(b2))
    np.testing.assert_allclose(
        emjax.responsibilities(model, params, x, y), reference.responsibilities(kind, w, b, x, y, sigma), atol=TOL
    )
    np.testing.assert_allclose(
        emjax.neg_log_likelihood(model, params, x, y), reference.loss(kind, w, b, x, y, sigma), atol=TOL
    )
    np.testing.assert_allclose(emjax.mirror_map(model, params, x), reference.mirror_map(kind, w, b, x, sigma), atol=TOL)
    np.testing.assert_allclose(
        emjax.bregman_divergence(model, params, ref, x), reference.mean_kl(kind, (w2, b2), (w, b), x, sigma), atol=TOL
    )
    w_new, b_new = reference.em_step(kind, w, b, x, y, sigma)
    new = emjax.em_step(model, params, x, y)
    np.testing.assert_allclose(new.w, w_new, atol=TOL)
    np.testing.assert_allclose(new.beta, b_new, atol=TOL)
    np.testing.assert_allclose(
        emjax.missing_information_matrix(model, params, x, y), reference.mim(kind, w, b, x, y, sigma), atol=TOL
    )
