"""The compiled loop and the solvers: traces, invariances (jit, vmap), compile counts, status."""

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import emjax
from tests.utils import make_problem


def _solvers(model, x):
    step = emjax.safe_step_size(model, x)
    return {
        "em": emjax.em(),
        "md": emjax.mirror_descent(0.5),
        "gem": emjax.gradient_em(step, 3),
        "gd": emjax.gradient_descent(step),
        "adam": emjax.from_optax(optax.adam(0.05)),
    }


@pytest.mark.parametrize("solver_name", ["em", "md", "gem", "gd", "adam"])
def test_fit_trace_matches_manual_steps(kind, solver_name):
    model, truth, x, y = make_problem(kind, n=200, d=3, seed=30)
    solver = _solvers(model, x)[solver_name]
    start = emjax.testing.perturb(truth, jax.random.key(0))
    result = emjax.fit(model, solver, start, x, y, 6, keep_history=True)
    assert result.losses.shape == (7,)
    assert int(result.status) == emjax.Status.ok and int(result.num_steps) == 6
    # One compiled update called step by step: an eager update dispatches its loops and conditionals op by op,
    # compiling each anew at every call (several seconds per step).
    update = jax.jit(lambda params, state: solver.update(model, params, state, x, y))
    params, state = start, solver.init(start)
    for t in range(7):
        np.testing.assert_allclose(result.losses[t], emjax.neg_log_likelihood(model, params, x, y), rtol=1e-12)
        np.testing.assert_allclose(result.params_history.flatten()[t], params.flatten(), atol=1e-12)
        params, state = update(params, state)
    assert result.losses[-1] < result.losses[0]


def test_em_trace_is_monotone_over_many_problems(kind):
    for seed in range(4):
        model, truth, x, y = make_problem(kind, n=300, d=4, seed=40 + seed, norms=(1.0 + seed, 0.5 + seed))
        start = emjax.testing.perturb(truth, jax.random.key(seed), 1.5)
        losses = np.asarray(emjax.fit(model, emjax.em(), start, x, y, 40).losses)
        assert np.all(np.diff(losses) <= 1e-13), np.diff(losses).max()
        assert losses[-1] < losses[0] - 1e-3


def test_jit_equals_eager_and_vmap_equals_loop(kind):
    model, _, _, _ = make_problem(kind)
    d, n, steps = 3, 200, 15

    def run(key):
        key_truth, key_data, key_init = jax.random.split(key, 3)
        truth = emjax.testing.random_params(model, key_truth, d, 2.0, 3.0)
        x, y = emjax.sample(model, truth, key_data, n)
        return emjax.fit(model, emjax.em(), emjax.testing.perturb(truth, key_init), x, y, steps)

    keys = jax.random.split(jax.random.key(11), 4)
    batched = jax.jit(jax.vmap(run))(keys)
    for i in range(4):
        single = run(keys[i])
        np.testing.assert_allclose(batched.losses[i], single.losses, rtol=1e-10)
        np.testing.assert_allclose(batched.params.flatten()[i], single.params.flatten(), atol=1e-9)


def test_fit_over_an_snr_grid_compiles_once():
    model = emjax.SymMoLinE()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def cell(snr, key):
        key_truth, key_data, key_init = jax.random.split(key, 3)
        truth = emjax.testing.random_params(model, key_truth, 3, 2.0, snr)
        x, y = emjax.sample(model, truth, key_data, 100)
        return emjax.fit(model, emjax.em(), emjax.testing.perturb(truth, key_init), x, y, 10).losses

    chex.clear_trace_counter()
    grid = jnp.array([0.5, 1.0, 2.0, 4.0, 8.0])
    looped = [cell(snr, jax.random.key(0)) for snr in grid]
    batched = jax.vmap(cell, in_axes=(0, None))(grid, jax.random.key(0))  # a second, batched trace is allowed
    np.testing.assert_allclose(batched, jnp.stack(looped), rtol=1e-10)


def test_public_fit_compiles_once_across_data_and_step_sizes():
    # Step sizes are traced leaves of the solver, not constants: new values reuse the program.
    model, truth, x, y = make_problem("lin", n=100, d=2, seed=31)  # the shape of the other lin d = 2 tests
    cache = emjax._fit._fit_scan._cached
    traces = []
    for i, eta in enumerate([0.2, 0.5, 0.9]):
        traces.append(emjax.fit(model, emjax.mirror_descent(eta), truth, x + 0.01 * i, y, 5).losses)
        if i == 0:
            size = cache._cache_size()
    assert cache._cache_size() == size
    assert not np.allclose(traces[0], traces[2])


