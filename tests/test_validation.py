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
    emjax.responsibilities,
    emjax.neg_log_likelihood,
    emjax.em_step,
    emjax.missing_information,
    emjax.observed_information,
    emjax.missing_information_matrix,
    emjax.em_rate,
    emjax.neg_log_likelihood_grad,
    emjax.posterior_statistics,
    lambda m, p, x, y: emjax.mirror_descent_step(m, p, x, y, 0.5),
    lambda m, p, x, y: emjax.gradient_descent_step(m, p, x, y, 0.5),
    lambda m, p, x, y: emjax.gradient_em_step(m, p, x, y, 0.5, 2),
    lambda m, p, x, y: emjax.fit(m, emjax.em(), p, x, y, 2),
]


@pytest.mark.parametrize("fn", DATA_FUNCTIONS)
@pytest.mark.parametrize(
    ("x", "y", "params", "match"),
    [
        (jnp.ones(4), Y, P, r"x must have shape \(n, d\)"),
        (jnp.ones((4, 2, 1)), Y, P, r"x must have shape \(n, d\)"),
        (X, jnp.ones((4, 1)), P, r"y must have shape \(n,\)"),
        (X, jnp.ones(3), P, r"y must have one entry per row of x: x has n=4"),
        (X.at[0, 0].set(jnp.nan), Y, P, "x must be finite"),
        (X.at[1, 1].set(jnp.inf), Y, P, "x must be finite"),
        (X, Y.at[2].set(jnp.nan), P, "y must be finite"),
        (X, Y, emjax.SymParams(w=jnp.zeros(3), beta=jnp.ones(3)), r"params.w must have shape \(d,\) = \(2,\)"),
        (jnp.ones((0, 2)), jnp.ones(0), P, "at least one row"),
    ],
)
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
        emjax.complete_information(LIN, P, jnp.ones(2), Y)


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


# --------------------------------------------------------------------------- issue 6: a table of invalid inputs
# Every row is (id, call, argument): ``call()`` must raise ValueError and the message must name ``argument``.
# Decisions the table pins: integer features and parameters are converted to the working float dtype
# (test_integer_and_boolean_inputs_that_are_converted); bool or complex features, complex or string labels and
# ragged Python lists are refused (rectangular lists and pandas objects are converted, tests/test_small_things.py);
# tol = 0 and num_steps = 0 are valid (an exact-stop rule, a zero-step run).

KEY = jax.random.key(0)
ML, MG, MP = emjax.MoLinE(2), emjax.MoLogE(2, 3), emjax.MoPoE(2)
PL = emjax.testing.random_params(ML, KEY, 2)
PG = emjax.testing.random_params(MG, KEY, 2)
PP = emjax.testing.random_params(MP, KEY, 2)
# (model, params, labels) for every model; labels valid for each.
ALL_MODELS = {
    "SymMoLinE": (LIN, P, Y),
    "SymMoLogE": (LOG, P, Y),
    "MoLinE": (ML, PL, Y),
    "MoLogE": (MG, PG, Y),
    "MoPoE": (MP, PP, Y),
}
ONE_STEP = {
    "neg_log_likelihood": emjax.neg_log_likelihood,
    "responsibilities": emjax.responsibilities,
    "em_step": emjax.em_step,
    "missing_information": emjax.missing_information,
    "neg_log_likelihood_grad": emjax.neg_log_likelihood_grad,
    "mirror_descent_step": lambda m, p, x, y: emjax.mirror_descent_step(m, p, x, y, 0.5),
    "gradient_descent_step": lambda m, p, x, y: emjax.gradient_descent_step(m, p, x, y, 0.5),
    "gradient_em_step": lambda m, p, x, y: emjax.gradient_em_step(m, p, x, y, 0.5, 2),
    "fit": lambda m, p, x, y: emjax.fit(m, emjax.em(), p, x, y, 2),
    "init_params": lambda m, p, x, y: emjax.init_params(m, KEY, x, y),
    "fit_restarts": lambda m, p, x, y: emjax.fit_restarts(m, emjax.em(), KEY, x, y, 2, 2),
}
# (id, x, y, argument): bad data, the same for every model and every function of data.
BAD_DATA = [
    ("x rank 1", jnp.ones(4), Y, "x"),
    ("x rank 3", jnp.ones((4, 2, 1)), Y, "x"),
    ("x no rows", jnp.ones((0, 2)), jnp.ones(0), "x"),
    ("x no columns", jnp.ones((4, 0)), Y, "x"),
    ("x bool", X > 0, Y, "x"),
    ("x complex", X.astype(jnp.complex64), Y, "x"),
    ("x object", np.array([[None, 1.0]] * 4, dtype=object), Y, "x"),
    ("x ragged list", [[1.0, 2.0], [1.0]] * 2, Y, "x"),
    ("x NaN", X.at[0, 0].set(jnp.nan), Y, "x"),
    ("x Inf", X.at[1, 1].set(-jnp.inf), Y, "x"),
    ("y rank 2", X, jnp.ones((4, 1)), "y"),
    ("y rank 0", X, jnp.array(1.0), "y"),
    ("y too short", X, jnp.ones(3), "y"),
    ("y complex", X, Y.astype(jnp.complex64), "y"),
    ("y strings", X, np.array(["0", "1", "1", "0"]), "y"),
    ("y ragged list", X, [[0.0], [1.0, 0.0], [1.0], [0.0]], "y"),
    ("y NaN", X, Y.at[2].set(jnp.nan), "y"),
    ("y Inf", X, Y.at[2].set(jnp.inf), "y"),
]


