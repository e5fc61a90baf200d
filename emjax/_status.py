"""Status codes reported by fits, one per vmapped lane (never an exception inside jit)."""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """Outcome of a fit, stored as an integer array so it survives ``jit`` and ``vmap``.

    Attributes:
        ok: the run finished its steps (or met its tolerance) with finite values.
        max_steps: a tolerance was asked for and not met within the step bound.
        nonfinite: a loss or parameter became NaN or infinite.
        degenerate: a component lost its support (reserved for the K-expert models).
    """

    ok = 0
    max_steps = 1
    nonfinite = 2
    degenerate = 3
