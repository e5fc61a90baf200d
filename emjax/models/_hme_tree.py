r"""The tree of a hierarchical mixture of experts: its static indexing and its parameters.

A tree of depth D gives, at each level l, the number of children of every node of that level: either one
int $B_l$ (every node of level l has $B_l$ children, a *uniform* level) or a tuple $(B_{l,0}, \dots,
B_{l,N_l-1})$ with one count per node of the level, breadth-first (a *non-uniform* level). Level l has
$N_l$ nodes ($N_0 = 1$, the root; $N_{l+1} = \sum_j B_{l,j}$, which is $N_l B_l$ when the level is
uniform) and the $L = N_D$ nodes of level D are the leaves, the experts. Nodes are numbered breadth-first
within their level: child c of node j of level l is node $s_{l,j} + c$ of level l + 1, where $s_{l,j} =
\sum_{i<j} B_{l,i}$ ($= j B_l$ on a uniform level), so the descendants of any node at any lower level,
its leaves included, are a contiguous block (for a uniform tree, leaf ℓ's path is the mixed-radix
expansion of ℓ and the leaves under node j of level l are $[j L/N_l, (j+1) L/N_l)$).

**Gate rows.** Each non-root node ν has one gate vector $v_\nu$ (length d): the logit of the step
from its parent into ν is $x\cdot v_\nu$. The rows are stored breadth-first, level by level, in one
(E, d) array, $E = \sum_{l=1}^{D} N_l$: the $N_{l+1}$ rows of the gates of level l start at row
$o_l = \sum_{i=1}^{l} N_i$, and gate j of level l (an inner node) is the $(B_{l,j}, d)$ block
``gates[o_l + s_{l,j} : o_l + s_{l,j} + B_{l,j}]``. :meth:`Tree.level_gates` gives a uniform level as an
$(N_l, B_l, d)$ array and a non-uniform one padded to $(N_l, \max_j B_{l,j}, d)$, zeros in the slots
past a node's children (:meth:`Tree.level_mask` marks the real ones). One array, not one per level, so
that every parameter block is one array and a ``trainable`` mask is an :class:`HMEParams` of booleans
like any other (per row: shape (E,)).

The log-softmax of a non-uniform level is taken over the padded layout with the padding masked out
(``jax.nn.log_softmax(..., where=mask)``), which is exact; uniform levels keep the plain reshape, so
uniform trees compute exactly what they did before non-uniform levels existed.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._params import _as_leaf


class Tree(eqx.Module):
    """Static indexing of a tree: ``branching[l]`` is the children per node of level l, one int (uniform)
    or a tuple with one count per node of the level, breadth-first (module docstring).

    The tree takes ``branching`` as given (no validation, no normalisation):
    :class:`~emjax.models.HierarchicalMoE` checks it and stores a level whose counts are all equal as one
    int. A tuple level with equal counts is still valid here and takes the non-uniform code path.
    """

    branching: tuple = eqx.field(static=True)

    @property
    def depth(self) -> int:
        return len(self.branching)

    def is_uniform(self, level: int) -> bool:
        """Whether level l is given as one int (every node of it has the same number of children)."""
        return isinstance(self.branching[level], int)

    def children(self, level: int) -> tuple[int, ...]:
        """The number of children of each node of level l, breadth-first: a tuple of $N_l$ ints."""
        b = self.branching[level]
        return (b,) * self.nodes(level) if isinstance(b, int) else tuple(b)

    def width(self, level: int) -> int:
        """The most children of a node of level l ($B_l$ on a uniform level): the padded layout's width."""
        return max(self.children(level))

    def nodes(self, level: int) -> int:
        """$N_l$, the number of nodes of level l (level 0: the root; level D: the leaves)."""
        count = 1
        for lower in range(level):
            b = self.branching[lower]
            count = count * b if isinstance(b, int) else sum(b)
        return count

    def starts(self, level: int) -> np.ndarray:
        r"""$(s_{l,0}, \dots, s_{l,N_l})$: node j of level l has the children $s_{l,j} .. s_{l,j+1} - 1$ of
        level l + 1 (its gate is rows $o_l + s_{l,j} .. o_l + s_{l,j+1} - 1$)."""
        return np.concatenate([[0], np.cumsum(self.children(level), dtype=int)]).astype(int)

    def parents(self, level: int) -> np.ndarray:
        """The parent (a node of level l - 1) of each node of level l >= 1: $N_l$ ints."""
        children = self.children(level - 1)
        return np.repeat(np.arange(len(children)), children)

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

    def leaf_counts(self, level: int) -> np.ndarray:
        """The number of leaves under each node of level l: $N_l$ ints."""
        counts = np.ones(self.num_leaves, int)
        for lower in range(self.depth - 1, level - 1, -1):
            counts = np.add.reduceat(counts, self.starts(lower)[:-1]) if counts.size else counts
        return counts

    def row_paths(self) -> tuple[str, ...]:
        """For each gate row (each non-root node, breadth-first), its path from the root as child indices,
        e.g. ``"1.0"`` for child 0 of the root's child 1: how printed output names the gate rows."""
        paths, previous = [], [""]
        for level in range(self.depth):
            current = [
                f"{previous[parent]}.{c}" if level else str(c)
                for parent, count in enumerate(self.children(level))
                for c in range(count)
            ]
            paths.extend(current)
            previous = current
        return tuple(paths)

    def pinned_rows(self) -> np.ndarray:
        """(E,) booleans: the row of the first child of every inner node is pinned (as the flat gate's row 0)."""
        pinned = np.zeros(self.num_rows, bool)
        for level in range(self.depth):
            pinned[self.offset(level) + self.starts(level)[:-1]] = True
        return pinned

    def level_mask(self, level: int) -> np.ndarray:
        """(N_l, W_l) booleans of the padded layout of level l (W_l = :meth:`width`): True on node j's
        first $B_{l,j}$ slots, its children (all True on a uniform level)."""
        return np.arange(self.width(level))[None, :] < np.asarray(self.children(level))[:, None]

    def level_index(self, level: int) -> np.ndarray:
        """(N_l, W_l) ints: the row, within the block of level l's gates, of each slot of the padded layout
        (0 in the padding)."""
        index = self.starts(level)[:-1, None] + np.arange(self.width(level))[None, :]
        return np.where(self.level_mask(level), index, 0)

    def groups(self, level: int) -> tuple[tuple[int, np.ndarray], ...]:
        """Level l's gates grouped by their number of children k, increasing: ``(k, rows)`` with rows a
        (gates, k) int array of the gates' rows within the block of level l's gates (breadth-first)."""
        children = np.asarray(self.children(level))
        index = self.level_index(level)
        return tuple((int(k), index[children == k, :k]) for k in np.unique(children))

    def _padded(self, block: Array, level: int, axis: int, fill) -> Array:
        """``block`` (the level's rows along ``axis``) as the padded (..., N_l, W_l, ...) layout."""
        index, mask = self.level_index(level), self.level_mask(level)
        padded = jnp.take(block, jnp.asarray(index), axis=axis)
        mask = mask.reshape(mask.shape + (1,) * (padded.ndim - axis - 2))
        return jnp.where(mask, padded, jnp.asarray(fill, padded.dtype))

    def level_gates(self, rows: Array, level: int) -> Array:
        """The gates of level l, ``rows[o_l : o_{l+1}]`` as (N_l, B_l, ...) (rows may carry trailing axes); a
        non-uniform level padded to (N_l, W_l, ...) with zeros (False for booleans) past each node's children."""
        block = rows[self.offset(level) : self.offset(level + 1)]
        if self.is_uniform(level):
            return block.reshape((self.nodes(level), self.branching[level]) + block.shape[1:])
        return self._padded(block, level, 0, 0)

    def level_columns(self, per_row: Array, level: int) -> Array:
        """Columns ``o_l .. o_{l+1}`` of an (n, E) array as (n, N_l, B_l): per-sample values of level l's gates
        (a non-uniform level padded to (n, N_l, W_l) with zeros)."""
        block = per_row[:, self.offset(level) : self.offset(level + 1)]
        if self.is_uniform(level):
            return block.reshape(block.shape[0], self.nodes(level), self.branching[level])
        return self._padded(block, level, 1, 0)

    def path_log_probs(self, logits: Array) -> Array:
        r"""$\log P(\text{leaf }\ell\mid x_n) = \sum_{l} \log\mathrm{softmax}(\text{logits of the level-}l\text{ node
        on the path})_{c_l}$, shape (n, L), from the (n, E) logits $x_n\cdot v_\nu$ of every row."""
        n = logits.shape[0]
        path = jnp.zeros((n, 1), logits.dtype)
        for level in range(self.depth):
            if self.is_uniform(level):
                edge = jax.nn.log_softmax(self.level_columns(logits, level), axis=-1)
                path = (path[:, :, None] + edge).reshape(n, self.nodes(level + 1))
                continue
            # Non-uniform: the masked log-softmax of the padded layout, then each child's own slot.
            mask = self.level_mask(level)
            edge = jax.nn.log_softmax(self.level_columns(logits, level), axis=-1, where=jnp.asarray(mask))
            parents = self.parents(level + 1)
            slots = parents * self.width(level) + np.arange(self.nodes(level + 1)) - self.starts(level)[parents]
            path = path[:, parents] + edge.reshape(n, -1)[:, slots]
        return path

    def subtree_sums(self, leaf_values: Array, level: int) -> Array:
        """Sums of (n, L) per-leaf values over the leaves under each node of ``level``: (n, N_level)."""
        n = leaf_values.shape[0]
        counts = self.leaf_counts(level)
        if np.all(counts == counts[0]):  # equal contiguous blocks (every uniform tree)
            return jnp.sum(leaf_values.reshape(n, self.nodes(level), self.num_leaves // self.nodes(level)), axis=-1)
        ancestors = np.repeat(np.arange(counts.size), counts)  # the node of `level` above each leaf
        sums = jax.ops.segment_sum(leaf_values.T, ancestors, num_segments=counts.size, indices_are_sorted=True)
        return sums.T

    def arrange(self, centres: Array) -> Array:
        """A leaf for each of L cluster centres (L, d), so that siblings are near each other: top-down, the
        centres under a node are sorted along their principal direction and cut into one run per child, of
        as many centres as the child has leaves ($B_l$ equal runs on a uniform tree). Returns the leaf of each
        centre, (L,)."""
        groups = [jnp.arange(self.num_leaves)]
        for level in range(self.depth):
            sizes, starts = self.leaf_counts(level + 1), self.starts(level)
            split = []
            for node, group in enumerate(groups):
                points = centres[group] - jnp.mean(centres[group], axis=0, keepdims=True)
                direction = jnp.linalg.svd(points, full_matrices=False)[2][0]
                ranked = group[jnp.argsort(points @ direction)]
                edges = np.concatenate([[0], np.cumsum(sizes[starts[node] : starts[node + 1]])])
                split.extend(ranked[lo:hi] for lo, hi in zip(edges[:-1], edges[1:], strict=True))
            groups = split
        order = jnp.concatenate(groups)  # order[leaf] = centre
        return jnp.zeros_like(order).at[order].set(jnp.arange(self.num_leaves))

    def subtree(self, level: int, node: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, leaves)``: boolean masks (E,) and (L,) of the gate rows inside the subtree of node ``node``
        of level ``level`` (the rows of every gate at or below it) and of the leaves under it."""
        if not 0 <= level <= self.depth or not 0 <= node < self.nodes(level):
            raise ValueError(f"no node {node} at level {level} in a tree with branching {self.branching}")
        rows = np.zeros(self.num_rows, bool)
        first, last = node, node + 1  # the subtree's nodes of the current level: [first, last)
        for lower in range(level, self.depth):
            starts = self.starts(lower)
            first, last = int(starts[first]), int(starts[last])
            rows[self.offset(lower) + first : self.offset(lower) + last] = True
        leaves = np.zeros(self.num_leaves, bool)
        leaves[first:last] = True
        return rows, leaves


class HMEParams(eqx.Module):
    r"""Parameters of a hierarchical mixture of experts (:class:`~emjax.models.HierarchicalMoE`).

    Args:
        gates: gate rows, shape (E, d): one row per non-root node, breadth-first (see
            :mod:`emjax.models._hme_tree`); the row of every inner node's first child is pinned.
            :meth:`HierarchicalMoE.level_gates` views level l as an $(N_l, B_l, d)$ array (padded
            on a level whose nodes have different numbers of children).
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