@pytest.mark.parametrize("fn_name", sorted(ONE_STEP))
@pytest.mark.parametrize("model_name", sorted(ALL_MODELS))
@pytest.mark.parametrize(("case", "x", "y", "argument"), BAD_DATA, ids=[row[0] for row in BAD_DATA])
def test_bad_data_raises_a_value_error_naming_the_argument(case, x, y, argument, model_name, fn_name):
    model, params, _ = ALL_MODELS[model_name]
    with pytest.raises(ValueError) as info:
        ONE_STEP[fn_name](model, params, x, y)
    assert str(info.value).startswith(f"{argument} must"), str(info.value)


def _moe(params, **changes):
    fields = {"gate": params.gate, "experts": params.experts, "sigma": params.sigma, **changes}
    return emjax.MoEParams(**fields)


def _sym(**changes):
    return emjax.SymParams(**{"w": P.w, "beta": P.beta, **changes})


NLL = emjax.neg_log_likelihood
# (id, call, argument, match): the message must name the argument and say what was expected.
INVALID = [
    # parameters: type, shape (d, K, C), dtype, finiteness, sign
    ("params type", lambda: NLL(LIN, (P.w, P.beta), X, Y), "params", "emjax.SymParams"),
    ("params MoE for symmetric", lambda: NLL(LIN, PL, X, Y), "params", "emjax.SymParams"),
    ("params symmetric for MoE", lambda: NLL(ML, P, X, Y), "params", "emjax.MoEParams"),
    ("params.w wrong d", lambda: NLL(LIN, _sym(w=jnp.zeros(3), beta=jnp.zeros(3)), X, Y), "params.w", r"\(2,\)"),
    ("params.w complex", lambda: NLL(LIN, _sym(w=P.w.astype(complex)), X, Y), "params.w", "real numbers"),
    ("params.beta bool", lambda: NLL(LOG, _sym(beta=P.beta > 0), X, Y), "params.beta", "real numbers"),
    ("params.beta NaN", lambda: NLL(LOG, _sym(beta=P.beta.at[0].set(jnp.nan)), X, Y), "params.beta", "finite"),
    ("params.gate wrong K", lambda: NLL(emjax.MoLinE(3), PL, X, Y), "params.gate", r"\(3, 2\)"),
    ("params.gate wrong d", lambda: NLL(ML, _moe(PL, gate=jnp.zeros((2, 3))), X, Y), "params.gate", r"\(2, 2\)"),
    ("params.gate rank 1", lambda: NLL(ML, _moe(PL, gate=jnp.zeros(2)), X, Y), "params.gate", "shape"),
    ("params.experts wrong C", lambda: NLL(emjax.MoLogE(2, 4), PG, X, Y), "params.experts", r"\(2, 2, 4\)"),
    (
        "params.experts complex",
        lambda: NLL(MP, _moe(PP, experts=PP.experts.astype(complex)), X, Y),
        "params.experts",
        "real numbers",
    ),
    (
        "params.experts Inf",
        lambda: NLL(MG, _moe(PG, experts=PG.experts.at[0, 0, 1].set(jnp.inf)), X, Y),
        "params.experts",
        "finite",
    ),
    ("params.sigma missing", lambda: NLL(ML, _moe(PL, sigma=None), X, Y), "params.sigma", "shape"),
    ("params.sigma for MoLogE", lambda: NLL(MG, _moe(PG, sigma=jnp.ones(2)), X, Y), "params.sigma", "None"),
    ("params.sigma zero", lambda: NLL(ML, _moe(PL, sigma=jnp.array([1.0, 0.0])), X, Y), "params.sigma", "positive"),
    ("params.sigma negative", lambda: NLL(ML, _moe(PL, sigma=-PL.sigma), X, Y), "params.sigma", "positive"),
    ("params.sigma NaN", lambda: NLL(ML, _moe(PL, sigma=PL.sigma.at[1].set(jnp.nan)), X, Y), "params.sigma", "finite"),
    ("ref type", lambda: emjax.bregman_divergence(ML, PL, P, X), "ref", "emjax.MoEParams"),
    (
        "ref.sigma negative",
        lambda: emjax.bregman_divergence(ML, PL, _moe(PL, sigma=-PL.sigma), X),
        "ref.sigma",
        "positive",
    ),
    ("model type", lambda: NLL("SymMoLinE", P, X, Y), "model", "emjax model"),
    # labels outside what the model can produce
    ("SymMoLogE label 2", lambda: NLL(LOG, P, X, Y.at[0].set(2.0)), "y", r"\{0, 1\}"),
    ("SymMoLogE label 0.5", lambda: NLL(LOG, P, X, Y.at[0].set(0.5)), "y", r"\{0, 1\}"),
    ("SymMoLogE label -1", lambda: emjax.fit(LOG, emjax.em(), P, X, Y.at[0].set(-1.0), 2), "y", r"\{0, 1\}"),
    ("MoLogE label C", lambda: NLL(MG, PG, X, Y.at[0].set(3.0)), "y", r"\{0, ..., 2\}"),
    ("MoLogE label -1", lambda: emjax.em_step(MG, PG, X, Y.at[0].set(-1.0)), "y", r"\{0, ..., 2\}"),
    ("MoLogE label 1.5", lambda: emjax.init_params(MG, KEY, X, Y.at[0].set(1.5)), "y", r"\{0, ..., 2\}"),
    ("MoPoE negative count", lambda: NLL(MP, PP, X, Y.at[0].set(-1.0)), "y", "counts"),
    ("MoPoE fractional count", lambda: emjax.fit(MP, emjax.em(), PP, X, Y.at[0].set(0.5), 2), "y", "counts"),
    # models: K, C, σ, ridge, inner solver
    ("K = 0", lambda: emjax.MoPoE(0), "num_experts", ">= 1"),
    ("K = -1", lambda: emjax.MoLogE(-1, 3), "num_experts", ">= 1"),
    ("K float", lambda: emjax.MoLinE(2.0), "num_experts", "Python int"),
    ("K bool", lambda: emjax.MoLinE(True), "num_experts", "Python int"),
    ("C = 1", lambda: emjax.MoLogE(2, 1), "num_classes", ">= 2"),
    ("sigma zero", lambda: emjax.SymMoLinE(0.0), "sigma", "positive"),
    ("sigma negative", lambda: emjax.SymMoLinE(-1.0), "sigma", "positive"),
    ("sigma NaN", lambda: emjax.SymMoLinE(float("nan")), "sigma", "positive"),
    ("sigma bool", lambda: emjax.SymMoLinE(True), "sigma", "real number"),
    ("sigma complex", lambda: emjax.SymMoLinE(1 + 1j), "sigma", "real numbers"),
    ("sigma string", lambda: emjax.SymMoLinE("1"), "sigma", "real numbers"),
    ("sigma vector", lambda: emjax.SymMoLinE(jnp.ones(2)), "sigma", "scalar"),
    ("ridge negative", lambda: emjax.MoLinE(2, ridge=-1e-3), "ridge", ">= 0"),
    ("ridge NaN", lambda: emjax.MoLinE(2, ridge=float("nan")), "ridge", ">= 0"),
    ("ridge bool", lambda: emjax.MoLinE(2, ridge=True), "ridge", "finite number"),
    ("m_step_max_steps 0", lambda: emjax.MoLogE(2, 3, m_step_max_steps=0), "m_step_max_steps", ">= 1"),
    ("m_step_method", lambda: emjax.MoLogE(2, 3, m_step_method="bfgs"), "m_step_method", "one of"),
    # step sizes: steps, solver factories, per-block steps
    ("step zero", lambda: emjax.mirror_descent_step(LIN, P, X, Y, 0.0), "step_size", "positive"),
    ("step negative", lambda: emjax.gradient_descent_step(ML, PL, X, Y, -0.1), "step_size", "positive"),
    ("step NaN", lambda: emjax.gradient_em_step(MP, PP, X, Y, float("nan")), "step_size", "positive"),
    ("step Inf", lambda: emjax.gradient_em(float("inf")), "step_size", "positive"),
    ("step bool", lambda: emjax.gradient_descent(True), "step_size", "real number"),
    ("step complex", lambda: emjax.mirror_descent(0.5 + 0j), "step_size", "real numbers"),
    ("step string", lambda: emjax.gradient_descent_step(LIN, P, X, Y, "0.1"), "step_size", "real numbers"),
    ("step None", lambda: emjax.mirror_descent(None), "step_size", "real number"),
    ("step vector", lambda: emjax.mirror_descent_step(LOG, P, X, Y, jnp.ones(2)), "step_size", "scalar"),
    ("mirror step per block", lambda: emjax.mirror_descent(_sym(w=0.1, beta=0.1)), "step_size", "real numbers"),
    (
        "block step negative",
        lambda: emjax.gradient_descent_step(LIN, P, X, Y, _sym(w=0.1, beta=-0.1)),
        "step_size.beta",
        "positive",
    ),
    (
        "block step wrong type",
        lambda: emjax.gradient_descent_step(ML, PL, X, Y, _sym(w=0.1, beta=0.1)),
        "step_size",
        "emjax.MoEParams",
    ),
    (
        "block step missing sigma",
        lambda: emjax.gradient_em_step(ML, PL, X, Y, emjax.MoEParams(gate=0.1, experts=0.1)),
        "step_size.sigma",
        "positive number",
    ),
    (
        "block step extra sigma",
        lambda: emjax.gradient_descent_step(MG, PG, X, Y, emjax.MoEParams(gate=0.1, experts=0.1, sigma=0.1)),
        "step_size.sigma",
        "None",
    ),
    (
        "solver block step wrong type",
        lambda: emjax.fit(ML, emjax.gradient_descent(_sym(w=0.1, beta=0.1)), PL, X, Y, 2),
        "solver.step_size",
        "emjax.MoEParams",
    ),
    # loop lengths, tolerances, counts
    ("num_steps negative", lambda: emjax.fit(LIN, emjax.em(), P, X, Y, -1), "num_steps", ">= 0"),
    ("num_steps float", lambda: emjax.fit(ML, emjax.em(), PL, X, Y, 2.0), "num_steps", "Python int"),
    ("num_steps bool", lambda: emjax.fit(ML, emjax.em(), PL, X, Y, True), "num_steps", "Python int"),
    ("restarts num_steps", lambda: emjax.fit_restarts(ML, emjax.em(), KEY, X, Y, 2, -3), "num_steps", ">= 0"),
    ("inner_steps 0", lambda: emjax.gradient_em(0.1, 0), "inner_steps", ">= 1"),
    ("inner_steps float", lambda: emjax.gradient_em_step(LIN, P, X, Y, 0.1, 2.0), "inner_steps", "Python int"),
    ("num_restarts 0", lambda: emjax.fit_restarts(ML, emjax.em(), KEY, X, Y, 0), "num_restarts", ">= 1"),
    ("batch_size 0", lambda: emjax.fit_restarts(ML, emjax.em(), KEY, X, Y, 2, batch_size=0), "batch_size", ">= 1"),
    ("progress 0", lambda: emjax.fit(LIN, emjax.em(), P, X, Y, 2, progress=0), "progress", ">= 1"),
    ("tol negative", lambda: emjax.fit(LIN, emjax.em(), P, X, Y, 2, tol=-1e-6), "tol", ">= 0"),
    ("tol NaN", lambda: emjax.fit(MG, emjax.em(), PG, X, Y, 2, tol=float("nan")), "tol", ">= 0"),
    ("tol string", lambda: emjax.fit(LIN, emjax.em(), P, X, Y, 2, tol="1e-6"), "tol", "real numbers"),
    ("tol vector", lambda: emjax.fit(LIN, emjax.em(), P, X, Y, 2, tol=jnp.ones(2)), "tol", "scalar"),
    ("atol negative", lambda: emjax.fit(LIN, emjax.em(), P, X, Y, 2, tol=1e-6, atol=-1.0), "atol", ">= 0"),
    ("atol negative without tol", lambda: emjax.fit(LIN, emjax.em(), P, X, Y, 2, atol=-1.0), "atol", ">= 0"),
    ("restarts atol", lambda: emjax.fit_restarts(ML, emjax.em(), KEY, X, Y, 2, atol=-1.0), "atol", ">= 0"),
    ("sample n 0", lambda: emjax.sample(LIN, P, KEY, 0), "n", "positive Python int"),
    (
        "sample d 0",
        lambda: emjax.sample(LIN, emjax.SymParams(w=jnp.zeros(0), beta=jnp.zeros(0)), KEY, 3),
        "params",
        "d >= 1",
    ),
    # solvers and masks
    ("solver type", lambda: emjax.fit(LIN, "em", P, X, Y, 2), "solver", "emjax solver"),
    ("optax type", lambda: emjax.from_optax(lambda g: g), "transformation", "optax.GradientTransformation"),
    ("trainable type", lambda: emjax.em(trainable=True), "trainable", "emjax.SymParams or emjax.MoEParams"),
    (
        "trainable dtype",
        lambda: emjax.em_step(LIN, P, X, Y, trainable=_sym(w=1.0, beta=True)),
        "trainable.w",
        "booleans",
    ),
    (
        "solver.trainable type",
        lambda: emjax.fit(ML, emjax.em(trainable=_sym(w=True, beta=False)), PL, X, Y, 2),
        "solver.trainable",
        "emjax.MoEParams",
    ),
    # keys
    ("sample key", lambda: emjax.sample(LIN, P, 0, 5), "key", "jax.random key"),
    ("init_params key", lambda: emjax.init_params(ML, 0, X, Y), "key", "jax.random key"),
    ("fit_restarts key", lambda: emjax.fit_restarts(ML, emjax.em(), "0", X, Y, 2), "key", "jax.random key"),
    ("random_params key", lambda: emjax.testing.random_params(LIN, np.zeros(2), 2), "key", "jax.random key"),
    ("key batch", lambda: emjax.testing.random_params(ML, jax.random.split(KEY, 2), 2), "key", "single"),
    # generators of ground truths and starts: dimensions, norms and scales
    ("random_params d 0", lambda: emjax.testing.random_params(LIN, KEY, 0), "d", ">= 1"),
    (
        "random_params gate_norm sym",
        lambda: emjax.testing.random_params(LIN, KEY, 2, gate_norm=-1.0),
        "gate_norm",
        ">= 0",
    ),
    (
        "random_params expert_norm sym",
        lambda: emjax.testing.random_params(LIN, KEY, 2, expert_norm=float("inf")),
        "expert_norm",
        ">= 0",
    ),
    ("random_params moe d", lambda: emjax.testing.random_params(ML, KEY, 2.5), "d", "Python int"),
    (
        "random_params moe gate_norm",
        lambda: emjax.testing.random_params(ML, KEY, 2, gate_norm=-2.0),
        "gate_norm",
        ">= 0",
    ),
    (
        "random_params moe expert_norm",
        lambda: emjax.testing.random_params(MG, KEY, 2, expert_norm=float("nan")),
        "expert_norm",
        ">= 0",
    ),
    ("random_params moe sigma 0", lambda: emjax.testing.random_params(ML, KEY, 2, sigma=0.0), "sigma", "> 0"),
    ("random_params moe sigma < 0", lambda: emjax.testing.random_params(ML, KEY, 2, sigma=-0.5), "sigma", "> 0"),
    ("random_params moe dtype", lambda: emjax.testing.random_params(ML, KEY, 2, dtype=jnp.int32), "dtype", "floating"),
    ("random_params model", lambda: emjax.testing.random_params("MoLinE", KEY, 2), "model", "emjax model"),
    ("perturb relative_error", lambda: emjax.testing.perturb(P, KEY, -0.5), "relative_error", ">= 0"),
    ("perturb params", lambda: emjax.testing.perturb(PL, KEY), "params", "emjax.SymParams"),
    ("relative_errors", lambda: emjax.testing.relative_errors(PL, PL), "estimate", "emjax.SymParams"),
    (
        "match_experts K",
        lambda: emjax.testing.match_experts(PL, emjax.testing.random_params(emjax.MoLinE(3), KEY, 2)),
        "estimate.gate",
        "same shape",
    ),
    ("match_experts type", lambda: emjax.testing.match_experts(P, PL), "estimate", "emjax.MoEParams"),
    ("num_parameters params", lambda: emjax.num_parameters(LIN, "params"), "params", "emjax.SymParams"),
]


