"""SQUAREM and Anderson acceleration, the distance-based stopping rule and the work counts.

Oracles: Hasselblad's Poisson mixture with R's SQUAREM counts and fixed point (the anchors of issue
16), plain EM run to its fixed point, the loss trace (monotone with the safeguard), and the
parameters themselves (frozen and pinned entries bit-identical, σ > 0)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from emjax._acceleration import _to_params, _unconstrained_vector
from tests.utils import OPTIMISED_BACKEND, make_moe_problem

# Deaths per day of women over 80 in London, 1910-1912 (Hasselblad 1969): 0..9 deaths on these many days.
DAYS = np.array([162, 267, 271, 185, 111, 61, 27, 8, 3, 1])
HASSELBLAD = emjax.MoPoE(2)
R_SQUAREM_MAPS = {(0.3, 1.0, 5.0): 54, (0.5, 1.0, 3.0): 66}  # R's SQUAREM (method 3), tol 1e-8
R_FIXED_POINT = np.array([0.35989, 1.25610, 2.66341])  # (π, λ₁, λ₂), to R's printed digits
# One step bound for every Hasselblad fit with a tolerance: ``num_steps`` is static (it sizes the loss trace),
# so each distinct bound compiles the fit loop anew. Every run here converges well before it.
STEPS = 20000
# Plain EM crawls on these problems (rate 0.995-0.996: thousands of steps per run), and the tests run XLA's backend
# at -O0, under which those runs cost several times their compilation. The plain-EM runs with a distance tolerance
# go through one test-built jit per problem with the optimised backend (same computation; start and tol traced, so
# every such run on a problem shares it): ``OPTIMISED_BACKEND``.


def _hasselblad():
    y = jnp.asarray(np.repeat(np.arange(10), DAYS), jnp.float64)
    return jnp.ones((y.size, 1)), y


@functools.partial(jax.jit, compiler_options=OPTIMISED_BACKEND)
def _hasselblad_em(start, x, y, tol):
    """Plain EM on Hasselblad's data with a distance tolerance, to the step bound STEPS (the optimised backend)."""
    return emjax.fit(HASSELBLAD, emjax.em(), start, x, y, STEPS, tol=tol)


def _hasselblad_start(pi, rate1, rate2):
    # Gate row 0 is pinned at 0, so row 1's intercept is log(π₂/π₁); the experts hold log λ.
    return emjax.MoEParams(
        gate=jnp.array([[0.0], [np.log((1 - pi) / pi)]]), experts=jnp.log(jnp.array([[rate1], [rate2]]))
    )


def _natural(params):
    pi = 1 / (1 + np.exp(float(params.gate[1, 0])))
    return np.array([pi, *np.exp(np.asarray(params.experts[:, 0]))])


@pytest.fixture(scope="module")
def hasselblad_fixed_point():
    x, y = _hasselblad()
    result = _hasselblad_em(_hasselblad_start(0.3, 1, 5), x, y, 1e-12)
    assert int(result.status) == emjax.Status.ok
    return result.params


def _distance(model, params, reference):
    return float(jnp.max(jnp.abs(model.flatten(params) - model.flatten(reference))))


@pytest.mark.parametrize("start", sorted(R_SQUAREM_MAPS))
@pytest.mark.parametrize("name", ["squarem", "anderson"])
def test_hasselblad_no_more_map_evaluations_than_r(start, name, hasselblad_fixed_point):
    x, y = _hasselblad()
    solver = emjax.squarem(emjax.em()) if name == "squarem" else emjax.anderson(emjax.em())
    result = emjax.fit(HASSELBLAD, solver, _hasselblad_start(*start), x, y, STEPS, tol=1e-8)
    assert int(result.status) == emjax.Status.ok and bool(result.converged)
    assert int(result.stats["num_map_evaluations"]) <= R_SQUAREM_MAPS[start]
    assert _distance(HASSELBLAD, result.params, hasselblad_fixed_point) <= 1e-7
    np.testing.assert_allclose(_natural(result.params), R_FIXED_POINT, atol=1e-5)
    np.testing.assert_allclose(float(result.final_loss) * y.size, 1989.946, atol=1e-3)
    assert float(result.distance_estimate) <= 1e-8 * float(jnp.max(jnp.abs(HASSELBLAD.flatten(result.params))))


