"""Issue 13, items 4 and 5: fit_restarts honours frozen entries and picks its batching per backend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from emjax import _batching


def _restricted_problem():
    """MoLinE(2) whose gate ignores column 2 and whose expert 1 ignores column 1 (both truly 0)."""
    model = emjax.MoLinE(2)
    truth = emjax.testing.random_params(model, jax.random.key(0), d=3, gate_norm=2.5, expert_norm=3.0, sigma=0.4)
    truth = emjax.MoEParams(
        gate=truth.gate.at[1, 2].set(0.0), experts=truth.experts.at[1, 1].set(0.0), sigma=truth.sigma
    )
    x, y = emjax.sample(model, truth, jax.random.key(1), 1500)
    mask = emjax.MoEParams(
        gate=jnp.ones((2, 3), bool).at[1, 2].set(False), experts=jnp.ones((2, 3), bool).at[1, 1].set(False), sigma=None
    )
    return model, truth, x, y, mask


def test_a_freezing_solver_without_values_is_refused():
    model, _, x, y, mask = _restricted_problem()
    with pytest.raises(ValueError, match="params=.*frozen"):
        emjax.fit_restarts(model, emjax.em(trainable=mask), jax.random.key(2), x, y, 3, 10)


def test_pinned_only_masks_need_no_values():
    # A mask that freezes nothing beyond what the model pins is not a restriction.
    model, _, x, y, _ = _restricted_problem()
    everything = emjax.MoEParams(gate=jnp.ones((2, 3), bool), experts=jnp.ones((2, 3), bool), sigma=None)
    result = emjax.fit_restarts(model, emjax.em(trainable=everything), jax.random.key(2), x, y, 2, 5)
    assert np.isfinite(float(result.losses[result.num_steps]))


@pytest.mark.parametrize("batch_size", [None, 1, 2])
def test_frozen_entries_keep_the_given_values_in_every_restart(batch_size):
    model, truth, x, y, mask = _restricted_problem()
    fixed = emjax.MoEParams(gate=jnp.zeros((2, 3)), experts=jnp.zeros((2, 3)).at[1, 1].set(0.25), sigma=jnp.ones(2))
    solver = emjax.em(trainable=mask)
    result = emjax.fit_restarts(
        model, solver, jax.random.key(2), x, y, 4, 200, params=fixed, batch_size=batch_size, tol=1e-8
    )
    assert float(result.params.gate[1, 2]) == 0.0
    assert float(result.params.experts[1, 1]) == 0.25 or float(result.params.experts[0, 1]) == 0.25
    # The best restart is the restricted model's fit from its own start, re-run alone.
    keys = jax.random.split(jax.random.key(2), 4)
    start = emjax.init_params(model, keys[int(result.best_restart)], x, y)
    start = _with_frozen(model, start, fixed, mask)
    alone = emjax.fit(model, solver, start, x, y, 200, tol=1e-8)
    np.testing.assert_allclose(
        np.asarray(alone.params.experts), np.asarray(result.params.experts), rtol=1e-8, atol=1e-10
    )


def _with_frozen(model, start, fixed, mask):
    unpinned = model.free_mask(start, None)
    free = model.free_mask(start, mask)
    return jax.tree_util.tree_map(lambda u, f, s, v: jnp.where(u & ~f, v, s), unpinned, free, start, fixed)


def test_auto_batching_is_a_loop_on_cpu_and_one_vmap_on_accelerators():
    assert _batching.auto_batch_size("cpu") == _batching.CPU_BATCH_SIZE == 1
    assert _batching.auto_batch_size("gpu") is None
    assert _batching.auto_batch_size("tpu") is None


def test_auto_batching_gives_the_vmapped_answer():
    model, _, x, y, _ = _restricted_problem()
    auto = emjax.fit_restarts(model, emjax.em(), jax.random.key(3), x, y, 3, 40, tol=1e-8)
    vmapped = emjax.fit_restarts(model, emjax.em(), jax.random.key(3), x, y, 3, 40, batch_size=None, tol=1e-8)
    assert int(auto.best_restart) == int(vmapped.best_restart)
    np.testing.assert_allclose(np.asarray(auto.restart_losses), np.asarray(vmapped.restart_losses), rtol=1e-10)


def test_batch_size_must_be_auto_none_or_positive():
    model, _, x, y, _ = _restricted_problem()
    with pytest.raises(ValueError, match='batch_size must be "auto", None or a Python int'):
        emjax.fit_restarts(model, emjax.em(), jax.random.key(3), x, y, 2, 3, batch_size="fast")
