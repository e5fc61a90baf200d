r"""The deep mixture of experts: one gate network and K expert networks, as one equinox Module.

The gate maps one observation $x\in\mathbb R^d$ to K logits; the experts are **one** module whose
array leaves carry a leading K axis (equinox's ensembling trick: ``eqx.filter_vmap`` over the
constructor's keys), each mapping $x$ to C class logits. With depth 0 both are linear maps, and
without biases the model is exactly MoLogE (docs/math.md §1): gate weight $W$ (K, d), expert weight
$B_k^\top$ (C, d). See :meth:`DeepMoE.from_moe_params` / :meth:`DeepMoE.to_moe_params`.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ..models import MoEParams


def _is_count(value, minimum: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum


def _is_linear(module) -> bool:
    return isinstance(module, eqx.nn.Linear)


def _linear_arrays(network) -> list:
    """Every weight, then every bias, of the ``eqx.nn.Linear`` layers of ``network`` (tree order)."""
    layers = [m for m in jax.tree_util.tree_leaves(network, is_leaf=_is_linear) if _is_linear(m)]
    return [layer.weight for layer in layers] + [layer.bias for layer in layers if layer.use_bias]


def _draw_in_one_call(key: Array, network):
    r"""Re-draw every Linear weight and bias from equinox's default law, $U(-1/\sqrt{m}, 1/\sqrt{m})$ with m the
    layer's fan-in, in ONE ``jax.random.uniform`` call: the same distribution as equinox's per-layer draws, about
    four times faster to compile on a CPU (each random call site is its own threefry kernel; the constructor's
    draws are dead code, removed by XLA)."""
    layers = [m for m in jax.tree_util.tree_leaves(network, is_leaf=_is_linear) if _is_linear(m)]
    fan_ins = [layer.in_features for layer in layers] + [layer.in_features for layer in layers if layer.use_bias]
    targets = _linear_arrays(network)
    bounds = np.cumsum([0] + [t.size for t in targets])
    draws = jax.random.uniform(key, (int(bounds[-1]),), targets[0].dtype, -1.0, 1.0)
    values = [
        draws[a:b].reshape(t.shape) / np.sqrt(f)
        for a, b, t, f in zip(bounds[:-1], bounds[1:], targets, fan_ins, strict=True)
    ]
    return eqx.tree_at(_linear_arrays, network, values)


def _network(key: Array, in_size: int, out_size: int, width: int, depth: int, use_bias: bool, activation, dtype):
    """``eqx.nn.Linear`` for depth 0, else an ``eqx.nn.MLP`` with ``depth`` hidden layers of ``width``."""
    if depth == 0:
        network = eqx.nn.Linear(in_size, out_size, use_bias=use_bias, dtype=dtype, key=key)
    else:
        network = eqx.nn.MLP(
            in_size,
            out_size,
            width,
            depth,
            activation=activation,
            use_bias=use_bias,
            use_final_bias=use_bias,
            dtype=dtype,
            key=key,
        )
    return _draw_in_one_call(key, network)


@eqx.filter_jit
def _build_networks(
    key,
    in_size,
    num_classes,
    num_experts,
    expert_width,
    expert_depth,
    gate_width,
    gate_depth,
    use_bias,
    activation,
    dtype,
):
    """The gate and the stacked experts, built in one compiled program (equinox's ensembling trick)."""
    key_gate, key_experts = jax.random.split(key)
    gate = _network(key_gate, in_size, num_experts, gate_width, gate_depth, use_bias, activation, dtype)

    def make_expert(k):
        return _network(k, in_size, num_classes, expert_width, expert_depth, use_bias, activation, dtype)

    return gate, eqx.filter_vmap(make_expert)(jax.random.split(key_experts, num_experts))


class DeepMoE(eqx.Module):
    r"""A mixture of K expert networks with a gate network and top-k routing (docs/math.md §9).

    $\pi_k(x) = \mathrm{softmax}_k(g(x))$ with $g$ the gate; expert k gives class probabilities
    $p(y=c\mid x, k) = \mathrm{softmax}_c(f_k(x))$. Each sample is routed to the ``top_k`` experts
    $T(x)$ with the largest gate logits (ties to the lower index) and the gate is renormalised over
    them, $\tilde\pi_k(x) = \pi_k(x)/\sum_{j\in T(x)}\pi_j(x)$ for $k\in T(x)$, 0 otherwise, so

    $$p(y\mid x) = \sum_{k\in T(x)} \tilde\pi_k(x)\, p(y\mid x, k),$$

    the dense mixture when ``top_k = num_experts``.

    Args:
        gate: an equinox module (or any callable pytree) mapping x of shape (d,) to K logits.
        experts: one equinox module whose array leaves all have a leading axis of length K; slice k
            maps x of shape (d,) to C logits. Build it with ``eqx.filter_vmap(make)(jax.random.split(key, K))``.
        num_experts: K >= 1 (static).
        num_classes: C >= 2 (static).
        top_k: 1 <= top_k <= K (static); default K (dense).

    Raises:
        ValueError: on counts out of range or expert leaves without the leading K axis.

    Example:
        >>> import jax, emjax.deep as deep
        >>> model = deep.DeepMoE.mlp(jax.random.key(0), in_size=2, num_classes=3, num_experts=4, top_k=2)
        >>> model.num_experts, model.top_k, deep.gate_log_probs(model, jax.numpy.ones((5, 2))).shape
        (4, 2, (5, 4))
    """

    gate: Callable
    experts: Callable
    num_experts: int = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)
    top_k: int = eqx.field(static=True)

    def __init__(self, gate, experts, num_experts: int, num_classes: int, top_k: int | None = None):
        self.gate = gate
        self.experts = experts
        self.num_experts = num_experts
        self.num_classes = num_classes
        self.top_k = num_experts if top_k is None else top_k

    def __check_init__(self):
        if not _is_count(self.num_experts, 1):
            raise ValueError(f"num_experts must be a Python int >= 1; got {self.num_experts!r}")
        if not _is_count(self.num_classes, 2):
            raise ValueError(f"num_classes must be a Python int >= 2; got {self.num_classes!r}")
        if not _is_count(self.top_k, 1) or self.top_k > self.num_experts:
            raise ValueError(
                f"top_k must be a Python int with 1 <= top_k <= num_experts = {self.num_experts}; got {self.top_k!r}"
            )
        for leaf in jax.tree_util.tree_leaves(eqx.filter(self.experts, eqx.is_array)):
            if leaf.ndim < 1 or leaf.shape[0] != self.num_experts:
                raise ValueError(
                    "every array leaf of experts must have a leading axis of length num_experts = "
                    f"{self.num_experts} (build it with eqx.filter_vmap over keys); got a leaf of shape {leaf.shape}"
                )

    @property
    def dtype(self):
        """The floating dtype of the parameters (their common result type)."""
        leaves = jax.tree_util.tree_leaves(eqx.filter(self, eqx.is_inexact_array))
        return jnp.result_type(*leaves) if leaves else jnp.zeros(()).dtype

    @classmethod
    def mlp(
        cls,
        key: Array,
        in_size: int,
        num_classes: int,
        num_experts: int,
        top_k: int | None = None,
        *,
        expert_width: int = 32,
        expert_depth: int = 1,
        gate_width: int = 32,
        gate_depth: int = 1,
        use_bias: bool = True,
        activation: Callable = jax.nn.relu,
        dtype=None,
    ) -> DeepMoE:
        r"""A gate MLP and K expert MLPs, initialised from equinox's default law.

        Depth counts hidden layers: depth 0 is a linear map (``eqx.nn.Linear``), depth 1 is
        Linear-activation-Linear, and so on. With ``expert_depth = gate_depth = 0`` and
        ``use_bias=False`` the model is MoLogE on x (add an intercept column to x for biases that
        follow emjax's conventions). Every weight and bias is drawn from equinox's default law,
        $U(-1/\sqrt{m}, 1/\sqrt{m})$ with m the fan-in, but in one random call per network (other numbers
        than ``eqx.nn.MLP(key=...)``, much faster to compile). Different keys give different experts, so
        the start is never the symmetric fixed point of EM (docs/math.md §3.4).

        Args:
            key: a ``jax.random`` key.
            in_size: d, the length of one observation.
            num_classes: C >= 2.
            num_experts: K >= 1.
            top_k: experts per sample, 1 <= top_k <= K; default K (dense).
            expert_width, expert_depth, gate_width, gate_depth: hidden width and number of hidden layers.
            use_bias: biases in every layer.
            activation: hidden activation (default ReLU).
            dtype: parameter dtype (default: JAX's default float).

        Example:
            >>> import jax, emjax.deep as deep
            >>> model = deep.DeepMoE.mlp(jax.random.key(0), 3, 2, 2, expert_depth=0, gate_depth=0, use_bias=False)
            >>> model.gate.weight.shape, model.experts.weight.shape
            ((2, 3), (2, 2, 3))
        """
        for name, value, minimum in (
            ("in_size", in_size, 1),
            ("expert_width", expert_width, 1),
            ("gate_width", gate_width, 1),
            ("expert_depth", expert_depth, 0),
            ("gate_depth", gate_depth, 0),
            ("num_experts", num_experts, 1),
        ):
            if not _is_count(value, minimum):
                raise ValueError(f"{name} must be a Python int >= {minimum}; got {value!r}")
        if not _is_count(num_classes, 2):
            raise ValueError(f"num_classes must be a Python int >= 2; got {num_classes!r}")
        if top_k is not None and (not _is_count(top_k, 1) or top_k > num_experts):
            raise ValueError(
                f"top_k must be a Python int with 1 <= top_k <= num_experts = {num_experts}; got {top_k!r}"
            )
        gate, experts = _build_networks(
            key,
            in_size,
            num_classes,
            num_experts,
            expert_width,
            expert_depth,
            gate_width,
            gate_depth,
            use_bias,
            activation,
            None if dtype is None else jnp.dtype(dtype),
        )
        return cls(gate, experts, num_experts, num_classes, top_k)

    @classmethod
    def from_moe_params(cls, params: MoEParams, top_k: int | None = None) -> DeepMoE:
        r"""The linear DeepMoE equal to MoLogE with these parameters.

        Gate weight $W$ (K, d), expert k weight $B_k^\top$ (C, d), no biases. Pinned entries are
        copied as they are (the deep model does not pin anything; the softmax over-parameterisation
        is simply left free).

        Args:
            params: ``MoEParams(gate=(K, d), experts=(K, d, C))``, as for ``emjax.MoLogE(K, C)``.
            top_k: default K, the dense mixture (exactly MoLogE).

        Example:
            >>> import jax.numpy as jnp, emjax, emjax.deep as deep
            >>> params = emjax.MoEParams(gate=jnp.zeros((2, 4)), experts=jnp.ones((2, 4, 3)))
            >>> model = deep.DeepMoE.from_moe_params(params)
            >>> model.experts.weight.shape
            (2, 3, 4)
        """
        if not isinstance(params, MoEParams) or params.sigma is not None:
            raise ValueError("params must be an emjax.MoEParams of a MoLogE model (sigma None)")
        gate_w, experts_b = jnp.asarray(params.gate), jnp.asarray(params.experts)
        if gate_w.ndim != 2 or experts_b.ndim != 3 or experts_b.shape[:2] != gate_w.shape:
            raise ValueError(
                f"params must have gate (K, d) and experts (K, d, C); got {gate_w.shape} and {experts_b.shape}"
            )
        (k, d), c = gate_w.shape, experts_b.shape[-1]
        dtype = jnp.result_type(gate_w, experts_b)
        # Structures only (eval_shape: nothing is drawn or compiled), then the weights are set.
        keys = jax.random.split(jax.random.key(0), k)
        gate = eqx.filter_eval_shape(lambda: eqx.nn.Linear(d, k, use_bias=False, dtype=dtype, key=keys[0]))
        experts = eqx.filter_eval_shape(
            eqx.filter_vmap(lambda kk: eqx.nn.Linear(d, c, use_bias=False, dtype=dtype, key=kk)), keys
        )
        gate = eqx.tree_at(lambda m: m.weight, gate, gate_w.astype(dtype))
        experts = eqx.tree_at(lambda m: m.weight, experts, jnp.swapaxes(experts_b, 1, 2).astype(dtype))
        return cls(gate, experts, k, c, top_k)

    def to_moe_params(self) -> MoEParams:
        r"""MoLogE parameters of a linear, bias-free DeepMoE (inverse of :meth:`from_moe_params`).

        The result follows emjax's pinning: gate row 0 is subtracted from every row and class
        column 0 of each $B_k$ from every column, which changes neither $\pi$ nor the expert
        probabilities. Only the dense model (``top_k = num_experts``) is a MoLogE.

        Raises:
            ValueError: if the gate or the experts are not bias-free ``eqx.nn.Linear`` maps.
        """
        for name, part in (("gate", self.gate), ("experts", self.experts)):
            if not isinstance(part, eqx.nn.Linear) or part.use_bias:
                raise ValueError(f"to_moe_params needs a bias-free eqx.nn.Linear {name} (depth 0, use_bias=False)")
        gate_w = self.gate.weight
        experts_b = jnp.swapaxes(self.experts.weight, 1, 2)  # (K, d, C)
        return MoEParams(gate=gate_w - gate_w[:1], experts=experts_b - experts_b[..., :1])


