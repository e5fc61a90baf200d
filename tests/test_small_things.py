"""Issue 18, small things: K = 1 experts, zero-step fits, Python lists and pandas data, status names."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import emjax

KEY = jax.random.key(0)


def _data(model, n, d=3, seed=0):
    truth = emjax.testing.random_params(model, jax.random.key(seed), d, expert_norm=1.0, sigma=0.7)
    x, y = emjax.sample(model, truth, jax.random.key(seed + 1), n)
    return truth, x, y


# --------------------------------------------------------------------------- K = 1: one GLM, no gate


def test_one_linear_expert_is_ordinary_least_squares():
    model = emjax.MoLinE(1)
    _, x, y = _data(model, 200)
    xn, yn = np.asarray(x), np.asarray(y)
    n = xn.shape[0]
    beta = np.linalg.solve(xn.T @ xn, xn.T @ yn)  # OLS, closed form
    rss = np.sum((yn - xn @ beta) ** 2)
    sigma = np.sqrt(rss / n)  # the maximum-likelihood σ² = RSS / n
    far = emjax.MoEParams(gate=jnp.zeros((1, 3)), experts=jnp.full((1, 3), 5.0), sigma=jnp.array([3.0]))
    result = emjax.fit(model, emjax.em(), far, x, y, 3)
    assert int(result.status) == emjax.Status.ok
    np.testing.assert_allclose(result.params.experts[0], beta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result.params.sigma[0], sigma, rtol=1e-10)
    np.testing.assert_array_equal(result.params.gate, far.gate)  # the pinned gate never moves
    # One EM step is the whole fit: the loss after it is the minimum, -mean log N(y; x·β, σ²).
    minimum = 0.5 * np.log(2 * np.pi * sigma**2) + 0.5
    np.testing.assert_allclose(result.losses[1:], minimum, rtol=1e-12)
    # The classical standard errors: σ̂ sqrt(diag((XᵀX)⁻¹)) for β, σ̂ / sqrt(2n) for σ.
    se = emjax.standard_errors(model, result.params, x, y)
    np.testing.assert_allclose(se.experts[0], sigma * np.sqrt(np.diag(np.linalg.inv(xn.T @ xn))), rtol=1e-8)
    np.testing.assert_allclose(se.sigma[0], sigma / np.sqrt(2 * n), rtol=1e-8)
    np.testing.assert_array_equal(se.gate, 0.0)
    # k = d + 1; -2 log-likelihood + penalties.
    assert emjax.num_parameters(model, result.params) == 4
    np.testing.assert_allclose(emjax.aic(model, result.params, x, y), 2 * n * minimum + 8, rtol=1e-12)
    np.testing.assert_allclose(emjax.bic(model, result.params, x, y), 2 * n * minimum + 4 * np.log(n), rtol=1e-12)


def _poisson_glm(x, y, steps=50):
    """Newton's method on the Poisson log-likelihood, written out: the oracle for MoPoE(1)."""
    beta = np.zeros(x.shape[1])
    for _ in range(steps):
        rate = np.exp(x @ beta)
        beta = beta + np.linalg.solve(x.T @ (rate[:, None] * x), x.T @ (y - rate))
    return beta


def test_one_poisson_expert_is_the_poisson_glm():
    model = emjax.MoPoE(1)
    _, x, y = _data(model, 200, seed=3)
    xn, yn = np.asarray(x), np.asarray(y)
    beta = _poisson_glm(xn, yn)
    start = emjax.init_params(model, KEY, x, y)
    result = emjax.fit(model, emjax.em(), start, x, y, 2)
    np.testing.assert_allclose(result.params.experts[0], beta, rtol=1e-8, atol=1e-10)
    rate = np.exp(xn @ beta)
    se = emjax.standard_errors(model, result.params, x, y)
    np.testing.assert_allclose(se.experts[0], np.sqrt(np.diag(np.linalg.inv(xn.T @ (rate[:, None] * xn)))), rtol=1e-6)
    assert emjax.num_parameters(model, result.params) == 3


