"""K-expert models: E-step and loss against a brute-force oracle, the K=2 consistency with the
symmetric models, sampling, extreme inputs and the boundary checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from tests import moe_reference as reference
from tests.utils import MOE_MODELS, make_moe_problem


@pytest.fixture(params=sorted(MOE_MODELS))
def moe_kind(request):
    return request.param


def _arbitrary_point(model, truth, seed, scale=0.7):
    """A point that is not the truth: every free entry perturbed (σ kept positive)."""
    keys = jax.random.split(jax.random.key(seed), 3)
    gate = truth.gate + scale * jax.random.normal(keys[0], truth.gate.shape)
    experts = truth.experts + scale * jax.random.normal(keys[1], truth.experts.shape)
    experts = jnp.where(jnp.asarray(model.pinned(truth.dim).experts), 0.0, experts)
    sigma = None if truth.sigma is None else truth.sigma * jnp.exp(0.3 * jax.random.normal(keys[2], (3,)))
    return emjax.MoEParams(gate=gate.at[0].set(0.0), experts=experts, sigma=sigma)


def test_responsibilities_and_loss_match_brute_force(moe_kind):
    model, truth, x, y = make_moe_problem(moe_kind, seed=1, n=60)
    params = _arbitrary_point(model, truth, seed=2)
    gamma = emjax.responsibilities(model, params, x, y)
    assert gamma.shape == (60, 3)
    np.testing.assert_allclose(gamma, reference.responsibilities(model, params, x, y), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(
        emjax.neg_log_likelihood(model, params, x, y), reference.loss(model, params, x, y), rtol=1e-12
    )


def test_bregman_divergence_is_the_complete_data_kl_reference_first(moe_kind):
    model, truth, x, _ = make_moe_problem(moe_kind, seed=3, n=50)
    a, b = _arbitrary_point(model, truth, seed=4), _arbitrary_point(model, truth, seed=5)
    np.testing.assert_allclose(
        emjax.bregman_divergence(model, a, b, x), reference.complete_kl(model, a, b, x), rtol=1e-10
    )
    assert abs(float(emjax.bregman_divergence(model, a, b, x)) - reference.complete_kl(model, b, a, x)) > 1e-6
    assert float(emjax.bregman_divergence(model, a, a, x)) == pytest.approx(0.0, abs=1e-14)


def test_mirror_map_is_the_mean_gate_log_partition(moe_kind):
    model, truth, x, _ = make_moe_problem(moe_kind, seed=6, n=40)
    expected = np.mean(np.log(np.sum(np.exp(np.asarray(x) @ np.asarray(truth.gate).T), axis=1)))
    np.testing.assert_allclose(emjax.mirror_map(model, truth, x), expected, rtol=1e-12)


def test_two_expert_mixtures_are_the_symmetric_models():
    """docs/math.md §1: K=2 MoLinE with W_0 = 0, W_1 = w, beta_1 = -beta_0 = beta and equal sigma is SymMoLinE;
    C=2 MoLogE with class logits (0, +-x.beta) is SymMoLogE."""
    rng = np.random.default_rng(0)
    w, beta = rng.normal(size=3), rng.normal(size=3)
    x = jnp.asarray(rng.normal(size=(80, 3)))
    gate = jnp.stack([jnp.zeros(3), w])
    sym = emjax.SymParams(w=w, beta=beta)

    y = jnp.asarray(rng.normal(size=80) * 2)
    lin = emjax.MoEParams(gate=gate, experts=jnp.stack([-beta, beta]), sigma=jnp.array([0.7, 0.7]))
    np.testing.assert_allclose(
        emjax.neg_log_likelihood(emjax.MoLinE(2), lin, x, y),
        emjax.neg_log_likelihood(emjax.SymMoLinE(0.7), sym, x, y),
        rtol=1e-13,
    )
    np.testing.assert_allclose(
        emjax.responsibilities(emjax.MoLinE(2), lin, x, y),
        emjax.responsibilities(emjax.SymMoLinE(0.7), sym, x, y),
        atol=1e-13,
    )

    labels = jnp.asarray(rng.integers(0, 2, size=80)).astype(jnp.float64)
    columns = [jnp.stack([jnp.zeros(3), -beta], axis=1), jnp.stack([jnp.zeros(3), beta], axis=1)]
    log = emjax.MoEParams(gate=gate, experts=jnp.stack(columns))
    np.testing.assert_allclose(
        emjax.neg_log_likelihood(emjax.MoLogE(2, 2), log, x, labels),
        emjax.neg_log_likelihood(emjax.SymMoLogE(), sym, x, labels),
        rtol=1e-13,
    )


def test_sample_draws_from_the_model(moe_kind):
    model, truth, x, y = make_moe_problem(moe_kind, seed=7, n=4000)
    assert x.shape == (4000, 3) and y.shape == (4000,)
    model.expert.check_labels(y)  # valid responses for the family
    # The sample is drawn from the model: the true parameters fit it better than a perturbed point.
    assert emjax.neg_log_likelihood(model, truth, x, y) < emjax.neg_log_likelihood(
        model, _arbitrary_point(model, truth, seed=8, scale=0.3), x, y
    )


def test_extreme_scores_stay_finite(moe_kind):
    model, truth, x, y = make_moe_problem(moe_kind, seed=9, n=50)
    huge = emjax.MoEParams(gate=truth.gate * 500, experts=truth.experts, sigma=truth.sigma)
    gamma = emjax.responsibilities(model, huge, x, y)
    assert bool(jnp.all(jnp.isfinite(gamma)))
    np.testing.assert_allclose(jnp.sum(gamma, axis=1), 1.0, rtol=1e-12)
    assert bool(jnp.isfinite(emjax.neg_log_likelihood(model, huge, x, y)))
    assert bool(
        jax.tree_util.tree_reduce(
            lambda a, b: a & b,
            jax.tree_util.tree_map(lambda leaf: jnp.all(jnp.isfinite(leaf)), emjax.em_step(model, huge, x, y)),
        )
    )


def test_float32_runs_in_float32(moe_kind):
    model, truth, x, y = make_moe_problem(moe_kind, seed=10, n=100)
    single = jax.tree_util.tree_map(lambda leaf: leaf.astype(jnp.float32), truth)
    new = emjax.em_step(model, single, x.astype(jnp.float32), y.astype(jnp.float32))
    assert new.gate.dtype == jnp.float32 and new.experts.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(new.experts)))


def test_bad_input_is_refused_with_a_clear_message():
    model, truth, x, y = make_moe_problem("lin", seed=11, n=20)
    with pytest.raises(ValueError, match="gate must have shape"):
        emjax.neg_log_likelihood(model, emjax.MoEParams(truth.gate[:2], truth.experts, truth.sigma), x, y)
    with pytest.raises(ValueError, match="sigma must be positive"):
        emjax.neg_log_likelihood(model, emjax.MoEParams(truth.gate, truth.experts, -truth.sigma), x, y)
    with pytest.raises(ValueError, match="sigma must have shape"):
        emjax.neg_log_likelihood(model, emjax.MoEParams(truth.gate, truth.experts), x, y)
    with pytest.raises(ValueError, match="MoEParams"):
        emjax.em_step(model, emjax.SymParams(w=jnp.zeros(3), beta=jnp.zeros(3)), x, y)
    with pytest.raises(ValueError, match="num_experts"):
        emjax.MoLinE(0)
    with pytest.raises(ValueError, match="num_classes"):
        emjax.MoLogE(3, num_classes=1)
    log_model, log_truth, log_x, _ = make_moe_problem("log", seed=12, n=20)
    with pytest.raises(ValueError, match="class labels"):
        emjax.em_step(log_model, log_truth, log_x, jnp.full(20, 3.0))
    poi_model, poi_truth, poi_x, _ = make_moe_problem("poi", seed=13, n=20)
    with pytest.raises(ValueError, match="counts"):
        emjax.em_step(poi_model, poi_truth, poi_x, jnp.full(20, 0.5))
    with pytest.raises(ValueError, match="trainable.experts must have shape"):
        emjax.em_step(model, truth, x, y, trainable=emjax.MoEParams(gate=True, experts=jnp.ones(4, bool)))
    with pytest.raises(TypeError, match="'y'"):
        emjax.complete_information(model, truth, x)
