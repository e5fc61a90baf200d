"""A dependency-free progress bar over a sweep's chunks, with cells per second and time left."""

from __future__ import annotations

import sys
import time


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
        line = (f"{self.label} [{bar}] {self.done_chunks}/{self.num_chunks} chunks, "
                f"{self.done_cells}/{self.num_cells} cells, {rate:.1f} cells/s, eta {eta}")
        if self.interactive:
            end = "\n" if self.done_chunks == self.num_chunks else ""
            self.stream.write("\r" + line + end)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
