"""emjax.deep: deep and sparse MoE trained EM-style (docs/math.md §9).

Oracles: the linear, bias-free, dense DeepMoE is MoLogE (same L, responsibilities and M-step as
emjax.em_step); L by brute force; Fisher's identity; generalized-EM monotonicity."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import emjax
import emjax.deep as deep
from emjax.deep._model import expert_logits
from emjax.deep._train import batch_indices

K, C = 3, 3


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def linear():
    """MoLogE(3, 3) on n=200, d=3 (two features + intercept), a random start, and the DeepMoE."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(200, 2)), np.ones((200, 1))], axis=1)
    gate, experts = 2.0 * rng.normal(size=(K, 3)), 3.0 * rng.normal(size=(K, 3, C))
    gate[0], experts[:, :, 0] = 0, 0
    prior = np.exp(x @ gate.T)
    z = np.array([rng.choice(K, p=p / p.sum()) for p in prior])
    class_logits = np.einsum("nd,ndc->nc", x, experts[z])
    probs = np.exp(class_logits - class_logits.max(1, keepdims=True))
    y = np.array([rng.choice(C, p=p / p.sum()) for p in probs]).astype(float)
    start_gate, start_experts = 0.3 * rng.normal(size=(K, 3)), 0.3 * rng.normal(size=(K, 3, C))
    start_gate[0], start_experts[:, :, 0] = 0, 0
    params = emjax.MoEParams(gate=start_gate, experts=start_experts)
    return emjax.MoLogE(K, C), params, jnp.asarray(x), jnp.asarray(y), deep.DeepMoE.from_moe_params(params)


@pytest.fixture(scope="module")
def mlp():
    """A small MLP mixture (K=3, top-2) and data from a known nonlinear MoE (n=96, d=2, C=3)."""
    x, y, truth = deep.synthetic_nonlinear_moe(jax.random.key(1), 96, 2, K, C, width=8)
    model = deep.DeepMoE.mlp(jax.random.key(2), 2, C, K, top_k=2, expert_width=8, gate_width=8)
    return model, x, y, truth


def _with_top_k(model, k):
    return deep.DeepMoE(model.gate, model.experts, model.num_experts, model.num_classes, k)


def _expert(model, k):
    arrays, static = eqx.partition(model.experts, eqx.is_array)
    return eqx.combine(jax.tree_util.tree_map(lambda a: a[k], arrays), static)


def _brute_force_loss(model, x, y):
    """L by hand in NumPy: softmax gate over all K, top-k by a stable sort, renormalised mixture."""
    logits = np.asarray(jax.vmap(model.gate)(x), np.float64)
    gate = np.exp(logits - logits.max(1, keepdims=True))
    gate /= gate.sum(1, keepdims=True)
    likelihood = np.zeros_like(gate)
    for k in range(model.num_experts):
        class_logits = np.asarray(jax.vmap(_expert(model, k))(x), np.float64)
        probs = np.exp(class_logits - class_logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        likelihood[:, k] = probs[np.arange(len(y)), np.asarray(y)]
    total = 0.0
    for n in range(len(y)):
        routed = np.argsort(-logits[n], kind="stable")[: model.top_k]
        total += np.log(np.sum(gate[n, routed] * likelihood[n, routed]) / np.sum(gate[n, routed]))
    return -total / len(y)


def _close(a, b, **kwargs):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **kwargs)


# ----------------------------------------------------------------------------- the linear reduction (MoLogE)


def test_linear_dense_model_is_mologe(linear):
    model, params, x, y, dm = linear
    yi = y.astype(jnp.int32)
    _close(deep.gate_log_probs(dm, x), jax.nn.log_softmax(x @ params.gate.T, axis=-1), rtol=0, atol=1e-13)
    by_hand = jnp.stack([jax.nn.log_softmax(x @ params.experts[k], axis=-1)[jnp.arange(200), yi] for k in range(K)], 1)
    _close(deep.expert_log_probs(dm, x, yi), by_hand, rtol=0, atol=1e-13)
    _close(deep.neg_log_likelihood(dm, x, yi), emjax.neg_log_likelihood(model, params, x, y), rtol=1e-14)
    _close(deep.responsibilities(dm, x, yi), emjax.responsibilities(model, params, x, y), rtol=0, atol=1e-13)
    back = dm.to_moe_params()  # init_params pins gate row 0 and class column 0 at 0, so this is exact
    _close(back.gate, params.gate, rtol=0, atol=1e-15)
    _close(back.experts, params.experts, rtol=0, atol=1e-15)