@pytest.mark.parametrize(("case", "call", "argument", "match"), INVALID, ids=[row[0] for row in INVALID])
def test_invalid_input_raises_a_value_error_naming_the_argument(case, call, argument, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert str(info.value).startswith(f"{argument} ") or f" {argument} " in str(info.value), str(info.value)


def test_integer_and_boolean_inputs_that_are_converted():
    # Integer features and parameters are converted to the working float dtype; binary labels may be bools
    # and class labels or counts integers. The results equal those of the float inputs.
    xi = jnp.array([[1, 0], [0, 1], [2, 1], [1, 3]], jnp.int32)
    expected = emjax.neg_log_likelihood(LOG, P, xi.astype(jnp.float64), Y)
    assert float(emjax.neg_log_likelihood(LOG, P, xi, Y > 0)) == pytest.approx(float(expected), rel=1e-12)
    integer_params = emjax.SymParams(w=jnp.array([1, 0]), beta=jnp.array([0, 2]))
    assert emjax.em_step(LIN, integer_params, X, Y).w.dtype == jnp.float64
    counts = jnp.array([0, 3, 1, 7], jnp.int32)
    assert float(emjax.neg_log_likelihood(MP, PP, X, counts)) == pytest.approx(
        float(emjax.neg_log_likelihood(MP, PP, X, counts.astype(jnp.float64))), rel=1e-12
    )
    assert emjax.fit(LIN, emjax.em(), P, X, Y, 0, tol=0.0).losses.shape == (1,)  # zero steps and tol = 0 are valid


# --------------------------------------------------------------------------- non-finite data under jit
# A public function of (model, params, data) inside a user's jit cannot see values in Python: its data pass
# through equinox.error_if, which raises at run time. The loops (fit, fit_restarts) never raise on values:
# they report Status.nonfinite, apply no step and return the initial parameters.

JITTED = {
    "neg_log_likelihood": lambda m, p, x, y: emjax.neg_log_likelihood(m, p, x, y),
    "responsibilities": lambda m, p, x, y: emjax.responsibilities(m, p, x, y),
    "em_step": lambda m, p, x, y: emjax.em_step(m, p, x, y),
    "mirror_descent_step": lambda m, p, x, y: emjax.mirror_descent_step(m, p, x, y, 0.5),
    "gradient_em_step": lambda m, p, x, y: emjax.gradient_em_step(m, p, x, y, 0.5),
    "missing_information": lambda m, p, x, y: emjax.missing_information(m, p, x, y),
    "mirror_map": lambda m, p, x, y: emjax.mirror_map(m, p, x),
    "init_params": lambda m, p, x, y: emjax.init_params(m, KEY, x, y),
}


# The guard lives in the one decorator every public function goes through; every function runs on the cheap
# symmetric model, a few on K-expert ones.
JIT_CASES = [("SymMoLinE", name) for name in sorted(JITTED)] + [
    ("MoLogE", "neg_log_likelihood"),
    ("MoLogE", "gradient_em_step"),
    ("MoLinE", "em_step"),
    ("MoPoE", "responsibilities"),
]


@pytest.mark.parametrize(("model_name", "fn_name"), JIT_CASES)
def test_nonfinite_data_under_jit_raise_at_run_time(model_name, fn_name):
    model, params, y = ALL_MODELS[model_name]
    fn = jax.jit(lambda x, y: JITTED[fn_name](model, params, x, y))
    finite = fn(X, y)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(finite))
    with pytest.raises(Exception, match="x must be finite"):
        jax.block_until_ready(fn(X.at[1, 0].set(jnp.nan), y))
    if fn_name != "mirror_map":  # a function of x only
        with pytest.raises(Exception, match="y must be finite"):
            jax.block_until_ready(fn(X, y.at[2].set(jnp.inf)))


