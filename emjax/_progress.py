r"""Progress output for every emjax loop, in one place.

* :func:`progress_interval` turns a ``progress`` argument (``False``, ``True`` or an int k) into
  the number of steps between lines; every trainer takes the same argument.
* :func:`report` prints one line, ``"<label>: step t/T, loss L[, extra]"``; the host loop of
  :func:`emjax.streaming.fit_stream` calls it directly.
* :func:`maybe_report` calls :func:`report` from inside a compiled loop (``jax.debug.callback``,
  every k steps and at the last): :func:`emjax.fit` and :func:`emjax.deep.fit_em` use it. Results
  are bit-identical with progress on or off; under ``vmap`` every lane reports.
* :class:`ChunkProgress` is the sweep's bar over chunks of cells (a vmapped fit reports per lane,
  so a sweep reports its grid instead).
"""

from __future__ import annotations

import sys
import time

import jax
from jax import lax


def progress_interval(progress, default: int = 10) -> int:
    """0 (silent) or the number of steps between progress lines (``True``: ``default``)."""
    if isinstance(progress, bool):
        return default if progress else 0
    if isinstance(progress, int) and progress >= 1:
        return progress
    raise ValueError(f"progress must be a bool or a Python int >= 1; got {progress!r}")


def format_line(label: str, step, num_steps, loss, extra: str = "") -> str:
    """``"<label>: step t/T, loss L"`` (``T`` omitted when None) with an optional ``", extra"``."""
    total = "" if num_steps is None else f"/{int(num_steps)}"
    line = f"{label}: step {int(step)}{total}, loss {float(loss):.10g}"
    return f"{line}, {extra}" if extra else line


def report(label: str, step, num_steps, loss, extra: str = "") -> None:
    """Print one progress line (flushed, to stdout)."""
    print(format_line(label, step, num_steps, loss, extra), flush=True)


def maybe_report(label: str, progress_every: int, done, num_steps: int, loss) -> None:
    """Inside a compiled loop: report after step ``done`` every ``progress_every`` steps and at the last.

    ``progress_every`` is a static Python int (0: nothing is traced at all)."""
    if progress_every:
        lax.cond(
            (done % progress_every == 0) | (done == num_steps),
            lambda: jax.debug.callback(lambda d, value: report(label, d, num_steps, value), done, loss),
            lambda: None,
        )


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ChunkProgress:
    """Reports finished chunks on ``stream`` (stderr by default).

    ``enabled=None`` shows the bar only when the stream is a terminal; ``True`` always reports
    (one line per chunk when the stream is not a terminal, e.g. a log file); ``False`` is silent.
    """

    def __init__(self, num_chunks: int, num_cells: int, enabled: bool | None = None, stream=None, label="emjax.sweep"):
        self.stream = sys.stderr if stream is None else stream
        interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = interactive if enabled is None else bool(enabled)
        self.interactive = interactive
        self.num_chunks, self.num_cells, self.label = num_chunks, num_cells, label
        self.done_chunks = self.done_cells = self.computed_cells = 0
        self.start = time.perf_counter()

    def skip(self, cells: int) -> None:
        """A chunk loaded from disk: counted as done, not in the rate."""
        self.done_chunks += 1
        self.done_cells += cells
        self._show()

    def advance(self, cells: int) -> None:
        """A chunk computed now."""
        self.done_chunks += 1
        self.done_cells += cells
        self.computed_cells += cells
        self._show()

    def restart_clock(self) -> None:
        """Start the rate after compilation, so cells per second measures running only."""
        self.start = time.perf_counter()

    def _show(self) -> None:
        if not self.enabled:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.computed_cells / elapsed
        left = (self.num_cells - self.done_cells) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * self.done_chunks / self.num_chunks)
        bar = "#" * filled + "." * (width - filled)
        eta = _clock(left) if left == left else "?"
        line = (
            f"{self.label} [{bar}] {self.done_chunks}/{self.num_chunks} chunks, "
            f"{self.done_cells}/{self.num_cells} cells, {rate:.1f} cells/s, eta {eta}"
        )
        if self.interactive:
            end = "\n" if self.done_chunks == self.num_chunks else ""
            self.stream.write("\r" + line + end)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
