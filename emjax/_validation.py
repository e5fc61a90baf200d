"""Checks at the Python boundary: clear ``ValueError`` messages, and no host copy of device data.

What is accepted:

* data: ``x`` a jax or NumPy array of real numbers (integer or floating; integers are converted to
  the working floating dtype), ``y`` the same or booleans; Python lists (and tuples) and pandas
  DataFrames and Series are accepted too, converted once to NumPy arrays at the boundary
  (:func:`data_arguments`, :func:`emjax._dtypes.as_data`) with their own dtype, then checked like
  any NumPy array; bool or complex features, complex, string or object labels and ragged lists are
  refused;
* parameters: arrays of real numbers (``SymParams`` and ``MoEParams`` convert lists themselves);
* step sizes, tolerances: real scalars (not bool), finite, step sizes > 0, tolerances >= 0;
* keys: ``jax.random.key(seed)`` or a legacy ``jax.random.PRNGKey(seed)``.

Two kinds of checks (issue 14, "checks at the boundary only"):

* **static** checks (types, shapes, dtypes, Python ints) always run in Python, once per call, even
  on tracers: they read no array values;
* **value** checks (finiteness, label sets, signs) go through :func:`check_values`. Host data (NumPy
  arrays, Python numbers) are checked in Python right away: they are on the host already. A jax
  array, concrete or traced, is never copied to the host: inside a :func:`public` entry point its
  check is compiled into the function itself, an ``equinox.error_if`` on a reduction fused into
  the computation (see :func:`public`). Outside one (model constructors, solver factories, the
  loops' one-off entry checks) a concrete jax array is read on the host and a tracer is trusted.

The loops (:func:`emjax.fit`, :func:`emjax.fit_restarts`) never raise on traced values: they report
``Status.nonfinite``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import reprlib
import threading
import typing

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._dtypes import as_data, check_precision

DATA_NAMES = ("x", "y", "x_val", "y_val", "weights")
"""The names of the data arguments that :func:`data_arguments` (and :func:`public`) convert."""


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


# --------------------------------------------------------------------------- value checks
# A predicate ``bad(values, *args)`` marks the entries that fail; it must work on NumPy and jax arrays
# alike (the same code runs on the host for host data and inside the compiled function for jax arrays)
# and be a module-level function: with its ``args`` and message it is a static, hashable part of the
# compiled program, so a new call with the same kinds of arguments reuses the compilation.


def nonfinite(values):
    """NaN or infinite entries."""
    return ~_xp(values).isfinite(values)


def not_binary(values):
    """Entries other than 0 and 1."""
    return (values != 0) & (values != 1)


def not_count(values):
    """Entries that are not integers >= 0."""
    return (values != _xp(values).round(values)) | (values < 0)


def not_class_label(values, num_classes):
    """Entries that are not integers in {0, ..., num_classes - 1}."""
    return (values != _xp(values).round(values)) | (values < 0) | (values >= num_classes)


def not_positive(values):
    """Entries <= 0 (NaN counts as bad)."""
    return ~(values > 0)


def not_open_unit(values):
    """Entries outside the open interval (0, 1) (NaN counts as bad)."""
    return ~((values > 0) & (values < 1))


def not_finite_positive(values):
    """Entries that are not finite and > 0."""
    return ~(_xp(values).isfinite(values) & (values > 0))


def not_finite_nonnegative(values):
    """Entries that are not finite and >= 0."""
    return ~(_xp(values).isfinite(values) & (values >= 0))


def not_positive_total(values):
    """The whole array, when its sum is not > 0 (one flag)."""
    return ~(_xp(values).sum(values) > 0)


def _xp(values):
    return np if isinstance(values, (np.ndarray, np.generic)) else jnp


def _is_host(value) -> bool:
    """Data already on the host: NumPy arrays and scalars, Python numbers."""
    return isinstance(value, (np.ndarray, np.generic, int, float))


def _numbers(values):
    """Booleans as small integers, so that every predicate sees numbers."""
    dtype = values.dtype
    return values.astype(np.int8) if dtype == np.bool_ else values


def _offending(values, mask, show: str) -> str:
    if show == "value":
        return f"; got {values}"
    if show == "examples":
        return f"; got values such as {values[mask][:3]}"
    return ""


class _Check(typing.NamedTuple):
    value: object
    bad: object
    args: tuple
    message: str
    show: str

    @property
    def spec(self):
        """The static part, compiled into the program: predicate, its arguments, message."""
        return (self.bad, self.args, self.message)

    def host_error(self) -> ValueError:
        """The ``ValueError`` for a failed check, read on the host (only once it has failed)."""
        if not is_concrete(self.value):
            return ValueError(self.message)
        values = np.asarray(self.value)
        mask = np.asarray(self.bad(_numbers(values), *self.args))
        return ValueError(self.message + _offending(values, mask, self.show))


class _Collector:
    """The value checks of one call of a public function, to be compiled into it (``enabled``) or
    dropped (``unguarded``)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.checks: list[_Check] = []


_local = threading.local()


