"""The one model contract (emjax.models.AbstractModel).

* The symmetric models' closed forms equal the contract's generic autodiff defaults (the defaults
  are the oracle: jax.grad, jax.hessian and jacfwd of the joint log-density).
* Every public function accepts every model and means the same thing: mirror_map_grad and
  posterior_statistics of K-expert models satisfy Fisher's identity; complete_information takes y.
* A new model is one class: a K-expert subclass that overrides nothing still fits, and a model
  defined from scratch on the abstract methods runs through em_step, fit and em_rate.
* No code outside input validation branches on the model's type.
"""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from emjax.models import AbstractModel
from tests.utils import make_moe_problem, make_problem

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tree_close(a, b, **tolerance):
    for left, right in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(left), np.asarray(right), **tolerance)


@pytest.mark.parametrize("kind", ["lin", "log"])
def test_symmetric_closed_forms_equal_the_generic_autodiff_defaults(kind):
    model, truth, x, y = make_problem(kind, seed=3, n=200, d=3)
    point = emjax.testing.perturb(truth, jax.random.key(1), 0.5)
    generic = AbstractModel  # the contract's default methods, called on the symmetric model
    np.testing.assert_allclose(model.loss(point, x, y), generic.loss(model, point, x, y), rtol=1e-13)
    _tree_close(model.e_step(point, x, y), generic.e_step(model, point, x, y), rtol=1e-11, atol=1e-14)
    _tree_close(model.loss_gradient(point, x, y), generic.loss_gradient(model, point, x, y), rtol=1e-10, atol=1e-13)
    _tree_close(model.mirror_map_grad(point, x), generic.mirror_map_grad(model, point, x), rtol=1e-11, atol=1e-14)
    _tree_close(
        model.posterior_statistics(point, x, y),
        generic.posterior_statistics(model, point, x, y),
        rtol=1e-10,
        atol=1e-13,
    )
    other = emjax.testing.perturb(truth, jax.random.key(2), 0.3)
    np.testing.assert_allclose(
        model.bregman_divergence(point, other, x),
        generic.bregman_divergence(model, point, other, x),
        rtol=1e-9,
        atol=1e-14,
    )
    # The generic I_c is the Hessian of the surrogate with the responsibilities as anchor: for a
    # linear exponential family it is the mirror map's Hessian, y-free.
    _tree_close(
        model.complete_information(point, x, y), generic.complete_information(model, point, x, y), rtol=1e-9, atol=1e-13
    )
    _tree_close(
        model.missing_information(point, x, y), generic.missing_information(model, point, x, y), rtol=1e-9, atol=1e-13
    )
    # The closed-form surrogate gradient, grad A(u) - s(theta), against autodiff of the generic EM
    # surrogate -mean sum_c gamma_c log p(y, z=c | x; u) with the responsibilities at theta.
    free = model.free_mask(point)
    gamma = generic.surrogate_anchor(model, point, x, y)
    autodiff = jax.grad(lambda u: generic.surrogate(model, u, x, y, gamma))(other)
    _tree_close(
        model.surrogate_gradient(other, x, y, model.surrogate_anchor(point, x, y), free),
        autodiff,
        rtol=1e-9,
        atol=1e-13,
    )


@pytest.mark.parametrize("kind", ["lin", "log", "poi"])
def test_every_public_function_accepts_k_expert_models_with_one_meaning(kind):
    model, truth, x, y = make_moe_problem(kind, seed=4, n=150)
    gradient = emjax.neg_log_likelihood_grad(model, truth, x, y)
    mirror = emjax.mirror_map_grad(model, truth, x)
    statistics = emjax.posterior_statistics(model, truth, x, y)
    # Fisher's identity, the definition of the posterior statistics for every model.
    _tree_close(statistics, jax.tree_util.tree_map(jnp.subtract, mirror, gradient), rtol=1e-12, atol=1e-14)
    # The K-expert mirror map depends on the gate only; its gradient is the mean softmax-weighted x.
    np.testing.assert_allclose(mirror.experts, 0.0)
    expected_gate = jax.nn.softmax(x @ truth.gate.T, axis=-1).T @ x / x.shape[0]
    np.testing.assert_allclose(mirror.gate, expected_gate, rtol=1e-12, atol=1e-14)
    complete = emjax.complete_information(model, truth, x, y)
    assert complete.shape == (model.num_free_parameters(3),) * 2


@pytest.mark.parametrize("kind", ["lin", "log"])
def test_em_is_the_m_step_of_the_posterior_targets_and_mirror_descent_of_the_blend(kind):
    for model, truth, x, y in (make_problem(kind, seed=5, n=300), make_moe_problem(kind, seed=5, n=300)):
        start = emjax.testing.perturb(truth, jax.random.key(3), 0.4) if isinstance(truth, emjax.SymParams) else truth

        # Compiled: the model's own methods called eagerly would dispatch their Newton loops op by op.
        @jax.jit
        def m_step_of_the_posterior_targets(start, x, y, model=model):
            targets, scores = model.posterior_targets(start, x, y)
            return model.solve(start, x, targets, model.free_mask(start), scores)

        solved = m_step_of_the_posterior_targets(start, x, y)
        _tree_close(solved, emjax.em_step(model, start, x, y), rtol=1e-12, atol=1e-13)
        _tree_close(
            emjax.mirror_descent_step(model, start, x, y, 1.0),
            emjax.em_step(model, start, x, y),
            rtol=1e-10,
            atol=1e-12,
        )


class _PlainMoLinE(emjax.MixtureOfExperts):
    """A K-expert model that overrides nothing (the default minimiser opt-out included)."""

    def minimize(self, objective, init, free):
        return emjax._minimize.masked_minimize(objective, init, free, "newton")


