"""The ``ImageDataset`` container and the stratified train/test split shared by the loaders."""

from __future__ import annotations

import dataclasses
import operator

import numpy as np


def _check_fraction(test_fraction) -> float:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.integer, np.floating)):
        raise ValueError(f"test_fraction must be a number strictly between 0 and 1; got {test_fraction!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be strictly between 0 and 1; got {test_fraction!r}")
    return float(test_fraction)


def stratified_split(labels, test_fraction, seed) -> tuple[np.ndarray, np.ndarray]:
    r"""Split indices into train and test sets, holding out the same fraction of every class.

    For each class $c$ with $n_c$ members, $\operatorname{rint}(f\, n_c)$ of them go to the test set
    (rounded to the nearest integer, ties to even, as ``numpy.rint`` does), chosen uniformly
    without replacement; the rest go to the train set. One ``np.random.default_rng(seed)`` draws a
    permutation per class, classes taken in sorted order, so the split is a pure function of
    ``(labels, test_fraction, seed)``.

    Args:
        labels: class labels, shape (n,); any values ``numpy.unique`` can sort.
        test_fraction: the fraction $f \in (0, 1)$ of each class held out for testing.
        seed: seed of ``np.random.default_rng``.

    Returns:
        ``(train_idx, test_idx)``: sorted ``int64`` index arrays, disjoint and together covering
        ``range(n)``.

    Raises:
        ValueError: if ``labels`` is not 1-D and non-empty, if ``test_fraction`` is not in $(0, 1)$,
            or if the train or the test set would be empty.

    Example:
        >>> import numpy as np
        >>> from emjax.datasets import stratified_split
        >>> train, test = stratified_split(np.array([0, 0, 0, 0, 1, 1, 1, 1]), 0.25, seed=0)
        >>> len(train), len(test)
        (6, 2)
        >>> sorted(np.array([0, 0, 0, 0, 1, 1, 1, 1])[test].tolist())
        [0, 1]
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array; got shape {labels.shape}")
    fraction = _check_fraction(test_fraction)
    rng = np.random.default_rng(seed)
    test_parts = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_test = int(np.rint(fraction * members.size))
        test_parts.append(rng.permutation(members)[:n_test])
    test_idx = np.sort(np.concatenate(test_parts)).astype(np.int64)
    is_test = np.zeros(labels.size, dtype=bool)
    is_test[test_idx] = True
    train_idx = np.flatnonzero(~is_test).astype(np.int64)
    if test_idx.size == 0 or train_idx.size == 0:
        raise ValueError(
            f"test_fraction={fraction} leaves {train_idx.size} train and {test_idx.size} test examples "
            f"out of {labels.size}; both sets must be non-empty"
        )
    return train_idx, test_idx


def _subset_size(value, available: int, name: str) -> int:
    if value is None:
        return available
    if isinstance(value, bool):
        raise ValueError(f"{name} must be None or an int in [1, {available}]; got {value!r}")
    try:
        size = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be None or an int in [1, {available}]; got {value!r}") from None
    if not 1 <= size <= available:
        raise ValueError(f"{name} must be in [1, {available}] (the available examples); got {size}")
    return size


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class ImageDataset:
    r"""A labelled image data set with a fixed train/test split; images are flattened rows.

    Pixel intensities lie in $[0, 1]$. Image $i$ of the train set is ``x_train[i].reshape(image_shape)``.
    The constructor converts ``x_*`` to ``float32`` and ``y_*`` to ``int32`` and checks that the shapes
    agree, that the pixels lie in $[0, 1]$ and that the labels lie in ``0 .. num_classes - 1``.
    Equality is identity (the fields are arrays); ``repr`` gives a one-line summary, never the arrays.

    Attributes:
        x_train: train images, shape (n_train, H*W), ``float32`` in $[0, 1]$.
        y_train: train labels, shape (n_train,), ``int32``.
        x_test: test images, shape (n_test, H*W), ``float32`` in $[0, 1]$.
        y_test: test labels, shape (n_test,), ``int32``.
        image_shape: ``(H, W)``.
        num_classes: the number of classes; labels lie in ``0 .. num_classes - 1``.
        name: a short name, e.g. ``"digits"``.

    Raises:
        ValueError: if the shapes, pixel range or labels are inconsistent.

    Example:
        >>> import numpy as np
        >>> from emjax.datasets import ImageDataset
        >>> data = ImageDataset(
        ...     x_train=np.zeros((4, 6)), y_train=np.array([0, 1, 0, 1]),
        ...     x_test=np.ones((2, 6)), y_test=np.array([1, 0]),
        ...     image_shape=(2, 3), num_classes=2, name="toy")
        >>> data
        ImageDataset(name='toy', image_shape=(2, 3), num_classes=2, n_train=4, n_test=2)
        >>> data.x_train.dtype, data.y_train.dtype
        (dtype('float32'), dtype('int32'))
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    image_shape: tuple[int, int]
    num_classes: int
    name: str

    def __post_init__(self):
        try:
            image_shape = tuple(operator.index(size) for size in self.image_shape)
        except TypeError:
            image_shape = ()
        if len(image_shape) != 2 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (H, W) with H, W >= 1; got {self.image_shape!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, (int, np.integer)):
            raise ValueError(f"num_classes must be an int >= 1; got {self.num_classes!r}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1; got {self.num_classes!r}")
        object.__setattr__(self, "image_shape", image_shape)
        object.__setattr__(self, "num_classes", int(self.num_classes))
        object.__setattr__(self, "name", str(self.name))
        num_pixels = image_shape[0] * image_shape[1]
        for split in ("train", "test"):
            x = np.asarray(getattr(self, f"x_{split}"), dtype=np.float32)
            y_raw = np.asarray(getattr(self, f"y_{split}"))
            if x.ndim != 2 or x.shape[1] != num_pixels:
                raise ValueError(
                    f"x_{split} must have shape (n, H*W) = (n, {num_pixels}) for image_shape {image_shape}; "
                    f"got shape {x.shape}"
                )
            if y_raw.shape != (x.shape[0],):
                raise ValueError(
                    f"y_{split} must have shape (n,) = ({x.shape[0]},) to match x_{split}; got shape {y_raw.shape}"
                )
            if x.size and not (np.all(x >= 0) and np.all(x <= 1)):
                raise ValueError(f"x_{split} must hold pixel intensities in [0, 1] (no NaN)")
            if y_raw.size and not np.issubdtype(y_raw.dtype, np.integer):
                raise ValueError(f"y_{split} must hold integer labels; got dtype {y_raw.dtype}")
            if y_raw.size and (y_raw.min() < 0 or y_raw.max() >= self.num_classes):
                raise ValueError(
                    f"y_{split} must hold labels in 0..{self.num_classes - 1}; "
                    f"got values in {y_raw.min()}..{y_raw.max()}"
                )
            object.__setattr__(self, f"x_{split}", x)
            object.__setattr__(self, f"y_{split}", y_raw.astype(np.int32, copy=False))

    @property
    def n_train(self) -> int:
        """The number of train examples."""
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        """The number of test examples."""
        return int(self.x_test.shape[0])

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, image_shape={self.image_shape}, num_classes={self.num_classes}, "
            f"n_train={self.n_train}, n_test={self.n_test})"
        )

    def subsample(self, n_train=None, n_test=None, seed=0) -> ImageDataset:
        r"""A smaller data set: random subsets of the train and test sets, drawn without replacement.

        ``np.random.default_rng(seed)`` draws ``n_train`` train indices, then ``n_test`` test indices;
        the chosen examples keep their original order. ``None`` keeps a whole set unchanged. The
        subsets are not stratified. The result is a new ``ImageDataset`` with its own arrays.

        Args:
            n_train: the number of train examples to keep, in ``[1, self.n_train]``, or ``None``.
            n_test: the number of test examples to keep, in ``[1, self.n_test]``, or ``None``.
            seed: seed of ``np.random.default_rng``.

        Raises:
            ValueError: if a size is not ``None`` or an int in its range.

        Example:
            >>> import numpy as np
            >>> from emjax.datasets import ImageDataset
            >>> data = ImageDataset(np.zeros((10, 4)), np.arange(10) % 2, np.zeros((5, 4)), np.arange(5) % 2,
            ...                     image_shape=(2, 2), num_classes=2, name="toy")
            >>> data.subsample(n_train=3)
            ImageDataset(name='toy', image_shape=(2, 2), num_classes=2, n_train=3, n_test=5)
        """
        train_size = _subset_size(n_train, self.n_train, "n_train")
        test_size = _subset_size(n_test, self.n_test, "n_test")
        rng = np.random.default_rng(seed)
        train = np.sort(rng.choice(self.n_train, size=train_size, replace=False))
        test = np.sort(rng.choice(self.n_test, size=test_size, replace=False))
        return dataclasses.replace(
            self,
            x_train=self.x_train[train],
            y_train=self.y_train[train],
            x_test=self.x_test[test],
            y_test=self.y_test[test],
        )