def test_nonfinite_run_keeps_last_finite_iterate_and_reports_status():
    model, truth, x, y = make_problem("lin", n=100, d=2, seed=32)
    result = emjax.fit(model, emjax.gradient_descent(1e200), truth, x, y, 5)
    assert int(result.status) == emjax.Status.nonfinite
    assert int(result.num_steps) < 5
    assert np.all(np.isfinite(np.asarray(result.params.flatten())))
    assert np.isnan(np.asarray(result.losses[-1]))
    assert np.isfinite(np.asarray(result.losses[0]))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_fit_keeps_dtype_and_float32_tracks_float64(kind, dtype):
    model, truth, x, y = make_problem(kind, n=500, d=3, seed=33)
    start = emjax.testing.perturb(truth, jax.random.key(3))
    cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    result = emjax.fit(
        model, emjax.from_optax(optax.adam(0.05)), jax.tree_util.tree_map(cast, start), cast(x), cast(y), 5
    )
    assert result.params.w.dtype == dtype and result.losses.dtype == dtype
    em32 = emjax.fit(model, emjax.em(), jax.tree_util.tree_map(cast, start), cast(x), cast(y), 30)
    em64 = emjax.fit(model, emjax.em(), start, x, y, 30)
    np.testing.assert_allclose(em32.params.flatten(), em64.params.flatten(), atol=5e-4)
    np.testing.assert_allclose(em32.losses, em64.losses, rtol=1e-5)


def test_em_beats_gradient_descent_early_and_recovers_truth():
    # At high SNR EM is near the truth within a few steps (docs/math.md §8), faster than GD.
    model, truth, x, y = make_problem("lin", n=5000, d=5, seed=34, norms=(4.0, 8.0))
    start = emjax.testing.perturb(truth, jax.random.key(4))
    em_result = emjax.fit(model, emjax.em(), start, x, y, 10)
    gd_result = emjax.fit(model, emjax.gradient_descent(emjax.safe_step_size(model, x)), start, x, y, 10)
    w_err, b_err = emjax.testing.relative_errors(em_result.params, truth)
    assert float(b_err) < 0.02 and float(w_err) < 0.15
    assert em_result.losses[5] < gd_result.losses[5]


def test_solver_hyperparameters_are_traced():
    # A vmapped sweep over step sizes reuses one compiled program and gives different answers.
    model, truth, x, y = make_problem("log", n=200, d=2, seed=35)
    start = emjax.testing.perturb(truth, jax.random.key(5))

    def run(eta):
        return emjax.fit(model, emjax.mirror_descent(eta), start, x, y, 5).losses[-1]

    losses = jax.vmap(run)(jnp.array([0.25, 0.5, 1.0]))
    assert losses[0] > losses[1] > losses[2]
    np.testing.assert_allclose(losses[2], emjax.fit(model, emjax.em(), start, x, y, 5).losses[-1], rtol=1e-10)


@eqx.filter_jit
def _fit_ten_steps(model, solver, start, x, y):
    return emjax.fit(model, solver, start, x, y, 10)


@eqx.filter_jit
def _apply(fn, model, params, x, y):
    return fn(model, params, x, y)


