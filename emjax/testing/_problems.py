"""Problem generators: random ground truths and perturbed starts (docs/math.md §1, §8)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from .._checks import check_model
from .._validation import check_int, check_key, check_scale
from ..models import SymParams


def check_sym(value, name: str) -> None:
    """``value`` must be the parameters of a symmetric model."""
    if not isinstance(value, SymParams):
        raise ValueError(f"{name} must be an emjax.SymParams (symmetric-model parameters); got {type(value).__name__}")


def direction(key: Array, d: int, dtype) -> Array:
    """A uniformly random unit vector of length d."""
    v = jax.random.normal(key, (d,), dtype)
    return v / jnp.linalg.norm(v)


def random_params(model, key: Array, d: int, gate_norm=2.0, expert_norm=2.0, sigma=0.5, dtype=None):
    r"""Random ground-truth parameters of ``model`` with d features (e.g. for simulations).

    Symmetric models (:class:`~emjax.SymMoLinE`, :class:`~emjax.SymMoLogE`): a :class:`~emjax.SymParams`
    whose gate $w$ and expert $\beta$ have uniformly random directions and norms $\|w\|$ = ``gate_norm``,
    $\|\beta\|$ = ``expert_norm`` (the noise σ of SymMoLinE is the model's own; ``sigma`` is ignored).

    K-expert models (:class:`~emjax.MoLinE`, :class:`~emjax.MoLogE`, :class:`~emjax.MoPoE`, or any
    :class:`~emjax.MixtureOfExperts`): a :class:`~emjax.MoEParams` whose gate rows 1..K-1 and every free
    expert column are uniformly random directions of norm ``gate_norm`` and ``expert_norm``; gate row 0
    and pinned class columns are 0; σ_k = ``sigma`` for experts with a scale (ignored otherwise).

    Norms may be traced arrays (an SNR grid under ``vmap`` compiles once). ``dtype`` defaults to
    JAX's default float (float64 when x64 is enabled, float32 otherwise).

    Example:
        >>> import jax, jax.numpy as jnp, emjax
        >>> from emjax.testing import random_params
        >>> p = random_params(emjax.SymMoLinE(), jax.random.key(0), 4, gate_norm=1.0, expert_norm=3.0)
        >>> round(float(jnp.linalg.norm(p.beta)), 5)
        3.0
        >>> random_params(emjax.MoLogE(3, num_classes=4), jax.random.key(0), d=2).experts.shape
        (3, 2, 4)
    """
    check_model(model)
    dtype = _check_generator(key, d, gate_norm, expert_norm, sigma, dtype)
    return model.random_params(key, d, gate_norm, expert_norm, sigma, dtype)


def _check_generator(key, d, gate_norm, expert_norm, sigma, dtype):
    check_key(key)
    check_int(d, "d", 1)
    check_scale(gate_norm, "gate_norm", positive=False)
    check_scale(expert_norm, "expert_norm", positive=False)
    check_scale(sigma, "sigma", positive=True)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype such as jnp.float32; got {dtype!r}")
    return jnp.zeros((), float).dtype if dtype is None else dtype


def perturb(params: SymParams, key: Array, relative_error=1.0) -> SymParams:
    r"""$\theta_0 = \theta + \delta$ with $\|\delta_w\| = e\|w\|$ and $\|\delta_\beta\| = e\|\beta\|$ in random
    directions (the Figure 1/2 initialisation of docs/math.md §8, relative error e per block).

    Example:
        >>> import jax, emjax
        >>> import jax.numpy as jnp
        >>> from emjax.testing import perturb, random_params
        >>> truth = random_params(emjax.SymMoLinE(), jax.random.key(0), 3, expert_norm=2.0)
        >>> start = perturb(truth, jax.random.key(1), 0.5)
        >>> round(float(jnp.linalg.norm(start.beta - truth.beta)), 5)
        1.0
    """
    check_key(key)
    check_sym(params, "params")
    check_scale(relative_error, "relative_error", positive=False)
    key_w, key_b = jax.random.split(key)
    d, dtype = params.w.shape[-1], params.w.dtype
    scale = jnp.asarray(relative_error, dtype)
    return SymParams(
        w=params.w + scale * jnp.linalg.norm(params.w) * direction(key_w, d, dtype),
        beta=params.beta + scale * jnp.linalg.norm(params.beta) * direction(key_b, d, dtype),
    )
