r"""The tree of a hierarchical mixture of experts: its static indexing and its parameters.

A tree of depth D has branching $B_l$ at level l (every node of level l has $B_l$ children), so
level l has $N_l = \prod_{i<l} B_i$ nodes ($N_0 = 1$, the root) and the $L = N_D$ nodes of level D
are the leaves, the experts. Nodes are numbered breadth-first within their level: child c of node
j of level l is node $j B_l + c$ of level l + 1, so leaf ℓ's path is the mixed-radix expansion of ℓ
and the leaves under node j of level l are the contiguous block $[j L/N_l, (j+1) L/N_l)$.

**Gate rows.** Each non-root node ν has one gate vector $v_\nu$ (length d): the logit of the step
from its parent into ν is $x\cdot v_\nu$. The rows are stored breadth-first, level by level, in one
(E, d) array, $E = \sum_{l=1}^{D} N_l$: the $N_{l+1} = N_l B_l$ rows of the gates of level l start at
row $o_l = \sum_{i=1}^{l} N_i$, and gate j of level l (an inner node) is the (B_l, d) block
``gates[o_l + j B_l : o_l + (j+1) B_l]`` (:meth:`Tree.level_gates` gives every level as an
$(N_l, B_l, d)$ array). One array, not one per level, so that every parameter block is one array and
a ``trainable`` mask is an :class:`HMEParams` of booleans like any other (per row: shape (E,)).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._params import _as_leaf


class Tree(eqx.Module):
    """Static indexing of a tree with ``branching[l]`` children per node of level l (module docstring)."""

    branching: tuple[int, ...] = eqx.field(static=True)

    @property
    def depth(self) -> int:
        return len(self.branching)

    def nodes(self, level: int) -> int:
        """$N_l$, the number of nodes of level l (level 0: the root; level D: the leaves)."""
        return int(np.prod(self.branching[:level], dtype=int))

    @property
    def num_leaves(self) -> int:
        return self.nodes(self.depth)

    @property
    def num_rows(self) -> int:
        """E, the number of gate rows (of non-root nodes)."""
        return sum(self.nodes(level) for level in range(1, self.depth + 1))

    def offset(self, level: int) -> int:
        """$o_l$, the first gate row of the gates of level l (the rows of the nodes of level l + 1)."""
        return sum(self.nodes(i) for i in range(1, level + 1))

    def row_paths(self) -> tuple[str, ...]:
        """For each gate row (each non-root node, breadth-first), its path from the root as child indices,
        e.g. ``"1.0"`` for child 0 of the root's child 1: how printed output names the gate rows."""
        paths = []
        for level in range(1, self.depth + 1):
            for node in range(self.nodes(level)):
                digits, rest = [], node
                for b in reversed(self.branching[:level]):
                    rest, digit = divmod(rest, b)
                    digits.append(str(digit))
                paths.append(".".join(reversed(digits)))
        return tuple(paths)

    def pinned_rows(self) -> np.ndarray:
        """(E,) booleans: the row of the first child of every inner node is pinned (as the flat gate's row 0)."""
        pinned = np.zeros(self.num_rows, bool)
        for level, b in enumerate(self.branching):
            pinned[self.offset(level) : self.offset(level + 1) : b] = True
        return pinned

    def level_gates(self, rows: Array, level: int) -> Array:
        """The gates of level l, ``rows[o_l : o_{l+1}]`` as (N_l, B_l, ...) (rows may carry trailing axes)."""
        block = rows[self.offset(level) : self.offset(level + 1)]
        return block.reshape((self.nodes(level), self.branching[level]) + block.shape[1:])

    def level_columns(self, per_row: Array, level: int) -> Array:
        """Columns ``o_l .. o_{l+1}`` of an (n, E) array as (n, N_l, B_l): per-sample values of level l's gates."""
        block = per_row[:, self.offset(level) : self.offset(level + 1)]
        return block.reshape(block.shape[0], self.nodes(level), self.branching[level])

    def path_log_probs(self, logits: Array) -> Array:
        r"""$\log P(\text{leaf }\ell\mid x_n) = \sum_{l} \log\mathrm{softmax}(\text{logits of the level-}l\text{ node
        on the path})_{c_l}$, shape (n, L), from the (n, E) logits $x_n\cdot v_\nu$ of every row."""
        n = logits.shape[0]
        path = jnp.zeros((n, 1), logits.dtype)
        for level in range(self.depth):
            edge = jax.nn.log_softmax(self.level_columns(logits, level), axis=-1)
            path = (path[:, :, None] + edge).reshape(n, self.nodes(level + 1))
        return path

    def subtree_sums(self, leaf_values: Array, level: int) -> Array:
        """Sums of (n, L) per-leaf values over the leaves under each node of ``level``: (n, N_level)."""
        n = leaf_values.shape[0]
        return jnp.sum(leaf_values.reshape(n, self.nodes(level), self.num_leaves // self.nodes(level)), axis=-1)

    def arrange(self, centres: Array) -> Array:
        """A leaf for each of L cluster centres (L, d), so that siblings are near each other: top-down, the
        centres under a node are sorted along their principal direction and cut into $B_l$ equal runs, one
        per child. Returns the leaf of each centre, (L,)."""
        groups = [jnp.arange(self.num_leaves)]
        for b in self.branching:
            split = []
            for group in groups:
                points = centres[group] - jnp.mean(centres[group], axis=0, keepdims=True)
                direction = jnp.linalg.svd(points, full_matrices=False)[2][0]
                ranked = group[jnp.argsort(points @ direction)]
                size = group.shape[0] // b
                split.extend(ranked[c * size : (c + 1) * size] for c in range(b))
            groups = split
        order = jnp.concatenate(groups)  # order[leaf] = centre
        return jnp.zeros_like(order).at[order].set(jnp.arange(self.num_leaves))

    def subtree(self, level: int, node: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, leaves)``: boolean masks (E,) and (L,) of the gate rows inside the subtree of node ``node``
        of level ``level`` (the rows of every gate at or below it) and of the leaves under it."""
        if not 0 <= level <= self.depth or not 0 <= node < self.nodes(level):
            raise ValueError(f"no node {node} at level {level} in a tree with branching {self.branching}")
        rows = np.zeros(self.num_rows, bool)
        first, count = node, 1
        for lower in range(level, self.depth):
            b = self.branching[lower]
            start = self.offset(lower) + first * b
            rows[start : start + count * b] = True
            first, count = first * b, count * b
        leaves = np.zeros(self.num_leaves, bool)
        leaves[first : first + count] = True
        return rows, leaves


class HMEParams(eqx.Module):
    r"""Parameters of a hierarchical mixture of experts (:class:`~emjax.models.HierarchicalMoE`).

    Args:
        gates: gate rows, shape (E, d): one row per non-root node, breadth-first (see
            :mod:`emjax.models._hme_tree`); the row of every inner node's first child is pinned.
            :meth:`HierarchicalMoE.level_gates` views level l as an $(N_l, B_l, d)$ array.
        experts: leaf expert coefficients, shape (L, d) (linear, Poisson) or (L, d, C) (softmax).
        sigma: noise standard deviations (L,) for families with a scale; None otherwise.

    A ``trainable`` mask is an ``HMEParams`` of booleans, each field None, one bool, or a prefix of
    the parameter's shape ((E,) per gate row, (L,) per expert).
    """

    gates: Array
    experts: Array
    sigma: Array | None = None

    def __init__(self, gates, experts, sigma=None):
        self.gates = _as_leaf(gates)
        self.experts = _as_leaf(experts)
        self.sigma = None if sigma is None else _as_leaf(sigma)

    @property
    def num_experts(self) -> int:
        """L, the number of leaves."""
        return self.experts.shape[0]

    @property
    def dim(self) -> int:
        """The feature dimension d."""
        return self.gates.shape[-1]
