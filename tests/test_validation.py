"""Every bad input gets a ValueError that names the argument and says what was expected."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax

X = jnp.ones((4, 2))
Y = jnp.array([0.0, 1.0, 1.0, 0.0])
P = emjax.SymParams(w=jnp.zeros(2), beta=jnp.ones(2))
LIN, LOG = emjax.SymMoLinE(), emjax.SymMoLogE()

DATA_FUNCTIONS = [
    emjax.responsibilities, emjax.neg_log_likelihood, emjax.em_step, emjax.missing_information,
    emjax.observed_information, emjax.missing_information_matrix, emjax.em_rate,
    emjax.neg_log_likelihood_grad, emjax.posterior_statistics,
    lambda m, p, x, y: emjax.mirror_descent_step(m, p, x, y, 0.5),
    lambda m, p, x, y: emjax.gradient_descent_step(m, p, x, y, 0.5),
    lambda m, p, x, y: emjax.gradient_em_step(m, p, x, y, 0.5, 2),
    lambda m, p, x, y: emjax.fit(m, emjax.em(), p, x, y, 2),
]


@pytest.mark.parametrize("fn", DATA_FUNCTIONS)
@pytest.mark.parametrize(("x", "y", "params", "match"), [
    (jnp.ones(4), Y, P, r"x must have shape \(n, d\)"),
    (jnp.ones((4, 2, 1)), Y, P, r"x must have shape \(n, d\)"),
    (X, jnp.ones((4, 1)), P, r"y must have shape \(n,\)"),
    (X, jnp.ones(3), P, r"y must have one entry per row of x: x has n=4"),
    (X.at[0, 0].set(jnp.nan), Y, P, "x must be finite"),
    (X.at[1, 1].set(jnp.inf), Y, P, "x must be finite"),
    (X, Y.at[2].set(jnp.nan), P, "y must be finite"),
    (X, Y, emjax.SymParams(w=jnp.zeros(3), beta=jnp.ones(3)), r"params.w must have shape \(d,\) = \(2,\)"),
    (jnp.ones((0, 2)), jnp.ones(0), P, "at least one row"),
])
def test_bad_data_raises(fn, x, y, params, match):
    for model in (LIN, LOG):
        with pytest.raises(ValueError, match=match):
            fn(model, params, x, y)


@pytest.mark.parametrize("fn", DATA_FUNCTIONS)
def test_labels_outside_zero_one_raise_for_logistic_model(fn):
    with pytest.raises(ValueError, match=r"y must hold binary labels in \{0, 1\}"):
        fn(LOG, P, X, jnp.array([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match=r"binary labels"):
        fn(LOG, P, X, jnp.array([0.0, 0.5, 1.0, 0.0]))
    fn(LIN, P, X, jnp.array([0.0, 1.0, 2.0, -3.5]))  # any real label is fine for the linear model


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_sigma_raises(sigma):
    with pytest.raises(ValueError, match="sigma must be a positive finite number"):
        emjax.SymMoLinE(sigma=sigma)
    with pytest.raises(ValueError, match="sigma must be a scalar"):
        emjax.SymMoLinE(sigma=jnp.ones(2))


def test_params_shapes_must_agree():
    with pytest.raises(ValueError, match="w and beta must have the same shape"):
        emjax.SymParams(w=jnp.zeros(2), beta=jnp.zeros(3))
    with pytest.raises(ValueError, match=r"params.beta must be finite"):
        emjax.em_step(LIN, emjax.SymParams(w=jnp.zeros(2), beta=jnp.array([1.0, jnp.nan])), X, Y)


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), jnp.ones(2)])
def test_bad_step_sizes_raise(bad):
    with pytest.raises(ValueError, match="step_size must be"):
        emjax.mirror_descent_step(LIN, P, X, Y, bad)
    with pytest.raises(ValueError, match="step_size must be"):
        emjax.gradient_descent(bad)


def test_bad_loop_arguments_raise():
    with pytest.raises(ValueError, match="inner_steps must be a Python int >= 1"):
        emjax.gradient_em(0.1, 0)
    with pytest.raises(ValueError, match="inner_steps must be a Python int >= 1"):
        emjax.gradient_em_step(LIN, P, X, Y, 0.1, 1.5)
    with pytest.raises(ValueError, match="num_steps must be a Python int >= 0"):
        emjax.fit(LIN, emjax.em(), P, X, Y, -1)
    with pytest.raises(ValueError, match="solver must be an emjax solver"):
        emjax.fit(LIN, "em", P, X, Y, 3)
    with pytest.raises(ValueError, match="n must be a positive Python int"):
        emjax.sample(LIN, P, jax.random.key(0), 0)
    with pytest.raises(ValueError, match="transformation must be an optax.GradientTransformation"):
        emjax.from_optax(lambda g: g)


def test_bregman_and_mirror_map_validate():
    with pytest.raises(ValueError, match=r"params.w must have shape \(d,\) = \(2,\)"):
        emjax.bregman_divergence(LIN, emjax.SymParams(w=jnp.zeros(3), beta=jnp.zeros(3)), P, X)
    with pytest.raises(ValueError, match="x must be finite"):
        emjax.mirror_map(LIN, P, X.at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match=r"x must have shape \(n, d\)"):
        emjax.complete_information(LIN, P, jnp.ones(2))


def test_traced_inputs_skip_value_checks_but_keep_shape_checks():
    # Inside a user's jit the values are unknown; shape errors still raise at trace time.
    out = jax.jit(lambda x, y: emjax.neg_log_likelihood(LOG, P, x, y))(X, Y)
    assert np.isfinite(out)
    with pytest.raises(ValueError, match="y must have one entry per row of x"):
        jax.jit(lambda x, y: emjax.neg_log_likelihood(LOG, P, x, y))(X, jnp.ones(3))


def test_wrong_types_raise_value_errors_that_say_what_was_expected():
    with pytest.raises(ValueError, match="model must be an emjax model"):
        emjax.em_step("lin", P, X, Y)
    with pytest.raises(ValueError, match=r"params must be an emjax.SymParams"):
        emjax.em_step(LIN, (P.w, P.beta), X, Y)
    with pytest.raises(ValueError, match=r"params must be an emjax.SymParams"):
        emjax.sample(LIN, (P.w, P.beta), jax.random.key(0), 5)
    with pytest.raises(ValueError, match=r"ref.w must have shape \(d,\) = \(2,\)"):
        emjax.bregman_divergence(LIN, P, emjax.SymParams(w=jnp.zeros(3), beta=jnp.zeros(3)), X)
    with pytest.raises(ValueError, match=r"ref must be an emjax.SymParams"):
        emjax.bregman_divergence(LIN, P, None, X)
