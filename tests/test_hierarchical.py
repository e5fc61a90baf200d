"""Hierarchical mixtures of experts (issue 19): the flat model at depth 1, EM = MD(1), monotone EM, a NumPy
oracle of the E- and M-step on a depth-2 tree, the EM Jacobian at a fixed point, frozen subtrees.

Most tests share one depth-2 problem (branching (2, 2), Gaussian leaves, d = 2) so that they share compiled
programs: every EM run on it is the same bounded ``lax.while_loop`` (``STEPS``, a tolerance), and every EM run on
the non-uniform tree's problem the same ``lax.scan`` of ``UNEVEN_STEPS`` steps. Float64 throughout
(tests/conftest.py)."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from emjax.models._hme_tree import Tree

D = 2


def _leaves(params):
    return jax.tree_util.tree_leaves(params)


def _close(a, b, **tolerance):
    for left, right in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(left), np.asarray(right), **tolerance)


def _problem(model, seed, n, gate_norm=2.0, expert_norm=2.0, sigma=0.5):
    key_truth, key_data = jax.random.split(jax.random.key(seed))
    truth = emjax.testing.random_params(model, key_truth, D, gate_norm=gate_norm, expert_norm=expert_norm, sigma=sigma)
    x, y = emjax.sample(model, truth, key_data, n)
    return truth, x, y


TREE = emjax.HierarchicalMoE(emjax.GaussianExpert(), branching=(2, 2))


@pytest.fixture(scope="module")
def tree_problem():
    # Experts not so far apart that responsibilities underflow to subnormals: there the flat Gaussian M-step's
    # forward derivative (stats / weights) is NaN, which the Jacobian test would see.
    # The start is a generic point (a random draw, far from the fit): init_params starts too close to the
    # optimum for the tests of EM's moves (test_start_reaches_the_optimum_of_the_truth).
    truth, x, y = _problem(TREE, seed=0, n=400, gate_norm=3.0, expert_norm=2.0, sigma=0.5)
    start = emjax.testing.random_params(TREE, jax.random.key(1), D, gate_norm=1.0, expert_norm=1.0, sigma=1.0)
    return truth, x, y, start


# ----------------------------------------------------------------------------- structure


def test_tree_indexing_against_loops():
    """Rows breadth-first, pinned first children, path log-probabilities and subtrees of a depth-3 tree."""
    tree = Tree((2, 3, 2))
    assert (tree.num_leaves, tree.num_rows) == (12, 2 + 6 + 12)
    assert list(np.nonzero(tree.pinned_rows())[0]) == [0, 2, 5, 8, 10, 12, 14, 16, 18]
    logits = np.random.default_rng(0).normal(size=(5, tree.num_rows))

    def log_softmax(z):
        return z - np.log(np.sum(np.exp(z)))

    expected = np.zeros((5, 12))
    for leaf in range(12):
        i, j, k = leaf // 6, (leaf // 2) % 3, leaf % 2  # the path: root -> i -> (i, j) -> leaf
        node1 = i  # level-1 node index, level-2 node index i * 3 + j
        node2 = i * 3 + j
        expected[:, leaf] = [
            log_softmax(row[0:2])[i]
            + log_softmax(row[2 + 3 * node1 : 2 + 3 * node1 + 3])[j]
            + log_softmax(row[8 + 2 * node2 : 8 + 2 * node2 + 2])[k]
            for row in logits
        ]
    np.testing.assert_allclose(tree.path_log_probs(jnp.asarray(logits)), expected, rtol=1e-13)
    rows, leaves = tree.subtree(1, 1)  # the root's second child: its gate, three grandchildren gates, six leaves
    assert list(np.nonzero(rows)[0]) == [5, 6, 7] + list(range(14, 20))
    assert list(np.nonzero(leaves)[0]) == list(range(6, 12))
    with pytest.raises(ValueError, match="no node 3 at level 1"):
        tree.subtree(1, 3)
    # The start's arrangement of clusters on the leaves: siblings are the nearby centres.
    centres = jnp.array([[0.0, 0.0], [10.0, 1.0], [1.0, 0.0], [11.0, 1.0]])
    leaf = np.asarray(Tree((2, 2)).arrange(centres))
    assert sorted(leaf) == [0, 1, 2, 3]
    assert leaf[0] // 2 == leaf[2] // 2 != leaf[1] // 2 == leaf[3] // 2


def test_flattened_order_and_masks():
    params = emjax.testing.random_params(TREE, jax.random.key(3), D)
    vector = TREE.flatten(params)
    free_rows = np.asarray(params.gates)[[1, 3, 5]]  # the second child of each of the three gates
    np.testing.assert_array_equal(vector, np.concatenate([free_rows.ravel(), np.ravel(params.experts), params.sigma]))
    _close(TREE.unflatten(vector, params), params, rtol=0, atol=0)
    assert TREE.num_free_parameters(D) == vector.size == emjax.num_parameters(TREE, params)
    mask = TREE.freeze_subtree(1, 0)  # inner gate 0 (rows 2, 3) and leaves 0, 1
    np.testing.assert_array_equal(mask.gates, [True, True, False, False, True, True])
    np.testing.assert_array_equal(mask.experts, [False, False, True, True])
    free = TREE.free_mask(params, mask)
    np.testing.assert_array_equal(free.gates[:, 0], [False, True, False, False, False, True])
    with pytest.raises(ValueError, match="branching must be"):
        emjax.HierarchicalMoE(emjax.GaussianExpert(), branching=())
    with pytest.raises(ValueError, match=r"gates must have shape \(6, 2\)"):
        emjax.neg_log_likelihood(TREE, emjax.HMEParams(params.gates[:4], params.experts, params.sigma), *_data())


def _data():
    return jnp.zeros((3, D)), jnp.zeros(3)


# ----------------------------------------------------------------------------- depth 1 is the flat model


@pytest.mark.parametrize("family", [emjax.GaussianExpert(), emjax.PoissonExpert()], ids=["gauss", "poisson"])
def test_depth_one_is_the_flat_mixture(family):
    flat = emjax.MixtureOfExperts(family, 3)
    tree = emjax.HierarchicalMoE(family, branching=(3,))
    truth, x, y = _problem(flat, seed=4, n=300, expert_norm=1.0 if isinstance(family, emjax.PoissonExpert) else 2.0)

    def as_tree(p):
        return emjax.HMEParams(gates=p.gate, experts=p.experts, sigma=p.sigma)

    # Two generic points (random_params' eager ops compile once for both).
    flat_params, other = (
        emjax.testing.random_params(flat, jax.random.key(seed), D, expert_norm=0.5, sigma=0.7) for seed in (5, 6)
    )

    @jax.jit  # one program per model: the loss, the mirror map, the prior targets, a divergence and an EM step
    def parts(flat_params, other):
        out = []
        for model, params, ref in ((flat, flat_params, other), (tree, as_tree(flat_params), as_tree(other))):
            prior = model.prior_targets(params, x, None)
            divergence = model.bregman_divergence(ref, params, x)
            new = emjax.em_step(model, params, x, y)
            out.append((model.loss(params, x, y), model.mirror_map(params, x), prior, divergence, new))
        return out

    np.testing.assert_array_equal(tree.flatten(as_tree(flat_params)), flat.flatten(flat_params))
    for _ in range(2):  # two EM iterates, each from the flat model's
        flat_parts, tree_parts = parts(flat_params, other)
        np.testing.assert_allclose(tree_parts[:2], flat_parts[:2], rtol=1e-13)  # loss, mirror map
        _close(tree_parts[2], flat_parts[2], rtol=1e-12, atol=1e-14)  # prior targets
        np.testing.assert_allclose(tree_parts[3], flat_parts[3], rtol=1e-12)  # Bregman divergence (KL)
        _close(tree_parts[4], as_tree(flat_parts[4]), rtol=1e-11, atol=1e-12)  # EM step
        flat_params = flat_parts[4]


# ----------------------------------------------------------------------------- EM and mirror descent


def test_em_is_mirror_descent_with_unit_step(tree_problem):
    _, x, y, start = tree_problem
    new = emjax.em_step(TREE, start, x, y)
    _close(emjax.mirror_descent_step(TREE, start, x, y, 1.0), new, rtol=1e-12, atol=1e-13)
    # The targets EM fits are the posterior ones: its M-step makes the EM surrogate stationary.
    gamma = emjax.responsibilities(TREE, start, x, y)
    grads = jax.jit(jax.grad(lambda p: TREE.surrogate(p, x, y, gamma)))(new)  # compiled: far faster than eager
    for grad, free in zip(_leaves(grads), _leaves(TREE.free_mask(new)), strict=True):
        np.testing.assert_allclose(jnp.where(free, grad, 0), 0, atol=1e-9)
    # Fitting the prior targets (eta = 0) returns the point itself.
    free = TREE.free_mask(start)
    refit = jax.jit(lambda p: TREE.solve(p, x, TREE.prior_targets(p, x, None), free))(start)
    _close(refit, start, rtol=1e-8, atol=1e-9)


def test_mirror_map_is_the_root_normaliser_and_its_block_steps_unprojected(tree_problem):
    """grad A is the root gate's prior statistic and zero elsewhere; on the root block MD(eta) solves
    grad A(theta+) = grad A(theta) - eta grad L(theta) (its M-step has row mass 1)."""
    _, x, y, start = tree_problem
    grad = emjax.mirror_map_grad(TREE, start, x)
    root_prior = jax.nn.softmax(x @ start.gates[:2].T, axis=-1)
    np.testing.assert_allclose(grad.gates[:2], root_prior.T @ x / x.shape[0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grad.gates[2:], 0)
    np.testing.assert_allclose(grad.experts, 0)
    eta = 0.4
    new = emjax.mirror_descent_step(TREE, start, x, y, eta)
    loss_grad = emjax.neg_log_likelihood_grad(TREE, start, x, y)
    expected = grad.gates[1] - eta * loss_grad.gates[1]  # row 1: the free root row
    np.testing.assert_allclose(emjax.mirror_map_grad(TREE, new, x).gates[1], expected, atol=1e-10)
    # The Bregman divergence is the complete-data KL: zero at the point, positive elsewhere.
    assert float(emjax.bregman_divergence(TREE, start, start, x)) == 0
    assert float(emjax.bregman_divergence(TREE, new, start, x)) > 1e-4


# One compiled EM loop for every EM run on the (2, 2) problem: 1000 steps bounded, stopping at a tolerance (a traced
# value: 1e-14 for the fits, a loose one for the frozen subtree's few steps).
STEPS, TOL = 1000, 1e-14


@pytest.fixture(scope="module")
def fit_from_truth(tree_problem):
    """EM from the truth to its fixed point (the Jacobian test's point, and the reference of the start test)."""
    truth, x, y, _ = tree_problem
    return emjax.fit(TREE, emjax.em(), truth, x, y, STEPS, tol=TOL)


def test_em_never_increases_the_loss(tree_problem):
    _, x, y, start = tree_problem
    result = emjax.fit(TREE, emjax.em(), start, x, y, STEPS, tol=TOL)
    losses = np.asarray(result.losses)
    losses = losses[np.isfinite(losses)]
    assert losses.size > 20  # at least 20 EM steps
    assert np.all(np.diff(losses) <= 1e-13 * np.abs(losses[1:])), np.diff(losses)
    assert losses[-1] < losses[0] - 1e-2  # it moved
    assert int(result.status) == int(emjax.Status.ok)


def test_start_reaches_the_optimum_of_the_truth(tree_problem, fit_from_truth):
    """init_params (a flat MoE's EM steps grouped into the tree) starts in the basin of the fit from the truth:
    EM from it ends at the same loss and, leaves relabelled within the tree's symmetries, the same point."""
    _, x, y, _ = tree_problem
    start = emjax.init_params(TREE, jax.random.key(1), x, y)
    fits = [emjax.fit(TREE, emjax.em(), start, x, y, STEPS, tol=TOL), fit_from_truth]
    from_start, from_truth = (float(f.final_loss) for f in fits)
    assert float(emjax.neg_log_likelihood(TREE, start, x, y)) > from_start + 1e-4  # the start is not the fit
    assert from_start == pytest.approx(from_truth, abs=1e-9)
    # Same expert set: every fitted leaf from the truth has a leaf from the start within 1e-4.
    a, b = np.asarray(fits[0].params.experts), np.asarray(fits[1].params.experts)
    assert np.max(np.min(np.abs(a[:, None, :] - b[None, :, :]).max(axis=-1), axis=0)) < 1e-4


# ----------------------------------------------------------------------------- NumPy oracle


def _oracle_e_step(params, x, y):
    """Leaf priors and responsibilities of a (2, 2) tree with Gaussian leaves, by explicit loops over the
    documented layout: rows 0, 1 the root's gate; rows 2, 3 the gate of node 0; rows 4, 5 that of node 1."""
    v, beta, sigma = (np.asarray(a) for a in (params.gates, params.experts, params.sigma))
    n = x.shape[0]
    prior, joint = np.zeros((n, 4)), np.zeros((n, 4))
    for row in range(n):
        root = np.exp(x[row] @ v[0:2].T)
        root /= root.sum()
        for i in range(2):
            inner = np.exp(x[row] @ v[2 + 2 * i : 4 + 2 * i].T)
            inner /= inner.sum()
            for c in range(2):
                leaf = 2 * i + c
                prior[row, leaf] = root[i] * inner[c]
                mean = x[row] @ beta[leaf]
                density = np.exp(-((y[row] - mean) ** 2) / (2 * sigma[leaf] ** 2)) / np.sqrt(
                    2 * np.pi * sigma[leaf] ** 2
                )
                joint[row, leaf] = prior[row, leaf] * density
    return prior, joint / joint.sum(axis=1, keepdims=True), -np.mean(np.log(joint.sum(axis=1)))


def test_e_and_m_step_against_a_numpy_oracle(tree_problem):
    _, x, y, start = tree_problem
    x, y = np.asarray(x), np.asarray(y)
    prior, gamma, loss = _oracle_e_step(start, x, y)
    np.testing.assert_allclose(np.exp(TREE.gate_log_probs(start, jnp.asarray(x))), prior, rtol=1e-12)
    np.testing.assert_allclose(emjax.responsibilities(TREE, start, x, y), gamma, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(emjax.neg_log_likelihood(TREE, start, x, y), loss, rtol=1e-13)
    new = emjax.em_step(TREE, start, x, y)
    # Leaves: weighted least squares and the weighted residual variance, in closed form.
    for leaf in range(4):
        g = gamma[:, leaf]
        beta = np.linalg.solve((x * g[:, None]).T @ x, (x * g[:, None]).T @ y)
        np.testing.assert_allclose(new.experts[leaf], beta, rtol=1e-9)
        np.testing.assert_allclose(new.sigma[leaf] ** 2, np.sum(g * (y - x @ beta) ** 2) / np.sum(g), rtol=1e-9)
    # Gates: node targets are subtree sums; each gate's M-step is stationary for its soft-target objective
    # mean_n [h_node LSE - sum_c h_c logit_c], gradient mean_n (h_node pi_c - h_c) x_n for the free row c = 1.
    v = np.asarray(new.gates)
    children = {0: gamma.reshape(-1, 2, 2).sum(axis=2), 1: gamma[:, 0:2], 2: gamma[:, 2:4]}  # per gate: (n, 2)
    for gate, targets in children.items():
        logits = x @ v[2 * gate : 2 * gate + 2].T
        pi = np.exp(logits - logits.max(axis=1, keepdims=True))
        pi /= pi.sum(axis=1, keepdims=True)
        gradient = ((targets.sum(axis=1) * pi[:, 1] - targets[:, 1])[:, None] * x).mean(axis=0)
        np.testing.assert_allclose(gradient, 0, atol=1e-10)
        assert np.all(v[2 * gate] == np.asarray(start.gates)[2 * gate])  # the pinned first row
    assert np.abs(v[3] - np.asarray(start.gates)[3]).max() > 1e-3  # the inner gates did move


# ----------------------------------------------------------------------------- information, masks


def _em_map_jacobian(model, fitted, x, y):
    """The Jacobian of the flattened EM map at ``fitted``, compiled as one program (eager, its every primitive
    would compile on its own)."""

    @jax.jit
    def jacobian(vector, fitted, x, y):
        return jax.jacobian(lambda v: model.flatten(emjax.em_step(model, model.unflatten(v, fitted), x, y)))(vector)

    return jacobian(model.flatten(fitted), fitted, x, y)


def test_em_jacobian_at_a_fixed_point_is_the_missing_information_matrix(tree_problem, fit_from_truth):
    _, x, y, _ = tree_problem
    fitted = fit_from_truth.params
    vector = TREE.flatten(fitted)
    assert float(jnp.max(jnp.abs(TREE.flatten(emjax.em_step(TREE, fitted, x, y)) - vector))) < 1e-10
    jacobian = _em_map_jacobian(TREE, fitted, x, y)
    mim = emjax.missing_information_matrix(TREE, fitted, x, y)
    assert mim.shape == (vector.size, vector.size) and float(jnp.max(jnp.abs(mim))) > 0.1
    np.testing.assert_allclose(jacobian, mim, atol=2e-6)
    eigenvalues = np.sort(np.linalg.eigvals(np.asarray(mim)).real)
    assert -1e-8 < eigenvalues[0] and eigenvalues[-1] < 1


def test_frozen_subtree_stays_bit_identical(tree_problem):
    _, x, y, start = tree_problem
    mask = TREE.freeze_subtree(1, 1)  # inner gate 1 (rows 4, 5) and leaves 2, 3
    # The other tests' compiled loop, stopped early by a loose tolerance (a dozen steps).
    result = emjax.fit(TREE, emjax.em(trainable=mask), start, x, y, STEPS, tol=1e-2)
    assert 3 <= int(result.num_steps) < STEPS
    new = result.params
    np.testing.assert_array_equal(new.gates[4:], start.gates[4:])
    np.testing.assert_array_equal(new.experts[2:], start.experts[2:])
    np.testing.assert_array_equal(new.sigma[2:], start.sigma[2:])
    assert float(jnp.max(jnp.abs(new.gates[1] - start.gates[1]))) > 1e-3
    assert float(jnp.max(jnp.abs(new.experts[:2] - start.experts[:2]))) > 1e-3


# ----------------------------------------------------------------------------- against mixtools' hmeEM

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_reaches_mixtools_hme_loglik():
    """mixtools' ``hmeEM(y, x, k = 2)`` (tests/fixtures/r_hme_fit.json, written by
    benchmarks/r/export_hme_fixture.R): a logistic gate and two Gaussian experts, both on (1, x). emjax's
    depth-1 tree on [1, x] reaches its log-likelihood or better from one data-driven start, and its fit is
    mixtools' (which stopped at its iteration cap, the gate slope short of the maximum) to within that gap."""
    table = np.loadtxt(FIXTURES / "hme_mixtools.csv", delimiter=",", skiprows=1)
    assert table.shape == (500, 3)
    np.testing.assert_allclose(table[:, :2].sum(axis=0), [-50.59768420192, 586.8892962063], rtol=1e-10)
    ref = json.loads((FIXTURES / "r_hme_fit.json").read_text())
    assert ref["loglik"] == pytest.approx(-599.817704455582, abs=1e-9)
    x, y = np.stack([np.ones(500), table[:, 0]], axis=1), table[:, 1]
    model = emjax.HierarchicalMoE(emjax.GaussianExpert(), branching=(2,))
    start = emjax.init_params(model, jax.random.key(0), x, y)
    result = emjax.fit(model, emjax.em(), start, x, y, 2000, tol=1e-10)
    assert int(result.status) == int(emjax.Status.ok)
    loglik = -500 * float(result.final_loss)
    assert loglik >= ref["loglik"] - 1e-6 * 500
    assert loglik == pytest.approx(-599.72937028770, abs=1e-6)  # 0.088 above mixtools
    # Labels: P(comp 1 | x) = inv.logit(x . w) in mixtools; emjax's leaf 1 (the free gate row) likewise.
    gates, experts, sigma = (np.asarray(a) for a in (result.params.gates, result.params.experts, result.params.sigma))
    flip = np.sign(gates[1, 1]) != np.sign(ref["w"][1])
    w, comp1, comp2 = (-gates[1], 0, 1) if flip else (gates[1], 1, 0)
    np.testing.assert_allclose(experts[[comp1, comp2]], ref["beta"], atol=0.01)
    np.testing.assert_allclose(sigma[[comp1, comp2]], ref["sigma"], atol=0.005)
    np.testing.assert_allclose(w, ref["w"], atol=0.15)  # the gate: mixtools' slope -2.40, the maximum's -2.53


# ----------------------------------------------------------------------------- a different branching per node

# The root has 3 children, with 2, 1 and 3 leaves: gates of 3, 2, 1 (one pinned row) and 3 rows.
UNEVEN = emjax.HierarchicalMoE(emjax.GaussianExpert(), branching=(3, (2, 1, 3)))
# Every EM run on its problem is one compiled lax.scan of this many steps: from the random start (the loss trace,
# the frozen subtree) and, run after run, from the truth to the fixed point.
UNEVEN_STEPS = 30


@pytest.fixture(scope="module")
def uneven_problem():
    truth, x, y = _problem(UNEVEN, seed=7, n=400, gate_norm=3.0, expert_norm=2.0, sigma=0.5)
    start = emjax.testing.random_params(UNEVEN, jax.random.key(8), D, gate_norm=1.0, expert_norm=1.0, sigma=1.0)
    return truth, x, y, start


def _uneven_em(params, x, y, trainable=None):
    return emjax.fit(UNEVEN, emjax.em(trainable=trainable), params, x, y, UNEVEN_STEPS)


def test_bad_branching_specs_raise():
    for spec, message in [
        ((3, (2, 1)), r"branching\[1\] must give the children of each of the 3 nodes of level 1"),
        ((2, (2, 2, 2)), r"branching\[1\] must give the children of each of the 2 nodes"),
        ((3, (2, 0, 1)), r"branching\[1\] must hold Python ints >= 1"),
        ((3, (2, True, 1)), r"branching\[1\] must hold Python ints >= 1"),
        ((3, (2, 1.0, 1)), r"branching\[1\] must hold Python ints >= 1"),
        ((2, ()), r"branching\[1\] must give the children of each of the 2 nodes"),
        ((2, 2.0), r"branching\[1\] must be a Python int >= 1 or a tuple"),
        ((0, (1,)), r"branching\[0\] must be a Python int >= 1 or a tuple"),
        ((True,), r"branching\[0\] must be"),
        ((2, (1, 2), (1, 1)), r"branching\[2\] must give the children of each of the 3 nodes of level 2"),
        ((2, ((1, 1), 2)), r"branching\[1\] must hold Python ints"),
        ((), "branching must be a non-empty tuple"),
        (3, "branching must be a non-empty tuple"),
    ]:
        with pytest.raises(ValueError, match=message):
            emjax.HierarchicalMoE(emjax.GaussianExpert(), branching=spec)


def test_uneven_structure_counts_and_order():
    """Rows, pinned first children, padded level views, subtrees, the flattened order and num_parameters
    (free gate rows: children - 1 per node; a 1-child node contributes none)."""
    assert UNEVEN.branching == (3, (2, 1, 3)) and UNEVEN.num_experts == 6
    assert UNEVEN.describe() == "HierarchicalMoE(3x(2,1,3), GaussianExpert)"
    assert emjax.HierarchicalMoE(emjax.GaussianExpert(), [2, [1, 2], 2]).branching == (2, (1, 2), 2)
    tree = UNEVEN.tree
    assert tree.children(1) == (2, 1, 3) and tree.num_rows == 3 + 6
    assert tree.row_paths() == ("0", "1", "2", "0.0", "0.1", "1.0", "2.0", "2.1", "2.2")
    assert list(np.nonzero(tree.pinned_rows())[0]) == [0, 3, 5, 6]
    params = emjax.testing.random_params(UNEVEN, jax.random.key(3), D)
    gates = np.asarray(params.gates)
    np.testing.assert_array_equal(gates[[0, 3, 5, 6]], 0)
    root, level1 = UNEVEN.level_gates(params)
    np.testing.assert_array_equal(root[0], gates[:3])
    assert level1.shape == (3, 3, D)  # padded to the widest gate, zeros past each node's children
    np.testing.assert_array_equal(level1[0], np.concatenate([gates[3:5], np.zeros((1, D))]))
    np.testing.assert_array_equal(level1[1], np.concatenate([gates[5:6], np.zeros((2, D))]))
    np.testing.assert_array_equal(level1[2], gates[6:9])
    np.testing.assert_array_equal(tree.level_mask(1), [[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    # Flattened order: the free rows (the root's 1, 2; node 0's 4; node 2's 7, 8), experts, sigma.
    vector = UNEVEN.flatten(params)
    expected = np.concatenate([gates[[1, 2, 4, 7, 8]].ravel(), np.ravel(params.experts), params.sigma])
    np.testing.assert_array_equal(vector, expected)
    _close(UNEVEN.unflatten(vector, params), params, rtol=0, atol=0)
    free_rows = (3 - 1) + (2 - 1) + (1 - 1) + (3 - 1)
    assert emjax.num_parameters(UNEVEN, params) == free_rows * D + 6 * D + 6 == UNEVEN.num_free_parameters(D)
    # Only 1-child nodes below the root: the root's gate is every free gate parameter.
    chain = emjax.HierarchicalMoE(emjax.PoissonExpert(), branching=(2, (1, 1)))
    assert chain.branching == (2, 1) and chain.num_free_parameters(D) == (2 - 1) * D + 2 * D
    mixed = emjax.HierarchicalMoE(emjax.PoissonExpert(), branching=(2, (1, 2), 2))
    assert mixed.num_free_parameters(4) == ((2 - 1) + (1 - 1) + (2 - 1) + 3 * (2 - 1)) * 4 + 6 * 4
    # Subtrees are contiguous: node 2 of level 1 holds rows 6-8 and leaves 3-5.
    mask = UNEVEN.freeze_subtree(1, 2)
    np.testing.assert_array_equal(mask.gates, [True] * 6 + [False] * 3)
    np.testing.assert_array_equal(mask.experts, [True, True, True, False, False, False])
    rows, leaves = mixed.tree.subtree(1, 1)  # the root's second child: its 2 children's gates, 4 leaves
    assert list(np.nonzero(rows)[0]) == [3, 4, 7, 8, 9, 10] and list(np.nonzero(leaves)[0]) == [2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"gates must have shape \(9, 2\)"):
        emjax.neg_log_likelihood(UNEVEN, emjax.HMEParams(params.gates[:6], params.experts, params.sigma), *_data())


def test_equal_counts_per_node_are_the_uniform_tree(tree_problem):
    """(2, (2, 2)) is stored as (2, 2): the same model (equal, same hash). Taking the non-uniform code path on
    it anyway (the per-node tuple forced in, past the canonical form) gives the uniform tree's path
    probabilities, subtree sums, loss and EM iterates."""
    _, x, y, start = tree_problem
    same = emjax.HierarchicalMoE(emjax.GaussianExpert(), branching=(2, (2, 2)))
    assert same == TREE and hash(same) == hash(TREE) and same.describe() == TREE.describe()
    np.testing.assert_array_equal(emjax.em_step(same, start, x, y).gates, emjax.em_step(TREE, start, x, y).gates)
    # The tree's own indexing on a depth-3 tree given per node at every level.
    uniform, per_node = Tree((2, 3, 2)), Tree(((2,), (3, 3), (2,) * 6))
    assert not any(per_node.is_uniform(level) for level in range(3))
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(5, uniform.num_rows)))
    np.testing.assert_allclose(per_node.path_log_probs(logits), uniform.path_log_probs(logits), rtol=1e-14)
    values = jnp.exp(uniform.path_log_probs(logits))
    for level in range(4):
        np.testing.assert_allclose(per_node.subtree_sums(values, level), uniform.subtree_sums(values, level))
    for level in range(3):
        np.testing.assert_array_equal(per_node.level_gates(logits.T, level), uniform.level_gates(logits.T, level))
        np.testing.assert_array_equal(per_node.level_columns(logits, level), uniform.level_columns(logits, level))
    for name in ("pinned_rows", "row_paths"):
        np.testing.assert_array_equal(getattr(per_node, name)(), getattr(uniform, name)())
    for level, node in [(0, 0), (1, 1), (2, 4), (3, 7)]:
        for got, expected in zip(per_node.subtree(level, node), uniform.subtree(level, node), strict=True):
            np.testing.assert_array_equal(got, expected)
    centres = jax.random.normal(jax.random.key(0), (12, 2))
    np.testing.assert_array_equal(per_node.arrange(centres), uniform.arrange(centres))
    # The model on the forced per-node form: the non-uniform E- and M-step code.
    forced = emjax.HierarchicalMoE(emjax.GaussianExpert(), branching=(2, 2))
    object.__setattr__(forced, "branching", (2, (2, 2)))
    assert not forced.tree.is_uniform(1)
    np.testing.assert_allclose(forced.loss(start, x, y), TREE.loss(start, x, y), rtol=1e-14)
    params, reference = start, start
    for _ in range(2):
        params, reference = emjax.em_step(forced, params, x, y), emjax.em_step(TREE, reference, x, y)
        _close(params, reference, rtol=1e-11, atol=1e-12)


def _oracle_tree(branching):
    """The gate rows of each inner node and the breadth-first leaves, from the spec alone: a queue of nodes,
    each taking its children's rows in turn. Returns (children rows per inner node, paths: a list, per leaf in
    breadth-first order, of (node, child index) steps)."""
    counts = []
    width = 1
    for level in branching:
        level = [level] * width if isinstance(level, int) else list(level)
        counts.append(level)
        width = sum(level)
    rows, frontier, next_row = {}, [((), ())], 0  # a node: (its name as a path of child indices, its steps)
    for level in counts:
        below = []
        for (name, steps), count in zip(frontier, level, strict=True):
            rows[name] = list(range(next_row, next_row + count))
            next_row += count
            below += [(name + (c,), steps + ((name, c),)) for c in range(count)]
        frontier = below
    return rows, [steps for _, steps in frontier]


def _oracle_uneven(branching, params, x, y):
    """Leaf priors, responsibilities and the loss of a tree with Gaussian leaves by brute force over the
    root-to-leaf paths."""
    rows, paths = _oracle_tree(branching)
    v, beta, sigma = (np.asarray(a, np.float64) for a in (params.gates, params.experts, params.sigma))
    prior = np.ones((x.shape[0], len(paths)))
    for leaf, steps in enumerate(paths):
        for node, child in steps:
            logits = x @ v[rows[node]].T
            pi = np.exp(logits - logits.max(axis=1, keepdims=True))
            prior[:, leaf] *= (pi / pi.sum(axis=1, keepdims=True))[:, child]
    means = x @ beta.T
    density = np.exp(-((y[:, None] - means) ** 2) / (2 * sigma**2)) / np.sqrt(2 * np.pi * sigma**2)
    joint = prior * density
    return prior, joint / joint.sum(axis=1, keepdims=True), -np.mean(np.log(joint.sum(axis=1))), rows, paths


@pytest.mark.parametrize("branching", [(3, (2, 1, 3)), (2, (1, 2), 2)], ids=["2-1-3", "depth3"])
def test_uneven_e_and_m_step_against_a_numpy_oracle(branching, uneven_problem):
    model = emjax.HierarchicalMoE(emjax.GaussianExpert(), branching=branching)
    _, x, y, start = uneven_problem  # the depth-3 tree on the same data (the oracle needs no data from its own law)
    if model != UNEVEN:
        start = emjax.testing.random_params(model, jax.random.key(10), D, gate_norm=1.0, expert_norm=1.0, sigma=1.0)
    x, y = np.asarray(x), np.asarray(y)
    prior, gamma, loss, rows, paths = _oracle_uneven(branching, start, x, y)
    np.testing.assert_allclose(np.exp(model.gate_log_probs(start, jnp.asarray(x))), prior, rtol=1e-12)
    np.testing.assert_allclose(emjax.responsibilities(model, start, x, y), gamma, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(emjax.neg_log_likelihood(model, start, x, y), loss, rtol=1e-13)
    new = emjax.em_step(model, start, x, y)
    for leaf in range(len(paths)):  # leaves: weighted least squares
        g = gamma[:, leaf]
        beta = np.linalg.solve((x * g[:, None]).T @ x, (x * g[:, None]).T @ y)
        np.testing.assert_allclose(new.experts[leaf], beta, rtol=1e-9)
    # Gates: each is stationary for its soft-target objective, with targets the posterior mass of the paths
    # through each child; its first row (and a 1-child gate's only row) stays pinned.
    v, v0 = np.asarray(new.gates), np.asarray(start.gates)
    for node, gate_rows in rows.items():
        through = [[leaf for leaf, steps in enumerate(paths) if (node, c) in steps] for c in range(len(gate_rows))]
        targets = np.stack([gamma[:, leaves].sum(axis=1) for leaves in through], axis=1)
        logits = x @ v[gate_rows].T
        pi = np.exp(logits - logits.max(axis=1, keepdims=True))
        pi /= pi.sum(axis=1, keepdims=True)
        gradient = ((targets.sum(axis=1, keepdims=True) * pi - targets)[:, :, None] * x[:, None, :]).mean(axis=0)
        np.testing.assert_allclose(gradient[1:], 0, atol=1e-10)
        assert np.all(v[gate_rows[0]] == v0[gate_rows[0]])
        if len(gate_rows) > 1:
            assert np.abs(v[gate_rows[1:]] - v0[gate_rows[1:]]).max() > 1e-3  # the gate did move


def test_uneven_em_mirror_descent_and_missing_information(uneven_problem):
    truth, x, y, start = uneven_problem
    losses = np.asarray(_uneven_em(start, x, y).losses)
    assert np.all(np.diff(losses) <= 1e-13 * np.abs(losses[1:])), np.diff(losses)
    assert losses[-1] < losses[0] - 1e-2
    _close(emjax.mirror_descent_step(UNEVEN, start, x, y, 1.0), emjax.em_step(UNEVEN, start, x, y), rtol=1e-12)
    # At a fixed point the Jacobian of the EM map is the missing-information matrix. EM from the truth (rate 0.95
    # there) in 24 runs of the same compiled loop, 720 steps: it moves by round-off (2e-15) per step by then.
    fitted = truth
    for _ in range(24):
        fitted = _uneven_em(fitted, x, y).params
    vector = UNEVEN.flatten(fitted)
    assert float(jnp.max(jnp.abs(UNEVEN.flatten(emjax.em_step(UNEVEN, fitted, x, y)) - vector))) < 1e-10
    jacobian = _em_map_jacobian(UNEVEN, fitted, x, y)
    mim = emjax.missing_information_matrix(UNEVEN, fitted, x, y)
    assert mim.shape == (vector.size, vector.size) == (28, 28) and float(jnp.max(jnp.abs(mim))) > 0.1
    np.testing.assert_allclose(jacobian, mim, atol=2e-6)
    assert 0 < float(emjax.em_rate(UNEVEN, fitted, x, y)) < 1
    errors = emjax.standard_errors(UNEVEN, fitted, x, y)
    assert np.all(np.isfinite(UNEVEN.flatten(errors))) and np.all(UNEVEN.flatten(errors) > 0)


def test_uneven_tree_through_the_public_functions(uneven_problem):
    """fit_restarts (init_params), gradient EM, BIC, observation weights, float32 and a frozen subtree on a tree
    with a different number of children per node."""
    _, x, y, start = uneven_problem
    best = emjax.fit_restarts(UNEVEN, emjax.em(), jax.random.key(2), x, y, 2, num_steps=20)
    np.testing.assert_array_equal(np.asarray(best.params.gates)[[0, 3, 5, 6]], 0)  # pinned rows stay 0
    assert float(best.final_loss) < float(emjax.neg_log_likelihood(UNEVEN, start, x, y))
    losses = np.asarray(emjax.fit(UNEVEN, emjax.gradient_em(0.5), start, x, y, 5).losses)
    assert losses[-1] < losses[0]
    n = x.shape[0]
    bic = 2 * n * float(emjax.neg_log_likelihood(UNEVEN, start, x, y)) + 28 * np.log(n)
    np.testing.assert_allclose(float(emjax.bic(UNEVEN, start, x, y)), bic, rtol=1e-12)
    # Observation weights: integer weights are repeated rows; a constant weight changes nothing.
    weights = np.arange(n) % 3
    repeated = np.repeat(np.arange(n), weights)
    np.testing.assert_allclose(
        emjax.neg_log_likelihood(UNEVEN, start, x, y, weights=weights),
        emjax.neg_log_likelihood(UNEVEN, start, x[repeated], y[repeated]),
        rtol=1e-12,
    )
    step = emjax.em_step(UNEVEN, start, x, y)
    _close(emjax.em_step(UNEVEN, start, x, y, weights=np.full(n, 2.0)), step, rtol=1e-10, atol=1e-12)
    # float32 end to end.
    x32, y32 = np.asarray(x, np.float32), np.asarray(y, np.float32)
    step32 = emjax.em_step(UNEVEN, jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), start), x32, y32)
    assert step32.gates.dtype == jnp.float32
    _close(step32, step, rtol=2e-3, atol=2e-3)
    # A frozen subtree (node 0 of level 1: rows 3, 4 and leaves 0, 1) stays bit-identical.
    new = _uneven_em(start, x, y, trainable=UNEVEN.freeze_subtree(1, 0)).params
    np.testing.assert_array_equal(new.gates[3:5], start.gates[3:5])
    np.testing.assert_array_equal(new.experts[:2], start.experts[:2])
    assert float(jnp.max(jnp.abs(new.gates[7:] - start.gates[7:]))) > 1e-3