def test_fisher_identity_dense_linear_and_sparse_mlp(linear, mlp):
    """grad J(. | gamma(theta)) = grad L at theta: dense linear (MoLogE) and a top-2 MLP mixture."""
    _, _, x, y, dm = linear
    sparse, xs, ys, _ = mlp

    @eqx.filter_jit
    def both_gradients(model, features, labels):
        gamma = deep.responsibilities(model, features, labels)
        grad_j = eqx.filter_grad(lambda m: deep.surrogate(m, features, labels, gamma))(model)
        grad_l = eqx.filter_grad(lambda m: deep.neg_log_likelihood(m, features, labels))(model)
        return [jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(t)]) for t in (grad_j, grad_l)]

    for model, features, labels in ((dm, x, y.astype(jnp.int32)), (sparse, xs, ys)):
        flat_j, flat_l = both_gradients(model, features, labels)
        assert float(jnp.linalg.norm(flat_l)) > 1e-3  # not at a stationary point: the identity has content
        _close(flat_j, flat_l, rtol=0, atol=1e-12)


def test_converged_m_step_equals_em_step(linear):
    """One E-step and an M-step minimised by L-BFGS give MoLogE's em_step predictions (to 1e-6)."""
    model, params, x, y, dm = linear
    fitted, history = deep.fit_em(
        dm,
        jax.random.key(0),
        x,
        y.astype(jnp.int32),
        optimizer=optax.lbfgs(),
        num_em_steps=1,
        inner_steps=100,
        reset_optimizer=True,
    )
    reference = deep.DeepMoE.from_moe_params(emjax.em_step(model, params, x, y))
    _close(jnp.exp(deep.gate_log_probs(fitted, x)), jnp.exp(deep.gate_log_probs(reference, x)), rtol=0, atol=1e-6)
    _close(
        jax.nn.softmax(expert_logits(fitted, x), -1), jax.nn.softmax(expert_logits(reference, x), -1), rtol=0, atol=1e-6
    )
    assert float(history.surrogate[0, 1]) < float(history.surrogate[0, 0]) - 1e-3


# ----------------------------------------------------------------------------- generalized EM is monotone

SGD = optax.sgd(0.05)  # one optimizer object per configuration: fit_em compiles once per (optimizer, shapes)
ADAM = optax.adam(2e-2)


def test_em_decreases_surrogate_and_loss_and_matches_a_python_loop(mlp):
    """Full batch, dense, small steps: J falls at every inner step and L by at least as much as J (GEM)."""
    model, x, y, _ = mlp
    model = _with_top_k(model, K)
    fitted, history = deep.fit_em(model, jax.random.key(0), x, y, optimizer=SGD, num_em_steps=15, inner_steps=4)
    surrogate, inner, loss = (np.asarray(a) for a in (history.surrogate, history.inner_surrogate, history.loss))
    _close(inner[:, 0], surrogate[:, 0], rtol=1e-13)  # the E-step's J(theta_t) is the first inner value
    assert np.all(np.diff(np.concatenate([inner, surrogate[:, 1:]], axis=1), axis=1) < 0)
    assert loss[-1] < loss[0] - 0.02
    assert np.all(np.diff(loss) <= surrogate[:-1, 1] - surrogate[:-1, 0] + 1e-12)

    @eqx.filter_jit
    def em_iteration(m):  # the recipe of docs/math.md §9 from the public primitives, one E-step per call
        gamma = deep.responsibilities(m, x, y)
        mask = deep.top_k_mask(jax.vmap(m.gate)(x), m.top_k)
        for _ in range(4):
            grads = eqx.filter_grad(lambda u: deep.surrogate(u, x, y, gamma, mask))(m)
            m = eqx.apply_updates(m, jax.tree_util.tree_map(lambda g: -0.05 * g, grads))
        return m

    reference = model
    for _ in range(15):
        reference = em_iteration(reference)
    _assert_models_close(fitted, reference, rtol=1e-10, atol=1e-12)


