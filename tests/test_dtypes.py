"""Issue 13, item 6: one dtype rule (emjax._dtypes), so precision never changes silently.

Integer data under x64 used to run in float32, a float32 x with a float64 y ran entirely in float32,
and float16/bfloat16 were promoted without a word. The rule: floating inputs (x, y, parameters) are
promoted together, at least float32; integer and boolean inputs do not vote, and when nothing is
floating the working dtype is JAX's default float; half precision is refused.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from emjax._dtypes import working_dtype

F32, F64 = jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)


@pytest.mark.parametrize(
    ("dtypes", "expected"),
    [
        (("int64", "int64"), F64),  # x64 is on in the suite: integers take the default float
        (("int32", "bool"), F64),
        (("float32", "int64"), F32),  # labels and counts do not raise the precision of float32 features
        (("float32", "float64"), F64),
        (("float64", "float32"), F64),
        (("float32", "float32"), F32),
        (("int64", "float32"), F32),
    ],
)
def test_working_dtype_rule(dtypes, expected):
    assert working_dtype(*[np.zeros(3, dtype) for dtype in dtypes]) == expected


def test_default_float_follows_x64():
    # x64 off: integers alone give float32 (checked in a subprocess: the flag is process-wide).
    import subprocess
    import sys

    code = (
        "import numpy as np; from emjax._dtypes import working_dtype; "
        "print(working_dtype(np.zeros(2, 'int64'), np.zeros(2, 'int64')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "float32"


def _moline_problem(n=400):
    model = emjax.MoLinE(2)
    truth = emjax.testing.random_params(model, jax.random.key(0), d=3)
    x, y = emjax.sample(model, truth, jax.random.key(1), n)
    return model, truth, x, y


def test_integer_features_run_in_float64_under_x64():
    model, truth, x, y = _moline_problem()
    x_int = jnp.round(3 * x).astype(jnp.int32)
    start = emjax.init_params(model, jax.random.key(2), x_int, jnp.round(y).astype(jnp.int32))
    assert start.gate.dtype == F64
    assert emjax.em_step(model, truth, x_int, y).gate.dtype == F64


def test_float64_labels_promote_float32_features():
    model, truth, x, y = _moline_problem()
    x32 = x.astype(jnp.float32)
    truth32 = jax.tree_util.tree_map(lambda leaf: leaf.astype(jnp.float32), truth)
    assert emjax.neg_log_likelihood(model, truth32, x32, y).dtype == F64
    assert emjax.em_step(model, truth32, x32, y).sigma.dtype == F64
    assert emjax.init_params(model, jax.random.key(2), x32, y).gate.dtype == F64
    assert emjax.fit_restarts(model, emjax.em(), jax.random.key(2), x32, y, 2, 3).params.gate.dtype == F64
    everything32 = emjax.fit_restarts(model, emjax.em(), jax.random.key(2), x32, y.astype(jnp.float32), 2, 3)
    assert everything32.params.gate.dtype == F32


def test_the_same_data_in_a_wider_dtype_gives_the_same_fit():
    # float32 x and y promoted to float64 by a float64 start equal the float64 fit of the float32 values.
    model, truth, x, y = _moline_problem()
    x32, y32 = x.astype(jnp.float32), y.astype(jnp.float32)
    mixed = emjax.fit(model, emjax.em(), truth, x32, y32, 10, tol=None)
    wide = emjax.fit(model, emjax.em(), truth, x32.astype(F64), y32.astype(F64), 10, tol=None)
    np.testing.assert_array_equal(np.asarray(mixed.params.experts), np.asarray(wide.params.experts))


@pytest.mark.parametrize("half", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("argument", ["x", "y", "params"])
def test_half_precision_is_refused_with_the_argument_named(half, argument):
    model, truth, x, y = _moline_problem(50)
    if argument == "x":
        x = x.astype(half)
    elif argument == "y":
        y = y.astype(half)
    else:
        truth = jax.tree_util.tree_map(lambda leaf: leaf.astype(half), truth)
    with pytest.raises(ValueError, match=rf"{argument}.* has dtype .*float16.*float32 or float64"):
        emjax.em_step(model, truth, x, y)