def test_one_softmax_expert_is_the_multinomial_glm():
    model = emjax.MoLogE(1, 3)
    _, x, y = _data(model, 200, seed=5)
    result = emjax.fit(model, emjax.em(), emjax.init_params(model, KEY, x, y), x, y, 2)
    assert int(result.status) == emjax.Status.ok

    def nll(free):  # the multinomial log-likelihood, class 0 pinned at 0, written out
        coef = jnp.concatenate([jnp.zeros((3, 1)), free.reshape(3, 2)], axis=1)
        logits = x @ coef
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y.astype(int)[:, None], axis=1))

    free = result.params.experts[0][:, 1:].reshape(-1)
    assert float(jnp.max(jnp.abs(jax.grad(nll)(free)))) < 1e-9  # the stationary point of a convex problem
    np.testing.assert_allclose(result.final_loss, nll(free), rtol=1e-12)


@pytest.mark.parametrize("model", [emjax.MoLinE(1), emjax.MoLogE(1, 3), emjax.MoPoE(1)], ids=["lin", "log", "poi"])
def test_one_expert_has_no_missing_information_and_restarts_agree(model):
    _, x, y = _data(model, 200, seed=7)  # the size of the K = 1 GLM tests: compiled programs shared
    result = emjax.fit_restarts(model, emjax.em(), KEY, x, y, 3, 3)
    p = emjax.num_parameters(model, result.params)
    missing = emjax.missing_information(model, result.params, x, y)
    assert missing.shape == (p, p)
    np.testing.assert_allclose(missing, 0.0, atol=1e-12)  # z is known: nothing is missing
    assert float(emjax.em_rate(model, result.params, x, y)) == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(result.restart_losses, result.restart_losses[0], rtol=1e-10)  # one optimum
    np.testing.assert_allclose(
        emjax.observed_information(model, result.params, x, y),
        emjax.complete_information(model, result.params, x, y),
        atol=1e-12,
    )


def test_bic_across_k_prefers_two_experts_on_two_expert_data():
    two = emjax.MoLinE(2)
    truth = emjax.testing.random_params(two, jax.random.key(11), 2, gate_norm=1.0, expert_norm=3.0, sigma=0.3)
    x, y = emjax.sample(two, truth, jax.random.key(12), 300)
    fits = {k: emjax.fit_restarts(emjax.MoLinE(k), emjax.em(), KEY, x, y, 2, 60).params for k in (1, 2)}
    bics = {k: float(emjax.bic(emjax.MoLinE(k), fits[k], x, y)) for k in (1, 2)}
    assert bics[2] < bics[1] - 100


# --------------------------------------------------------------------------- num_steps = 0


@pytest.mark.parametrize("tol", [None, 1e-8])
def test_zero_steps_return_the_start_with_one_status(tol):
    model = emjax.MoLinE(2)
    truth, x, y = _data(model, 60, d=2)  # the size of the other MoLinE(2) tests: compiled programs shared
    expected = emjax.Status.ok if tol is None else emjax.Status.max_steps
    result = emjax.fit(model, emjax.em(), truth, x, y, 0, tol=tol)
    assert int(result.status) == expected and int(result.num_steps) == 0 and not bool(result.converged)
    jax.tree_util.tree_map(np.testing.assert_array_equal, result.params, truth)
    np.testing.assert_allclose(result.losses, [emjax.neg_log_likelihood(model, truth, x, y)], rtol=1e-14)

    restarts = emjax.fit_restarts(model, emjax.em(), KEY, x, y, 3, 0, tol=tol)
    assert int(restarts.status) == expected and int(restarts.num_steps) == 0
    starts = [emjax.init_params(model, key, x, y) for key in jax.random.split(KEY, 3)]
    losses = np.array([float(emjax.neg_log_likelihood(model, start, x, y)) for start in starts])
    np.testing.assert_allclose(restarts.restart_losses, losses, rtol=1e-12)
    best = int(np.argmin(losses))
    assert int(restarts.best_restart) == best
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14), restarts.params, starts[best]
    )


# --------------------------------------------------------------------------- lists and pandas