def test_a_jit_of_a_closure_over_concrete_data_runs_and_checks_at_run_time():
    """Concrete data and parameters closed over by a user's jit are traced values inside it: the call runs, and
    the checks ride along to run time."""
    model, params, y = ALL_MODELS["MoLinE"]
    scaled = jax.jit(lambda scale: scale * emjax.em_step(model, params, X, y).experts)
    np.testing.assert_allclose(scaled(2.0), 2.0 * emjax.em_step(model, params, X, y).experts, rtol=1e-6)
    drawn = jax.jit(lambda key: emjax.sample(model, params, key, 7)[1])(jax.random.key(0))
    assert drawn.shape == (7,)
    bad_x = X.at[1, 0].set(jnp.nan)
    with pytest.raises(Exception, match="x must be finite"):
        jax.block_until_ready(jax.jit(lambda scale: scale * emjax.em_step(model, params, bad_x, y).experts)(2.0))


@pytest.mark.parametrize("model_name", ["SymMoLogE", "MoLinE"])
def test_nonfinite_data_under_jit_give_nonfinite_status(model_name):
    model, params, y = ALL_MODELS[model_name]
    for tol in (None, 1e-6):
        run = jax.jit(lambda x, y, tol=tol: emjax.fit(model, emjax.em(), params, x, y, 3, tol=tol))
        ok = run(X, y)
        assert int(ok.status) != emjax.Status.nonfinite and int(ok.num_steps) >= 1
        for bad_x, bad_y in ((X.at[0, 1].set(jnp.nan), y), (X, y.at[3].set(-jnp.inf))):
            result = run(bad_x, bad_y)
            assert int(result.status) == emjax.Status.nonfinite and int(result.num_steps) == 0
            assert not bool(result.converged)
            for leaf, start in zip(
                jax.tree_util.tree_leaves(result.params), jax.tree_util.tree_leaves(params), strict=True
            ):
                assert bool(jnp.all(leaf == start))


