r"""The loss L, the EM surrogate J and predictions of a :class:`~emjax.deep.DeepMoE` (docs/math.md §9).

With the routed log-weights $\ell_{nk}$ of :mod:`emjax.deep._routing`:

$$L(\theta) = -\mathrm{mean}_n \log\sum_{k\in T_n}\tilde\pi_k(x_n)\,p(y_n\mid x_n,k)
           = -\mathrm{mean}_n\,\mathrm{logsumexp}_k\,\ell_{nk},$$

$$J(\theta\mid\gamma, T) = -\mathrm{mean}_n\sum_{k\in T_n}\gamma_{nk}\big[\log\tilde\pi_k(x_n;\theta)
           + \log p(y_n\mid x_n,k;\theta)\big].$$

**Why the renormalised gate $\tilde\pi$ in J.** With the routing sets $T_n$ held at those of the
E-step, L is the likelihood of an ordinary mixture over $T_n$ with gate $\tilde\pi$, and J is
exactly its EM surrogate. Fisher's identity, $\nabla_\theta J(\theta\mid\gamma(\theta), T(\theta))
= \nabla L(\theta)$, then holds for **every** top_k (wherever no gate logits tie at the k-th place,
so the routing is locally constant), and J majorises L up to a constant on the fixed routing, which
is what makes the M-step a generalized-EM step. With the full softmax $\log\pi_k$ instead, the gate
part of J would also push up the total mass $\sum_{j\in T_n}\pi_j$, a direction L does not see, and
the identity would hold only for top_k = K (where both choices coincide). The price, shared with
end-to-end training of L: for top_k = 1, $\tilde\pi\equiv1$ and the gate gets no gradient at all.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from .._validation import data_arguments
from ._checks import as_working, check_data, check_gamma
from ._model import DeepMoE, expert_logits, gate_logits
from ._routing import forward, routed_gate_log_probs_raw, top_k_mask_raw

# ----------------------------------------------------------------------------- raw (unchecked) functions


def nll_raw(model: DeepMoE, x: Array, y: Array):
    """(L, Routed) from one forward pass."""
    routed = forward(model, x, y)
    return -jnp.mean(jax.nn.logsumexp(routed.log_weights, axis=-1)), routed


def surrogate_raw(model: DeepMoE, x: Array, y: Array, gamma: Array, mask: Array | None = None) -> Array:
    routed = forward(model, x, y, mask)
    return -jnp.mean(routed.masked_sum(jax.lax.stop_gradient(gamma)))


def predict_log_proba_raw(model: DeepMoE, x: Array) -> Array:
    logits = gate_logits(model, x)
    mask = top_k_mask_raw(logits, model.top_k)
    log_gate = routed_gate_log_probs_raw(logits, mask)
    joint = log_gate[:, :, None] + jax.nn.log_softmax(expert_logits(model, x), axis=-1)  # (n, K, C)
    return jax.nn.logsumexp(jnp.where(mask[:, :, None], joint, -jnp.inf), axis=1)


def accuracy_raw(model: DeepMoE, x: Array, y: Array) -> Array:
    return jnp.mean((jnp.argmax(predict_log_proba_raw(model, x), axis=-1) == y).astype(x.dtype))


_nll = eqx.filter_jit(lambda model, x, y: nll_raw(model, x, y)[0])
_surrogate = eqx.filter_jit(surrogate_raw)
_predict_log_proba = eqx.filter_jit(predict_log_proba_raw)
_accuracy = eqx.filter_jit(accuracy_raw)


@eqx.filter_jit
def _cross_entropy(model, x, y):
    log_proba = predict_log_proba_raw(model, x)
    return -jnp.mean(jnp.take_along_axis(log_proba, y[:, None], axis=-1))


# ----------------------------------------------------------------------------- public functions


@data_arguments
def neg_log_likelihood(model: DeepMoE, x, y) -> Array:
    r"""$L = -\mathrm{mean}_n\log\big(\sum_{k\in T_n}\pi_k p_k\,/\sum_{k\in T_n}\pi_k\big)$, the top-k
    renormalised mixture likelihood (module docstring); the dense MoE likelihood when top_k = K.

    Also the test cross-entropy of :func:`predict_proba` (see :func:`cross_entropy`).

    Example:
        >>> import jax, jax.numpy as jnp, emjax.deep as deep
        >>> model = deep.DeepMoE.mlp(jax.random.key(0), 2, 3, 4, top_k=2)
        >>> x, y = jnp.ones((5, 2)), jnp.zeros(5, int)
        >>> bool(jnp.isclose(deep.neg_log_likelihood(model, x, y), deep.cross_entropy(model, x, y)))
        True
    """
    check_data(model, x, y)
    return _nll(model, *as_working(model, x, y))


@data_arguments
def surrogate(model: DeepMoE, x, y, gamma, mask=None) -> Array:
    r"""The EM surrogate $J(\theta\mid\gamma,T) = -\mathrm{mean}_n\sum_{k\in T_n}\gamma_{nk}[\log\tilde\pi_k+\log p_k]$.

    The gate part is a soft-target cross-entropy to γ, the expert part a γ-weighted class
    cross-entropy per expert. ``gamma`` is held fixed (``stop_gradient``). The routing sets
    $T_n$ are ``mask`` (the E-step's routing, as the trainer passes it) or, by default, the
    routing of ``model`` itself; so at the parameters where γ was computed,
    ``grad(surrogate)`` equals ``grad(neg_log_likelihood)`` (Fisher's identity, module docstring).

    Args:
        gamma: (n, K) responsibilities, e.g. :func:`responsibilities`.
        mask: optional (n, K) boolean routing sets; default ``top_k_mask`` of the model's gate.

    At the parameters where γ was computed, $J = L + \mathrm{mean}_n H(\gamma_{n\cdot}) \ge L$ (H the entropy).

    Example:
        >>> import jax, jax.numpy as jnp, emjax.deep as deep
        >>> model = deep.DeepMoE.mlp(jax.random.key(0), 2, 3, 4, top_k=2)
        >>> x, y = jax.random.normal(jax.random.key(1), (8, 2)), jnp.arange(8) % 3
        >>> gamma = deep.responsibilities(model, x, y)
        >>> entropy = -jnp.sum(jnp.where(gamma > 0, gamma * jnp.log(gamma), 0.0), axis=1).mean()
        >>> j, l = deep.surrogate(model, x, y, gamma), deep.neg_log_likelihood(model, x, y)
        >>> bool(jnp.isclose(j, l + entropy, atol=1e-5))
        True
    """
    n, _ = check_data(model, x, y)
    check_gamma(gamma, n, model.num_experts)
    if mask is not None:
        check_gamma(mask, n, model.num_experts)
        mask = jnp.asarray(mask, bool)
    x, y = as_working(model, x, y)
    return _surrogate(model, x, y, jnp.asarray(gamma, x.dtype), mask)


@data_arguments
def predict_log_proba(model: DeepMoE, x) -> Array:
    r"""$\log\sum_{k\in T(x)}\tilde\pi_k(x)\,\mathrm{softmax}(f_k(x))$, shape (n, C)."""
    check_data(model, x)
    return _predict_log_proba(model, as_working(model, x))


@data_arguments
def predict_proba(model: DeepMoE, x) -> Array:
    r"""Class probabilities $\sum_{k\in T(x)}\tilde\pi_k(x)\,\mathrm{softmax}_c(f_k(x))$, shape (n, C).

    Example:
        >>> import jax, jax.numpy as jnp, emjax.deep as deep
        >>> model = deep.DeepMoE.mlp(jax.random.key(0), 2, 3, 4, top_k=2)
        >>> bool(jnp.allclose(deep.predict_proba(model, jnp.ones((5, 2))).sum(-1), 1.0))
        True
    """
    return jnp.exp(predict_log_proba(model, x))


@data_arguments
def accuracy(model: DeepMoE, x, y) -> Array:
    r"""Fraction of samples with $\arg\max_c$ :func:`predict_proba` $= y$."""
    check_data(model, x, y)
    return _accuracy(model, *as_working(model, x, y))


@data_arguments
def cross_entropy(model: DeepMoE, x, y) -> Array:
    r"""$-\mathrm{mean}_n\log$ :func:`predict_proba`$(x_n)_{y_n}$; equal to :func:`neg_log_likelihood`."""
    check_data(model, x, y)
    return _cross_entropy(model, *as_working(model, x, y))