@contextlib.contextmanager
def _collecting(enabled: bool):
    previous = getattr(_local, "collector", None)
    collector = _local.collector = _Collector(enabled)
    try:
        yield collector
    finally:
        _local.collector = previous


def check_values(value, bad, message: str, *args, show: str = "examples") -> None:
    """Raise ``ValueError(message)`` when ``bad(value, *args)`` marks any entry of ``value``.

    Host data (NumPy, Python numbers) are checked here. A jax array is not read: inside a
    :func:`public` entry point the check is compiled into the function (``equinox.error_if``) and
    fails when the function runs; elsewhere a concrete jax array is read on the host and a tracer
    is trusted. ``show`` says what the message adds on failure: ``"examples"`` (up to three bad
    entries), ``"value"`` (the whole value, for scalars) or ``"none"``.
    """
    check = _Check(value, bad, tuple(args), message, show)
    if _is_host(value):
        values = np.asarray(value)
        if np.any(bad(_numbers(values), *args)):
            raise check.host_error()
        return
    collector = getattr(_local, "collector", None)
    if collector is not None:
        if collector.enabled:
            collector.checks.append(check)
        return
    if is_concrete(value) and np.any(bad(_numbers(np.asarray(value)), *args)):
        raise check.host_error()


def check_finite(value, name: str) -> None:
    """Raise if ``value`` holds NaN or infinite entries (see :func:`check_values` for when)."""
    if jnp.issubdtype(jnp.result_type(value), jnp.inexact):
        check_values(value, nonfinite, f"{name} must be finite; it contains NaN or infinite values", show="none")


def _failed_checks(specs, values):
    """One boolean per value check: True where the check failed (computed where the data are)."""
    return jnp.stack(
        [jnp.any(bad(_numbers(value), *args)) for (bad, args, _), value in zip(specs, values, strict=True)]
    )


def _check_zero(specs, values):
    """A scalar int32 zero carrying one ``equinox.branched_error_if`` over the value checks.

    The error rides on a scalar: an error branch on whole arrays would make XLA gather row-sharded
    data onto every device."""
    failed = _failed_checks(specs, values)
    messages = [message for _, _, message in specs]
    return eqx.branched_error_if(jnp.zeros((), jnp.int32), jnp.any(failed), jnp.argmax(failed), messages)


def _raise_if_failed(out, specs, values):
    """``out`` with the compiled value checks attached: every numeric output leaf depends on the checks'
    scalar zero (``leaf - 0``, exact, signed zeros included), so they cannot be removed."""
    zero = _check_zero(specs, values)

    def attach(leaf):
        if not isinstance(leaf, jax.Array) or not (
            jnp.issubdtype(leaf.dtype, jnp.number) or jnp.issubdtype(leaf.dtype, jnp.bool_)
        ):
            return leaf
        if jnp.issubdtype(leaf.dtype, jnp.bool_):
            return leaf | zero.astype(jnp.bool_)
        return leaf - zero.astype(leaf.dtype)

    return jax.tree_util.tree_map(attach, out)


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


def check_weights(weights, n: int, positive_total: bool = True) -> None:
    """Validate observation weights: shape (n,), finite, >= 0, with a positive sum (unless ``positive_total``
    is False: one process's share of the rows may hold only zero weights)."""
    check_array(weights, "weights")
    shape = shape_of(weights, "weights")
    if shape != (n,):
        raise ValueError(f"weights must have one entry per row of x, shape ({n},); got shape {shape}")
    check_real(weights, "weights", allow_bool=True)
    check_values(weights, not_finite_nonnegative, "weights must be finite and >= 0")
    if positive_total:
        check_values(weights, not_positive_total, "weights must have a positive sum", show="none")