def test_nonfinite_data_under_jit_give_nonfinite_status_in_restarts():
    restarts = jax.jit(lambda x, y: emjax.fit_restarts(LOG, emjax.em(), KEY, x, y, 2, 3, batch_size=1))
    assert int(restarts(X, Y).status) in (emjax.Status.ok, emjax.Status.max_steps)
    assert int(restarts(X.at[2, 0].set(jnp.inf), Y).status) == emjax.Status.nonfinite


def test_nonfinite_parameters_under_jit_are_never_reported_healthy():
    # With |x.w| = inf the SymMoLogE loss stays finite (log-sigmoid saturates); a zero-step run used to report ok.
    run = jax.jit(lambda w, beta: emjax.fit(LOG, emjax.em(), emjax.SymParams(w=w, beta=beta), X, Y, 0))
    assert int(run(P.w, P.beta).status) == emjax.Status.ok
    result = run(jnp.array([jnp.inf, 0.0]), P.beta)
    assert bool(jnp.isfinite(result.losses[0])) and int(result.status) == emjax.Status.nonfinite
    until = jax.jit(lambda w: emjax.fit(ML, emjax.em(), _moe(PL, gate=w), X, Y, 0, tol=1e-6))
    assert int(until(PL.gate.at[1, 0].set(jnp.nan)).status) == emjax.Status.nonfinite