def test_a_k_expert_subclass_with_its_own_minimiser_fits_like_the_built_in_model():
    built_in, truth, x, y = make_moe_problem("lin", seed=6, n=300)
    plain = _PlainMoLinE(expert=emjax.GaussianExpert(), num_experts=3)
    start = emjax.init_params(built_in, jax.random.key(6), x, y)
    ours = emjax.fit(plain, emjax.em(), start, x, y, 20).params
    theirs = emjax.fit(built_in, emjax.em(), start, x, y, 20).params
    _tree_close(ours, theirs, rtol=1e-8, atol=1e-9)


class _TwoCoins(AbstractModel):
    r"""A model written from scratch on the contract: y in {0, 1} from one of two coins, gate
    sigmoid(x.w), coin k has log-odds x.b_k. Only the abstract methods are written."""

    def placeholder(self, d, dtype=None):
        return emjax.MoEParams(gate=jnp.zeros((2, d), dtype), experts=jnp.zeros((2, d), dtype))

    def flatten(self, params):
        return jnp.concatenate([params.gate[1], params.experts.reshape(-1)])

    def unflatten(self, vector, like):
        d = like.gate.shape[1]
        return emjax.MoEParams(gate=like.gate.at[1].set(vector[:d]), experts=vector[d:].reshape(2, d))

    def free_mask(self, params, trainable=None):
        return emjax.MoEParams(
            gate=jnp.zeros(params.gate.shape, bool).at[1].set(True), experts=jnp.ones(params.experts.shape, bool)
        )

    def log_joint(self, params, x, y):
        log_gate = jax.nn.log_softmax(x @ params.gate.T, axis=-1)
        logits = x @ params.experts.T
        return log_gate + jnp.where(y[:, None] > 0, jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits))

    def posterior_targets(self, params, x, y):
        gamma = self.e_step(params, x, y)[0]
        return (gamma, gamma * y[:, None]), None

    def prior_targets(self, params, x, scores):
        prior = jax.nn.softmax(x @ params.gate.T, axis=-1)
        return prior, prior * jax.nn.sigmoid(x @ params.experts.T)

    def solve(self, params, x, targets, free, scores=None, cache=None):
        weights, heads = targets

        def objective(u):
            p = self.unflatten(u, params)
            log_gate = jax.nn.log_softmax(x @ p.gate.T, axis=-1)
            logits = x @ p.experts.T
            return -jnp.mean(jnp.sum(weights * log_gate + heads * logits - weights * jax.nn.softplus(logits), axis=-1))

        solved = emjax._newton.masked_newton(
            objective, self.flatten(params), jnp.ones(self.flatten(params).shape, bool)
        )
        return self.unflatten(solved, params)

    def mirror_map(self, params, x):
        return jnp.mean(jax.nn.logsumexp(x @ params.gate.T, axis=-1))

    def sample(self, params, key, n):
        raise NotImplementedError

    def init_params(self, key, x, y):
        return self.placeholder(x.shape[1], x.dtype)

    def random_params(self, key, d, gate_norm, expert_norm, sigma, dtype):
        raise NotImplementedError

    def check_params(self, params, d, name="params"):
        if not isinstance(params, emjax.MoEParams) or params.gate.shape != (2, d):
            raise ValueError(f"{name} must be MoEParams with a (2, {d}) gate")


def test_a_model_written_on_the_contract_alone_runs_through_every_public_function():
    model = _TwoCoins()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 2))
    z = rng.random(2000) < 1 / (1 + np.exp(-3 * x[:, 0]))
    y = jnp.asarray((rng.random(2000) < 1 / (1 + np.exp(-np.where(z, 4.0, -4.0) * x[:, 1]))).astype(float))
    x = jnp.asarray(x)
    start = emjax.MoEParams(gate=jnp.array([[0.0, 0.0], [0.3, -0.2]]), experts=jnp.array([[1.0, 0.5], [-1.0, 0.2]]))
    result = emjax.fit(model, emjax.em(), start, x, y, 15)
    assert np.all(np.diff(np.asarray(result.losses)) <= 1e-12)  # EM never increases L
    _tree_close(emjax.mirror_descent_step(model, start, x, y, 1.0), emjax.em_step(model, start, x, y), atol=1e-9)
    # At a fixed point the Jacobian of the EM map is the MIM (Dempster-Laird-Rubin): em_rate is its
    # largest eigenvalue, computed from the generic autodiff information matrices.
    fixed = emjax.fit(model, emjax.em(), result.params, x, y, 2000, tol=1e-15).params
    vector = model.flatten(fixed)

    @jax.jit  # compiled: eager autodiff dispatches op by op
    def em_map_jacobian(vector, fixed, x, y):
        return jax.jacobian(lambda v: model.flatten(emjax.em_step(model, model.unflatten(v, fixed), x, y)))(vector)

    jacobian = em_map_jacobian(vector, fixed, x, y)
    top = np.max(np.abs(np.linalg.eigvals(np.asarray(jacobian))))
    np.testing.assert_allclose(float(emjax.em_rate(model, fixed, x, y)), top, rtol=1e-4)
    gradient = emjax.neg_log_likelihood_grad(model, start, x, y)
    numeric = jax.grad(lambda p: emjax.neg_log_likelihood(model, p, x, y))(start)
    _tree_close(gradient, numeric, rtol=1e-12)


def test_no_code_outside_validation_branches_on_the_model_type():
    allowed = {"emjax/_checks.py", "emjax/deep/_checks.py"}  # input validation
    pattern = re.compile(r"isinstance\(model|is_mixture\(|isinstance\(self, ")
    offenders = []
    for path in sorted((ROOT / "emjax").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative in allowed:
            continue
        offenders += [
            f"{relative}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)
        ]
    assert offenders == [], offenders
