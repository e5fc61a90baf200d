"""scikit-learn's bundled 8x8 handwritten digits with a fixed stratified train/test split."""

from __future__ import annotations

import functools

import numpy as np

from .._extras import require
from ._dataset import ImageDataset, stratified_split

TEST_FRACTION = 0.25
SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pixels / 16 as float32, labels as int32, train_idx, test_idx), read-only; loaded once."""
    # imported here: scikit-learn is slow to import, and it is an optional extra
    load_digits = require("sklearn.datasets", "emjax.datasets.digits").load_digits
    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float64) / 16.0).astype(np.float32)
    y = np.asarray(bunch.target).astype(np.int32)
    train_idx, test_idx = stratified_split(y, TEST_FRACTION, SPLIT_SEED)
    arrays = (x, y, train_idx, test_idx)
    for array in arrays:
        array.setflags(write=False)
    return arrays


def digits() -> ImageDataset:
    r"""scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes) with a fixed train/test split.

    The images come from ``sklearn.datasets.load_digits``, bundled with scikit-learn (nothing is
    downloaded). Pixel counts $0, \dots, 16$ are divided by 16, so every pixel is one of $k/16$ in
    $[0, 1]$, stored exactly in ``float32``. Rows are flattened 8x8 images, ``image_shape=(8, 8)``.

    The split is ``stratified_split(labels, 0.25, seed=0)``: 25% of each class, rounded to the
    nearest integer, is held out for testing, drawn with ``np.random.default_rng(0)``. That gives
    **1,347 train and 450 test images** (44 to 46 test images per class). The split never changes.

    The data are read once and cached; every call returns new arrays, so changing them does not
    affect later calls.

    Returns:
        An ``ImageDataset`` named ``"digits"``: ``x_train`` (1347, 64), ``x_test`` (450, 64).

    Example:
        >>> from emjax.datasets import digits
        >>> data = digits()
        >>> data
        ImageDataset(name='digits', image_shape=(8, 8), num_classes=10, n_train=1347, n_test=450)
        >>> float(data.x_train.max()), data.x_train.dtype.name
        (1.0, 'float32')
    """
    x, y, train_idx, test_idx = _load_digits()
    return ImageDataset(
        x_train=x[train_idx],
        y_train=y[train_idx],
        x_test=x[test_idx],
        y_test=y[test_idx],
        image_shape=(8, 8),
        num_classes=10,
        name="digits",
    )
