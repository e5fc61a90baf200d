"""Issue 13, item 1: EM on the plain (unbatched) path gave a wrong σ and increased the loss.

The cause was XLA, not emjax's formulas: jaxlib 0.10.2 miscompiles a fused matrix product and sum
over rows on the CPU (jax-ml/jax#39103, emjax._backend). These tests pin the two facts that matter:
the installed backend computes that program right, and the issue's own data now gives the same σ
on every path, equal to a NumPy oracle, with EM monotone down to the truth's loss.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from emjax import _backend


@pytest.mark.parametrize("n", [16_385, 20_000, 24_000])
def test_backend_sums_fused_products_correctly(n):
    # The smallest program that went wrong: (K, n) residuals from a product, weighted, summed over rows.
    rng = np.random.default_rng(n)
    x, y, w, c = rng.normal(size=(n, 5)), rng.normal(size=n), rng.random((n, 3)), rng.normal(size=(3, 5))
    f = jax.jit(lambda x, y, w, c: jnp.sum(w.T * jnp.square(y[None] - c @ x.T), axis=1))
    oracle = np.sum(w.T * np.square(y[None] - c @ x.T), axis=1)
    np.testing.assert_allclose(
        np.asarray(f(x, y, w, c)),
        oracle,
        rtol=1e-12,
        err_msg="this jaxlib miscompiles fused row sums; see emjax._backend",
    )


def _issue_data(n=20_000):
    """The issue's generator, verbatim: MoLinE(3), x = [1, N(0, I4)], numpy.random.default_rng(777)."""
    rng = np.random.default_rng(777)
    gate = np.r_[np.zeros((1, 5)), rng.normal(size=(2, 5)) * 1.5]
    experts = rng.normal(size=(3, 5)) * 2.0
    sig = np.array([0.3, 0.6, 1.0])
    xb = np.c_[np.ones(n), rng.normal(size=(n, 4))]
    g = xb @ gate.T
    p = np.exp(g - g.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    z = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    yb = (xb * experts[z]).sum(1) + sig[z] * rng.normal(size=n)
    truth = emjax.MoEParams(gate=jnp.asarray(gate), experts=jnp.asarray(experts), sigma=jnp.asarray(sig))
    return jnp.asarray(xb), jnp.asarray(yb), truth


def _sigma_oracle(model, params, new, x, y):
    """σ_k² = Σ γ_nk (y_n − x_n·β_k⁺)² / Σ γ_nk in NumPy, with γ from the E-step at ``params``."""
    gamma = np.asarray(emjax.responsibilities(model, params, x, y))
    residuals = np.asarray(y)[:, None] - np.asarray(x) @ np.asarray(new.experts).T
    return np.sqrt(np.sum(gamma * residuals**2, axis=0) / np.sum(gamma, axis=0))


def test_issue_script_sigma_is_the_same_on_every_path():
    model = emjax.MoLinE(3)
    x, y, _ = _issue_data()
    start = emjax.init_params(model, jax.random.key(0), x, y)
    direct = emjax.em_step(model, start, x, y)
    batched = jax.vmap(lambda p: emjax.em_step(model, p, x, y))(jax.tree_util.tree_map(lambda leaf: leaf[None], start))
    mapped = jax.lax.map(
        lambda p: emjax.em_step(model, p, x, y), jax.tree_util.tree_map(lambda leaf: leaf[None], start)
    )
    oracle = _sigma_oracle(model, start, direct, x, y)
    np.testing.assert_allclose(np.asarray(direct.sigma), oracle, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(batched.sigma[0]), oracle, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(mapped.sigma[0]), oracle, rtol=1e-10)


def test_issue_script_direct_em_is_monotone_and_reaches_the_truth():
    model = emjax.MoLinE(3)
    x, y, truth = _issue_data()
    start = emjax.init_params(model, jax.random.key(0), x, y)
    result = emjax.fit(model, emjax.em(), start, x, y, 120, tol=None)
    losses = np.asarray(result.losses)
    assert np.max(np.diff(losses)) <= 1e-12 * abs(losses[0])
    assert losses[-1] <= 1.1694
    assert losses[-1] <= float(emjax.neg_log_likelihood(model, truth, x, y))


def test_a_start_depends_on_its_key_and_data_only():
    # Issue 13, item 2: the same key gave different starts called directly and inside lax.map.
    model = emjax.MoLinE(3)
    x, y, _ = _issue_data()
    keys = jax.random.split(jax.random.key(0), 3)
    alone = [emjax.init_params(model, k, x, y) for k in keys]
    mapped = jax.lax.map(lambda k: emjax.init_params(model, k, x, y), keys)
    for r, start in enumerate(alone):
        for a, b in zip(jax.tree_util.tree_leaves(start), jax.tree_util.tree_leaves(mapped), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b[r]), rtol=1e-10, atol=1e-12)


def test_miscompiling_release_is_named_unless_the_fusion_is_disabled():
    assert _backend.miscompiling_jaxlib("0.10.2", "") is not None
    assert _backend.miscompiling_jaxlib("0.10.2", _backend.WORKAROUND_FLAG) is None
    assert _backend.miscompiling_jaxlib("0.10.1", "") is None


def test_warning_names_the_fix(monkeypatch):
    monkeypatch.setattr(_backend.jaxlib, "__version__", "0.10.2")
    monkeypatch.setenv("XLA_FLAGS", "")
    with pytest.warns(RuntimeWarning, match="jax-ml/jax#39103.*xla_cpu_experimental_ynn_fusion_type"):
        _backend.warn_if_miscompiling()
    monkeypatch.setenv("XLA_FLAGS", _backend.WORKAROUND_FLAG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _backend.warn_if_miscompiling()


def test_the_cli_disables_the_faulty_fusion_for_its_own_process(monkeypatch):
    from emjax import cli

    monkeypatch.setattr(_backend.jaxlib, "__version__", "0.10.2")
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    cli._configure_cpu()
    assert _backend.WORKAROUND_FLAG in cli.os.environ["XLA_FLAGS"].split()
    monkeypatch.setattr(_backend.jaxlib, "__version__", "0.10.1")
    monkeypatch.setenv("XLA_FLAGS", "")
    cli._configure_cpu()
    assert "ynn" not in cli.os.environ["XLA_FLAGS"]


def test_issue_data_mini_batch_em_and_its_polish_reach_the_fixed_point():
    # On jaxlib 0.10.2 mini-batch EM stalled near L = 2.2-2.6 and the polish ran out of passes.
    from emjax.streaming import ArrayBatches, fit_stream

    model = emjax.MoLinE(3)
    x, y, _ = _issue_data()
    start = emjax.init_params(model, jax.random.key(0), x, y)
    result = fit_stream(model, start, ArrayBatches(x, y, 2000, key=jax.random.key(1)), num_epochs=3, polish_steps=8)
    assert result.converged
    assert float(emjax.neg_log_likelihood(model, result.params, x, y)) <= 1.1694
