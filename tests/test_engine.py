"""Issue 14, deliverable 3: one iteration engine. fit, fit_stream and the deep trainers share the result
type (FitResult), the stopping rule (emjax._stopping) and the status codes."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import emjax
import emjax.deep as deep
from emjax._stopping import final_status, loss_converged
from emjax.streaming import StreamResult, fit_stream

OK, MAX, NONFINITE = int(emjax.Status.ok), int(emjax.Status.max_steps), int(emjax.Status.nonfinite)


# ----------------------------------------------------------------------------- the rule itself


def test_the_rule_is_relative_plus_absolute_and_never_true_for_nan():
    assert bool(loss_converged(1.0, 1.0 + 1e-9, 1e-8, 0.0))
    assert not bool(loss_converged(1.0, 1.0 + 1e-7, 1e-8, 0.0))
    assert bool(loss_converged(1.0, 1.0 + 1e-7, 0.0, 2e-7))
    for bad in (np.nan, np.inf, -np.inf):
        assert not bool(loss_converged(bad, bad, 1.0, 1.0))
        assert not bool(loss_converged(1.0, bad, 1.0, 1.0))
        assert not bool(jnp.asarray(loss_converged(jnp.asarray(1.0), jnp.asarray(bad), 1.0, 1.0)))
    # status: non-finite wins; without a tolerance, finishing is ok; with one, only meeting it is.
    assert int(final_status(False, True, True, np.where)) == NONFINITE
    assert int(final_status(True, False, False, np.where)) == OK
    assert int(final_status(True, False, True, np.where)) == MAX
    assert int(final_status(True, True, True, jnp.where)) == OK


# ----------------------------------------------------------------------------- shared problems


@pytest.fixture(scope="module")
def moline():
    model = emjax.MoLinE(2)
    truth = emjax.testing.random_params(model, jax.random.key(0), d=2, gate_norm=2.0, expert_norm=3.0, sigma=0.5)
    x, y = emjax.sample(model, truth, jax.random.key(1), 400)
    start = emjax.init_params(model, jax.random.key(2), x, y)
    return model, np.asarray(x), np.asarray(y), start


@pytest.fixture(scope="module")
def mlp():
    x, y, _ = deep.synthetic_nonlinear_moe(jax.random.key(3), 64, 2, 2, 3, width=4)
    model = deep.DeepMoE.mlp(jax.random.key(4), 2, 3, 2, expert_width=4, gate_width=4)
    return model, x, y


ADAM = optax.adam(3e-2)


def _deep(model, x, y, **kwargs):
    return deep.fit_em(
        model, jax.random.key(5), x, y, optimizer=ADAM, num_em_steps=kwargs.pop("steps", 6), inner_steps=2, **kwargs
    )


# ----------------------------------------------------------------------------- one result type


def test_every_trainer_returns_a_fit_result(moline, mlp):
    model, x, y, start = moline
    fitted = emjax.fit(model, emjax.em(), start, x, y, 3)
    streamed = fit_stream(model, start, [(x, y)], num_epochs=2, step_size=1.0)
    trained = _deep(*mlp)
    ended = deep.fit_end_to_end(mlp[0], jax.random.key(5), *mlp[1:], optimizer=ADAM, num_steps=4)
    assert isinstance(streamed, StreamResult) and isinstance(trained, deep.DeepFitResult)
    for result, steps in ((fitted, 3), (streamed, 2), (trained, 6), (ended, 4)):
        assert isinstance(result, emjax.FitResult)
        assert int(result.status) == OK and not bool(result.converged) and int(result.num_steps) == steps
    # Two full-batch EM steps by the streaming trainer are fit's two EM steps (the same step function).
    two = emjax.fit(model, emjax.em(), start, x, y, 2)
    np.testing.assert_allclose(np.asarray(streamed.params.experts), np.asarray(two.params.experts), rtol=1e-12)
    np.testing.assert_allclose(streamed.batch_losses, np.asarray(two.losses[:2]), rtol=1e-12)
    # final_loss is the loss at the final parameters for each trainer.
    assert float(fitted.final_loss) == float(fitted.losses[3])
    assert float(trained.final_loss) == pytest.approx(
        float(deep.neg_log_likelihood(trained.params, *mlp[1:])), rel=1e-12
    )
    # The deep result still unpacks as (model, history), its earlier return value.
    model_, history = trained
    assert model_ is trained.params and history is trained.history
    np.testing.assert_array_equal(trained.losses[:-1], history.loss)


# ----------------------------------------------------------------------------- one stopping rule


def test_a_tolerance_stop_follows_the_same_rule_in_every_trainer(moline, mlp):
    model, x, y, start = moline
    tol = 1e-6
    fitted = emjax.fit(model, emjax.em(), start, x, y, 200, tol=tol, criterion="loss")
    # One full batch per epoch with eta = 1: each epoch is one EM step, its loss fit's loss before that step.
    streamed = fit_stream(model, start, [(x, y)], num_epochs=200, step_size=1.0, tol=tol)
    deep_tol = 1e-4  # Adam on a small network: a looser tolerance, the same rule
    trained = deep.fit_em(
        mlp[0], jax.random.key(5), *mlp[1:], optimizer=ADAM, num_em_steps=400, inner_steps=2, tol=deep_tol
    )
    for result, trace, rtol in (
        (fitted, np.asarray(fitted.losses), tol),
        (streamed, streamed.epoch_losses, tol),
        (trained, np.asarray(trained.history.loss), deep_tol),
    ):
        assert bool(result.converged) and int(result.status) == OK
        trace = trace[np.isfinite(trace)]
        changes = np.abs(np.diff(trace))
        # stopped at the first change within rtol * |L|, not before
        assert changes[-1] <= rtol * abs(trace[-1])
        assert np.all(changes[:-1] > rtol * np.abs(trace[1:-1]))
    k = int(fitted.num_steps)
    assert streamed.num_batches == k + 1  # epoch e's loss is L before its step: one more step to see the change
    np.testing.assert_allclose(streamed.epoch_losses, np.asarray(fitted.losses[: k + 1]), rtol=1e-10)
    # The deep trainer stops before the step that detected the tolerance: that step is not applied.
    steps = int(trained.num_steps)
    assert 0 < steps < 400 and np.isnan(trained.losses[steps + 1 :]).all()


def test_an_unmet_tolerance_is_max_steps_in_every_trainer(moline, mlp):
    model, x, y, start = moline
    fitted = emjax.fit(model, emjax.em(), start, x, y, 2, tol=1e-15)
    streamed = fit_stream(model, start, [(x, y)], num_epochs=3, step_size=1.0, tol=1e-15)
    trained = _deep(*mlp, tol=1e-15)
    for result in (fitted, streamed, trained):
        assert int(result.status) == MAX and not bool(result.converged)


# ----------------------------------------------------------------------------- non-finite values


def test_non_finite_values_are_status_nonfinite_in_every_trainer(moline, mlp):
    model, x, y, start = moline
    huge = y * 1e200  # finite data whose loss overflows: the first step sees L = inf
    fitted = emjax.fit(model, emjax.em(), start, x, huge, 5, tol=1e-8)
    streamed = fit_stream(model, start, [(x, huge)], num_epochs=2, tol=1e-8)
    deep_model, dx, dy = mlp
    nan_x = dx.at[0, 0].set(jnp.nan)  # traced inside jit, so not refused at the boundary
    trained = eqx.filter_jit(lambda a: _deep(deep_model, a, dy, tol=1e-8))(nan_x)
    ended = eqx.filter_jit(
        lambda a: deep.fit_end_to_end(deep_model, jax.random.key(5), a, dy, optimizer=ADAM, num_steps=3)
    )(nan_x)
    for result in (fitted, streamed, trained, ended):
        assert int(result.status) == NONFINITE and not bool(result.converged)
        assert int(result.num_steps) == 0
    # the parameters are the last finite iterate, the start
    for leaf, first in zip(
        jax.tree_util.tree_leaves(eqx.filter(trained.params, eqx.is_array)),
        jax.tree_util.tree_leaves(eqx.filter(deep_model, eqx.is_array)),
        strict=True,
    ):
        np.testing.assert_array_equal(leaf, first)
    assert np.all(np.asarray(trained.history.gradient_evaluations) == 2)  # only the first step ran


# ----------------------------------------------------------------------------- one progress helper


def test_progress_lines_share_one_format(moline, mlp, capfd):
    model, x, y, start = moline
    quiet = _deep(*mlp)
    loud = _deep(*mlp, progress=3)
    emjax.fit(model, emjax.em(), start, x, y, 3, progress=3)
    fit_stream(model, start, [(x, y)], num_epochs=1, step_size=1.0, progress=1)
    jax.effects_barrier()
    out = capfd.readouterr().out
    assert "emjax.deep.fit_em: step 3/6, loss" in out and "emjax.deep.fit_em: step 6/6, loss" in out
    assert "emjax.fit: step 3/3, loss" in out and "emjax.fit_stream: step 1, loss" in out
    np.testing.assert_array_equal(quiet.losses, loud.losses)
