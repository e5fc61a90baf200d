r"""Re-iterable sources of (x, y) mini-batches: arrays in memory, or ``.npy`` files on disk.

A *batch source* is anything whose ``iter()`` yields ``(x, y)`` pairs with x of shape (b, d) and y
of shape (b,). :func:`emjax.streaming.fit_stream` walks it once per epoch, and once per pass of
the full-batch polish, so a source that can be iterated again (a list, :class:`ArrayBatches`,
:class:`NpyBatches`) supports every option; a one-shot generator supports one epoch without polish.

:class:`NpyBatches` memory-maps its files and hands each batch back to the kernel once it has
been copied out (``madvise(MADV_DONTNEED)``), so the resident memory of a pass stays at one batch
whatever the file size.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

import jax
import numpy as np


def _check_batch_size(batch_size) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a Python int >= 1; got {batch_size!r}")
    return batch_size


def _batch_bounds(num_rows: int, batch_size: int, drop_remainder: bool) -> list[tuple[int, int]]:
    stop = num_rows - num_rows % batch_size if drop_remainder else num_rows
    return [(start, min(start + batch_size, stop)) for start in range(0, stop, batch_size)]


def _check_rows(x_shape, y_shape, x_name: str, y_name: str) -> None:
    if len(x_shape) != 2:
        raise ValueError(f"{x_name} must have shape (n, d) (rank 2); got shape {tuple(x_shape)}")
    if len(y_shape) != 1:
        raise ValueError(f"{y_name} must have shape (n,) (rank 1); got shape {tuple(y_shape)}")
    if x_shape[0] != y_shape[0]:
        raise ValueError(f"{x_name} and {y_name} must have the same number of rows; got {x_shape[0]} and {y_shape[0]}")
    if x_shape[0] < 1 or x_shape[1] < 1:
        raise ValueError(f"{x_name} must have at least one row and one column; got shape {tuple(x_shape)}")


class ArrayBatches:
    """Mini-batches of arrays held in memory, in order or reshuffled every epoch.

    Args:
        x: features, shape (n, d). y: responses, shape (n,).
        batch_size: rows per batch (the last batch may be smaller unless ``drop_remainder``).
        key: optional ``jax.random`` key; when given, every epoch visits the rows in a fresh
            random order (epoch e uses ``fold_in(key, e)``), which stochastic EM's step-size
            theory assumes. Without it, batches come in storage order.
        drop_remainder: skip the last, smaller batch (every batch then has one shape, so a
            jitted step compiles once).
        weights: optional observation weights, shape (n,): batches are then ``(x, y, weights)``
            triples, which :func:`~emjax.streaming.fit_stream` weighs as :func:`emjax.fit` does.

    Example:
        >>> import numpy as np
        >>> batches = ArrayBatches(np.zeros((5, 2)), np.zeros(5), batch_size=2)
        >>> [x.shape[0] for x, _ in batches], len(batches), batches.num_rows
        ([2, 2, 1], 3, 5)
    """

    def __init__(self, x, y, batch_size: int, *, key=None, drop_remainder: bool = False, weights=None):
        _check_rows(np.shape(x), np.shape(y), "x", "y")
        if weights is not None and np.shape(weights) != np.shape(y):
            raise ValueError(f"weights must have one entry per row, shape {np.shape(y)}; got {np.shape(weights)}")
        self.x, self.y, self.weights = x, y, weights
        self.batch_size = _check_batch_size(batch_size)
        self.key = key
        self.drop_remainder = bool(drop_remainder)
        self._epoch = 0
        self._bounds = _batch_bounds(self.num_rows, self.batch_size, self.drop_remainder)
        if not self._bounds:
            raise ValueError(f"batch_size {batch_size} with drop_remainder leaves no batch of {self.num_rows} rows")

    @property
    def num_rows(self) -> int:
        """n, the number of rows in the data set."""
        return int(np.shape(self.x)[0])

    def __len__(self) -> int:
        return len(self._bounds)

    def __iter__(self) -> Iterator[tuple[np.ndarray, ...]]:
        if self.key is None:
            order = None
        else:
            order = np.asarray(jax.random.permutation(jax.random.fold_in(self.key, self._epoch), self.num_rows))
            self._epoch += 1
        for start, stop in self._bounds:
            rows = slice(start, stop) if order is None else order[start:stop]
            if self.weights is None:
                yield self.x[rows], self.y[rows]
            else:
                yield self.x[rows], self.y[rows], self.weights[rows]


class NpyBatches:
    """Mini-batches read from two ``.npy`` files, memory-mapped so memory does not grow with n.

    Args:
        x_path: a ``.npy`` file holding x, shape (n, d), C order.
        y_path: a ``.npy`` file holding y, shape (n,).
        batch_size: rows per batch.
        drop_remainder: skip the last, smaller batch.
        dtype: optional dtype each batch is converted to (default: the files' own).

    Batches come in storage order: write the files pre-shuffled if the rows are sorted in any
    way. Each batch is a copy in ordinary memory; the mapped pages it came from are released
    right after, so the process's resident memory stays near one batch however large the files.

    Raises:
        FileNotFoundError: a file is missing. ValueError: the files are not ``.npy`` arrays of
        matching rows, or x is not C-ordered (rows would not be contiguous).

    Example:
        >>> import numpy as np, tempfile, os
        >>> folder = tempfile.mkdtemp()
        >>> np.save(os.path.join(folder, "x.npy"), np.ones((5, 2))); np.save(os.path.join(folder, "y.npy"), np.ones(5))
        >>> batches = NpyBatches(os.path.join(folder, "x.npy"), os.path.join(folder, "y.npy"), batch_size=4)
        >>> [x.shape for x, _ in batches]
        [(4, 2), (1, 2)]
    """

    def __init__(self, x_path, y_path, batch_size: int, *, drop_remainder: bool = False, dtype=None):
        self.x_path, self.y_path = os.fspath(x_path), os.fspath(y_path)
        for path in (self.x_path, self.y_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no such .npy file: {path}")
        x, y = self._open()
        _check_rows(x.shape, y.shape, f"x ({self.x_path})", f"y ({self.y_path})")
        if not x.flags.c_contiguous:
            raise ValueError(f"x ({self.x_path}) must be stored in C order so that a batch of rows is contiguous")
        self._num_rows, self.num_features = x.shape
        self.batch_size = _check_batch_size(batch_size)
        self.drop_remainder = bool(drop_remainder)
        self.dtype = None if dtype is None else np.dtype(dtype)
        self._bounds = _batch_bounds(self._num_rows, self.batch_size, self.drop_remainder)
        if not self._bounds:
            raise ValueError(f"batch_size {batch_size} with drop_remainder leaves no batch of {self._num_rows} rows")

    def _open(self):
        try:
            return np.load(self.x_path, mmap_mode="r"), np.load(self.y_path, mmap_mode="r")
        except ValueError as error:
            raise ValueError(f"{self.x_path} and {self.y_path} must be .npy arrays: {error}") from error

    @property
    def num_rows(self) -> int:
        """n, the number of rows in the files."""
        return self._num_rows

    def __len__(self) -> int:
        return len(self._bounds)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        x, y = self._open()
        try:
            for start, stop in self._bounds:
                x_batch, y_batch = np.array(x[start:stop], dtype=self.dtype), np.array(y[start:stop], dtype=self.dtype)
                _release(x, start, stop)
                _release(y, start, stop)
                yield x_batch, y_batch
        finally:
            del x, y


def _release(array: np.memmap, start: int, stop: int) -> None:
    """Drop the mapped pages of rows [start, stop) from this process's resident set.

    They stay in the kernel's page cache (a second epoch is still fast), but no longer count
    against the process, so a pass over a file larger than memory keeps a flat footprint."""
    handle = getattr(array, "_mmap", None)
    if handle is None or not hasattr(handle, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    row_bytes = array.strides[0]
    data_start = array.offset % mmap.ALLOCATIONGRANULARITY  # numpy maps from an aligned offset before the data
    begin = data_start + start * row_bytes
    end = data_start + stop * row_bytes
    page = mmap.PAGESIZE
    first, last = begin // page * page, end // page * page  # whole pages only; the partial tail stays mapped
    if last > first:
        handle.madvise(mmap.MADV_DONTNEED, first, last - first)