def test_sub_batches_match_a_python_loop(mlp):
    """inner_batch_size: one E-step on a shuffled batch, inner step j on its sub-batch j mod (batch / sub)."""
    model, x, y, _ = mlp
    fitted, history = deep.fit_em(
        model, jax.random.key(5), x, y, optimizer=SGD, num_em_steps=3, inner_steps=4, inner_batch_size=32
    )
    indices = np.asarray(batch_indices(jax.random.key(5), x.shape[0], 3, x.shape[0]))
    assert sorted(indices[1]) == list(range(x.shape[0]))  # each E-step batch is a permutation of the data

    @eqx.filter_jit
    def em_iteration(m, xb, yb):
        gamma = deep.responsibilities(m, xb, yb)
        mask = deep.top_k_mask(jax.vmap(m.gate)(xb), m.top_k)
        for j in range(4):
            part = slice(32 * (j % 3), 32 * (j % 3) + 32)
            grads = eqx.filter_grad(lambda u, p=part: deep.surrogate(u, xb[p], yb[p], gamma[p], mask[p]))(m)
            m = eqx.apply_updates(m, jax.tree_util.tree_map(lambda g: -0.05 * g, grads))
        return m

    reference = model
    for index in indices:
        reference = em_iteration(reference, x[index], y[index])
    _assert_models_close(fitted, reference, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(history.forward_passes, 3 * np.arange(1, 4))  # E-step on 3 sub-batches' worth
    np.testing.assert_array_equal(history.gradient_evaluations, 4 * np.arange(1, 4))


def test_minibatch_em_and_end_to_end_learn(mlp):
    model, x, y, _ = mlp
    fitted_em, h_em = _adam_em(jax.random.key(3), model, x, y)
    fitted_ee, h_ee = deep.fit_end_to_end(model, jax.random.key(3), x, y, optimizer=ADAM, num_steps=90, batch_size=32)
    start = float(deep.neg_log_likelihood(model, x, y))
    for fitted, history in ((fitted_em, h_em), (fitted_ee, h_ee)):
        assert float(deep.neg_log_likelihood(fitted, x, y)) < start - 0.1
        _close(history.routed_fraction.sum(-1), 2.0, rtol=1e-12)
        _close(history.responsibility_mass.sum(-1), 1.0, rtol=1e-12)
        _close(history.gate_mass.sum(-1), 1.0, rtol=1e-12)
    _close(h_em.eval_loss[-1], deep.neg_log_likelihood(fitted_em, x, y), rtol=1e-10)
    _close(h_em.eval_accuracy[-1], deep.accuracy(fitted_em, x, y), rtol=1e-12)
    np.testing.assert_array_equal(h_em.gradient_evaluations, 3 * np.arange(1, 31))
    np.testing.assert_array_equal(h_em.forward_passes, np.arange(1, 31))
    np.testing.assert_array_equal(h_ee.gradient_evaluations, np.arange(1, 91))
    np.testing.assert_array_equal(h_ee.forward_passes, 0)
    assert h_ee.surrogate is None and h_em.surrogate.shape == (30, 2) and h_ee.eval_loss is None
    assert h_em.eval_loss.shape == (3,)
    # One inner step per E-step on the same batches is end-to-end training (Fisher's identity, docs/math.md §9).
    fitted_m1, h_m1 = deep.fit_em(
        model, jax.random.key(3), x, y, optimizer=ADAM, num_em_steps=90, inner_steps=1, batch_size=32
    )
    _assert_models_close(fitted_m1, fitted_ee, rtol=1e-8, atol=1e-10)
    _close(h_m1.loss, h_ee.loss, rtol=1e-10)


# ----------------------------------------------------------------------------- routing


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_top_k_mask_exact_count_and_ties(k):
    rng = np.random.default_rng(k)
    logits = rng.integers(0, 3, size=(200, 4)).astype(float)  # many ties
    logits[0] = 1.0  # a fully tied row goes to experts 0..k-1
    mask = np.asarray(deep.top_k_mask(jnp.asarray(logits), k))
    assert np.all(mask.sum(1) == k)
    expected = np.zeros_like(mask)
    np.put_along_axis(expected, np.argsort(-logits, axis=1, kind="stable")[:, :k], True, axis=1)
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(mask[0], np.arange(4) < k)


def test_routing_responsibilities_and_load(mlp):
    model, x, y, _ = mlp
    for top_k in (1, 2):
        model = _with_top_k(model, top_k)
        mask = np.asarray(deep.top_k_mask(jax.vmap(model.gate)(x), top_k))
        gamma = np.asarray(deep.responsibilities(model, x, y))
        ell = np.asarray(deep.routed_log_weights(model, x, y))
        assert np.all(gamma[~mask] == 0) and np.all(np.isneginf(ell[~mask])) and np.all(np.isfinite(ell[mask]))
        _close(gamma.sum(1), 1.0, rtol=1e-12)
        stats = deep.load_statistics(model, x)
        _close(stats.routed_fraction, mask.mean(0), rtol=1e-14)
        _close(stats.routed_fraction.sum(), top_k, rtol=1e-14)
        _close(stats.gate_mass.sum(), 1.0, rtol=1e-12)
        _close(deep.neg_log_likelihood(model, x, y), _brute_force_loss(model, x, y), rtol=1e-12)
    proba = np.asarray(deep.predict_proba(model, x))
    _close(proba.sum(1), 1.0, rtol=1e-12)
    _close(deep.cross_entropy(model, x, y), -np.mean(np.log(proba[np.arange(len(y)), np.asarray(y)])), rtol=1e-12)
    _close(deep.accuracy(model, x, y), np.mean(proba.argmax(1) == np.asarray(y)), rtol=1e-14)


def test_dense_loss_is_the_mixture_likelihood(mlp):
    """top_k = K: L = -mean logsumexp_k(log pi_k + log p_k), all computed by hand."""
    model, x, y, _ = mlp
    model = _with_top_k(model, K)
    log_gate = jax.nn.log_softmax(jax.vmap(model.gate)(x), axis=-1)
    columns = [jax.nn.log_softmax(jax.vmap(_expert(model, k))(x), -1)[jnp.arange(x.shape[0]), y] for k in range(K)]
    dense = -jnp.mean(jax.scipy.special.logsumexp(log_gate + jnp.stack(columns, 1), axis=1))
    _close(deep.neg_log_likelihood(model, x, y), dense, rtol=1e-14)


def test_synthetic_latent_is_routed():
    truth = deep.DeepMoE.mlp(jax.random.key(4), 2, C, K, top_k=1, expert_width=8, gate_width=8)
    x, y, z = deep.sample(truth, jax.random.key(5), 64, 2, return_latent=True)
    np.testing.assert_array_equal(z, np.argmax(jax.vmap(truth.gate)(x), axis=1))  # top-1: z is the routed expert
    assert y.dtype == jnp.int32 and int(y.min()) >= 0 and int(y.max()) < C


# ----------------------------------------------------------------------------- transformations and dtypes


def _adam_em(key, model, x, y):
    return deep.fit_em(
        model, key, x, y, optimizer=ADAM, num_em_steps=30, inner_steps=3, batch_size=32, eval_data=(x, y), eval_every=10
    )


def _assert_models_close(a, b, **tolerances):
    jax.tree_util.tree_map(
        lambda u, v: _close(u, v, **tolerances), eqx.filter(a, eqx.is_array), eqx.filter(b, eqx.is_array)
    )


def test_vmap_over_keys_equals_a_loop(mlp):
    model, x, y, _ = mlp
    keys = jax.random.split(jax.random.key(7), 2)
    batched = eqx.filter_vmap(lambda k: _adam_em(k, model, x, y))(keys)
    for i in range(2):
        single = _adam_em(keys[i], model, x, y)
        _assert_models_close(
            jax.tree_util.tree_map(lambda a, i=i: a[i], eqx.filter(batched, eqx.is_array)),
            eqx.filter(single, eqx.is_array),
            rtol=1e-10,
            atol=1e-12,
        )
    assert not np.allclose(batched.history.loss[0], batched.history.loss[1])  # the two keys drew different batches


def test_eager_equals_jit(linear):
    _, _, x, y, dm = linear
    yi = y.astype(jnp.int32)
    compiled = (deep.neg_log_likelihood(dm, x, yi), deep.responsibilities(dm, x, yi))
    with jax.disable_jit():
        eager = (deep.neg_log_likelihood(dm, x, yi), deep.responsibilities(dm, x, yi))
    _close(compiled[0], eager[0], rtol=1e-14)
    _close(compiled[1], eager[1], rtol=0, atol=1e-14)


def test_float32(mlp):
    model, x, y, _ = mlp
    model32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, model)
    fitted, history = _adam_em(jax.random.key(8), model32, x.astype(jnp.float32), y)
    _, history64 = _adam_em(jax.random.key(8), model, x, y)
    assert fitted.gate.layers[0].weight.dtype == jnp.float32 and history.loss.dtype == jnp.float32
    assert deep.neg_log_likelihood(fitted, x.astype(jnp.float32), y).dtype == jnp.float32
    _close(history.loss, history64.loss, rtol=1e-3)


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_raise(mlp):
    model, x, y, _ = mlp
    opt = optax.adam(1e-2)
    with pytest.raises(ValueError, match="top_k"):
        deep.DeepMoE.mlp(jax.random.key(0), 2, C, K, top_k=4)
    with pytest.raises(ValueError, match="top_k"):
        _with_top_k(model, 0)
    with pytest.raises(ValueError, match="leading axis"):
        deep.DeepMoE(model.gate, model.gate, K, C)
    with pytest.raises(ValueError, match="class labels"):
        deep.neg_log_likelihood(model, x, y.at[0].set(C))
    with pytest.raises(ValueError, match="shape"):
        deep.neg_log_likelihood(model, x[:, :1], y)
    with pytest.raises(ValueError, match="one entry per row"):
        deep.responsibilities(model, x, y[:-1])
    with pytest.raises(ValueError, match="gamma"):
        deep.surrogate(model, x, y, jnp.ones((x.shape[0], K + 1)))
    with pytest.raises(ValueError, match="k must be"):
        deep.top_k_mask(jnp.zeros((2, 3)), 4)
    with pytest.raises(ValueError, match="batch_size"):
        deep.fit_em(model, jax.random.key(0), x, y, optimizer=opt, num_em_steps=2, inner_steps=2, batch_size=1000)
    with pytest.raises(ValueError, match="inner_steps"):
        deep.fit_em(model, jax.random.key(0), x, y, optimizer=opt, num_em_steps=2, inner_steps=0)
    with pytest.raises(ValueError, match="number of steps"):
        deep.fit_end_to_end(model, jax.random.key(0), x, y, optimizer=opt, num_steps=0)
    with pytest.raises(ValueError, match="optimizer"):
        deep.fit_end_to_end(model, jax.random.key(0), x, y, optimizer=1e-3, num_steps=2)
    with pytest.raises(ValueError, match="divide"):
        deep.fit_end_to_end(model, jax.random.key(0), x, y, optimizer=opt, num_steps=5, eval_data=(x, y), eval_every=2)
    with pytest.raises(ValueError, match="inner_batch_size"):
        deep.fit_em(
            model,
            jax.random.key(0),
            x,
            y,
            optimizer=opt,
            num_em_steps=2,
            inner_steps=2,
            batch_size=64,
            inner_batch_size=30,
        )
    with pytest.raises(ValueError, match="bias-free"):
        model.to_moe_params()