def check_params(params, d: int, name: str = "params") -> None:
    """Validate symmetric parameters against the feature dimension ``d`` of x."""
    for field in ("w", "beta"):
        shape = shape_of(getattr(params, field), f"{name}.{field}")
        if shape != (d,):
            raise ValueError(
                f"{name}.{field} must have shape (d,) = ({d},) to match x of shape (n, {d}); got shape {shape}"
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
        check_values(leaf, not_finite_positive, f"{name} must be a finite positive number", show="value")


def check_tolerance(value, name: str) -> None:
    """A tolerance is a finite real scalar >= 0."""
    check_real_scalar(value, name)
    check_values(value, not_finite_nonnegative, f"{name} must be a finite number >= 0", show="value")


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


@eqx.filter_jit
def _first_failure(specs, values):
    """The index of the first failed value check, or -1 (an int32 scalar, computed where the data are)."""
    failed = _failed_checks(specs, values)
    return jnp.where(jnp.any(failed), jnp.argmax(failed), -1)


def _convert_data(arguments) -> None:
    """Replace the data arguments (:data:`DATA_NAMES`) in a bound ``arguments`` dict by :func:`as_data`."""
    for name in DATA_NAMES:
        if name in arguments:
            arguments[name] = as_data(arguments[name], name)


def data_arguments(fn):
    """Let ``fn`` take its data (arguments named ``x``, ``y``, ``x_val``, ``y_val``) as Python lists or
    pandas objects too: they are converted by :func:`emjax._dtypes.as_data` before ``fn`` runs.

    The public entry points that are not :func:`public` (the loops, the inference functions) use it;
    :func:`public` does the same conversion itself, so every function of data accepts the same inputs."""
    signature = inspect.signature(fn)
    names = [name for name in DATA_NAMES if name in signature.parameters]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        if all(isinstance(bound.arguments.get(name), (type(None), np.ndarray, jax.Array)) for name in names):
            return fn(*args, **kwargs)  # the usual case: arrays already
        _convert_data(bound.arguments)
        return fn(*bound.args, **bound.kwargs)

    return wrapper


def public(check, traced: tuple[str, ...] = ()):
    """Make ``fn`` a public entry point: ``check`` its arguments, then run it compiled.

    ``check`` receives the bound arguments by name and raises ``ValueError`` on bad input. The
    function then runs under ``equinox.filter_jit`` (cached per shape, dtype and static value),
    so eager calls compile once and calls inside a user's ``jit``/``vmap``/``grad`` just inline.
    Arguments named in ``traced`` (step sizes) are turned into arrays first, so new values reuse
    the compilation instead of being baked in as constants. Data given as Python lists or pandas
    objects are converted to NumPy arrays before anything else (as :func:`data_arguments` does).

    Checks at the boundary only (issue 14): the static checks (types, shapes, dtypes) run in
    Python, once per call. The value checks (finite data and parameters, labels the model can
    produce, σ > 0, step sizes > 0; :func:`check_values`) of host data (NumPy arrays, Python
    numbers) run in Python too; those of jax arrays never copy them to the host: they run compiled,
    as a reduction on the device (eager calls) or fused into the caller's program with one
    ``equinox.error_if`` (traced calls). What a failed value check does:

    * eager call: the checks run first as one small compiled reduction on the device that holds
      the data, and only the index of the failed check (one integer) comes back; a failure raises
      ``ValueError`` with the same message as a host check (the offending entries are read back
      only then), so ``em_step`` in a Python loop on a GPU moves nothing but the (small) results,
      and bad input never compiles the function itself;
    * inside a user's ``jit``/``vmap``/``grad``: the compiled program raises at run time (a
      ``jax.errors.JaxRuntimeError``, or ``equinox.EquinoxRuntimeError`` under
      ``equinox.filter_jit``, whose message holds the check's message; under ``vmap`` when any
      lane fails);
    * ``EQX_ON_ERROR=nan`` makes the outputs NaN instead, ``EQX_ON_ERROR=off`` removes the checks,
      as documented by equinox.

    The wrapper's ``unguarded`` attribute is the same function without the value checks on jax
    arrays (the static checks and the host-data checks still run): emjax's own loops call it,
    because they report non-finite data through ``Status.nonfinite`` instead of raising.
    """

    def decorate(fn):
        signature = inspect.signature(fn)
        compiled = eqx.filter_jit(fn)

        @eqx.filter_jit
        def compiled_checked(specs, values, args, kwargs):
            return _raise_if_failed(fn(*args, **kwargs), specs, values)

        def call(guarded: bool, args, kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            _convert_data(bound.arguments)  # lists and pandas objects as NumPy arrays (data_arguments)
            with _collecting(guarded) as collector:
                check(**bound.arguments)
            for name in traced:
                bound.arguments[name] = jax.tree_util.tree_map(jnp.asarray, bound.arguments[name])
            if not collector.checks:
                return compiled(*bound.args, **bound.kwargs)
            checks = collector.checks
            specs = tuple(c.spec for c in checks)
            values = [c.value for c in checks]
            first_failure = _first_failure(specs, values) if all(is_concrete(v) for v in values) else None
            # Concrete values under an outer trace (a user's jit of a function that closes over concrete data)
            # still give a traced index: those calls take the traced path below.
            if first_failure is not None and is_concrete(first_failure):
                # An eager call: a small compiled reduction says which check failed, if any; only that
                # index (one integer) comes to the host. Bad input then never compiles the function itself.
                index = int(first_failure)
                if index >= 0:
                    raise checks[index].host_error()
                return compiled(*bound.args, **bound.kwargs)
            data = bound.arguments.get("x")
            if isinstance(data, jax.Array) and jnp.issubdtype(data.dtype, jnp.inexact):
                # Traced: the checks ride on a scalar zero added to x, which every output depends on.
                # Placed on the input, XLA evaluates them once up front and the step's own program is
                # left as it was (measured: checks on the outputs cost ~0.1 ms per small EM step).
                bound.arguments["x"] = data + _check_zero(specs, values).astype(data.dtype)
                return compiled(*bound.args, **bound.kwargs)
            try:
                return compiled_checked(specs, values, bound.args, bound.kwargs)
            except eqx.EquinoxRuntimeError as error:
                failed = next((c for c in checks if c.message in str(error)), None)
                if failed is None:  # pragma: no cover - an error of the function itself
                    raise
                raise failed.host_error() from None

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return call(True, args, kwargs)

        @functools.wraps(fn)
        def unguarded(*args, **kwargs):
            return call(False, args, kwargs)

        wrapper.unguarded = unguarded
        return wrapper

    return decorate
