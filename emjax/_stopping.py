r"""The one stopping rule and the one status resolution shared by every emjax trainer.

:func:`emjax.fit` (and :func:`emjax.fit_restarts`), :func:`emjax.streaming.fit_stream` and
:func:`emjax.deep.fit_em` / :func:`emjax.deep.fit_end_to_end` all stop on the loss trace they
record, with the same test (:func:`loss_converged`): after the step that takes the loss from
$L_{t-1}$ to $L_t$, the run stops when both are finite and

$$|L_{t-1} - L_t| \le \mathrm{atol} + \mathrm{rtol}\,|L_t|.$$

A NaN or infinite loss never satisfies it: it ends the run with ``Status.nonfinite`` instead
(:func:`final_status`), so ``converged`` never reports a NaN (unlike ``n_iter < max_iter`` tests).
Every trainer takes ``tol=None`` (no tolerance: a fixed number of steps) by default, and
``atol=0.0``.

The functions work on jax arrays (traced inside a compiled loop) and on Python / NumPy scalars
(the host loop of the streaming trainer) alike, since they use only arithmetic operators.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array

from ._status import Status
from ._validation import check_tolerance


def is_finite(value):
    """``value`` is neither NaN nor infinite (a jax, NumPy or Python scalar; elementwise for arrays)."""
    return abs(value) < math.inf  # False for NaN and for +-inf


def loss_converged(previous, current, rtol, atol):
    r"""The stopping rule: $|L_{t-1} - L_t| \le \mathrm{atol} + \mathrm{rtol}\,|L_t|$ with both losses finite."""
    return is_finite(previous) & is_finite(current) & (abs(previous - current) <= atol + rtol * abs(current))


CRITERIA = ("distance", "loss")


def check_criterion(criterion) -> None:
    """``criterion`` is one of :data:`CRITERIA` (``ValueError`` otherwise)."""
    if not isinstance(criterion, str) or criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}; got {criterion!r}")


def step_ratio(step_norm, previous_step_norm):
    r"""A sample of the contraction factor: $\|\theta_{t+1}-\theta_t\|_2 / \|\theta_t-\theta_{t-1}\|_2$.

    NaN when the previous step is unknown or zero."""
    usable = previous_step_norm > 0
    return jnp.where(usable, step_norm / jnp.where(usable, previous_step_norm, 1), jnp.nan)


def step_norms(model, new, old):
    """(‖Δ‖₂, ‖Δ‖∞) of the step ``new - old`` over the model's free coordinates (:meth:`flatten`)."""
    delta = model.flatten(new) - model.flatten(old)
    if delta.size == 0:
        zero = jnp.zeros((), delta.dtype)
        return zero, zero
    return jnp.linalg.norm(delta), jnp.max(jnp.abs(delta))


ROUNDOFF_STEP = 100.0  # see informative_step


def informative_step(model, step_norm, params, rate):
    r"""Whether a step of 2-norm ``step_norm`` ending at ``params`` still measures the rate, given
    the current estimate ρ̂ = ``rate``: $\|\Delta\theta\|_2 > 100\,\varepsilon\max(\|\theta\|_2, 1) / (1 - \hat\rho)$
    over the free coordinates (always True while ρ̂ is unknown or not below 1).

    Near the fixed point the computed map carries a round-off error of roughly a few ε‖θ‖, so a
    ratio of two steps of length s is off by about that error over s. Aitken's factor
    ρ̂/(1 − ρ̂) tolerates an error in ρ̂ only well below 1 − ρ̂, hence the bound; below it the ratios
    are noise, often above 1, that would inflate the estimated distance a thousandfold and keep a
    converged run going. Shorter steps therefore leave ρ̂ where it was."""
    flat = model.flatten(params)
    if flat.size == 0:
        return jnp.asarray(True)
    known = rate < 1  # False for NaN and for rates at or above 1
    gap = jnp.where(known, 1 - jnp.where(known, rate, 0), 1)
    return ~known | (step_norm > roundoff_floor(flat) / gap)


def roundoff_floor(flat: Array) -> Array:
    r"""$100\,arepsilon\max(\|	heta\|_2, 1)$: a step of at most this 2-norm is round-off of the map itself."""
    return ROUNDOFF_STEP * jnp.finfo(flat.dtype).eps * jnp.maximum(jnp.linalg.norm(flat), 1)


def roundoff_distance(model, step_norm, step, params, rate, distance):
    r"""The distance estimate, with round-off steps counted as arrival while ρ̂ is unknown.

    A map that reaches its fixed point in one step (EM for K = 1, one GLM: its M-step is exact)
    gives round-off steps from then on, whose ratios are noise and keep ρ̂ unknown or above 1, so
    Aitken's estimate stays infinite. Such a step of 2-norm at most :func:`roundoff_floor` has
    moved the iterate by round-off only: its own length ``step`` (∞-norm) is then the estimate."""
    flat = model.flatten(params)
    if flat.size == 0:
        return distance
    unknown = ~(rate < 1)  # True for NaN and for rates at or above 1
    return jnp.where(unknown & (step_norm <= roundoff_floor(flat)), step, distance)


def rate_estimate(sample, previous_sample):
    """ρ̂: the larger of the last two contraction samples (NaN, unknown, until both exist).

    Taking the larger guards the Aitken estimate against one lucky ratio, which would make it
    report a distance far too small."""
    return jnp.where(jnp.isnan(sample) | jnp.isnan(previous_sample), jnp.nan, jnp.maximum(sample, previous_sample))


def aitken_distance(step, rate):
    r"""The estimated distance to the fixed point after a step of size ``step`` at linear rate ρ:
    $\|\theta_{t+1}-\theta^\star\| \approx \|\theta_{t+1}-\theta_t\|\,\rho/(1-\rho)$ (docs/math.md §5.7).

    0 for a zero step (an exact fixed point); infinite while ρ is unknown or not below 1."""
    contracting = rate < 1  # False for NaN
    safe = jnp.where(contracting, rate, 0.0)
    estimate = jnp.where(contracting, step * safe / (1 - safe), jnp.inf)
    return jnp.where(step == 0, jnp.zeros_like(estimate), estimate)


def distance_converged(distance, scale, rtol, atol):
    r"""The distance rule: $\hat d \le \mathrm{atol} + \mathrm{rtol}\,\|\theta\|_\infty$.

    False for a NaN or infinite $\hat d$."""
    return is_finite(distance) & (distance <= atol + rtol * scale)


def final_status(finite, converged, has_tolerance: bool, where):
    """The status of a finished run (before any model-specific ``degenerate`` check).

    Args:
        finite: whether every loss and iterate the run produced was finite.
        converged: whether the stopping rule was met.
        has_tolerance: whether a tolerance was given (a Python bool: without one, a run that
            finished its steps with finite values is ``ok``; with one, it is ``ok`` only when the
            rule was met, else ``max_steps``).
        where: ``jnp.where`` inside a compiled loop, ``numpy.where`` on the host.
    """
    done = converged if has_tolerance else True
    return where(finite, where(done, int(Status.ok), int(Status.max_steps)), int(Status.nonfinite))


def check_tolerances(tol, atol) -> None:
    """``tol`` None or a finite number >= 0; ``atol`` a finite number >= 0 (``ValueError`` otherwise)."""
    check_tolerance(atol, "atol")
    if tol is not None:
        check_tolerance(tol, "tol")


def tree_all_finite(tree) -> Array:
    """True when every floating leaf of ``tree`` is finite (a traced boolean)."""
    leaves = [
        jnp.all(jnp.isfinite(leaf))
        for leaf in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
