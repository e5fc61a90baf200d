"""Checks at the Python boundary: clear ``ValueError`` messages before anything is traced.

What is accepted:

* data: ``x`` a jax or NumPy array of real numbers (integer or floating; integers are converted to
  the working floating dtype), ``y`` the same or booleans; bool or complex features, complex, string
  or object labels, and Python lists are refused;
* parameters: arrays of real numbers (``SymParams`` and ``MoEParams`` convert lists themselves);
* step sizes, tolerances: real scalars (not bool), finite, step sizes > 0, tolerances >= 0;
* keys: ``jax.random.key(seed)`` or a legacy ``jax.random.PRNGKey(seed)``.

Shape and dtype checks always run (they are static, even on tracers). Value checks (finiteness,
label sets, signs) need concrete arrays, so they run only when the argument is not a tracer.
Inside a user's ``jit``/``vmap``/``grad`` the data of a public function (``x`` and ``y``) pass
through :func:`guard_finite` instead, an ``equinox.error_if`` that raises at run time when they
hold NaN or Inf (``EQX_ON_ERROR=nan`` turns the error into NaN outputs, ``EQX_ON_ERROR=off``
removes the check). Traced parameters and labels are trusted, as jax trusts its inputs: a
non-finite parameter gives non-finite outputs. The loops (:func:`emjax.fit`,
:func:`emjax.fit_restarts`) never raise on values: they report ``Status.nonfinite``.
"""

from __future__ import annotations

import functools
import inspect
import reprlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._dtypes import check_precision


def is_concrete(value) -> bool:
    """True when ``value`` holds data this process can read now: not an abstract tracer, and not a
    global array spanning other processes' devices (each process validates its own rows when it
    places them, in :func:`emjax.parallel.shard_rows`)."""
    if isinstance(value, jax.core.Tracer):
        return False
    return getattr(value, "is_fully_addressable", True)


def check_array(value, name: str) -> None:
    """``value`` must be an array (jax, NumPy or a tracer), not a list, scalar or other object."""
    if not (hasattr(value, "shape") and hasattr(value, "dtype")):
        raise ValueError(f"{name} must be a jax or NumPy array; got {type(value).__name__}")


def check_real(value, name: str, allow_bool: bool = False) -> None:
    """``value`` must hold real numbers: an integer or floating dtype (and bool if ``allow_bool``)."""
    if value is None or isinstance(value, (str, bytes)):
        raise ValueError(f"{name} must hold real numbers; got {type(value).__name__} {reprlib.repr(value)}")
    try:
        dtype = jnp.result_type(value)
    except TypeError as error:
        got = f"dtype {value.dtype}" if hasattr(value, "dtype") else f"{type(value).__name__} {reprlib.repr(value)}"
        raise ValueError(f"{name} must hold real numbers; got {got}") from error
    real = jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
    if not (real or (allow_bool and jnp.issubdtype(dtype, jnp.bool_))):
        kinds = "real numbers or booleans" if allow_bool else "real numbers (an integer or floating dtype)"
        raise ValueError(f"{name} must hold {kinds}; got dtype {dtype}")
    check_precision(value, name)


def check_int(value, name: str, minimum: int) -> None:
    """``value`` fixes a shape or a loop length: a Python int (not bool) >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be a Python int >= {minimum}; got {value!r}")


def check_key(key, name: str = "key") -> None:
    """A ``jax.random`` key: a typed key array of shape () or a legacy uint32 key of shape (2,)."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{name} must be a single jax.random key (shape ()); got a key array of shape {key.shape}")
        return
    if dtype is not None and dtype == jnp.uint32 and tuple(key.shape) == (2,):
        return
    raise ValueError(
        f"{name} must be a jax.random key such as jax.random.key(0); got {type(key).__name__} {reprlib.repr(key)}"
    )


def shape_of(value, name: str) -> tuple[int, ...]:
    shape = getattr(value, "shape", None)
    if shape is None:
        try:
            shape = np.shape(value)
        except Exception as error:  # pragma: no cover - exotic inputs
            raise ValueError(f"{name} must be an array; got {type(value).__name__}") from error
    return tuple(shape)


def check_finite(value, name: str) -> None:
    """Raise if a concrete array holds NaN or infinite entries."""
    if is_concrete(value) and not np.all(np.isfinite(np.asarray(value))):
        raise ValueError(f"{name} must be finite; it contains NaN or infinite values")


def check_features(x) -> tuple[int, int]:
    """Validate the design matrix ``x`` of shape (n, d) and return (n, d)."""
    check_array(x, "x")
    shape = shape_of(x, "x")
    if len(shape) != 2:
        raise ValueError(f"x must have shape (n, d) (rank 2); got shape {shape}")
    n, d = shape
    if n < 1 or d < 1:
        raise ValueError(f"x must have at least one row and one column; got shape {shape}")
    check_real(x, "x")
    check_finite(x, "x")
    return n, d


def check_labels(y, n: int) -> None:
    """Validate the response vector ``y`` of shape (n,)."""
    check_array(y, "y")
    shape = shape_of(y, "y")
    if len(shape) != 1:
        raise ValueError(f"y must have shape (n,) (rank 1); got shape {shape}")
    if shape[0] != n:
        raise ValueError(f"y must have one entry per row of x: x has n={n} rows, y has {shape[0]}")
    check_real(y, "y", allow_bool=True)
    check_finite(y, "y")


