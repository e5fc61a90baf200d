r"""A known nonlinear mixture of experts to sample from: the truth whose cross-entropy is the Bayes floor."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from ._checks import check_count, check_model
from ._model import DeepMoE, expert_logits, gate_logits, scale_output
from ._routing import routed_gate_log_probs_raw, top_k_mask_raw


@eqx.filter_jit
def _sample(model: DeepMoE, key, n: int, d: int, dtype):
    key_x, key_z, key_y = jax.random.split(key, 3)
    x = jax.random.normal(key_x, (n, d), dtype)
    logits = gate_logits(model, x)
    mask = top_k_mask_raw(logits, model.top_k)
    log_gate = jnp.where(mask, routed_gate_log_probs_raw(logits, mask), -jnp.inf)
    z = jax.random.categorical(key_z, log_gate, axis=-1)
    chosen = jnp.take_along_axis(expert_logits(model, x), z[:, None, None], axis=1)[:, 0]  # (n, C)
    y = jax.random.categorical(key_y, chosen, axis=-1).astype(jnp.int32)
    return x, y, z.astype(jnp.int32)


def sample(model: DeepMoE, key: Array, n: int, d: int, *, dtype=None, return_latent: bool = False):
    r"""Draw n samples from a DeepMoE: $x\sim N(0, I_d)$, $z\sim\tilde\pi(x)$ over the top-k routed experts,
    $y\sim\mathrm{softmax}(f_z(x))$.

    Args:
        model: the true model (its gate and experts must take x of shape (d,)).
        key: ``jax.random`` key.
        n, d: numbers of samples and features (Python ints).
        dtype: dtype of x (default: the model's).
        return_latent: also return the expert z that produced each label.

    Returns:
        ``(x, y)`` (or ``(x, y, z)``) of shapes (n, d), (n,) and (n,), labels int32.

    Example:
        >>> import jax, emjax.deep as deep
        >>> model = deep.DeepMoE.mlp(jax.random.key(0), 2, 3, 4, top_k=2)
        >>> x, y = deep.sample(model, jax.random.key(1), 10, 2)
        >>> x.shape, y.shape
        ((10, 2), (10,))
    """
    check_model(model)
    check_count(n, "n")
    check_count(d, "d")
    dtype = model.dtype if dtype is None else dtype
    x, y, z = _sample(model, key, n, d, jnp.dtype(dtype))
    return (x, y, z) if return_latent else (x, y)


def synthetic_nonlinear_moe(
    key: Array,
    n: int,
    d: int,
    num_experts: int,
    num_classes: int,
    *,
    top_k: int | None = None,
    width: int = 16,
    depth: int = 1,
    gate_scale: float = 6.0,
    expert_scale: float = 6.0,
    dtype=None,
):
    r"""A random nonlinear MoE (MLP gate and MLP experts) and n samples from it.

    The truth is :meth:`DeepMoE.mlp` with ``width``/``depth`` for the gate and the experts and
    equinox's default initialisation, with the last layer of the gate multiplied by
    ``gate_scale`` and that of every expert by ``expert_scale``, so that the gate is confident and
    the classes are predictable from x and the expert. The truth's test cross-entropy
    (:func:`~emjax.deep.cross_entropy` on fresh samples from :func:`sample`) estimates the Bayes
    floor $E[-\log p^*(y\mid x)]$.

    Args:
        key: ``jax.random`` key (split into truth and data keys).
        n, d: numbers of samples and features.
        num_experts, num_classes: K and C.
        top_k: routing of the truth (default K: a dense mixture).
        width, depth: hidden width and number of hidden layers of every network.
        gate_scale, expert_scale: last-layer multipliers.
        dtype: parameter and data dtype.

    Returns:
        ``(x, y, truth)``; draw a test set with ``sample(truth, other_key, n_test, d)``.

    Example:
        >>> import jax, emjax.deep as deep
        >>> x, y, truth = deep.synthetic_nonlinear_moe(jax.random.key(0), 256, 2, 2, 3)
        >>> x.shape, truth.num_experts, int(y.max()) < 3
        ((256, 2), 2, True)
    """
    check_count(n, "n")
    key_truth, key_data = jax.random.split(key)
    truth = DeepMoE.mlp(
        key_truth,
        d,
        num_classes,
        num_experts,
        top_k,
        expert_width=width,
        expert_depth=depth,
        gate_width=width,
        gate_depth=depth,
        dtype=dtype,
    )
    truth = eqx.tree_at(lambda m: m.gate, truth, scale_output(truth.gate, gate_scale))
    truth = eqx.tree_at(lambda m: m.experts, truth, scale_output(truth.experts, expert_scale))
    x, y = sample(truth, key_data, n, d)
    return x, y, truth