def test_lists_and_pandas_give_the_array_answers():
    model = emjax.MoLinE(2)
    truth, x, y = _data(model, 60, d=2)
    frame = pd.DataFrame(np.asarray(x), columns=["a", "b"])
    series = pd.Series(np.asarray(y), name="y")
    forms = {"list": (np.asarray(x).tolist(), np.asarray(y).tolist()), "pandas": (frame, series)}
    reference = {
        "nll": emjax.neg_log_likelihood(model, truth, x, y),
        "gamma": emjax.responsibilities(model, truth, x, y),
        "em_step": emjax.em_step(model, truth, x, y).experts,
        "fit": emjax.fit(model, emjax.em(), truth, x, y, 4).losses,  # 4 steps: the program of the repr test
        "restarts": emjax.fit_restarts(model, emjax.em(), KEY, x, y, 2, 2).restart_losses,
        "init": emjax.init_params(model, KEY, x, y).experts,
        "se": emjax.standard_errors(model, truth, x, y).experts,
        "aic": emjax.aic(model, truth, x, y),
        "bic": emjax.bic(model, truth, x, y),
        "mirror_map": emjax.mirror_map(model, truth, x),
        "rate": emjax.em_rate(model, truth, x, y),
    }
    for form, (xf, yf) in forms.items():
        got = {
            "nll": emjax.neg_log_likelihood(model, truth, xf, yf),
            "gamma": emjax.responsibilities(model, truth, xf, yf),
            "em_step": emjax.em_step(model, truth, xf, yf).experts,
            "fit": emjax.fit(model, emjax.em(), truth, xf, yf, 4).losses,
            "restarts": emjax.fit_restarts(
                model, emjax.em(), KEY, xf, y=yf, num_restarts=2, num_steps=2
            ).restart_losses,
            "init": emjax.init_params(model, KEY, xf, yf).experts,
            "se": emjax.standard_errors(model, truth, xf, yf).experts,
            "aic": emjax.aic(model, truth, xf, yf),
            "bic": emjax.bic(model, truth, xf, yf),
            "mirror_map": emjax.mirror_map(model, truth, xf),
            "rate": emjax.em_rate(model, truth, xf, yf),
        }
        for name, value in reference.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-12, atol=1e-14, err_msg=f"{form}: {name}")
    history = emjax.fit(model, emjax.em(), truth, x, y, 2, keep_history=True)
    best = emjax.best_iterate(model, history, frame, series)
    np.testing.assert_allclose(best.losses, emjax.best_iterate(model, history, x, y).losses, rtol=1e-14)


def test_integer_labels_from_lists_and_pandas_stay_class_labels():
    model = emjax.MoLogE(2, 3)
    truth, x, y = _data(model, 60, d=2, seed=2)
    labels = np.asarray(y).astype(int)
    as_list = emjax.neg_log_likelihood(model, truth, np.asarray(x).tolist(), labels.tolist())
    as_series = emjax.neg_log_likelihood(model, truth, np.asarray(x), pd.Series(labels))
    np.testing.assert_allclose(as_list, emjax.neg_log_likelihood(model, truth, x, y), rtol=1e-14)
    np.testing.assert_allclose(as_series, as_list, rtol=1e-14)
    with pytest.raises(ValueError, match=r"y must hold class labels"):
        emjax.neg_log_likelihood(model, truth, np.asarray(x), (labels + 0.5).tolist())


def test_float32_frames_keep_float32():
    model = emjax.SymMoLinE()
    params = emjax.SymParams(w=np.zeros(2, np.float32), beta=np.ones(2, np.float32))
    frame = pd.DataFrame({"a": np.ones(4, np.float32), "b": np.arange(4, dtype=np.float32)})
    value = emjax.neg_log_likelihood(model, params, frame, pd.Series(np.zeros(4, np.float32)))
    assert value.dtype == jnp.float32


