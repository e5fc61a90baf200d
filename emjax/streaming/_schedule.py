r"""Decreasing step sizes for stochastic EM (stochastic mirror descent, docs/math.md §4.4-§4.6)."""

from __future__ import annotations

import math


class RobbinsMonro:
    r"""The step $\eta_t = \eta_0\,(1 + t/\tau)^{-\kappa}$ for mini-batch step t = 0, 1, 2, ...

    With $\kappa \in (1/2, 1]$ the steps satisfy Robbins and Monro's conditions
    ($\sum_t\eta_t = \infty$, $\sum_t\eta_t^2 < \infty$), under which stochastic mirror descent
    settles at a stationary point of the full-data loss: the batch noise averages out.
    ``decay=0`` gives a constant step (the iterates then keep fluctuating at a level set by
    $\eta_0$ and the batch size).

    Args:
        initial: $\eta_0 \in (0, 1]$ (1 makes the first mini-batch step an EM step on that batch).
        decay: $\kappa \in [0, 1]$ (default 0.6, Cappé and Moulines' choice for online EM).
        delay: $\tau > 0$, the number of steps over which the step stays near $\eta_0$ (default
            10: the first steps, far from the fixed point, move almost as far as EM steps).

    Example:
        >>> schedule = RobbinsMonro(initial=1.0, decay=1.0, delay=1.0)
        >>> [schedule(t) for t in range(3)]
        [1.0, 0.5, 0.3333333333333333]
    """

    def __init__(self, initial: float = 1.0, decay: float = 0.6, delay: float = 10.0):
        if not (isinstance(initial, (int, float)) and 0 < initial <= 1):
            raise ValueError(
                f"initial must be a number in (0, 1] (mirror-descent steps above 1 are not monotone); got {initial!r}"
            )
        if not (isinstance(decay, (int, float)) and 0 <= decay <= 1):
            raise ValueError(f"decay must be a number in [0, 1] ((1/2, 1] for convergence); got {decay!r}")
        if not (isinstance(delay, (int, float)) and math.isfinite(delay) and delay > 0):
            raise ValueError(f"delay must be a finite number > 0; got {delay!r}")
        self.initial, self.decay, self.delay = float(initial), float(decay), float(delay)

    def __call__(self, step: int) -> float:
        return self.initial * (1.0 + step / self.delay) ** -self.decay

    def __repr__(self) -> str:
        return f"RobbinsMonro(initial={self.initial}, decay={self.decay}, delay={self.delay})"


def as_schedule(step_size):
    """A callable ``t -> eta_t`` from a number (constant step), a schedule, or any callable."""
    if callable(step_size):
        return step_size
    if isinstance(step_size, (int, float)) and not isinstance(step_size, bool) and 0 < step_size <= 1:
        return RobbinsMonro(initial=float(step_size), decay=0.0)
    raise ValueError(f"step_size must be a number in (0, 1] or a callable t -> eta_t; got {step_size!r}")


def checked_step(schedule, step: int) -> float:
    """``schedule(step)`` as a float, which must lie in (0, 1]."""
    value = float(schedule(step))
    if not (0 < value <= 1):
        raise ValueError(f"the step-size schedule gave eta_{step} = {value}; mini-batch EM needs steps in (0, 1]")
    return value
