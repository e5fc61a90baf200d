r"""Hierarchical mixtures of experts (Jordan & Jacobs 1994): a tree of softmax gates over leaf experts.

**The model.** A tree of depth D >= 1 in which node j of level l has $B_{l,j} \ge 1$ children: at
each level the branching is either one count $B_l$ for every node of the level (a uniform level) or one
count per node, breadth-first (the tree's indexing is in :mod:`emjax.models._hme_tree`). Level l + 1 has
$N_{l+1} = \sum_j B_{l,j}$ nodes and the $L = N_D$ leaves are experts of one family ($L = \prod_l B_l$
when every level is uniform). For instance ``branching=(3, (2, 3, 1))``: the root has 3 children, which
have 2, 3 and 1 leaves, 6 in all. Every inner node ν routes x to its children c by a softmax gate on the
same x,

$$\pi_{\nu c}(x) = \mathrm{softmax}_c(x\cdot v_{\nu c}),$$

and the latent label z is the leaf, i.e. the root-to-leaf path $\nu_0\to\nu_1\to\dots\to\nu_D = \ell$.
Its prior is the product of the gate probabilities along the path,

$$P(z=\ell\mid x) = \prod_{l=0}^{D-1} \pi_{\nu_l \nu_{l+1}}(x),\qquad
  \log p(y, z=\ell\mid x) = \sum_{l} \log\pi_{\nu_l\nu_{l+1}}(x) + \log p_\ell(y\mid x).$$

As in the flat mixture the first row of every gate is pinned (adding a vector to all rows of one
gate changes nothing), so gate ν has $B_\nu - 1$ free rows; a node with one child has none (its gate
is one pinned row, $\pi_{\nu c} = 1$), and such a node only passes x on to its subtree. A depth-1
tree, ``branching=(K,)``, is exactly :class:`~emjax.models.MixtureOfExperts` with K experts, with the
same parameters and iterates.

**E-step.** The leaf responsibilities $\gamma_{n\ell} = P(z=\ell\mid x_n, y_n)$ come from
:meth:`~HierarchicalMoE.log_joint` as for any model. The posterior probability that the path passes
node ν is the responsibility summed over ν's subtree, $h_{n\nu} = \sum_{\ell\in\nu}\gamma_{n\ell}$.

**M-step.** The EM surrogate separates: each inner gate ν is a soft-target multinomial logistic
regression with targets $h_{n c}$ for its children c and row mass $h_{n\nu} = \sum_c h_{nc}$,

$$\min_{v_\nu} -\mathrm{mean}_n \sum_c h_{nc}\log\pi_{\nu c}(x_n)
  = \mathrm{mean}_n\,[h_{n\nu}\,\mathrm{logsumexp}_c\,x_n\cdot v_{\nu c}
  - \textstyle\sum_c h_{nc}\,x_n\cdot v_{\nu c}],$$

one gate per inner node, whatever its number of children: the gates of a level are solved in one
vectorised batch per child count (a 1-child gate has nothing to fit), and leaf ℓ is its family's
weighted M-step with weights $\gamma_{n\ell}$ and statistics
$\gamma_{n\ell}T(y_n)$ (:mod:`emjax.models._moe_solve`, the flat model's solvers, reused). The targets
a model hands between E- and M-step are the leaf ones, ``(weights (n, L), stats (n, S, L))`` as for
the flat mixture: node targets are subtree sums of leaf weights, which are linear, so the blended
targets of mirror descent give the blended node targets.

**Exponential family and mirror map.** The complete-data law of $(y, z)$ given x is an exponential
family in the statistics $S = (1[z=\ell],\ 1[z=\ell]\,T(y))_\ell$ (a finite z: every law of it is
one), with natural parameters $\eta_\ell = \log P(z=\ell\mid x) + A_x - A_\ell(\phi_\ell)$ and
$\phi_\ell$, and log-partition $A_x$: any function of (θ, x) that is the same for every leaf is a
valid choice. emjax takes, as for the flat gate, the root's normaliser

$$A_x(\theta) = \mathrm{logsumexp}_c\,x\cdot v_{\mathrm{root}, c},\qquad
  \eta_\ell = \sum_{l}x\cdot v_{\nu_l\nu_{l+1}} - \sum_{l\ge 1}\mathrm{logsumexp}_c\,x\cdot v_{\nu_l c}
  - A_\ell(\phi_\ell),$$

so the natural parameters are linear in the root gate and curved in the inner gates and the experts
(the expert parts of the flat model are curved the same way, docs/math.md §4.5). The mirror map is
$A(\theta) = \mathrm{mean}_n A_{x_n}(\theta)$. EM is then mirror descent with unit step, projected
(docs/math.md §4.6): the M-step fits the model to the statistics $T_n = (1-\eta)E_\theta[S\mid x_n] +
\eta E_\theta[S\mid x_n, y_n]$, η = 1 giving EM. On the root gate, whose M-step has row mass 1, the
step is the unprojected one, $\nabla_{\mathrm{root}}A(\theta^+) = \nabla_{\mathrm{root}}A(\theta) -
\eta\nabla_{\mathrm{root}}L(\theta)$. No choice of A makes $\nabla A$ equal the prior statistics
$\mathrm{mean}_n P(\nu c\mid x_n)x_n$ of an inner gate: that field is not a gradient (its derivative
in a parent's rows is not zero, its transpose is), exactly as the inner gate's M-step weights
$h_{n\nu}$ depend on the current θ. The Bregman divergence is written in its KL form,
$\mathrm{mean}_n \mathrm{KL}(p_{\theta'}(y, z\mid x_n)\,\|\,p_\theta(y, z\mid x_n))$ (as for the flat
mixture).

**Flattened order** (every gradient, information matrix, MIM and Jacobian): the free gate rows
``gates[~pinned]`` row by row (rows breadth-first: the root's rows, then the gates of level 1 node
by node, ..., whatever each node's number of children), then ``experts`` leaf by leaf (row-major,
pinned class column left out), then ``sigma`` when the family has a scale. For a depth-1 tree this
is the flat model's order.

References:
    Jordan, M. I. & Jacobs, R. A. (1994). Hierarchical mixtures of experts and the EM algorithm.
    *Neural Computation* 6(2), 181-214.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from .._dtypes import working_dtype
from .._validation import check_finite, check_real, check_values, not_positive, shape_of
from . import _moe_solve
from ._hme_tree import HMEParams, Tree
from ._kmeans import cluster, standardise
from ._model import AbstractModel, keep_frozen, normalise, row_mean, weigh_rows
from ._params import MoEParams, flatten_unpinned, free_from_pinned, unflatten_unpinned
from .experts import VARIANCE_FLOOR, AbstractExpertFamily
from .moe import _SOFTEN, MixtureOfExperts, MoECache

INIT_FLAT_STEPS = 30  # flat EM steps in the start of a tree of depth >= 2 (HierarchicalMoE.init_params)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_branching(branching) -> tuple:
    """``branching`` checked and in canonical form: a tuple with, per level, one int (every node of the level
    has that many children) or a tuple of ints, one per node of the level breadth-first; a level given as a
    tuple whose counts are all equal is stored as that int (so such trees equal, and hash as, uniform ones)."""
    values = tuple(branching) if isinstance(branching, (tuple, list)) else None
    if not values:
        raise ValueError(
            "branching must be a non-empty tuple with, per level, a Python int >= 1 (children of every node "
            "of the level) or a tuple of such ints (one per node of the level, breadth-first); "
            f"got {branching!r}"
        )
    canonical, nodes = [], 1
    for level, value in enumerate(values):
        if _is_count(value):
            canonical.append(value)
            nodes *= value
            continue
        if not isinstance(value, (tuple, list)):
            raise ValueError(
                f"branching[{level}] must be a Python int >= 1 or a tuple of them (one per node of level "
                f"{level}); got {value!r} in branching={branching!r}"
            )
        counts = tuple(value)
        if len(counts) != nodes:
            raise ValueError(
                f"branching[{level}] must give the children of each of the {nodes} nodes of level {level} "
                f"(breadth-first); got {len(counts)} counts in branching={branching!r}"
            )
        if not all(_is_count(count) for count in counts):
            raise ValueError(
                f"branching[{level}] must hold Python ints >= 1 (children per node); got {value!r} in "
                f"branching={branching!r}"
            )
        canonical.append(counts[0] if len(set(counts)) == 1 else counts)
        nodes = sum(counts)
    return tuple(canonical)


class HierarchicalMoE(AbstractModel):
    r"""A hierarchical mixture of experts: a tree of softmax gates with experts of one family at the leaves.

    See the module docstring for the model, its E- and M-steps and its mirror map.

    Args:
        expert: the leaf expert family (``GaussianExpert()``, ``PoissonExpert()``, ``SoftmaxExpert(C)``).
        branching: children per node at each level, root first (depth >= 1). Each level is an int
            (every node of the level has that many children) or a tuple of ints, one per node of the
            level, breadth-first. ``(2, 3)``: the root has 2 children, each an inner gate with 3
            leaves, 6 experts in all; ``(3, (2, 3, 1))``: the root has 3 children with 2, 3 and 1
            leaves. Counts are Python ints >= 1 (a 1-child node's gate is one pinned row); a level's
            tuple whose counts are all equal is stored as that int, so ``(2, (3, 3))`` is ``(2, 3)``.
        ridge, m_step_method, m_step_max_steps: as for :class:`~emjax.models.MixtureOfExperts`
            (the ridge is on every free gate row and expert coefficient; the inner solver serves
            every gate and iterative expert M-step).

    Parameters are :class:`HMEParams` ``(gates (E, d), experts (L, ...), sigma (L,))``; gate rows are
    stored breadth-first, one per non-root node (:mod:`emjax.models._hme_tree`), and
    :meth:`level_gates` views level l as an $(N_l, B_l, d)$ array (a non-uniform level padded with
    zeros to its widest gate).

    **Freezing.** A ``trainable`` mask is an :class:`HMEParams` of booleans: per gate row (shape (E,)),
    per expert (shape (L,)) or per entry. :meth:`freeze_subtree` builds the mask that freezes a whole
    subtree (its gates and leaves); one gate ν is the rows of its children; one expert is one False
    in ``experts`` and ``sigma``.

    Example:
        >>> import jax, emjax
        >>> model = emjax.HierarchicalMoE(emjax.GaussianExpert(), branching=(2, 3))
        >>> truth = emjax.testing.random_params(model, jax.random.key(0), d=2)
        >>> truth.gates.shape, truth.experts.shape, model.level_gates(truth)[1].shape
        ((8, 2), (6, 2), (2, 3, 2))
        >>> x, y = emjax.sample(model, truth, jax.random.key(1), 500)
        >>> start = emjax.init_params(model, jax.random.key(2), x, y)
        >>> losses = emjax.fit(model, emjax.em(), start, x, y, 10).losses
        >>> bool(losses[-1] <= losses[0])
        True

        A different number of children per node (level 1: 2, 3 and 1 children for the root's 3 children):

        >>> uneven = emjax.HierarchicalMoE(emjax.GaussianExpert(), branching=(3, (2, 3, 1)))
        >>> uneven.describe(), uneven.num_experts, uneven.tree.children(1)
        ('HierarchicalMoE(3x(2,3,1), GaussianExpert)', 6, (2, 3, 1))
        >>> params = emjax.testing.random_params(uneven, jax.random.key(0), d=2)
        >>> params.gates.shape, [gates.shape for gates in uneven.level_gates(params)]
        ((9, 2), [(1, 3, 2), (3, 3, 2)])
    """

    supports_weights = True

    expert: AbstractExpertFamily
    branching: tuple = eqx.field(static=True)
    ridge: float = eqx.field(static=True, default=0.0)
    m_step_method: str = eqx.field(static=True, default="auto")
    m_step_max_steps: int | None = eqx.field(static=True, default=None)

    def __init__(
        self,
        expert: AbstractExpertFamily,
        branching,
        ridge: float = 0.0,
        m_step_method: str = "auto",
        m_step_max_steps: int | None = None,
    ):
        self.expert = expert
        self.branching = _check_branching(branching)
        self.ridge = ridge
        self.m_step_method = m_step_method
        self.m_step_max_steps = m_step_max_steps

    def __check_init__(self):
        if not isinstance(self.expert, AbstractExpertFamily):
            raise ValueError(f"expert must be an emjax expert family such as GaussianExpert(); got {self.expert!r}")
        self._flat(self.num_experts)  # the flat model checks ridge and the M-step options

    # ------------------------------------------------------------------ the tree

    @property
    def tree(self) -> Tree:
        return Tree(self.branching)

    @property
    def num_experts(self) -> int:
        """L, the number of leaves."""
        return self.tree.num_leaves

    def _flat(self, k: int) -> MixtureOfExperts:
        """The flat K-expert mixture whose solvers fit one of this tree's gates (k = its children) or,
        with k = L, its leaves."""
        return MixtureOfExperts(self.expert, k, self.ridge, self.m_step_method, self.m_step_max_steps)

    def _leaves(self, params: HMEParams) -> MoEParams:
        """The leaves as a flat mixture's parameters (for its per-expert functions: the gate is unused)."""
        return MoEParams(gate=params.gates[:1], experts=params.experts, sigma=params.sigma)

    def level_gates(self, params: HMEParams) -> tuple[Array, ...]:
        r"""The gate weights level by level: level l as an $(N_l, B_l, d)$ array (views of ``params.gates``).

        A non-uniform level (nodes with different numbers of children) is padded to $(N_l, \max_j B_{l,j},
        d)$: node j's gate is ``[j, :B_{l,j}]`` and the slots after it are zeros
        (``model.tree.level_mask(l)`` marks the real ones, ``model.tree.children(l)`` gives the counts)."""
        return tuple(self.tree.level_gates(params.gates, level) for level in range(len(self.branching)))

    def freeze_subtree(self, level: int, node: int) -> HMEParams:
        """A ``trainable`` mask (per gate row and per expert) that freezes the subtree below node ``node``
        of level ``level`` (level 0 is the root): every gate at or below it and every leaf under it.
        A leaf (level = depth) freezes one expert."""
        rows, leaves = self.tree.subtree(level, node)
        return HMEParams(gates=~rows, experts=~leaves, sigma=~leaves if self.expert.has_scale else None)

    def describe(self) -> str:
        """``HierarchicalMoE(3x2, GaussianExpert)``: the branching and the family; a non-uniform level shows
        its per-node counts, ``HierarchicalMoE(3x(2,3,1), GaussianExpert)``."""
        classes = getattr(self.expert, "num_classes", None)
        family = type(self.expert).__name__ + ("" if classes is None else f", C={classes}")
        levels = (str(b) if isinstance(b, int) else "(" + ",".join(map(str, b)) + ")" for b in self.branching)
        return f"{type(self).__name__}({'x'.join(levels)}, {family})"

    # ------------------------------------------------------------------ structure

    def pinned(self, d: int) -> HMEParams:
        """Boolean masks (numpy) of the entries fixed by convention: every gate's first row, pinned expert entries."""
        tree = self.tree
        gates = np.broadcast_to(tree.pinned_rows()[:, None], (tree.num_rows, d))
        leaves = self._flat(self.num_experts).pinned(d)
        return HMEParams(gates=np.array(gates), experts=leaves.experts, sigma=leaves.sigma)

    def num_free_parameters(self, d: int) -> int:
        """Number of free (non-pinned) parameters."""
        return int(sum(np.sum(~leaf) for leaf in jax.tree_util.tree_leaves(self.pinned(d))))

    def placeholder(self, d: int, dtype=None) -> HMEParams:
        leaves = self._flat(self.num_experts).placeholder(d, dtype)
        return HMEParams(gates=jnp.zeros((self.tree.num_rows, d), dtype), experts=leaves.experts, sigma=leaves.sigma)

    def flatten(self, params: HMEParams) -> Array:
        """The free entries in the documented order: free gate rows, experts, sigma."""
        return flatten_unpinned(params, self.pinned(params.dim))

    def unflatten(self, vector: Array, like: HMEParams) -> HMEParams:
        return unflatten_unpinned(vector, like, self.pinned(like.dim))

    def free_mask(self, params: HMEParams, trainable=None) -> HMEParams:
        return free_from_pinned(self.pinned(params.dim), trainable)

    def to_unconstrained(self, params: HMEParams) -> HMEParams:
        """log σ in place of σ (families with a scale), as the flat mixture."""
        leaves = self._flat(self.num_experts).to_unconstrained(self._leaves(params))
        return HMEParams(gates=params.gates, experts=leaves.experts, sigma=leaves.sigma)

    def from_unconstrained(self, params: HMEParams) -> HMEParams:
        leaves = self._flat(self.num_experts).from_unconstrained(self._leaves(params))
        return HMEParams(gates=params.gates, experts=leaves.experts, sigma=leaves.sigma)

    # ------------------------------------------------------------------ likelihood

    def _logits(self, params: HMEParams, x: Array, cache: MoECache | None = None) -> Array:
        r"""$x_n\cdot v_\nu$ for every gate row, (n, E)."""
        return x @ params.gates.T if cache is None else (params.gates @ cache.xt).T

    def gate_log_probs(self, params: HMEParams, x: Array) -> Array:
        r"""The path prior $\log P(z=\ell\mid x_n) = \sum_l\log\pi_{\nu_l\nu_{l+1}}(x_n)$, shape (n, L)."""
        return self.tree.path_log_probs(self._logits(params, x))

    def expert_log_probs(self, params: HMEParams, x: Array, y: Array) -> Array:
        r"""$\log p_\ell(y_n\mid x_n)$, shape (n, L)."""
        return self._flat(self.num_experts).expert_log_probs(self._leaves(params), x, y)

    def log_joint(self, params: HMEParams, x: Array, y: Array) -> Array:
        return self.gate_log_probs(params, x) + self.expert_log_probs(params, x, y)

    def expert_predictive(self, params: HMEParams, x: Array):
        """Every leaf's law of y given x, stacked on axis 1."""
        return self._flat(self.num_experts).expert_predictive(self._leaves(params), x)

    def penalty(self, params: HMEParams, free: HMEParams):
        r"""$\tfrac{\lambda}{2}(\|V_F\|^2 + \|B_F\|^2)$ over the free gate rows and expert entries; None when λ = 0."""
        if not self.ridge:
            return None
        gates = jnp.sum(jnp.square(jnp.where(free.gates, params.gates, 0)))
        return 0.5 * self.ridge * (gates + jnp.sum(jnp.square(jnp.where(free.experts, params.experts, 0))))

    # ------------------------------------------------------------------ statistics and M-step

    def expectation(
        self, params: HMEParams, x: Array, y: Array, cache: MoECache | None = None, weights: Array | None = None
    ):
        """The loss, the leaf targets ``(γ (n, L), γ T(y) (n, S, L))`` (times the observation weights, when
        given) and, as scores, the (n, E) gate logits."""
        logits = self._logits(params, x, cache)
        joint = self.tree.path_log_probs(logits) + self.expert_log_probs(params, x, y)
        log_likelihoods, gamma = _moe_solve.log_softmax_parts(joint)
        stats = self.expert.statistic(y)[:, :, None] * gamma[:, None, :]
        return -row_mean(log_likelihoods, weights), weigh_rows((gamma, stats), weights), logits

    def posterior_targets(self, params: HMEParams, x: Array, y: Array, weights: Array | None = None):
        r"""Leaf weights $\gamma_{n\ell}$ (n, L) and statistics $\gamma_{n\ell}T(y_n)$ (n, S, L); scores: the
        gate logits."""
        _, targets, logits = self.expectation(params, x, y, weights=weights)
        return targets, logits

    def prior_targets(self, params: HMEParams, x: Array, scores, weights: Array | None = None):
        r"""Leaf weights $P(z=\ell\mid x_n)$ and statistics $P(z=\ell\mid x_n)E_\ell[T\mid x_n]$."""
        logits = self._logits(params, x) if scores is None else scores
        prior = jnp.exp(self.tree.path_log_probs(logits))
        flat = self._flat(self.num_experts)
        stats = flat._per_expert(self.expert.mean_statistic, self._leaves(params), x) * prior[:, None, :]
        return weigh_rows((prior, stats), weights)

    def precompute(self, x: Array, y: Array | None = None) -> MoECache:
        """x feature-major (the flat mixture's cache), computed once per fit."""
        return MoECache(xt=x.T)

    def solve(self, params: HMEParams, x: Array, targets, free: HMEParams, scores=None, cache=None) -> HMEParams:
        r"""Every inner gate fitted to its subtree sums of the leaf weights (the flat gate solver with row
        mass), every leaf to its weights and statistics (the flat expert solvers)."""
        weights, stats = targets
        tree = self.tree
        free = jax.tree_util.tree_map(lambda f, p: jnp.broadcast_to(f, p.shape), free, params)
        xt = None if cache is None else cache.xt
        rows = []
        for level, b in enumerate(self.branching):
            if not tree.is_uniform(level):
                rows.append(self._solve_level(tree, level, params, x, weights, free, scores, xt))
                continue
            node_targets = tree.subtree_sums(weights, level + 1).reshape(x.shape[0], tree.nodes(level), b)
            gates, masks = tree.level_gates(params.gates, level), tree.level_gates(free.gates, level)
            logits = None if scores is None else tree.level_columns(scores, level)
            if tree.nodes(level) == 1:  # the root: no batch axis (a depth-1 tree is the flat model, op for op)
                root_logits = None if logits is None else logits[:, 0]
                new = _moe_solve.fit_gate(self._flat(b), x, node_targets[:, 0], gates[0], masks[0], root_logits, xt)
                new = new[None]
            else:
                new = self._fit_gates(b, x, node_targets, gates, masks, logits, xt)
            rows.append(new.reshape(-1, x.shape[1]))
        # The leaves: the flat solver with a one-row gate (pinned, so it fits no gate), the experts only.
        leaves, free_leaves = self._leaves(params), self._leaves(free)
        free_leaves = MoEParams(gate=jnp.zeros_like(free_leaves.gate), experts=free_leaves.experts, sigma=free.sigma)
        solved = _moe_solve.solve_targets(
            self._flat(self.num_experts), leaves, x, weights, stats, free_leaves, None, xt
        )
        new = HMEParams(gates=jnp.concatenate(rows), experts=solved.experts, sigma=solved.sigma)
        return keep_frozen(free, new, params)

    def _solve_level(self, tree: Tree, level: int, params, x, weights, free, scores, xt) -> Array:
        """The M-step of a non-uniform level's gates: its gates grouped by their number of children k, each
        group one vmapped flat k-gate solve; the level's rows, (N_{l+1}, d). A 1-child gate is its pinned row."""
        start, stop = tree.offset(level), tree.offset(level + 1)
        node_targets = tree.subtree_sums(weights, level + 1)  # (n, N_{l+1}): the children's targets
        block, masks = params.gates[start:stop], free.gates[start:stop]
        logits = None if scores is None else scores[:, start:stop]
        for k, index in tree.groups(level):
            if k == 1:  # one child: probability 1 and nothing to fit
                continue
            group_logits = None if logits is None else logits[:, index]
            new = self._fit_gates(k, x, node_targets[:, index], block[index], masks[index], group_logits, xt)
            block = block.at[index.ravel()].set(new.reshape(-1, x.shape[1]))
        return block

    def _fit_gates(self, k: int, x: Array, targets, gates, masks, logits, xt) -> Array:
        """G gates of k children each, fitted by the flat k-gate solver in one ``vmap``: targets (n, G, k),
        gates and masks (G, k, d), logits (n, G, k) or None; returns (G, k, d)."""
        gate_model = self._flat(k)

        def fit(t, w, f, z):
            return _moe_solve.fit_gate(gate_model, x, t, w, f, z, xt)

        if logits is None:
            return jax.vmap(lambda t, w, f: fit(t, w, f, None), in_axes=(1, 0, 0))(targets, gates, masks)
        return jax.vmap(fit, in_axes=(1, 0, 0, 1))(targets, gates, masks, logits)

    # ------------------------------------------------------------------ mirror map

    def mirror_map(self, params: HMEParams, x: Array, weights: Array | None = None) -> Array:
        r"""$A(\theta) = \mathrm{mean}_n\,\mathrm{logsumexp}_c\,x_n\cdot v_{\mathrm{root},c}$ (module docstring)."""
        root = self.tree.level_gates(params.gates, 0)[0]  # the root's gate (one node: never padded)
        return row_mean(jax.nn.logsumexp(x @ root.T, axis=-1), weights)

    def bregman_divergence(self, params: HMEParams, ref: HMEParams, x: Array, weights: Array | None = None) -> Array:
        r"""$\mathrm{mean}_n\mathrm{KL}(p_{ref}(y, z\mid x_n)\,\|\,p_\theta(y, z\mid x_n)) = \mathrm{KL}(P'\|P) +
        \sum_\ell P'_\ell\,\mathrm{KL}_\ell$ over the leaf priors P and the leaf experts."""
        log_prior, log_prior_ref = self.gate_log_probs(params, x), self.gate_log_probs(ref, x)
        prior_ref = jnp.exp(log_prior_ref)
        gate_kl = jnp.sum(prior_ref * (log_prior_ref - log_prior), axis=-1)
        family = self.expert

        def expert_kl(coef, scale, coef_ref, scale_ref):
            natural, natural_ref = family.natural(coef, scale, x), family.natural(coef_ref, scale_ref, x)
            mean_ref = family.mean_statistic(coef_ref, scale_ref, x)
            return (
                family.log_partition(natural)
                - family.log_partition(natural_ref)
                - jnp.sum(mean_ref * (natural - natural_ref), axis=-1)
            )

        kls = jax.vmap(expert_kl, out_axes=-1)(params.experts, params.sigma, ref.experts, ref.sigma)
        return row_mean(jnp.maximum(gate_kl, 0) + jnp.sum(prior_ref * jnp.maximum(kls, 0), axis=-1), weights)

    # ------------------------------------------------------------------ sampling, starts, diagnostics

    def sample(self, params: HMEParams, key: Array, n: int):
        """x ~ N(0, I_d), then the leaf z from the path prior, then y from expert z."""
        dtype = working_dtype(params)
        params = jax.tree_util.tree_map(lambda leaf: leaf.astype(dtype), params)
        key_x, key_z, key_y = jax.random.split(key, 3)
        x = jax.random.normal(key_x, (n, params.dim), dtype)
        z = jax.random.categorical(key_z, self.gate_log_probs(params, x), axis=-1)
        keys = jax.random.split(key_y, self.num_experts)
        draws = jax.vmap(self.expert.sample, in_axes=(0, 0, 0, None), out_axes=-1)(
            params.experts, params.sigma, keys, x
        )
        return x, jnp.take_along_axis(draws, z[:, None], axis=-1)[:, 0]

    def init_params(self, key: Array, x: Array, y: Array, weights: Array | None = None) -> HMEParams:
        r"""A flat start grouped into the tree. Depth 1: the flat mixture's start with K experts (cluster the
        standardised $[x, T(y)]$ into K groups by k-means++, responsibility 1/2 on the sample's expert plus
        1/(2K) on every expert, one M-step from zero, σ from the spread of y).

        Depth >= 2: the flat mixture with L experts from its own start, then ``INIT_FLAT_STEPS`` (30) of its
        EM steps (a fixed count, one ``fori_loop``); its experts are placed on the leaves so that siblings
        have nearby responsibility-weighted centres in the standardised x (top-down, sorted along the centres'
        principal direction: :meth:`~emjax.models._hme_tree.Tree.arrange`), and the tree takes one M-step
        on the flat responsibilities (gates from zero: every gate fits the subtree sums; the leaves are
        the flat experts refitted). On well-separated 2x2 and 3x2 trees this start reaches the best optimum
        found from most starts, where the k-means start alone did from about one in five
        (benchmarks/results/hme_restarts.md). With observation ``weights`` every step weighs the rows."""
        k = self.num_experts
        statistic = self.expert.statistic(y)
        features = standardise(x, weights)
        if self.tree.depth == 1:
            labels = cluster(key, jnp.concatenate([features, standardise(statistic, weights)], axis=1), k, weights)
            onehot = weigh_rows(jax.nn.one_hot(labels, k, dtype=x.dtype), weights)
            centres = onehot.T @ features / jnp.maximum(jnp.sum(onehot, axis=0), 1)[:, None]
            leaves = self.tree.arrange(centres)[labels]
            soft = weigh_rows((1 - _SOFTEN) * jax.nn.one_hot(leaves, k, dtype=x.dtype) + _SOFTEN / k, weights)
            start = self.placeholder(x.shape[1], x.dtype)
            scale = self.expert.initial_scale(y, weights)
            if scale is not None:
                start = HMEParams(gates=start.gates, experts=start.experts, sigma=jnp.full((k,), scale, x.dtype))
            return self.solve(start, x, (soft, statistic[:, :, None] * soft[:, None, :]), self.free_mask(start))
        flat = self._flat(k)
        flat_start = flat.init_params(key, x, y, weights)
        flat_free = flat.free_mask(flat_start)

        def flat_em_step(_, params):
            targets, scores = flat.posterior_targets(params, x, y, weights)
            return flat.solve(params, x, targets, flat_free, scores)

        fitted = jax.lax.fori_loop(0, INIT_FLAT_STEPS, flat_em_step, flat_start)
        (gamma, stats), _ = flat.posterior_targets(fitted, x, y, weights)  # weighted: rows count v_n times
        centres = gamma.T @ features / jnp.maximum(jnp.sum(gamma, axis=0), jnp.finfo(x.dtype).tiny)[:, None]
        leaf = self.tree.arrange(centres)  # leaf[flat expert]
        order = jnp.zeros_like(leaf).at[leaf].set(jnp.arange(k))  # order[leaf] = flat expert
        start = self.placeholder(x.shape[1], x.dtype)
        start = HMEParams(
            gates=start.gates,
            experts=fitted.experts[order],
            sigma=None if fitted.sigma is None else fitted.sigma[order],
        )
        return self.solve(start, x, (gamma[:, order], stats[..., order]), self.free_mask(start))

    def random_params(self, key: Array, d: int, gate_norm, expert_norm, sigma, dtype) -> HMEParams:
        """Free gate rows and expert columns along uniform random directions of norms ``gate_norm`` and
        ``expert_norm`` (the flat mixture's experts); pinned rows and columns 0; σ = ``sigma``."""
        key_gate, key_leaves = jax.random.split(key)
        v = jax.random.normal(key_gate, (self.tree.num_rows, d), dtype)
        gates = jnp.asarray(gate_norm, dtype) * v / jnp.linalg.norm(v, axis=1, keepdims=True)
        gates = jnp.where(jnp.asarray(self.pinned(d).gates), 0, gates)
        leaves = self._flat(self.num_experts).random_params(key_leaves, d, gate_norm, expert_norm, sigma, dtype)
        return HMEParams(gates=gates, experts=leaves.experts, sigma=leaves.sigma)

    def snr_expert_norm(self, snr, noise):
        """SNR = ‖β‖/σ for experts with a scale, as the flat mixture."""
        return snr * noise if self.expert.has_scale else snr

    def is_degenerate(self, params: HMEParams, x: Array, y: Array, weights: Array | None = None, free=None) -> Array:
        """True when some leaf has under one sample of responsibility mass (in rows' worth, with observation
        weights) or its σ has hit the variance floor."""
        gamma = weigh_rows(normalise(self.log_joint(params, x, y))[0], weights)
        flags = jnp.sum(gamma, axis=0) < 1
        if params.sigma is not None:
            flags = flags | (jnp.square(params.sigma) <= 2 * VARIANCE_FLOOR)
        return jnp.any(flags)

    # ------------------------------------------------------------------ checks

    def check_params(self, params, d: int, name: str = "params") -> None:
        """An :class:`HMEParams` of shapes (E, d), (L, d[, C]), (L,) with finite values and σ > 0."""
        if not isinstance(params, HMEParams):
            raise ValueError(
                f"{name} must be an emjax.HMEParams(gates=..., experts=..., sigma=...) for "
                f"{self.describe()}; got {type(params).__name__}"
            )
        expected = {
            "gates": (self.tree.num_rows, d),
            "experts": (self.num_experts,) + self.expert.coef_shape(d),
            "sigma": (self.num_experts,) if self.expert.has_scale else None,
        }
        for field, shape in expected.items():
            value = getattr(params, field)
            if shape is None:
                if value is not None:
                    raise ValueError(f"{name}.{field} must be None for {self.describe()}; got an array")
                continue
            if value is None or shape_of(value, f"{name}.{field}") != shape:
                got = None if value is None else shape_of(value, f"{name}.{field}")
                raise ValueError(
                    f"{name}.{field} must have shape {shape} (E={self.tree.num_rows} gate rows, L={self.num_experts} "
                    f"leaves, d={d}) for {self.describe()}; got {got}"
                )
            check_real(value, f"{name}.{field}")
            check_finite(value, f"{name}.{field}")
        if params.sigma is not None:
            check_values(params.sigma, not_positive, f"{name}.sigma must be positive")

    def check_labels(self, y) -> None:
        self.expert.check_labels(y)
