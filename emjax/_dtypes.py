r"""The dtype rule: which floating dtype a computation runs in.

Every public function computes in one floating dtype, the *working dtype*, found from its data and
parameters alone (never from how the call is batched):

1. the floating inputs (``x``, ``y``, every parameter leaf) are promoted together, and the result
   is at least float32: a float32 ``x`` with a float64 ``y`` runs in float64, everything float32
   runs in float32;
2. integer and boolean inputs (counts, class labels, integer features) carry no precision of their
   own and do not vote; when no input is floating, the working dtype is JAX's default float
   (float64 under ``jax_enable_x64``, float32 otherwise), so integer data is never silently
   computed in float32 when the user asked for 64-bit floats.

Half precision (float16, bfloat16) is refused with a ``ValueError`` (see :func:`check_precision`):
EM's M-steps solve linear systems and accumulate sums over n rows, which half precision cannot
carry (a relative precision of 1e-3 or worse); cast to float32 first.

Example:
    >>> import numpy as np, jax.numpy as jnp
    >>> working_dtype(np.zeros((2, 2), np.float32), np.zeros(2, np.float32))
    dtype('float32')
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

HALF_PRECISION = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


def default_float() -> np.dtype:
    """JAX's default floating dtype now: float64 under ``jax_enable_x64``, float32 otherwise."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def working_dtype(*values) -> np.dtype:
    """The working dtype of the arrays and pytrees ``values`` (None leaves are skipped); see the module notes."""
    dtypes = [jnp.result_type(leaf) for value in values for leaf in jax.tree_util.tree_leaves(value)]
    floating = [dtype for dtype in dtypes if jnp.issubdtype(dtype, jnp.floating)]
    if not floating:
        return default_float()
    return jnp.result_type(*floating, jnp.float32)


def check_precision(value, name: str) -> None:
    """Refuse half-precision (float16, bfloat16) arrays with a message that names ``name``."""
    dtype = jnp.result_type(value)
    if dtype in HALF_PRECISION:
        raise ValueError(
            f"{name} has dtype {dtype}: emjax computes in float32 or float64 (half precision cannot carry the "
            f"M-steps' linear solves and sums over rows); cast it first, e.g. {name.split('.')[0]}.astype(jnp.float32)"
        )


def as_data(value, name: str = "x"):
    """Python lists and tuples, and pandas (or polars) frames and series, as NumPy arrays; anything else
    (jax and NumPy arrays, tracers, None, invalid input that the checks then refuse) is returned as is.

    The one conversion of user data at the boundary (:func:`emjax._validation.data_arguments`). It keeps
    the data's own dtype (a list of ints stays integer, as class labels and counts must be; the dtype
    rule above then picks the working float dtype), copies nothing that is already an array, and
    needs no pandas: a frame is recognised by its ``to_numpy`` method.

    Raises:
        ValueError: a ragged list (rows of different lengths), which is no array.

    Example:
        >>> as_data([[1, 2], [3, 4]]).dtype.kind, as_data([0.5, 1.0]).shape
        ('i', (2,))
    """
    if isinstance(value, (list, tuple)):
        try:
            return np.asarray(value)
        except ValueError as error:  # ragged rows: numpy's message talks of "inhomogeneous shape"
            raise ValueError(f"{name} must be rectangular (every row the same length); got a ragged list") from error
    if not isinstance(value, (np.ndarray, jax.Array)) and callable(getattr(value, "to_numpy", None)):
        return np.asarray(value.to_numpy())
    return value


def as_arrays(params, x, y=None):
    """Cast parameters, features and labels to their working dtype (:mod:`emjax._dtypes`)."""
    dtype = working_dtype(params, x, y)
    params = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, dtype), params)
    x = jnp.asarray(x, dtype)
    if y is None:
        return params, x
    return params, x, jnp.asarray(y, dtype)
