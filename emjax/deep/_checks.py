"""Argument checks for :mod:`emjax.deep`: ``ValueError`` at the Python boundary, before tracing.

Shape checks always run (shapes are static, even on tracers); value checks (finite features,
labels in range) run only on concrete arrays, as in :mod:`emjax._validation`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._dtypes import working_dtype
from .._validation import check_features, check_labels, is_concrete
from ._model import DeepMoE, expert_logits, gate_logits


def check_model(model) -> None:
    if not isinstance(model, DeepMoE):
        raise ValueError(f"model must be an emjax.deep.DeepMoE; got {type(model).__name__}")


def check_class_labels(y, n: int, num_classes: int) -> None:
    """y of shape (n,), holding integers in {0, ..., C-1} (checked when concrete)."""
    check_labels(y, n)
    if is_concrete(y):
        values = np.asarray(y)
        bad = values[(values != np.round(values)) | (values < 0) | (values >= num_classes)]
        if bad.size:
            raise ValueError(f"y must hold class labels in {{0, ..., {num_classes - 1}}}; got values such as {bad[:3]}")


def check_data(model, x, y=None) -> tuple[int, int]:
    """Validate (model, x[, y]) and that the gate and experts accept rows of x; returns (n, d)."""
    check_model(model)
    n, d = check_features(x)
    if y is not None:
        check_class_labels(y, n, model.num_classes)
    dtype = getattr(x, "dtype", None) or np.asarray(x).dtype
    batch = jax.ShapeDtypeStruct((1, d), jnp.result_type(dtype, jnp.float32))  # one row, shapes only
    try:
        gate_shape = eqx.filter_eval_shape(gate_logits, model, batch).shape
        expert_shape = eqx.filter_eval_shape(expert_logits, model, batch).shape
    except Exception as error:  # noqa: BLE001 - any failure here means the networks do not take (d,) inputs
        raise ValueError(
            f"the gate and experts must map x of shape (d,) = ({d},) to logits; calling them failed: "
            f"{type(error).__name__}: {error}"
        ) from error
    if gate_shape != (1, model.num_experts):
        raise ValueError(
            f"the gate must map x of shape ({d},) to {model.num_experts} logits; got shape {gate_shape[1:]}"
        )
    if expert_shape != (1, model.num_experts, model.num_classes):
        raise ValueError(
            f"each expert must map x of shape ({d},) to {model.num_classes} logits; "
            f"the experts gave shape {expert_shape[1:]} (expected ({model.num_experts}, {model.num_classes}))"
        )
    return n, d


def check_count(value, name: str, minimum: int = 1) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be a Python int >= {minimum} (it fixes a loop length or shape); got {value!r}")


def check_batch_size(batch_size, n: int) -> None:
    if batch_size is None:
        return
    check_count(batch_size, "batch_size")
    if batch_size > n:
        raise ValueError(f"batch_size must be at most the number of samples n = {n}; got {batch_size}")


def check_gamma(gamma, n: int, k: int) -> None:
    shape = tuple(np.shape(gamma))
    if shape != (n, k):
        raise ValueError(f"gamma must have shape (n, K) = ({n}, {k}); got {shape}")


def as_working(model: DeepMoE, x, y=None):
    """x in the working dtype (that of x and the parameters, at least float32); y as int32."""
    dtype = working_dtype(x, jax.ShapeDtypeStruct((), model.dtype))
    x = jnp.asarray(x, dtype)
    if y is None:
        return x
    return x, jnp.asarray(y).astype(jnp.int32)
