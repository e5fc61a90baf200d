r"""Solvers: emjax's own pure ``init``/``update`` pairs over (model, params, data), driven by :func:`emjax.fit`.

**The pattern.** A solver is an ``equinox.Module`` with two pure methods,
``init(params) -> state`` and ``update(model, params, state, x, y) -> (params, state)``: one
iteration of an optimiser of the negative log-likelihood. Its hyperparameters (step sizes) are
array leaves, so they are traced under ``jit`` and can be swept with ``vmap`` without recompiling;
shapes and counts (``inner_steps``) are static. A user may call ``update`` in a loop of their own,
or hand the solver to :func:`emjax.fit`, which owns the loop, the stopping rule and the status
(as optimistix's ``iterative_solve`` owns a solver's ``init``/``step``; the stopping test lives in
the loop, :mod:`emjax._stopping`, not in the solver). ``update`` does not guard traced data against
NaN (``fit`` reports it as ``Status.nonfinite`` instead).

**Inside** :func:`emjax.fit`, a solver runs through :meth:`AbstractSolver.iterate`, which returns an
:class:`Iteration`: the new iterate, its loss and E-step (reused by the next iteration), and the work
done (map and loss evaluations, fallbacks). The default makes one map evaluation; the accelerated
solvers (:func:`emjax.squarem`, :func:`emjax.anderson`, :mod:`emjax._acceleration`) make several and
report a contraction rate for the stopping rule.

**What they are not.** They are not optax ``GradientTransformation``\ s: ``update`` takes the
model, the parameters and the data and returns new *parameters* (an EM or mirror-descent step is a
closed-form M-step, not a gradient update), not updates to be added. So they cannot be composed
with ``optax.chain`` or with each other; to use an optax optimiser, wrap it with
:func:`from_optax`, which feeds it $\nabla L$ and applies its updates.

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
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax import Array

from ._dtypes import as_arrays
from ._steps import em_step, gradient_descent_step, gradient_em_step, m_step, mirror_descent_step
from ._validation import check_inner_steps, check_step_size
from .models import MoEParams, SymParams, keep_frozen


class Iteration(NamedTuple):
    """What one iteration of a solver hands back to :func:`emjax.fit`'s loop.

    Attributes:
        params, state: the new iterate and solver state.
        loss, expected: L at the new iterate and what the next iteration reuses (:meth:`AbstractSolver.expect`).
        num_map_evaluations: applications of the underlying update map in this iteration (an EM
            map evaluation is one E-step followed by one M-step).
        num_loss_evaluations: points at which L was evaluated (each E-step yields L at its point).
        num_fallbacks: extrapolations rejected by a safeguard in favour of the plain step.
        rate: None, or a sample of the local contraction factor ρ of the iteration; None lets the
            loop estimate ρ from successive steps (:func:`emjax._stopping.step_ratio`).
        step: with ``rate``: the ∞-norm (flattened free coordinates) of the step ρ acts on; the
            Aitken estimate of the distance to the fixed point is ``step · ρ / (1 − ρ)``.
    """

    params: Any
    state: Any
    loss: Array
    expected: Any
    num_map_evaluations: Any = 1
    num_loss_evaluations: Any = 1
    num_fallbacks: Any = 0
    rate: Array | None = None
    step: Array | None = None


class AbstractSolver(eqx.Module):
    """One iteration of an optimiser of the negative log-likelihood, as pure functions."""

    trainable: SymParams | MoEParams | None = None

    # A stateless iteration θ ↦ F(θ) whose fixed points are the stationary points of L: the
    # maps the accelerators (:func:`emjax.squarem`, :func:`emjax.anderson`) can extrapolate.
    is_fixed_point_map: ClassVar[bool] = True

    def init(self, params) -> Any:
        """The solver's state before the first step (empty for stateless solvers)."""
        return ()

    @abc.abstractmethod
    def update(self, model, params, state: Any, x, y):
        """One iteration: returns ``(new_params, new_state)``."""

    # The lean form of ``update`` that :func:`emjax.fit` runs: ``expect`` evaluates the loss at an
    # iterate together with whatever the next step reuses from the same pass over x, so the loss
    # the loop records for iterate t comes from the E-step of iteration t + 1; ``advance`` finishes
    # the step. ``advance(expect(params)[1])`` is ``update(params)``.

    def expect(self, model, params, state: Any, x, y, cache):
        """``(L(params), expected)``: the loss and what :meth:`advance` reuses (default: the loss alone)."""
        return model.loss(params, x, y), None

    def advance(self, model, params, state: Any, x, y, cache, expected):
        """The step from ``params`` given :meth:`expect`'s ``expected`` and the model's ``cache``."""
        return self.update(model, params, state, x, y)

    def iterate(self, model, params, state: Any, x, y, cache, loss, expected) -> Iteration:
        """One iteration of :func:`emjax.fit`'s loop from ``params`` with ``loss, expected = expect(params)``:
        :meth:`advance`, then :meth:`expect` at the new iterate (one map and one loss evaluation).
        Accelerated solvers override it to make several map evaluations per iteration."""
        new_params, new_state = self.advance(model, params, state, x, y, cache, expected)
        new_loss, new_expected = self.expect(model, new_params, new_state, x, y, cache)
        return Iteration(new_params, new_state, new_loss, new_expected)


