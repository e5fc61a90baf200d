"""A sweep's output folder: one JSON record of the configuration, one ``.npz`` file per finished chunk.

Layout::

    out/sweep.json              configuration, versions, grid shape, output structure
    out/chunks/chunk-00000.npz  the outputs of cells [0, chunk_size), one array per output leaf
    ...

Every file is written to a temporary name in the same folder and renamed into place (``os.replace``
is atomic), so a process killed at any moment leaves finished chunks intact and no partial file
under a final name: at most the chunk in flight is lost. Re-running the same configuration loads the
finished chunks and computes only the missing ones. A folder written by a different configuration
is refused rather than mixed.

The record is brought to its JSON form (:func:`to_json`) before it is written or compared, so a
re-run compares exactly what was stored: tuples, NumPy scalars and dtypes in a configuration would
otherwise differ from their own JSON round trip (a tuple is never equal to the list read back).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

RECORD = "sweep.json"
CHUNKS = "chunks"
FORMAT = 1


class ConfigurationMismatch(ValueError):
    """The output folder holds results of a different sweep configuration."""


def _atomic_write(path: Path, write) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _json_default(value):
    """The JSON-ready stand-in for the few non-JSON types a configuration may carry."""
    if isinstance(value, np.generic):  # NumPy scalars: np.float32(0.5) -> 0.5
        return value.item()
    if isinstance(value, np.dtype):
        return value.name
    if isinstance(value, type) and isinstance(getattr(value, "dtype", None), np.dtype):
        return value.dtype.name  # jnp.float32
    if isinstance(value, type) and issubclass(value, np.generic):
        return np.dtype(value).name  # np.float32
    if hasattr(value, "__array__"):  # NumPy and JAX arrays
        return np.asarray(value).tolist()
    raise TypeError(f"sweep configuration values must be JSON-ready; got {type(value).__name__}: {value!r}")


def to_json(value):
    """``value`` as it reads back from ``sweep.json``: tuples become lists, NumPy values plain numbers.

    Raises TypeError for a value JSON cannot hold, before anything is written.
    """
    return json.loads(_text(value))


def _text(value) -> str:
    # Compared as text, not as objects: NaN is not equal to itself, but its JSON text is.
    return json.dumps(value, sort_keys=True, default=_json_default)


def _differences(old, new, prefix="") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        lines = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                lines.append(f"{where}: absent before, now {_short(new[key])}")
            elif key not in new:
                lines.append(f"{where}: was {_short(old[key])}, now absent")
            else:
                lines.extend(_differences(old[key], new[key], where))
        return lines
    return [] if _text(old) == _text(new) else [f"{prefix}: was {_short(old)}, now {_short(new)}"]


def _short(value, limit=80) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SweepStore:
    """Reads and writes one sweep's folder.

    ``record`` is brought to its JSON form by :func:`to_json` (idempotent) on the way in, so
    ``self.record`` is exactly what is written and what a re-run compares.
    """

    def __init__(self, folder, record: dict, num_chunks: int):
        self.folder = Path(folder)
        self.chunks = self.folder / CHUNKS
        self.record = to_json(record)
        self.num_chunks = num_chunks

    def open(self, writer: bool = True) -> None:
        """Create the folder and its record, or check that an existing record has the same configuration."""
        path = self.folder / RECORD
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise ConfigurationMismatch(f"{path} exists but is not a readable sweep record ({error})") from None
            if _text(old.get("configuration")) != _text(self.record["configuration"]):
                changes = _differences(old.get("configuration"), self.record["configuration"])
                raise ConfigurationMismatch(
                    f"{self.folder} holds a sweep with a different configuration; refusing to mix results. "
                    "Use a new output folder (or delete this one). Differences:\n  " + "\n  ".join(changes)
                )
            return
        if self.folder.exists() and any(self.folder.iterdir()):
            raise ConfigurationMismatch(f"{self.folder} is not empty and has no {RECORD}; refusing to write into it")
        if writer:
            self.chunks.mkdir(parents=True, exist_ok=True)
            text = json.dumps(self.record, indent=2, sort_keys=True).encode()
            _atomic_write(path, lambda stream: stream.write(text))

    def chunk_path(self, index: int) -> Path:
        return self.chunks / f"chunk-{index:05d}.npz"

    def load(self, index: int, expected: dict[str, tuple]) -> dict[str, np.ndarray] | None:
        """The arrays of a finished chunk, or None if it is absent or unreadable (it is then recomputed)."""
        path = self.chunk_path(index)
        if not path.exists():
            return None
        try:
            with np.load(path) as stored:
                arrays = {name: stored[name] for name in expected}
        except (OSError, KeyError, ValueError, EOFError):
            return None
        if any(arrays[name].shape != shape for name, shape in expected.items()):
            return None
        return arrays

    def save(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        self.chunks.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.chunk_path(index), lambda stream: np.savez(stream, **arrays))