def gate_logits(model: DeepMoE, x: Array) -> Array:
    """Gate logits g(x_n), shape (n, K) (no checks; internal)."""
    return jax.vmap(model.gate)(x)


def expert_logits(model: DeepMoE, x: Array) -> Array:
    r"""Class logits of every expert on every sample, shape (n, K, C), computed densely (no checks).

    ``eqx.filter_vmap`` over the leading K axis of the experts, ``jax.vmap`` over samples."""
    per_expert = eqx.filter_vmap(lambda expert: jax.vmap(expert)(x))(model.experts)  # (K, n, C)
    return jnp.swapaxes(per_expert, 0, 1)


def scale_output(network, factor) -> Callable:
    """The network with its last layer's weight (and bias) multiplied by ``factor``."""
    if isinstance(network, eqx.nn.MLP):
        return eqx.tree_at(lambda m: m.layers[-1], network, scale_output(network.layers[-1], factor))
    if isinstance(network, eqx.nn.Linear):
        network = eqx.tree_at(lambda m: m.weight, network, network.weight * factor)
        if network.use_bias:
            network = eqx.tree_at(lambda m: m.bias, network, network.bias * factor)
        return network
    raise ValueError(f"scale_output supports eqx.nn.MLP and eqx.nn.Linear; got {type(network).__name__}")