def test_distance_rule_stops_near_the_fixed_point_and_the_loss_rule_does_not(hasselblad_fixed_point):
    """Plain EM at rate 0.9957: the distance estimate matches the true distance; the loss rule is misleading."""
    x, y = _hasselblad()
    start = _hasselblad_start(0.3, 1, 5)
    by_distance = _hasselblad_em(start, x, y, 1e-6)
    true = _distance(HASSELBLAD, by_distance.params, hasselblad_fixed_point)
    estimate = float(by_distance.distance_estimate)
    assert bool(by_distance.converged) and true <= 1.5e-6
    assert 0.5 * true <= estimate <= 2 * true
    assert abs(float(by_distance.rate_estimate) - 0.9957) < 1e-3
    by_loss = emjax.fit(HASSELBLAD, emjax.em(), start, x, y, STEPS, tol=1e-6, criterion="loss")
    assert bool(by_loss.converged) and int(by_loss.num_steps) < 100
    assert _distance(HASSELBLAD, by_loss.params, hasselblad_fixed_point) > 1e-2


def test_em_rate_agrees_with_the_estimated_rate(hasselblad_fixed_point):
    x, y = _hasselblad()
    rate = float(emjax.em_rate(HASSELBLAD, hasselblad_fixed_point, x, y))
    # A run with a tolerance (the fixture's compiled loop) rather than a fixed 4,000-step scan of its own.
    result = _hasselblad_em(_hasselblad_start(0.5, 1, 3), x, y, 1e-8)
    assert bool(result.converged)
    assert abs(float(result.rate_estimate) - rate) < 1e-3


@pytest.mark.parametrize("name", ["em", "squarem", "anderson"])
def test_round_off_steps_leave_the_rate_alone(name, hasselblad_fixed_point):
    """At tol 1e-11 the last steps are a few hundred eps long: their ratios are noise (often above 1).
    The rate stays at the base map's, the run converges, and d̂ still brackets the true distance."""
    x, y = _hasselblad()
    start = _hasselblad_start(0.5, 1, 3)
    if name == "em":  # the fixture's compiled plain-EM loop
        result = _hasselblad_em(start, x, y, 1e-11)
    else:
        solver = emjax.squarem(emjax.em()) if name == "squarem" else emjax.anderson(emjax.em())
        result = emjax.fit(HASSELBLAD, solver, start, x, y, STEPS, tol=1e-11)
    assert int(result.status) == emjax.Status.ok and bool(result.converged)
    assert 0.995 <= float(result.rate_estimate) < 0.9995
    true = _distance(HASSELBLAD, result.params, hasselblad_fixed_point)
    assert float(result.distance_estimate) <= 1e-11 * 1.2 and true <= 1e-10


def test_informative_step_floor():
    """Steps below 100 eps |θ| / (1 - ρ̂) carry no rate; any step counts while ρ̂ is unknown or >= 1."""
    from emjax._stopping import informative_step

    model = emjax.SymMoLinE()
    params = emjax.SymParams(w=jnp.array([3.0, 4.0]), beta=jnp.array([0.0, 0.0]))  # |θ| = 5
    floor = 100 * np.finfo(np.float64).eps * 5 / (1 - 0.99)
    assert bool(informative_step(model, 1.01 * floor, params, jnp.asarray(0.99)))
    assert not bool(informative_step(model, 0.99 * floor, params, jnp.asarray(0.99)))
    for rate in (jnp.nan, 1.0, 1.5):
        assert bool(informative_step(model, 1e-300, params, jnp.asarray(rate)))