def check_params(params, d: int, name: str = "params") -> None:
    """Validate symmetric parameters against the feature dimension ``d`` of x."""
    for field in ("w", "beta"):
        shape = shape_of(getattr(params, field), f"{name}.{field}")
        if shape != (d,):
            raise ValueError(
                f"{name}.{field} must have shape (d,) = ({d},) to match x of shape (n, {d}); "
                f"got shape {shape}"
            )
        check_real(getattr(params, field), f"{name}.{field}")
        check_finite(getattr(params, field), f"{name}.{field}")


def check_real_scalar(value, name: str) -> None:
    """A hyperparameter (step size, tolerance, scale): a real scalar, not a bool, a string or None."""
    if value is None or isinstance(value, bool):
        raise ValueError(f"{name} must be a real number; got {value!r}")
    check_real(value, name)
    if shape_of(value, name) != ():
        raise ValueError(f"{name} must be a scalar; got shape {shape_of(value, name)}")


def check_step_size(step_size, name: str = "step_size", per_block: bool = True) -> None:
    """A step size must be a finite positive scalar (or, with ``per_block``, a pytree of them)."""
    leaves = jax.tree_util.tree_leaves(step_size) if per_block else [step_size]
    if per_block and not leaves:
        raise ValueError(f"{name} must be a positive number; got {step_size!r}")
    for leaf in leaves:
        check_real_scalar(leaf, name)
        if is_concrete(leaf) and not (np.isfinite(np.asarray(leaf)) and np.asarray(leaf) > 0):
            raise ValueError(f"{name} must be a finite positive number; got {np.asarray(leaf)}")


def check_tolerance(value, name: str) -> None:
    """A tolerance is a finite real scalar >= 0."""
    check_real_scalar(value, name)
    if is_concrete(value) and not (np.isfinite(np.asarray(value)) and np.asarray(value) >= 0):
        raise ValueError(f"{name} must be a finite number >= 0; got {np.asarray(value)}")


def check_scale(value, name: str, positive: bool) -> None:
    """A scale or norm of a generator: a finite real scalar, > 0 (``positive``) or >= 0; traced values pass."""
    check_real_scalar(value, name)
    if is_concrete(value):
        number = np.asarray(value)
        if not (np.isfinite(number) and (number > 0 if positive else number >= 0)):
            expected = "a finite number > 0" if positive else "a finite number >= 0"
            raise ValueError(f"{name} must be {expected}; got {number}")


def check_inner_steps(inner_steps) -> None:
    """The number of inner steps fixes a loop length: a Python int >= 1."""
    check_int(inner_steps, "inner_steps", 1)


def guard_finite(value, name: str):
    """``value`` unchanged, with a run-time check (``equinox.error_if``) that it holds no NaN or Inf.

    For traced data, whose values :func:`check_finite` cannot see: inside ``jit`` the program
    raises when the check fails (under ``vmap``, when any lane fails); ``EQX_ON_ERROR=nan`` or
    ``off`` changes that as documented by equinox."""
    if not jnp.issubdtype(jnp.result_type(value), jnp.inexact):
        return value
    message = f"{name} must be finite; it contains NaN or infinite values"
    # The check rides on a scalar zero added to ``value``: equinox's error branch on the whole
    # array would make XLA gather row-sharded data onto every device.
    zero = eqx.error_if(jnp.zeros((), jnp.result_type(value)), ~jnp.all(jnp.isfinite(value)), message)
    return value + zero


DATA = ("x", "y")


def public(check, traced: tuple[str, ...] = ()):
    """Make ``fn`` a public entry point: ``check`` its arguments in Python, then run it compiled.

    ``check`` receives the bound arguments by name and raises ``ValueError`` on bad input. The
    function then runs under ``equinox.filter_jit`` (cached per shape, dtype and static value),
    so eager calls compile once and calls inside a user's ``jit``/``vmap``/``grad`` just inline.
    Arguments named in ``traced`` (step sizes) are turned into arrays first, so new values reuse
    the compilation instead of being baked in as constants. Traced data (``x``, ``y``) pass
    through :func:`guard_finite`.

    The wrapper's ``unguarded`` attribute is the same function without that run-time guard (the
    Python checks still run): emjax's own loops call it, because they report non-finite data
    through ``Status.nonfinite`` instead of raising.
    """

    def decorate(fn):
        signature = inspect.signature(fn)
        compiled = eqx.filter_jit(fn)

        def call(guarded: bool, args, kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            check(**bound.arguments)
            for name in traced:
                bound.arguments[name] = jax.tree_util.tree_map(jnp.asarray, bound.arguments[name])
            if guarded:
                for name in DATA:
                    value = bound.arguments.get(name)
                    if value is not None and not is_concrete(value):
                        bound.arguments[name] = guard_finite(value, name)
            return compiled(*bound.args, **bound.kwargs)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return call(True, args, kwargs)

        @functools.wraps(fn)
        def unguarded(*args, **kwargs):
            return call(False, args, kwargs)

        wrapper.unguarded = unguarded
        return wrapper

    return decorate
