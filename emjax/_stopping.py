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
