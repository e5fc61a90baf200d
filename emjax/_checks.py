"""Argument checks of the public functions of (model, params, data): ``ValueError`` at the boundary.

Built on the generic checks of :mod:`emjax._validation`; this module also knows the model and
parameter types, so a wrong type gets a ``ValueError`` that says what was expected instead of an
``AttributeError`` from deep inside.
"""

from __future__ import annotations

import jax.numpy as jnp

from ._validation import (
    check_features,
    check_finite,
    check_labels,
    check_params,
    check_real,
    check_step_size,
    check_values,
    not_positive,
    shape_of,
)
from .models import AbstractSymmetricModel, MixtureOfExperts, MoEParams, SymParams


def is_mixture(model) -> bool:
    """True for the K-expert models (softmax gate), False for the symmetric two-expert ones."""
    return isinstance(model, MixtureOfExperts)


def check_types(model, params, name: str = "params") -> None:
    """``model`` must be an emjax model and ``params`` its parameter type."""
    if isinstance(model, MixtureOfExperts):
        if not isinstance(params, MoEParams):
            raise ValueError(
                f"{name} must be an emjax.MoEParams(gate=..., experts=..., sigma=...) for "
                f"{type(model).__name__}; got {type(params).__name__}"
            )
        return
    if not isinstance(model, AbstractSymmetricModel):
        raise ValueError(
            "model must be an emjax model such as SymMoLinE(), SymMoLogE(), MoLinE(K), MoLogE(K, C) or "
            f"MoPoE(K); got {model!r}"
        )
    if not isinstance(params, SymParams):
        raise ValueError(f"{name} must be an emjax.SymParams(w=..., beta=...); got {type(params).__name__}")


def check_mixture_params(model: MixtureOfExperts, params: MoEParams, d: int, name: str = "params") -> None:
    """Shapes (K, d), (K, d[, C]), (K,) and finite values; σ > 0."""
    k = model.num_experts
    expected = {
        "gate": (k, d),
        "experts": (k,) + model.expert.coef_shape(d),
        "sigma": (k,) if model.expert.has_scale else None,
    }
    for field, shape in expected.items():
        value = getattr(params, field)
        if shape is None:
            if value is not None:
                raise ValueError(f"{name}.{field} must be None for {type(model).__name__}; got an array")
            continue
        if value is None:
            raise ValueError(f"{name}.{field} must have shape {shape} for {type(model).__name__}; got None")
        if shape_of(value, f"{name}.{field}") != shape:
            raise ValueError(
                f"{name}.{field} must have shape {shape} (K={k}, d={d} from x) for {type(model).__name__}; "
                f"got shape {shape_of(value, f'{name}.{field}')}"
            )
        check_real(value, f"{name}.{field}")
        check_finite(value, f"{name}.{field}")
    if params.sigma is not None:
        check_values(params.sigma, not_positive, f"{name}.sigma must be positive")


def check_any_params(model, params, d: int, name: str = "params") -> None:
    if is_mixture(model):
        check_mixture_params(model, params, d, name)
    else:
        check_params(params, d, name)


def check_response(model, y) -> None:
    if is_mixture(model):
        model.expert.check_labels(y)
    else:
        model.check_labels(y)


def validate(model, params, x, y=None, **_) -> None:
    """All boundary checks for a public function of (model, params, x[, y])."""
    check_types(model, params)
    n, d = check_features(x)
    check_any_params(model, params, d)
    if y is not None:
        check_labels(y, n)
        check_response(model, y)


def validate_pair(model, params, ref, x, **_) -> None:
    """Checks for functions of two parameter points (e.g. a Bregman divergence)."""
    validate(model, params, x)
    check_types(model, ref, "ref")
    check_any_params(model, ref, check_features(x)[1], "ref")


def validate_with_step(model, params, x, y, step_size, **kwargs) -> None:
    """Checks for one-step updates that take a step size."""
    validate(model, params, x, y)
    check_step_tree(model, params, step_size)
    check_trainable(model, params, kwargs.get("trainable"))


def validate_with_scalar_step(model, params, x, y, step_size, **kwargs) -> None:
    """Checks for the mirror-descent step, whose η blends whole target statistics: one number."""
    if isinstance(step_size, (SymParams, MoEParams)):
        raise ValueError(
            "step_size of a mirror-descent step must be one positive number (η blends the prior and posterior "
            f"statistics of every block at once); got a {type(step_size).__name__} of step sizes"
        )
    validate_with_step(model, params, x, y, step_size, **kwargs)


def check_step_tree(model, params, step_size, name: str = "step_size") -> None:
    """A step size: a positive scalar, or one per block, a pytree of the type of ``params`` with a
    scalar for every block that ``params`` has (and None where ``params`` has None)."""
    if isinstance(step_size, (SymParams, MoEParams)):
        expected = MoEParams if is_mixture(model) else SymParams
        if not isinstance(step_size, expected):
            raise ValueError(
                f"{name} must be a positive number or an emjax.{expected.__name__} of them (one per block) for "
                f"{type(model).__name__}; got {type(step_size).__name__}"
            )
        fields = ("gate", "experts", "sigma") if is_mixture(model) else ("w", "beta")
        for field in fields:
            step, value = getattr(step_size, field), getattr(params, field)
            if (step is None) != (value is None):
                wanted, has = ("None", "None") if value is None else ("a positive number", "set")
                raise ValueError(f"{name}.{field} must be {wanted} (params.{field} is {has})")
            if step is not None:
                check_step_size(step, f"{name}.{field}", per_block=False)
        return
    check_step_size(step_size, name, per_block=False)


def check_trainable(model, params, trainable, name: str = "trainable") -> None:
    """A mask has the type of ``params``; each field is None (= trainable) or booleans whose shape
    prefixes the parameter's ((), (K,), ... or the full shape; symmetric models: one bool per block)."""
    if trainable is None:
        return
    expected = MoEParams if is_mixture(model) else SymParams
    if not isinstance(trainable, expected):
        raise ValueError(
            f"{name} must be an emjax.{expected.__name__} of booleans (True = may change); "
            f"got {type(trainable).__name__}"
        )
    fields = ("gate", "experts", "sigma") if is_mixture(model) else ("w", "beta")
    for field in fields:
        mask, value = getattr(trainable, field), getattr(params, field)
        if mask is None:
            continue
        if value is None:
            raise ValueError(f"{name}.{field} must be None: params.{field} is None")
        mask_shape, shape = shape_of(mask, f"{name}.{field}"), shape_of(value, field)
        if not jnp.issubdtype(jnp.result_type(mask), jnp.bool_):
            raise ValueError(f"{name}.{field} must hold booleans; got dtype {jnp.result_type(mask)}")
        allowed = shape[: len(mask_shape)] if is_mixture(model) else ()
        if mask_shape != allowed:
            hint = f"() or {shape[:1]} or {shape}" if is_mixture(model) else "() (a whole block is trained or frozen)"
            raise ValueError(f"{name}.{field} must have shape {hint}; got {mask_shape}")