@pytest.mark.parametrize("kind", ["lin", "log", "poi"])
def test_distance_estimate_tracks_the_true_distance(kind):
    """Plain EM on K-expert problems with a known fixed point: after the rule fires, d̂ is within 3x of the truth."""
    model, _, x, y = make_moe_problem(kind, seed=2, n=400, d=2)
    start = emjax.init_params(model, jax.random.key(1), x, y)
    result = emjax.fit(model, emjax.em(), start, x, y, STEPS, tol=1e-7)
    # EM is deterministic: carrying on from where the run stopped continues the same sequence to its fixed point
    # (the same compiled loop, and none of the steps repeated).
    reference = _em_fixed_point(model, result.params, x, y, STEPS)
    true = _distance(model, result.params, reference)
    estimate = float(result.distance_estimate)
    assert bool(result.converged)
    assert true / 3 <= estimate <= 3 * true + 1e-13


def _em_fixed_point(model, start, x, y, chunk, plain_em=None):
    """Plain EM's own fixed point from ``start``, to round-off (the oracle for the accelerated runs:
    an extrapolation may also land on another fixed point of F, even an unstable one).

    Runs of ``chunk`` steps, each carrying on from the last (the same EM sequence), so that the bound is one a
    test compiles anyway. ``plain_em(params, tol)``, if given, runs one chunk (a compiled loop of the caller's)."""
    if plain_em is None:
        plain_em = lambda params, tol: emjax.fit(model, emjax.em(), params, x, y, chunk, tol=tol)  # noqa: E731
    params = start
    for _ in range(20):
        result = plain_em(params, 1e-12)
        if int(result.status) == emjax.Status.ok:
            return result.params
        assert int(result.status) == emjax.Status.max_steps
        params = result.params
    raise AssertionError("plain EM did not reach its fixed point")


SLOW_STEPS = 2000  # the bound of every fit with a tolerance on the slow problem (one compiled plain-EM loop)


def _slow_symmetric_logistic(n=1000):
    model = emjax.SymMoLogE()
    truth = emjax.SymParams(w=jnp.array([0.3, 0.0]), beta=jnp.array([0.0, 0.6]))
    x, y = emjax.sample(model, truth, jax.random.key(3), n)
    return model, x, y, model.init_params(jax.random.key(5), x, y)


@functools.partial(jax.jit, static_argnums=0, compiler_options=OPTIMISED_BACKEND)
def _slow_em(model, start, x, y, tol):
    """Plain EM on the slow problem with a distance tolerance, SLOW_STEPS at most (the optimised backend)."""
    return emjax.fit(model, emjax.em(), start, x, y, SLOW_STEPS, tol=tol)


@pytest.fixture(scope="module")
def slow_logistic():
    """The slow SymMoLogE problem (n = 1000, EM rate 0.995), plain EM's fixed point from its start, and plain EM's
    run from the start at the accelerated runs' tolerance (1e-9; the same for every test that uses it)."""
    model, x, y, start = _slow_symmetric_logistic()
    reference = _em_fixed_point(model, start, x, y, SLOW_STEPS, lambda params, tol: _slow_em(model, params, x, y, tol))
    plain = _slow_em(model, start, x, y, 1e-9)
    return model, x, y, start, reference, plain


@pytest.mark.parametrize("name", ["squarem", "anderson"])
def test_slow_problem_accelerated_fixed_point_equals_em_and_loss_is_monotone(name, slow_logistic):
    model, x, y, start, reference, plain = slow_logistic
    assert float(emjax.em_rate(model, reference, x, y)) > 0.99
    factory = emjax.squarem if name == "squarem" else emjax.anderson
    result = emjax.fit(model, factory(emjax.em(), monotone=True), start, x, y, SLOW_STEPS, tol=1e-9)
    assert int(result.status) == emjax.Status.ok
    assert _distance(model, result.params, reference) <= 1e-7
    trace = np.asarray(result.losses[: int(result.num_steps) + 1])
    assert np.all(np.diff(trace) <= 1e-14 * np.abs(trace[1:]))
    assert int(result.stats["num_fallbacks"]) > 0  # the safeguard acted, and was counted
    assert int(plain.status) == emjax.Status.max_steps  # EM crawls: 2,000 steps are not enough
    assert int(result.stats["num_map_evaluations"]) * 5 < 2000


