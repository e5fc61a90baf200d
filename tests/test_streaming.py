"""Mini-batch EM over streamed batches: sources, identities with the full-batch steps, the fixed point, resumption."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from emjax.streaming import ArrayBatches, NpyBatches, RobbinsMonro, fit_stream, full_pass


def flat(params):
    return np.concatenate([np.ravel(leaf) for leaf in jax.tree_util.tree_leaves(params)])


@pytest.fixture(scope="module")
def moline_problem():
    model = emjax.MoLinE(2)
    truth = emjax.testing.random_params(model, jax.random.key(0), d=2)
    x, y = emjax.sample(model, truth, jax.random.key(1), 3000)
    start = emjax.init_params(model, jax.random.key(2), x, y)
    reference = emjax.fit(model, emjax.em(), start, x, y, 3000, tol=0.0, atol=1e-15)
    return model, np.asarray(x), np.asarray(y), start, reference


# ----------------------------------------------------------------------------- batch sources


def test_array_batches_cover_every_row_once_per_epoch_in_a_fresh_order():
    x, y = np.arange(20.0).reshape(10, 2), np.arange(10.0)
    batches = ArrayBatches(x, y, 3, key=jax.random.key(0))
    first, second = [np.concatenate([b[1] for b in batches]) for _ in range(2)]
    assert sorted(first) == sorted(second) == list(range(10))
    assert not np.array_equal(first, second)
    assert [len(b[1]) for b in ArrayBatches(x, y, 3, drop_remainder=True)] == [3, 3, 3]


def test_npy_batches_read_the_files_in_order(tmp_path):
    x, y = np.random.default_rng(0).normal(size=(11, 3)), np.arange(11.0)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    batches = NpyBatches(tmp_path / "x.npy", tmp_path / "y.npy", 4)
    pieces = list(batches)
    assert [p[0].shape for p in pieces] == [(4, 3), (4, 3), (3, 3)] and batches.num_rows == 11
    np.testing.assert_array_equal(np.concatenate([p[0] for p in pieces]), x)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in list(batches)]), y)  # re-iterable


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("missing", FileNotFoundError, "no such .npy file"),
        ("rows", ValueError, "same number of rows"),
        ("rank", ValueError, r"shape \(n, d\)"),
        ("not_npy", ValueError, ".npy arrays"),
        ("batch_size", ValueError, "batch_size"),
    ],
)
def test_npy_batches_reject_bad_files(tmp_path, case, error, match):
    np.save(tmp_path / "x.npy", np.ones((4, 2)))
    np.save(tmp_path / "y.npy", np.ones(4))
    x_path, y_path, batch_size = tmp_path / "x.npy", tmp_path / "y.npy", 2
    if case == "missing":
        x_path = tmp_path / "absent.npy"
    elif case == "rows":
        np.save(tmp_path / "y.npy", np.ones(5))
    elif case == "rank":
        np.save(tmp_path / "x.npy", np.ones(4))
    elif case == "not_npy":
        (tmp_path / "x.npy").write_bytes(b"not an array")
    else:
        batch_size = 0
    with pytest.raises(error, match=match):
        NpyBatches(x_path, y_path, batch_size)


# ----------------------------------------------------------------------------- identities


@pytest.mark.parametrize("eta", [1.0, 0.4])
def test_one_full_batch_step_is_the_mirror_descent_step(moline_problem, eta):
    model, x, y, start, _ = moline_problem
    result = fit_stream(model, start, [(x, y)], num_epochs=1, step_size=eta)
    expected = emjax.em_step(model, start, x, y) if eta == 1.0 else emjax.mirror_descent_step(model, start, x, y, eta)
    np.testing.assert_allclose(flat(result.params), flat(expected), rtol=1e-12, atol=1e-12)
    assert result.batch_losses[0] == pytest.approx(float(emjax.neg_log_likelihood(model, start, x, y)), rel=1e-12)


def test_a_pass_sums_to_the_full_data_loss_gradient_and_information(moline_problem):
    model, x, y, start, _ = moline_problem
    sums = full_pass(model, start, ArrayBatches(x, y, 700))
    assert sums.num_rows == len(y)
    assert sums.loss == pytest.approx(float(emjax.neg_log_likelihood(model, start, x, y)), rel=1e-12)
    np.testing.assert_allclose(sums.information, emjax.complete_information(model, start, x, y), rtol=1e-10, atol=1e-12)
    grad = emjax.neg_log_likelihood_grad(model, start, x, y)
    free = ~model.pinned(2).gate
    expected = np.concatenate([np.asarray(grad.gate)[free], np.ravel(grad.experts), np.ravel(grad.sigma)])
    np.testing.assert_allclose(sums.gradient, expected, rtol=1e-10, atol=1e-13)


# ----------------------------------------------------------------------------- the fixed point


def test_minibatch_em_then_polish_reaches_the_full_batch_em_fixed_point(moline_problem):
    model, x, y, start, reference = moline_problem
    batches = ArrayBatches(x, y, 250, key=jax.random.key(5))
    stochastic = fit_stream(model, start, batches, num_epochs=3)
    # Information matrices from the first 500 rows only: the gradient is exact, so the fixed point is too.
    result = fit_stream(model, start, batches, num_epochs=3, polish_steps=60, curvature_rows=500)
    target = float(reference.losses[int(reference.num_steps)])
    assert result.status == emjax.Status.ok and result.converged
    # The mini-batch phase alone is within the batch noise; the polish removes it.
    gap = float(emjax.neg_log_likelihood(model, stochastic.params, x, y)) - target
    assert 0 <= gap < 1e-2
    np.testing.assert_allclose(flat(result.params), flat(reference.params), atol=1e-6)
    assert result.polish_losses[-1] == pytest.approx(target, abs=1e-12)
    assert np.all(np.diff(result.polish_losses) <= 1e-13)  # the polish, like EM, never increases L


def test_polish_alone_converges_for_a_symmetric_model_and_a_ridge():
    for model in (emjax.SymMoLogE(), emjax.MoLogE(2, num_classes=3, ridge=1e-2)):
        if isinstance(model, emjax.SymMoLogE):
            truth = emjax.testing.random_params(model, jax.random.key(0), 2, 4.0, 4.0)
            start = emjax.SymParams(w=jnp.array([0.3, -0.2]), beta=jnp.array([1.0, 1.0]))
        else:
            truth = emjax.testing.random_params(model, jax.random.key(0), d=2)
            start = emjax.testing.random_params(model, jax.random.key(3), d=2)
        x, y = emjax.sample(model, truth, jax.random.key(1), 1200)
        # Near the fixed point: after 60 EM steps. EM's rate here is up to 0.93: run it out (720 steps; it stops
        # moving, to the last bit, after 540 and 600), in runs of 60 that continue the same EM sequence, so that one
        # compiled loop per model serves both.
        near = emjax.fit(model, emjax.em(), start, x, y, 60).params
        reference = near
        for _ in range(11):
            reference = emjax.fit(model, emjax.em(), reference, x, y, 60).params
        batches = ArrayBatches(np.asarray(x), np.asarray(y), 600)  # two batches: every pass sums over the stream
        # The EM-gradient polish follows EM's path to EM's fixed point, at EM's rate.
        slow = fit_stream(model, start, batches, num_epochs=0, polish_steps=400, polish_method="em_gradient")
        assert slow.converged and slow.num_batches == 0
        np.testing.assert_allclose(flat(slow.params), flat(reference), atol=1e-6)
        # Near the fixed point, Newton on L gets there in a few passes.
        fast = fit_stream(model, near, batches, num_epochs=0, polish_steps=12)
        assert fast.converged and len(fast.polish_losses) <= 10
        np.testing.assert_allclose(flat(fast.params), flat(reference), atol=1e-6)


# ----------------------------------------------------------------------------- boundaries and interruptions


def test_generators_run_one_epoch_and_bad_arguments_are_refused(moline_problem):
    model, x, y, start, _ = moline_problem
    generator = ((x[i : i + 1000], y[i : i + 1000]) for i in range(0, 3000, 1000))
    assert fit_stream(model, start, generator).num_batches == 3
    with pytest.raises(ValueError, match="one-shot iterator"):
        fit_stream(model, start, iter([(x, y)]), polish_steps=1)
    with pytest.raises(ValueError, match="step_size"):
        fit_stream(model, start, [(x, y)], step_size=1.5)
    with pytest.raises(ValueError, match="decay"):
        RobbinsMonro(decay=2.0)
    with pytest.raises(ValueError, match="num_epochs"):
        fit_stream(model, start, [(x, y)], num_epochs=-1)
    bad = x.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="x must be finite"):
        fit_stream(model, start, [(x, y), (bad, y)])
    with pytest.raises(ValueError, match="pair"):
        fit_stream(model, start, [x])


class _Interrupting:
    """A batch source that raises KeyboardInterrupt at its ``fail_at``-th batch, once."""

    def __init__(self, batches, fail_at):
        self.batches, self.fail_at = batches, fail_at

    def __iter__(self):
        for index, pair in enumerate(self.batches):
            if index == self.fail_at:
                self.fail_at = None
                raise KeyboardInterrupt
            yield pair


def test_an_interrupted_run_resumes_from_its_checkpoint(moline_problem, tmp_path):
    model, x, y, start, _ = moline_problem
    batches = ArrayBatches(x, y, 500)
    uninterrupted = fit_stream(model, start, batches, num_epochs=2, polish_steps=2)
    source = _Interrupting(batches, fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        fit_stream(model, start, source, num_epochs=2, polish_steps=2, checkpoint=tmp_path, checkpoint_every=1)
    assert os.path.exists(tmp_path / "state.json")
    resumed = fit_stream(model, start, source, num_epochs=2, polish_steps=2, checkpoint=tmp_path)
    assert resumed.num_batches == uninterrupted.num_batches == 12
    np.testing.assert_allclose(flat(resumed.params), flat(uninterrupted.params), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(resumed.batch_losses, uninterrupted.batch_losses)
    with pytest.raises(ValueError, match="different run"):
        fit_stream(model, start, source, num_epochs=3, checkpoint=tmp_path)


def test_a_function_schedule_resumes_in_a_new_process():
    # repr(lambda) holds a memory address, which the resuming process does not share: the fingerprint
    # of a plain function is its name and first steps instead.
    from emjax.streaming._minibatch import _schedule_fingerprint

    def make():
        return lambda t: 1.0 / (1.0 + t)

    first, second = make(), make()
    assert repr(first) != repr(second)
    assert _schedule_fingerprint(first) == _schedule_fingerprint(second)
    assert _schedule_fingerprint(lambda t: 0.5) != _schedule_fingerprint(first)
    assert _schedule_fingerprint(emjax.streaming.RobbinsMonro()) == repr(emjax.streaming.RobbinsMonro())
