"""Checks at the Python boundary: clear ``ValueError`` messages before anything is traced.

Shape checks always run (shapes are static, even on tracers). Value checks (finiteness,
label sets) need concrete arrays, so they run only when the argument is not a tracer: a
function called inside a user's ``jit`` or ``vmap`` trusts its inputs, as jax itself does.
"""

from __future__ import annotations

import functools
import inspect

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(value) -> bool:
    """True when ``value`` holds data this process can read now: not an abstract tracer, and not a
    global array spanning other processes' devices (each process validates its own rows when it
    places them, in :func:`emjax.parallel.shard_rows`)."""
    if isinstance(value, jax.core.Tracer):
        return False
    return getattr(value, "is_fully_addressable", True)


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
    shape = shape_of(x, "x")
    if len(shape) != 2:
        raise ValueError(f"x must have shape (n, d) (rank 2); got shape {shape}")
    n, d = shape
    if n < 1 or d < 1:
        raise ValueError(f"x must have at least one row and one column; got shape {shape}")
    if not jnp.issubdtype(jnp.result_type(x), jnp.number):
        raise ValueError(f"x must hold numbers; got dtype {jnp.result_type(x)}")
    check_finite(x, "x")
    return n, d


def check_labels(y, n: int) -> None:
    """Validate the response vector ``y`` of shape (n,)."""
    shape = shape_of(y, "y")
    if len(shape) != 1:
        raise ValueError(f"y must have shape (n,) (rank 1); got shape {shape}")
    if shape[0] != n:
        raise ValueError(f"y must have one entry per row of x: x has n={n} rows, y has {shape[0]}")
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
        check_finite(getattr(params, field), f"{name}.{field}")


def check_step_size(step_size, name: str = "step_size") -> None:
    """A step size must be a finite positive scalar (or a pytree of them)."""
    for leaf in jax.tree_util.tree_leaves(step_size):
        if shape_of(leaf, name) != ():
            raise ValueError(f"{name} must be a scalar; got shape {shape_of(leaf, name)}")
        if is_concrete(leaf) and not (np.isfinite(np.asarray(leaf)) and np.asarray(leaf) > 0):
            raise ValueError(f"{name} must be a finite positive number; got {np.asarray(leaf)}")


def check_tolerance(value, name: str) -> None:
    """A tolerance is a finite scalar >= 0."""
    if shape_of(value, name) != ():
        raise ValueError(f"{name} must be a scalar; got shape {shape_of(value, name)}")
    if is_concrete(value) and not (np.isfinite(np.asarray(value)) and np.asarray(value) >= 0):
        raise ValueError(f"{name} must be a finite number >= 0; got {np.asarray(value)}")


def check_inner_steps(inner_steps) -> None:
    """The number of inner steps fixes a loop length: a Python int >= 1."""
    if not isinstance(inner_steps, int) or isinstance(inner_steps, bool) or inner_steps < 1:
        raise ValueError(f"inner_steps must be a Python int >= 1; got {inner_steps!r}")


def public(check, traced: tuple[str, ...] = ()):
    """Make ``fn`` a public entry point: ``check`` its arguments in Python, then run it compiled.

    ``check`` receives the bound arguments by name and raises ``ValueError`` on bad input. The
    function then runs under ``equinox.filter_jit`` (cached per shape, dtype and static value),
    so eager calls compile once and calls inside a user's ``jit``/``vmap``/``grad`` just inline.
    Arguments named in ``traced`` (step sizes) are turned into arrays first, so new values reuse
    the compilation instead of being baked in as constants.
    """

    def decorate(fn):
        signature = inspect.signature(fn)
        compiled = eqx.filter_jit(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            check(**bound.arguments)
            for name in traced:
                bound.arguments[name] = jax.tree_util.tree_map(jnp.asarray, bound.arguments[name])
            return compiled(*bound.args, **bound.kwargs)

        return wrapper

    return decorate