def test_plain_solver_counts():
    model, x, y, start = _slow_symmetric_logistic(200)
    result = emjax.fit(model, emjax.em(), start, x, y, 7)
    assert int(result.stats["num_map_evaluations"]) == 7
    assert int(result.stats["num_loss_evaluations"]) == 8
    assert int(result.stats["num_fallbacks"]) == 0
    assert all(value.dtype == jnp.int32 for value in result.stats.values())


def test_squarem_counts_follow_its_cycle():
    model, x, y, start = _slow_symmetric_logistic(200)
    result = emjax.fit(model, emjax.squarem(emjax.em()), start, x, y, 6)
    maps, losses = int(result.stats["num_map_evaluations"]), int(result.stats["num_loss_evaluations"])
    # Each cycle: two map evaluations, plus a stabilising one when it extrapolates (then two more E-steps).
    assert 12 <= maps <= 18 and losses - 1 == 2 * maps - 12


@pytest.mark.parametrize("name", ["squarem", "anderson"])
def test_mirror_descent_base_reaches_the_em_fixed_point(name, slow_logistic):
    model, x, y, start, reference, _ = slow_logistic
    factory = emjax.squarem if name == "squarem" else emjax.anderson
    result = emjax.fit(model, factory(emjax.mirror_descent(0.7)), start, x, y, SLOW_STEPS, tol=1e-10)
    assert int(result.status) == emjax.Status.ok
    assert _distance(model, result.params, reference) <= 1e-6


@pytest.mark.parametrize("name", ["squarem", "anderson"])
def test_frozen_pinned_and_positive_entries_hold_at_every_iterate(name):
    model, truth, x, y = make_moe_problem("lin", seed=4, n=300, d=3)
    start = emjax.init_params(model, jax.random.key(2), x, y)
    trainable = emjax.MoEParams(
        gate=jnp.ones_like(start.gate, bool),
        experts=jnp.ones_like(start.experts, bool).at[1].set(False),
        sigma=jnp.array([True, False, True]),
    )
    factory = emjax.squarem if name == "squarem" else emjax.anderson
    result = emjax.fit(model, factory(emjax.em(trainable)), start, x, y, 40, keep_history=True)
    history = result.params_history
    steps = int(result.num_steps)
    assert steps == 40
    np.testing.assert_array_equal(history.experts[: steps + 1, 1], np.broadcast_to(start.experts[1], (steps + 1, 3)))
    np.testing.assert_array_equal(history.sigma[: steps + 1, 1], np.full(steps + 1, start.sigma[1]))
    np.testing.assert_array_equal(history.gate[: steps + 1, 0], np.zeros((steps + 1, 3)))
    assert np.all(np.asarray(history.sigma[: steps + 1]) > 0)


def test_extrapolated_points_keep_constraints():
    """An extrapolation far past σ = 0 in the linear coordinates stays positive in log σ; masks hold."""
    model, _, x, y = make_moe_problem("lin", seed=4, n=300, d=3)  # the problem of the test above (compiled)
    current = emjax.init_params(model, jax.random.key(0), x, y)
    vector, unravel = _unconstrained_vector(model, current)
    far = vector - 50.0  # every coordinate moved far, log σ included
    frozen_expert = emjax.MoEParams(gate=True, experts=jnp.array([True, False, True])[:, None], sigma=True)
    free = model.free_mask(current, frozen_expert)
    point = _to_params(model, far, unravel, free, current)
    assert np.all(np.asarray(point.sigma) > 0)
    np.testing.assert_array_equal(point.gate[0], current.gate[0])  # pinned row
    np.testing.assert_array_equal(point.experts[1], current.experts[1])  # frozen expert
    assert np.all(np.asarray(point.experts[0]) != np.asarray(current.experts[0]))


