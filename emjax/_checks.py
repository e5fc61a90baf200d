"""Argument checks of the public functions of (model, params, data): ``ValueError`` at the boundary.

Built on the generic checks of :mod:`emjax._validation`; this module also knows the model and
parameter types, so a wrong type gets a ``ValueError`` that says what was expected instead of an
``AttributeError`` from deep inside.
"""

from __future__ import annotations

from ._validation import check_features, check_labels, check_params, check_step_size
from .models import AbstractSymmetricModel, SymParams


def check_types(model, params, name: str = "params") -> None:
    """``model`` must be an emjax model and ``params`` a :class:`SymParams`."""
    if not isinstance(model, AbstractSymmetricModel):
        raise ValueError(f"model must be an emjax model such as SymMoLinE() or SymMoLogE(); got {model!r}")
    if not isinstance(params, SymParams):
        raise ValueError(f"{name} must be an emjax.SymParams(w=..., beta=...); got {type(params).__name__}")


def validate(model, params, x, y=None, **_) -> None:
    """All boundary checks for a public function of (model, params, x[, y])."""
    check_types(model, params)
    n, d = check_features(x)
    check_params(params, d)
    if y is not None:
        check_labels(y, n)
        model.check_labels(y)


def validate_pair(model, params, ref, x, **_) -> None:
    """Checks for functions of two parameter points (e.g. a Bregman divergence)."""
    validate(model, params, x)
    check_types(model, ref, "ref")
    check_params(ref, check_features(x)[1], "ref")


def validate_with_step(model, params, x, y, step_size, **_) -> None:
    """Checks for one-step updates that take a step size."""
    validate(model, params, x, y)
    check_step_size(step_size)