def test_mirror_step_needs_one_step_size_and_safe_step_size_is_for_symmetric_models():
    for model, params, y, tree in (
        (LOG, P, Y, emjax.SymParams(w=0.5, beta=0.5)),
        (ML, PL, Y, emjax.MoEParams(gate=0.5, experts=0.5, sigma=0.5)),
    ):
        with pytest.raises(ValueError, match="step_size of a mirror-descent step must be one positive number"):
            emjax.mirror_descent_step(model, params, X, y, tree)
    with pytest.raises(ValueError, match="safe_step_size needs a global bound on the curvature"):
        emjax.safe_step_size(ML, X)
    assert float(emjax.safe_step_size(LOG, X)) > 0


# --------------------------------------------------------------------------- issue 14: checks at the boundary only
# Value checks on jax arrays are compiled into the public function (equinox.error_if): an eager call never
# copies the data to the host, yet bad values still raise the same ValueError; inside a user's jit they raise
# at run time with the same message.

DEVICE_CASES = {
    "SymMoLinE": (LIN, P, Y),
    "SymMoLogE": (LOG, P, Y),
    "MoLinE": (ML, PL, Y),
    "MoLogE": (MG, PG, Y),
    "MoPoE": (MP, PP, Y),
}


@pytest.mark.parametrize("model_name", sorted(DEVICE_CASES))
def test_eager_em_step_on_device_arrays_copies_nothing_to_the_host(model_name):
    model, params, y = DEVICE_CASES[model_name]
    emjax.em_step(model, params, X, y)  # compile first: compilation may read constants
    with jax.transfer_guard_device_to_host("disallow"):
        new = emjax.em_step(model, params, X, y)
        emjax.neg_log_likelihood(model, new, X, y)
        emjax.mirror_descent_step(model, params, X, y, 0.5)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(new))