def test_bad_lists_and_frames_are_refused_with_the_usual_messages():
    model = emjax.MoLinE(2)
    truth, x, y = _data(model, 4, d=2)
    with pytest.raises(ValueError, match=r"^x must be rectangular"):
        emjax.fit(model, emjax.em(), truth, [[1.0, 2.0], [3.0]], y.tolist()[:2], 1)
    with pytest.raises(ValueError, match=r"^x must hold real numbers"):
        emjax.neg_log_likelihood(model, truth, pd.DataFrame({"a": ["u", "v", "w", "z"], "b": 1.0}), y)
    with pytest.raises(ValueError, match=r"^x must have shape \(n, d\)"):
        emjax.neg_log_likelihood(model, truth, pd.Series(np.ones(4)), y)  # 1-D x: as before, refused
    with pytest.raises(ValueError, match=r"^y must have one entry per row"):
        emjax.aic(model, truth, x, [0.0, 1.0])


def test_emjax_does_not_import_pandas():
    code = "import sys, emjax; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- status names and the result's repr


def test_status_names():
    assert [emjax.Status.name_of(code) for code in range(4)] == [
        "Status.ok",
        "Status.max_steps",
        "Status.nonfinite",
        "Status.degenerate",
    ]
    assert emjax.Status.name_of(jnp.int32(3)) == "Status.degenerate"
    assert emjax.Status.name_of(np.int64(1)) == "Status.max_steps"
    assert emjax.Status.name_of(9) == "Status(9)"
    with pytest.raises(ValueError, match="index it first"):
        emjax.Status.name_of(jnp.zeros(3, jnp.int32))


def test_fit_result_prints_its_status_by_name_single_batched_and_traced():
    model = emjax.MoLinE(2)
    truth, x, y = _data(model, 60, d=2)
    result = emjax.fit(model, emjax.em(), truth, x, y, 4)
    text = repr(result)
    assert text.startswith("FitResult(status=Status.ok, num_steps=4, converged=False, final_loss=")
    assert f"final_loss={float(result.final_loss):.6g}" in text and "gate=f64[2,2]" in text
    assert text == result.describe()

    starts = jax.vmap(lambda k: emjax.init_params(model, k, x, y))(jax.random.split(KEY, 3))
    batched = jax.vmap(lambda p: emjax.fit(model, emjax.em(), p, x, y, 4, tol=0.0))(starts)
    assert repr(batched).startswith("FitResult[batch 3](status={Status.max_steps: 3}, num_steps=4..4, converged=0/3")

    seen = []

    @jax.jit
    def traced(params):
        inner = emjax.fit(model, emjax.em(), params, x, y, 1)
        seen.append(repr(inner))
        return inner.losses

    traced(truth)
    assert seen[0].startswith("FitResult(\n  params=") and "Status" not in seen[0]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_one_expert_fits_stop_at_a_tolerance_once_the_steps_are_round_off(dtype):
    # EM for K = 1 is exact in one step; later steps are round-off whose ratios keep the rate unknown.
    # The distance rule must still see the arrival (it used to run to max_steps with d-hat infinite).
    model = emjax.MoLinE(1)
    x = jax.random.normal(jax.random.key(0), (150, 2), dtype).at[:, 0].set(1)
    y = x @ jnp.array([3.0, -2.0], dtype) + 0.5 * jax.random.normal(jax.random.key(1), (150,), dtype)
    start = emjax.init_params(model, jax.random.key(2), x, y)
    result = emjax.fit(model, emjax.em(), start, x, y, 100, tol=1e-6)
    assert emjax.Status(int(result.status)) == emjax.Status.ok and bool(result.converged)
    assert int(result.num_steps) <= 3, int(result.num_steps)
    restarts = emjax.fit_restarts(model, emjax.em(), jax.random.key(3), x, y, 2, num_steps=100, tol=1e-6)
    assert bool(jnp.all(restarts.converged)) and int(restarts.num_steps) <= 3
    ols = np.linalg.lstsq(np.asarray(x, np.float64), np.asarray(y, np.float64), rcond=None)[0]
    np.testing.assert_allclose(np.asarray(result.params.experts[0]), ols, rtol=1e-4 if dtype == jnp.float32 else 1e-10)