def test_vmap_lanes_keep_their_own_status_and_counts():
    x, y = _hasselblad()
    starts = [_hasselblad_start(0.3, 1, 5), _hasselblad_start(0.5, 1, 3), _hasselblad_start(0.4, 1, 4)]
    batch = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *starts)
    bad = jax.tree_util.tree_map(lambda leaf: leaf.at[2].set(jnp.nan), batch)  # lane 2 cannot start
    solver = emjax.squarem(emjax.em())
    results = jax.vmap(lambda p: emjax.fit(HASSELBLAD, solver, p, x, y, STEPS, tol=1e-8))(bad)
    assert results.stats["num_map_evaluations"].shape == (3,)
    status = np.asarray(results.status)
    assert list(status[:2]) == [emjax.Status.ok, emjax.Status.ok] and status[2] == emjax.Status.nonfinite
    assert int(results.stats["num_map_evaluations"][2]) == 0
    for lane, start in enumerate(starts[:2]):
        alone = emjax.fit(HASSELBLAD, solver, start, x, y, STEPS, tol=1e-8)
        assert int(results.stats["num_map_evaluations"][lane]) == int(alone.stats["num_map_evaluations"])
        lane_params = jax.tree_util.tree_map(lambda leaf, i=lane: leaf[i], results.params)
        np.testing.assert_allclose(HASSELBLAD.flatten(lane_params), HASSELBLAD.flatten(alone.params), atol=1e-12)


@pytest.mark.parametrize("name", ["squarem", "anderson"])
def test_jit_and_update_agree_with_fit(name):
    # The size and step count of test_squarem_counts_follow_its_cycle: SQUAREM's direct fit is its compiled loop.
    model, x, y, start = _slow_symmetric_logistic(200)
    solver = emjax.squarem(emjax.em()) if name == "squarem" else emjax.anderson(emjax.em(), memory=3)
    direct = emjax.fit(model, solver, start, x, y, 6)
    jitted = jax.jit(lambda p: emjax.fit(model, solver, p, x, y, 6))(start)
    np.testing.assert_allclose(model.flatten(direct.params), model.flatten(jitted.params), rtol=1e-12, atol=1e-14)
    # One compiled update called step by step (an eager update dispatches its loops and conditionals op by op,
    # which compiled each of them anew at every call and cost more than all the fits here).
    update = jax.jit(lambda params, state: solver.update(model, params, state, x, y))
    params, state = start, solver.init(start)
    for _ in range(6):
        params, state = update(params, state)
    np.testing.assert_allclose(model.flatten(params), model.flatten(direct.params), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["squarem", "anderson"])
def test_float32(name):
    x, y = _hasselblad()
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    start = jax.tree_util.tree_map(lambda leaf: leaf.astype(jnp.float32), _hasselblad_start(0.3, 1, 5))
    solver = emjax.squarem(emjax.em()) if name == "squarem" else emjax.anderson(emjax.em())
    # Round-off in float32 limits the reachable distance to about eps / (1 - rho) = 3e-5 here.
    result = emjax.fit(HASSELBLAD, solver, start, x, y, STEPS, tol=1e-4)
    assert result.params.gate.dtype == jnp.float32 and int(result.status) == emjax.Status.ok
    np.testing.assert_allclose(_natural(result.params), R_FIXED_POINT, atol=2e-3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="base must be"):
        emjax.squarem(emjax.from_optax(__import__("optax").adam(0.1)))
    with pytest.raises(ValueError, match="base must be"):
        emjax.anderson(emjax.squarem(emjax.em()))
    with pytest.raises(ValueError, match="method"):
        emjax.squarem(emjax.em(), method=4)
    with pytest.raises(ValueError, match="memory"):
        emjax.anderson(emjax.em(), memory=0)
    with pytest.raises(ValueError, match="step_max"):
        emjax.squarem(emjax.em(), step_max=0.5)
    with pytest.raises(ValueError, match="monotone"):
        emjax.anderson(emjax.em(), monotone="yes")
    x, y = _hasselblad()
    with pytest.raises(ValueError, match="criterion"):
        emjax.fit(HASSELBLAD, emjax.em(), _hasselblad_start(0.3, 1, 5), x, y, 3, tol=1e-6, criterion="steps")
