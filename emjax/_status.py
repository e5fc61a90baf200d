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

    A result stores the bare integer (``int(result.status) == 0``); :meth:`name_of` turns it back
    into a readable name.

    Example:
        >>> import emjax
        >>> emjax.Status.name_of(0), emjax.Status.name_of(emjax.Status.degenerate)
        ('Status.ok', 'Status.degenerate')
    """

    ok = 0
    max_steps = 1
    nonfinite = 2
    degenerate = 3

    @classmethod
    def name_of(cls, code) -> str:
        """``"Status.<name>"`` for a status code (a Python int, a NumPy or concrete jax scalar, a Status).

        A code that is no status gives ``"Status(<code>)"``, so a corrupted result still prints.

        Raises:
            ValueError: if ``code`` is not a single integer (e.g. a batched status: index it first).
        """
        try:
            value = int(code)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"a status code is one integer; got {code!r} (a batched result has one per lane: index it first)"
            ) from error
        try:
            return f"Status.{cls(value).name}"
        except ValueError:
            return f"Status({value})"