def test_eager_value_checks_never_call_np_asarray_on_device_data(monkeypatch):
    import emjax._validation as validation

    calls = []
    real = np.asarray

    def spy(value, *args, **kwargs):
        if isinstance(value, jax.Array):
            calls.append(value.shape)
        return real(value, *args, **kwargs)

    emjax.em_step(ML, PL, X, Y)
    monkeypatch.setattr(validation.np, "asarray", spy)
    emjax.em_step(ML, PL, X, Y)
    emjax.em_step(LOG, P, X, Y)
    assert calls == []
    with pytest.raises(ValueError, match="x must be finite"):  # on failure only, for the detailed message
        emjax.em_step(LOG, P, X.at[0, 0].set(jnp.nan), Y)


@pytest.mark.parametrize(
    ("model_name", "bad_y", "match"),
    [
        (
            "SymMoLogE",
            Y.at[0].set(2.0),
            r"y must hold binary labels in \{0, 1\} for SymMoLogE; got values such as \[2\.\]",
        ),
        ("MoLogE", Y.at[1].set(3.0), r"y must hold class labels in \{0, ..., 2\}; got values such as \[3\.\]"),
        ("MoPoE", Y.at[2].set(-1.0), r"y must hold counts \(integers >= 0\) for Poisson experts"),
        ("MoLinE", Y.at[3].set(jnp.nan), "y must be finite"),
    ],
)
def test_bad_labels_raise_value_errors_eagerly_and_at_run_time_under_jit(model_name, bad_y, match):
    model, params, _ = DEVICE_CASES[model_name]
    with pytest.raises(ValueError, match=match):
        emjax.em_step(model, params, X, bad_y)
    with pytest.raises(ValueError, match=match):  # NumPy labels: checked on the host, same message
        emjax.em_step(model, params, X, np.asarray(bad_y))
    run = jax.jit(lambda x, y: emjax.em_step(model, params, x, y))
    jax.block_until_ready(run(X, Y))
    with pytest.raises(Exception, match=match.split(";")[0].split(" got")[0]):
        jax.block_until_ready(run(X, bad_y))