@pytest.mark.parametrize(("w_norm", "snr"), [(1.0, 1e-2), (1.0, 1e3), (1e3, 1.0), (1e3, 1e3)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_extreme_but_valid_problems_never_produce_nan(kind, w_norm, snr, dtype):
    # SNR from 1e-2 to 1e3 and |x.w| up to ~1e3: every solver, the information matrices and the
    # rate stay finite inside jit, and fits report Status.ok.
    model, truth, x, y = make_problem(kind, n=300, d=3, seed=50, norms=(w_norm, snr), dtype=dtype)
    start = emjax.testing.perturb(truth, jax.random.key(8), 0.5)
    results = {}
    for name, solver in _solvers(model, x).items():
        results[name] = _fit_ten_steps(model, solver, start, x, y)  # one compilation per solver type across scales
        assert int(results[name].status) == emjax.Status.ok, solver
        assert np.all(np.isfinite(np.asarray(results[name].losses))), solver
    fitted = results["em"].params  # ten EM steps (a separate emjax.fit call would compile the loop again)
    for point in (truth, start, fitted):
        for fn in (emjax.missing_information_matrix, emjax.em_rate, emjax.observed_information):
            value = _apply(fn, model, point, x, y)
            assert np.all(np.isfinite(np.asarray(value))), (fn.__name__, point)


def test_progress_reports_without_changing_results(capfd):
    model, truth, x, y = make_problem("log", n=200, d=2, seed=36)
    start = emjax.testing.perturb(truth, jax.random.key(9))
    quiet = emjax.fit(model, emjax.em(), start, x, y, 12)
    loud = emjax.fit(model, emjax.em(), start, x, y, 12, progress=5)
    jax.effects_barrier()
    out = capfd.readouterr().out
    assert "step 5/12" in out and "step 10/12" in out and "step 12/12" in out and "step 3/12" not in out
    np.testing.assert_array_equal(quiet.losses, loud.losses)
    np.testing.assert_array_equal(quiet.params.flatten(), loud.params.flatten())
    with pytest.raises(ValueError, match="progress must be a bool or a Python int >= 1"):
        emjax.fit(model, emjax.em(), start, x, y, 3, progress=0.5)


def test_tolerance_stop_matches_the_fixed_step_trace(kind):
    model, truth, x, y = make_problem(kind, n=300, d=3, seed=70)
    start = emjax.testing.perturb(truth, jax.random.key(10))
    full = emjax.fit(model, emjax.em(), start, x, y, 200, keep_history=True)
    until = emjax.fit(model, emjax.em(), start, x, y, 200, tol=1e-9, keep_history=True, criterion="loss")
    k = int(until.num_steps)
    assert bool(until.converged) and int(until.status) == emjax.Status.ok and 0 < k < 200
    np.testing.assert_allclose(until.losses[: k + 1], full.losses[: k + 1], rtol=1e-13)
    assert np.all(np.isnan(np.asarray(until.losses[k + 1 :])))
    assert np.all(np.isnan(np.asarray(until.params_history.w[k + 1 :])))
    np.testing.assert_allclose(until.params.flatten(), full.params_history.flatten()[k], atol=1e-13)
    # The stop rule: the k-th change is within tol, the one before is not.
    change = np.abs(np.diff(np.asarray(full.losses)))
    assert change[k - 1] <= 1e-9 * abs(float(full.losses[k])) < change[k - 2]


def test_tolerance_not_met_reports_max_steps():
    model, truth, x, y = make_problem("log", n=300, d=3, seed=71)
    result = emjax.fit(
        model, emjax.gradient_descent(0.01), emjax.testing.perturb(truth, jax.random.key(11)), x, y, 5, tol=1e-12
    )
    assert int(result.status) == emjax.Status.max_steps and not bool(result.converged)
    assert int(result.num_steps) == 5 and np.all(np.isfinite(np.asarray(result.losses)))


def test_tolerance_stop_under_vmap_is_per_lane():
    model = emjax.SymMoLinE()

    def run(key, tol):
        key_truth, key_data, key_init = jax.random.split(key, 3)
        truth = emjax.testing.random_params(model, key_truth, 3, 2.0, 1.0 + 3.0 * jax.random.uniform(key_truth))
        x, y = emjax.sample(model, truth, key_data, 200)
        return emjax.fit(model, emjax.em(), emjax.testing.perturb(truth, key_init), x, y, 300, tol=tol)

    keys = jax.random.split(jax.random.key(12), 5)
    batched = jax.jit(jax.vmap(run, in_axes=(0, None)))(keys, 1e-10)
    singles = [run(k, 1e-10) for k in keys]
    steps = [int(single.num_steps) for single in singles]
    np.testing.assert_array_equal(batched.num_steps, steps)
    assert len(set(steps)) > 1  # lanes really stopped at different steps
    for i, single in enumerate(singles):
        np.testing.assert_allclose(batched.params.flatten()[i], single.params.flatten(), atol=1e-12)
        np.testing.assert_allclose(batched.losses[i], single.losses, rtol=1e-12)
    assert np.all(np.asarray(batched.converged))


def test_tolerance_nonfinite_and_bad_values():
    model, truth, x, y = make_problem("lin", n=100, d=2, seed=72)
    result = emjax.fit(model, emjax.gradient_descent(1e200), truth, x, y, 10, tol=1e-8)
    assert int(result.status) == emjax.Status.nonfinite and not bool(result.converged)
    assert np.all(np.isfinite(np.asarray(result.params.flatten())))
    for bad in (-1.0, float("nan"), jnp.ones(2)):
        with pytest.raises(ValueError, match="tol must be"):
            emjax.fit(model, emjax.em(), truth, x, y, 3, tol=bad)
    with pytest.raises(ValueError, match="atol must be"):
        emjax.fit(model, emjax.em(), truth, x, y, 3, tol=0.0, atol=-1.0)
    # atol alone (tol = 0) stops too; an unreachable tolerance runs to the bound.
    assert bool(emjax.fit(model, emjax.em(), truth, x, y, 100, tol=0.0, atol=1e-6).converged)
    assert int(emjax.fit(model, emjax.em(), truth, x, y, 100, tol=0.0).status) == emjax.Status.max_steps  # 1 program


def test_tolerances_are_traced():
    model, truth, x, y = make_problem("lin", n=100, d=2, seed=73)  # the shape of the test above: its program
    cache = emjax._fit._fit_until._cached
    steps = []
    for i, tol in enumerate([1e-3, 1e-6, 1e-9]):
        steps.append(
            int(
                emjax.fit(
                    model, emjax.em(), emjax.testing.perturb(truth, jax.random.key(1)), x, y, 100, tol=tol
                ).num_steps
            )
        )
        if i == 0:
            size = cache._cache_size()
    assert cache._cache_size() == size
    assert steps[0] < steps[1] < steps[2]