def _as_step(step_size, per_block: bool = True):
    if per_block and not isinstance(step_size, eqx.Module):
        per_block = False  # a scalar; a list or another container gets the scalar's error message
    check_step_size(step_size, per_block=per_block)
    if per_block:
        return jax.tree_util.tree_map(jnp.asarray, step_size)
    return jnp.asarray(step_size)


def _as_mask(trainable):
    if trainable is None:
        return None
    if not isinstance(trainable, eqx.Module):
        raise ValueError(
            f"trainable must be an emjax.SymParams or emjax.MoEParams of booleans; got {type(trainable).__name__}"
        )
    return trainable


def _expect_targets(model, params, x, y, cache):
    """EM's and mirror descent's ``expect``: the loss and the posterior targets from one E-step."""
    loss, targets, scores = model.expectation(params, x, y, cache)
    return loss, (targets, scores)


class EM(AbstractSolver):
    """Exact EM: :func:`emjax.em_step` (mirror descent with unit step)."""

    def update(self, model, params, state, x, y):
        return em_step.unguarded(model, params, x, y, self.trainable), state

    def expect(self, model, params, state, x, y, cache):
        return _expect_targets(model, params, x, y, cache)

    def advance(self, model, params, state, x, y, cache, expected):
        return m_step(model, params, x, expected, None, model.free_mask(params, self.trainable), cache), state


class MirrorDescent(AbstractSolver):
    """Mirror descent with mirror map A and step ``step_size`` (:func:`emjax.mirror_descent_step`)."""

    step_size: Array = None

    def update(self, model, params, state, x, y):
        return mirror_descent_step.unguarded(model, params, x, y, self.step_size, self.trainable), state

    def expect(self, model, params, state, x, y, cache):
        return _expect_targets(model, params, x, y, cache)

    def advance(self, model, params, state, x, y, cache, expected):
        eta = jnp.asarray(self.step_size, x.dtype)
        return m_step(model, params, x, expected, eta, model.free_mask(params, self.trainable), cache), state


class GradientDescent(AbstractSolver):
    """Gradient descent on L (:func:`emjax.gradient_descent_step`)."""

    step_size: Array | SymParams | MoEParams = None

    def update(self, model, params, state, x, y):
        return gradient_descent_step.unguarded(model, params, x, y, self.step_size, self.trainable), state


class GradientEM(AbstractSolver):
    """Gradient EM with ``inner_steps`` surrogate steps per E-step (:func:`emjax.gradient_em_step`)."""

    step_size: Array | SymParams | MoEParams = None
    inner_steps: int = eqx.field(static=True, default=3)

    def update(self, model, params, state, x, y):
        return (
            gradient_em_step.unguarded(model, params, x, y, self.step_size, self.inner_steps, self.trainable),
            state,
        )


class OptaxSolver(AbstractSolver):
    r"""Any ``optax.GradientTransformation`` applied to $\nabla L$ (zero on fixed entries, which never move)."""

    transformation: optax.GradientTransformation = eqx.field(static=True, default=None)
    is_fixed_point_map: ClassVar[bool] = False  # its state (moments) makes the step history-dependent

    def init(self, params):
        return self.transformation.init(params)

    def update(self, model, params, state, x, y):
        cast, x, y = as_arrays(params, x, y)
        free = model.free_mask(cast, self.trainable)
        grads = model.objective_gradient(cast, x, y, free)
        updates, state = self.transformation.update(grads, state, params)
        # Weight decay and the like would move a fixed entry even with a zero gradient: undo it.
        return keep_frozen(free, optax.apply_updates(params, updates), params), state


def em(trainable=None) -> EM:
    """Exact EM (M-step solved by warm-started damped Newton / Cholesky).

    Args:
        trainable: optional mask shaped like the parameters (True = may change), honoured by every
            M-step; see :func:`emjax.em_step`. The same argument exists on every solver factory.
    """
    return EM(trainable=_as_mask(trainable))


def mirror_descent(step_size, trainable=None) -> MirrorDescent:
    """Mirror descent with mirror map A; ``step_size=1`` is EM, η in (0, 1] never increases L."""
    return MirrorDescent(step_size=_as_step(step_size, per_block=False), trainable=_as_mask(trainable))


def gradient_descent(step_size, trainable=None) -> GradientDescent:
    """Gradient descent with a scalar step or per-block steps (a params-shaped pytree of scalars)."""
    return GradientDescent(step_size=_as_step(step_size), trainable=_as_mask(trainable))


def gradient_em(step_size, inner_steps: int = 3, trainable=None) -> GradientEM:
    """Gradient EM: ``inner_steps`` gradient steps on the surrogate Q per E-step (default 3)."""
    check_inner_steps(inner_steps)
    return GradientEM(step_size=_as_step(step_size), inner_steps=inner_steps, trainable=_as_mask(trainable))


def from_optax(transformation: optax.GradientTransformation, trainable=None) -> OptaxSolver:
    """Wrap an optax optimiser (e.g. ``optax.adam(1e-2)``) as an emjax solver; fixed entries never move."""
    if not (hasattr(transformation, "init") and hasattr(transformation, "update")):
        raise ValueError(
            "transformation must be an optax.GradientTransformation with init and update; "
            f"got {type(transformation).__name__}"
        )
    return OptaxSolver(transformation=transformation, trainable=_as_mask(trainable))
