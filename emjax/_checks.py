"""Argument checks of the public functions of (model, params, data): ``ValueError`` at the boundary.

Built on the generic checks of :mod:`emjax._validation`; this module also knows the model and
parameter types, so a wrong type gets a ``ValueError`` that says what was expected instead of an
``AttributeError`` from deep inside.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp

from ._validation import (
    check_features,
    check_labels,
    check_step_size,
    check_weights,
    shape_of,
)
from .models import AbstractModel, GaussianExpert, MixtureOfExperts, PoissonExpert, SymParams


def check_model(model) -> None:
    """``model`` must be an emjax model (an :class:`~emjax.models.AbstractModel`)."""
    if not isinstance(model, AbstractModel):
        raise ValueError(
            "model must be an emjax model such as SymMoLinE(), SymMoLogE(), MoLinE(K), MoLogE(K, C) or "
            f"MoPoE(K); got {model!r}"
        )


def feature_dimension(model, params, name: str = "params") -> int:
    """d read off ``params`` (its first leaf's last axis), after checking the parameter type."""
    check_model(model)
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(params)]
    if not isinstance(params, eqx.Module) or not leaves:
        model.check_params(params, 0, name)  # raises the model's own type message
    shape = shape_of(leaves[0], name)
    if len(shape) < 1 or shape[-1] < 1:
        raise ValueError(f"{name} must carry the feature dimension d >= 1; got shape {shape}")
    return shape[-1]


def check_model_params(model, params, d: int | None = None, name: str = "params") -> None:
    """``params`` fits ``model`` (its type, shapes for d features, finite values)."""
    check_model(model)
    model.check_params(params, feature_dimension(model, params, name) if d is None else d, name)


def validate(model, params, x, y=None, weights=None, **_) -> None:
    """All boundary checks for a public function of (model, params, x[, y][, weights])."""
    check_model(model)
    n, d = check_features(x)
    model.check_params(params, d)
    if y is not None:
        check_labels(y, n)
        model.check_labels(y)
    if weights is not None:
        check_model_weights(model)
        check_weights(weights, n)


# Families whose natural parameter reads the linear predictor x·β_k (a (d,) coefficient vector), so that an
# offset with coefficient 1 adds o_n to it. A softmax classifier's offset would be added to every class logit
# alike and cancel.
OFFSET_FAMILIES = (GaussianExpert, PoissonExpert)


def check_covariates_model(model, has_offset: bool) -> None:
    """Separate gate and expert covariates (:func:`emjax.covariates`) need a K-expert model, and an offset
    experts with a linear predictor."""
    if not isinstance(model, MixtureOfExperts):
        raise ValueError(
            "separate gate and expert covariates need a K-expert model (emjax.MoLinE, MoLogE, MoPoE or a "
            f"MixtureOfExperts); got {type(model).__name__}"
        )
    if has_offset and not isinstance(model.expert, OFFSET_FAMILIES):
        raise ValueError(
            f"an offset enters the experts' linear predictor x·β_k with coefficient 1, which only "
            f"Gaussian (MoLinE) and Poisson (MoPoE) experts have; {model.describe()} has "
            f"{type(model.expert).__name__} experts (a softmax classifier would add the offset to every "
            "class logit alike, where it cancels): drop the offset or put it among the expert covariates"
        )


def check_model_weights(model) -> None:
    """``model`` averages over weighted rows (``supports_weights``): the K-expert models do."""
    if not model.supports_weights:
        raise ValueError(
            f"weights= is supported by the K-expert models (MoLinE, MoLogE, MoPoE, any MixtureOfExperts, "
            f"HierarchicalMoE); "
            f"{type(model).__name__} does not take observation weights"
        )


def validate_pair(model, params, ref, x, weights=None, **_) -> None:
    """Checks for functions of two parameter points (e.g. a Bregman divergence)."""
    validate(model, params, x, weights=weights)
    model.check_params(ref, check_features(x)[1], "ref")


def validate_with_step(model, params, x, y, step_size, **kwargs) -> None:
    """Checks for one-step updates that take a step size."""
    validate(model, params, x, y, weights=kwargs.get("weights"))
    check_step_tree(model, params, step_size)
    check_trainable(model, params, kwargs.get("trainable"))


def validate_with_scalar_step(model, params, x, y, step_size, **kwargs) -> None:
    """Checks for the mirror-descent step, whose η blends whole target statistics: one number."""
    if isinstance(step_size, eqx.Module):
        raise ValueError(
            "step_size of a mirror-descent step must be one positive number (η blends the prior and posterior "
            f"statistics of every block at once); got a {type(step_size).__name__} of step sizes"
        )
    validate_with_step(model, params, x, y, step_size, **kwargs)


def check_step_tree(model, params, step_size, name: str = "step_size") -> None:
    """A step size: a positive scalar, or one per block, a pytree of the type of ``params`` with a
    scalar for every block that ``params`` has (and None where ``params`` has None)."""
    if isinstance(step_size, eqx.Module):
        expected = type(params)
        if not isinstance(step_size, expected):
            raise ValueError(
                f"{name} must be a positive number or an emjax.{expected.__name__} of them (one per block) for "
                f"{type(model).__name__}; got {type(step_size).__name__}"
            )
        for field in _fields(params):
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
    expected = type(params)
    if not isinstance(trainable, expected):
        raise ValueError(
            f"{name} must be an emjax.{expected.__name__} of booleans (True = may change); "
            f"got {type(trainable).__name__}"
        )
    per_block = isinstance(params, SymParams)  # symmetric blocks are trained or frozen whole
    for field in _fields(params):
        mask, value = getattr(trainable, field), getattr(params, field)
        if mask is None:
            continue
        if value is None:
            raise ValueError(f"{name}.{field} must be None: params.{field} is None")
        mask_shape, shape = shape_of(mask, f"{name}.{field}"), shape_of(value, field)
        if not jnp.issubdtype(jnp.result_type(mask), jnp.bool_):
            raise ValueError(f"{name}.{field} must hold booleans; got dtype {jnp.result_type(mask)}")
        allowed = () if per_block else shape[: len(mask_shape)]
        if mask_shape != allowed:
            hint = "() (a whole block is trained or frozen)" if per_block else f"() or {shape[:1]} or {shape}"
            raise ValueError(f"{name}.{field} must have shape {hint}; got {mask_shape}")


def _fields(params) -> tuple[str, ...]:
    """The parameter blocks of a params Module, in declaration order."""
    return tuple(field.name for field in dataclasses.fields(params))
