"""Small helpers shared by the tests."""

import jax
import jax.numpy as jnp
import numpy as np

import emjax


def random_point(rng: np.random.Generator, d: int, scale: float = 1.0) -> emjax.SymParams:
    """An arbitrary (not fitted) parameter point."""
    return emjax.SymParams(w=jnp.asarray(scale * rng.normal(size=d)), beta=jnp.asarray(scale * rng.normal(size=d)))


def flat_fn(fn, d):
    """Turn fn(params) into a function of the flattened (w, beta) vector."""
    return lambda theta: fn(emjax.SymParams(w=theta[:d], beta=theta[d:]))


def kind_name(model):
    return "lin" if isinstance(model, emjax.SymMoLinE) else "log"


# The tests run XLA's backend at -O0 (tests/conftest.py): cheap to compile, slow to run. A test-built jit whose
# program runs long (thousands of EM steps, Newton M-steps over many rows or vmapped lanes) passes this as
# ``compiler_options`` to get the optimised backend back for that one program.
OPTIMISED_BACKEND = {"xla_backend_optimization_level": 2}

MODELS = {"lin": emjax.SymMoLinE(sigma=1.0), "log": emjax.SymMoLogE()}
# Norms where both models converge in reasonable time (docs/math.md §6).
NORMS = {"lin": (2.0, 2.0), "log": (4.0, 4.0)}


def make_problem(kind, seed=0, n=400, d=3, dtype=jnp.float64, norms=None):
    """(model, truth, x, y) for a small synthetic problem."""
    model = MODELS[kind]
    w_norm, beta_norm = norms or NORMS[kind]
    key_truth, key_data = jax.random.split(jax.random.key(seed))
    truth = emjax.testing.random_params(model, key_truth, d, w_norm, beta_norm, dtype=dtype)
    x, y = emjax.sample(model, truth, key_data, n)
    return model, truth, x, y


MOE_MODELS = {"lin": emjax.MoLinE(3), "log": emjax.MoLogE(3, num_classes=3), "poi": emjax.MoPoE(3)}
# Expert norms where the three families are well identified at a few hundred samples.
MOE_EXPERT_NORMS = {"lin": 2.0, "log": 3.0, "poi": 1.0}


def make_moe_problem(kind, seed=0, n=300, d=3, gate_norm=2.0, expert_norm=None, sigma=0.5):
    """(model, truth, x, y) for a small K=3 problem of the given expert family."""
    model = MOE_MODELS[kind]
    key_truth, key_data = jax.random.split(jax.random.key(1000 + seed))
    norm = MOE_EXPERT_NORMS[kind] if expert_norm is None else expert_norm
    truth = emjax.testing.random_params(model, key_truth, d, gate_norm=gate_norm, expert_norm=norm, sigma=sigma)
    x, y = emjax.sample(model, truth, key_data, n)
    return model, truth, x, y


def moe_flat_fn(model, fn, like):
    """Turn fn(params) into a function of the flattened free-parameter vector (pinned entries from like)."""
    return lambda vector: fn(model.unflatten(vector, like))


def moe_flatten(model, params):
    return model.flatten(params)