def test_nonfinite_and_nonpositive_parameters_raise_eagerly_and_under_jit():
    bad_sigma = _moe(PL, sigma=jnp.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="params.sigma must be positive"):
        emjax.em_step(ML, bad_sigma, X, Y)
    run = jax.jit(lambda beta: emjax.em_step(LIN, _sym(beta=beta), X, Y))
    jax.block_until_ready(run(P.beta))
    with pytest.raises(Exception, match="params.beta must be finite"):
        jax.block_until_ready(run(P.beta.at[0].set(jnp.inf)))


def test_unguarded_skips_value_checks_on_jax_arrays_but_not_static_checks():
    out = emjax.em_step.unguarded(LIN, P, X.at[0, 0].set(jnp.nan), Y)  # emjax's loops: no raise on values
    assert not bool(jnp.all(jnp.isfinite(out.beta)))
    with pytest.raises(ValueError, match=r"x must have shape \(n, d\)"):
        emjax.em_step.unguarded(LIN, P, jnp.ones(4), Y)


def test_repeated_eager_calls_compile_once():
    data = [(X + i, Y) for i in range(3)]
    emjax.em_step(LIN, P, *data[0])
    with jax.log_compiles():
        import logging

        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logger = logging.getLogger("jax")
        logger.addHandler(handler)
        try:
            for x, y in data:
                emjax.em_step(LIN, P, x, y)
        finally:
            logger.removeHandler(handler)
    assert not [r for r in records if "Compiling" in r.getMessage()], [r.getMessage() for r in records]
