r"""Composable solvers: optax-shaped, pure ``init``/``update`` pairs that :func:`emjax.fit` drives.

A solver is an ``equinox.Module`` whose hyperparameters (step sizes) are array leaves, so they are
traced under ``jit`` and can be swept with ``vmap`` without recompiling; shapes and counts
(``inner_steps``) are static. ``update(model, params, state, x, y) -> (params, state)`` performs
one iteration; a user may call it in a loop of their own, or hand the solver to ``fit``.

Example:
    >>> import jax, jax.numpy as jnp, optax, emjax
    >>> model = emjax.SymMoLinE()
    >>> truth = emjax.SymParams(w=jnp.array([1.0, 0.0]), beta=jnp.array([0.0, 2.0]))
    >>> x, y = emjax.sample(model, truth, jax.random.key(0), 200)
    >>> solver = emjax.from_optax(optax.adam(0.05))
    >>> state = solver.init(truth)
    >>> params, state = solver.update(model, truth, state, x, y)
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax import Array

from ._likelihood import as_arrays
from ._mirror import loss_gradient_raw
from ._steps import em_step, gradient_descent_step, gradient_em_step, mirror_descent_step
from ._validation import check_inner_steps, check_step_size
from .models import AbstractSymmetricModel, SymParams


class AbstractSolver(eqx.Module):
    """One iteration of an optimiser of the negative log-likelihood, as pure functions."""

    def init(self, params: SymParams) -> Any:
        """The solver's state before the first step (empty for stateless solvers)."""
        return ()

    @abc.abstractmethod
    def update(self, model: AbstractSymmetricModel, params: SymParams, state: Any, x, y):
        """One iteration: returns ``(new_params, new_state)``."""


def _as_step(step_size):
    check_step_size(step_size)
    if isinstance(step_size, SymParams):
        return SymParams(w=jnp.asarray(step_size.w), beta=jnp.asarray(step_size.beta))
    return jnp.asarray(step_size)


class EM(AbstractSolver):
    """Exact EM: :func:`emjax.em_step` (mirror descent with unit step)."""

    def update(self, model, params, state, x, y):
        return em_step(model, params, x, y), state


class MirrorDescent(AbstractSolver):
    """Mirror descent with mirror map A and step ``step_size`` (:func:`emjax.mirror_descent_step`)."""

    step_size: Array

    def update(self, model, params, state, x, y):
        return mirror_descent_step(model, params, x, y, self.step_size), state


class GradientDescent(AbstractSolver):
    """Gradient descent on L (:func:`emjax.gradient_descent_step`)."""

    step_size: Array | SymParams

    def update(self, model, params, state, x, y):
        return gradient_descent_step(model, params, x, y, self.step_size), state


class GradientEM(AbstractSolver):
    """Gradient EM with ``inner_steps`` surrogate steps per E-step (:func:`emjax.gradient_em_step`)."""

    step_size: Array | SymParams
    inner_steps: int = eqx.field(static=True)

    def update(self, model, params, state, x, y):
        return gradient_em_step(model, params, x, y, self.step_size, self.inner_steps), state


class OptaxSolver(AbstractSolver):
    """Any ``optax.GradientTransformation`` applied to $\\nabla L$ (closed form, Fisher's identity)."""

    transformation: optax.GradientTransformation = eqx.field(static=True)

    def init(self, params):
        return self.transformation.init(params)

    def update(self, model, params, state, x, y):
        cast, x, y = as_arrays(params, x, y)
        grads = loss_gradient_raw(model, cast, x, y)
        updates, state = self.transformation.update(grads, state, params)
        return optax.apply_updates(params, updates), state


def em() -> EM:
    """Exact EM (M-step solved by warm-started damped Newton / Cholesky)."""
    return EM()


def mirror_descent(step_size) -> MirrorDescent:
    """Mirror descent with mirror map A; ``step_size=1`` is EM, η in (0, 1] never increases L."""
    return MirrorDescent(step_size=_as_step(step_size))


def gradient_descent(step_size) -> GradientDescent:
    """Gradient descent with a scalar step or per-block ``SymParams(w=..., beta=...)`` steps."""
    return GradientDescent(step_size=_as_step(step_size))


def gradient_em(step_size, inner_steps: int = 3) -> GradientEM:
    """Gradient EM: ``inner_steps`` gradient steps on the surrogate Q per E-step (default 3)."""
    check_inner_steps(inner_steps)
    return GradientEM(step_size=_as_step(step_size), inner_steps=inner_steps)


def from_optax(transformation: optax.GradientTransformation) -> OptaxSolver:
    """Wrap an optax optimiser (e.g. ``optax.adam(1e-2)``) as an emjax solver."""
    if not (hasattr(transformation, "init") and hasattr(transformation, "update")):
        raise ValueError(
            "transformation must be an optax.GradientTransformation with init and update; "
            f"got {type(transformation).__name__}"
        )
    return OptaxSolver(transformation=transformation)


def tree_all_finite(tree) -> Array:
    """True when every floating leaf of ``tree`` is finite (a traced boolean)."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
