"""emjax.best_iterate: early stopping chosen by validation likelihood, against a plain loop."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax


@pytest.fixture(scope="module")
def overfitting_fit():
    """A 3-class, 2-expert MoLogE with 10 features fitted by EM on 200 rows: it over-fits, so the
    held-out loss falls for two steps, then rises while the training loss keeps falling."""
    model = emjax.MoLogE(2, 3)
    truth = emjax.testing.random_params(model, jax.random.key(0), d=10, gate_norm=1.0, expert_norm=1.0)
    x, y = emjax.sample(model, truth, jax.random.key(1), 2200)
    x_train, y_train, x_val, y_val = x[:200], y[:200], x[200:], y[200:]
    start = emjax.init_params(model, jax.random.key(2), x_train, y_train)
    result = emjax.fit(model, emjax.em(), start, x_train, y_train, 40, keep_history=True)
    return model, result, x_val, y_val


def loop_losses(model, history, x, y):
    steps = jax.tree_util.tree_leaves(history)[0].shape[0]
    iterates = [jax.tree_util.tree_map(lambda leaf, t=t: leaf[t], history) for t in range(steps)]
    return np.array([float(emjax.neg_log_likelihood(model, params, x, y)) for params in iterates])


def test_best_iterate_is_the_argmin_of_a_loop_over_the_iterates(overfitting_fit):
    model, result, x_val, y_val = overfitting_fit
    expected = loop_losses(model, result.params_history, x_val, y_val)
    best = emjax.best_iterate(model, result, x_val, y_val)
    np.testing.assert_allclose(best.losses, expected, rtol=1e-12)
    assert int(best.index) == int(np.argmin(expected))
    chosen = jax.tree_util.tree_map(lambda leaf: leaf[int(np.argmin(expected))], result.params_history)
    assert eqx.tree_equal(best.params, chosen)
    # Early stopping matters here: the held-out loss has an interior minimum while training loss keeps falling.
    assert 0 < int(best.index) < 40 and expected[-1] > expected[int(best.index)] + 0.05
    assert float(result.losses[-1]) < float(result.losses[int(best.index)])
    again = emjax.best_iterate(model, result.params_history, x_val, y_val)  # the history alone works too
    assert int(again.index) == int(best.index)


def test_best_iterate_under_jit_and_vmap(overfitting_fit):
    model, result, x_val, y_val = overfitting_fit
    alone = emjax.best_iterate(model, result, x_val, y_val)
    jitted = jax.jit(lambda h, x, y: emjax.best_iterate(model, h, x, y))(result.params_history, x_val, y_val)
    np.testing.assert_allclose(jitted.losses, alone.losses, rtol=1e-12)
    assert int(jitted.index) == int(alone.index)
    halves = (x_val[:1000], y_val[:1000]), (x_val[1000:], y_val[1000:])
    xs, ys = jnp.stack([h[0] for h in halves]), jnp.stack([h[1] for h in halves])
    batched = jax.vmap(lambda x, y: emjax.best_iterate(model, result.params_history, x, y))(xs, ys)
    for lane, (x, y) in enumerate(halves):
        single = emjax.best_iterate(model, result, x, y)
        np.testing.assert_allclose(batched.losses[lane], single.losses, rtol=1e-12)
        assert int(batched.index[lane]) == int(single.index)


def test_a_non_finite_iterate_is_never_chosen(overfitting_fit):
    model, result, x_val, y_val = overfitting_fit
    best = emjax.best_iterate(model, result, x_val, y_val)
    broken = jax.tree_util.tree_map(lambda leaf: leaf, result.params_history)
    broken = eqx.tree_at(lambda p: p.experts, broken, broken.experts.at[best.index].set(jnp.nan))
    again = emjax.best_iterate(model, broken, x_val, y_val)
    assert np.isnan(float(again.losses[best.index])) and int(again.index) != int(best.index)
    finite = np.where(np.isfinite(again.losses), again.losses, np.inf)
    assert int(again.index) == int(np.argmin(finite))


def test_best_iterate_refuses_a_fit_without_history(overfitting_fit):
    model, result, x_val, y_val = overfitting_fit
    plain = emjax.fit(model, emjax.em(), result.params, x_val[:50], y_val[:50], 2)
    with pytest.raises(ValueError, match="keep_history=True"):
        emjax.best_iterate(model, plain, x_val, y_val)
    history = result.params_history
    mismatched = eqx.tree_at(lambda p: p.experts, history, history.experts[:5])
    with pytest.raises(ValueError, match="one leading axis"):
        emjax.best_iterate(model, mismatched, x_val, y_val)
    with pytest.raises(ValueError, match="at least one row"):
        emjax.best_iterate(model, result, x_val[:0], y_val[:0])
