"""Problem generators and sign-invariant parameter errors (MATH.md §1, §8)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from ._validation import check_int, check_key, check_scale
from .models import SymParams


def _check_sym(value, name: str) -> None:
    """``value`` must be the parameters of a symmetric model."""
    if not isinstance(value, SymParams):
        raise ValueError(f"{name} must be an emjax.SymParams (symmetric-model parameters); got {type(value).__name__}")


def _direction(key: Array, d: int, dtype) -> Array:
    v = jax.random.normal(key, (d,), dtype)
    return v / jnp.linalg.norm(v)


def random_params(key: Array, d: int, w_norm=2.0, beta_norm=2.0, dtype=None) -> SymParams:
    r"""Parameters with uniformly random directions and the given norms $\|w\|$, $\|\beta\|$.

    The norms may be traced arrays (an SNR grid under ``vmap`` compiles once). ``dtype`` defaults
    to JAX's default float (float64 when x64 is enabled, float32 otherwise).

    Example:
        >>> import jax, jax.numpy as jnp, emjax
        >>> p = emjax.random_params(jax.random.key(0), 4, w_norm=1.0, beta_norm=3.0)
        >>> round(float(jnp.linalg.norm(p.beta)), 5)
        3.0
    """
    check_key(key)
    check_int(d, "d", 1)
    check_scale(w_norm, "w_norm", positive=False)
    check_scale(beta_norm, "beta_norm", positive=False)
    dtype = jnp.zeros((), float).dtype if dtype is None else dtype
    key_w, key_b = jax.random.split(key)
    return SymParams(
        w=jnp.asarray(w_norm, dtype) * _direction(key_w, d, dtype),
        beta=jnp.asarray(beta_norm, dtype) * _direction(key_b, d, dtype),
    )


def perturb(key: Array, params: SymParams, relative_error=1.0) -> SymParams:
    r"""$\theta_0 = \theta + \delta$ with $\|\delta_w\| = e\|w\|$ and $\|\delta_\beta\| = e\|\beta\|$ in random
    directions (the Figure 1/2 initialisation of MATH.md §8, relative error e per block)."""
    check_key(key)
    _check_sym(params, "params")
    check_scale(relative_error, "relative_error", positive=False)
    key_w, key_b = jax.random.split(key)
    d, dtype = params.w.shape[-1], params.w.dtype
    scale = jnp.asarray(relative_error, dtype)
    return SymParams(
        w=params.w + scale * jnp.linalg.norm(params.w) * _direction(key_w, d, dtype),
        beta=params.beta + scale * jnp.linalg.norm(params.beta) * _direction(key_b, d, dtype),
    )


def relative_errors(estimate: SymParams, truth: SymParams) -> tuple[Array, Array]:
    r"""$(\|w - w^*\|/\|w^*\|,\ \|\beta - \beta^*\|/\|\beta^*\|)$ after resolving the label swap.

    The estimate is flipped to $-\theta$ when $\langle\hat\beta, \beta^*\rangle < 0$ (MATH.md §1).
    Works on a single iterate or on a history with leading axes.
    """
    _check_sym(estimate, "estimate")
    _check_sym(truth, "truth")
    w_true = jnp.broadcast_to(truth.w, estimate.w.shape)
    beta_true = jnp.broadcast_to(truth.beta, estimate.beta.shape)
    sign = jnp.where(jnp.sum(estimate.beta * beta_true, axis=-1, keepdims=True) < 0, -1, 1)
    sign = sign.astype(estimate.w.dtype)
    w_error = jnp.linalg.norm(sign * estimate.w - w_true, axis=-1) / jnp.linalg.norm(truth.w, axis=-1)
    beta_error = jnp.linalg.norm(sign * estimate.beta - beta_true, axis=-1) / jnp.linalg.norm(truth.beta, axis=-1)
    return w_error, beta_error
