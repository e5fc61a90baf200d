r"""Padding rows with weight 0: the same fit on a row count of one's choosing.

With observation weights $v_n \ge 0$ every statistic emjax averages over rows is
$\sum_n v_n f_n / \sum_n v_n$ (:mod:`emjax.models._weighted`), and the data-driven starts weigh the
rows too (:mod:`emjax.models._kmeans`). A row of weight 0 adds nothing to either sum, so appending
such rows changes no start, step or loss beyond round-off. Two uses: a row count that a device
mesh divides (:func:`emjax.parallel.shard_rows` with ``pad=True``), and a few bucketed row counts,
so that fits and predictions on data of many sizes reuse a few compiled programs
(:mod:`emjax.sklearn`). Padded rows are copies of the last real row, so no function sees values
out of its range (a label the model cannot produce, say).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

MIN_BUCKET = 32


def bucket_rows(n: int) -> int:
    r"""The smallest $N \ge n$ of the form $m\,2^e$ with $m \in \{4, 5, 6, 7\}$, and at least 32: four
    sizes per doubling, so padding adds under 25% (under 12.5% from 64 rows on, on average).

    Example:
        >>> [bucket_rows(n) for n in (1, 32, 33, 100, 150, 60_000)]
        [32, 32, 40, 112, 160, 65536]
    """
    if n <= MIN_BUCKET:
        return MIN_BUCKET
    exponent = max((n - 1).bit_length() - 3, 0)
    return -(-n // 2**exponent) * 2**exponent


def pad_rows(extra: int, x, y=None, weights=None, dtype=None):
    """``(x, y, weights)`` with ``extra`` copies of the last row appended (weight 0).

    ``weights=None`` means weight 1 for every real row (in ``dtype``, default x's dtype). NumPy arrays
    stay NumPy, jax arrays stay jax; ``y=None`` stays None.
    """
    if weights is None:
        weights = np.ones(x.shape[0], dtype or x.dtype)
    if extra == 0:
        return x, y, weights

    def repeat_last(a, fill=None):
        xp = np if isinstance(a, np.ndarray) else jnp
        tail = xp.repeat(a[-1:], extra, axis=0) if fill is None else xp.full((extra,), fill, a.dtype)
        return xp.concatenate([a, tail])

    return repeat_last(x), None if y is None else repeat_last(y), repeat_last(weights, 0)
