"""The IDX file format (MNIST, Fashion-MNIST) and a Fashion-MNIST loader for files already on disk.

Nothing is ever downloaded: the loader reads a folder the user provides, names in
``EMJAX_FASHION_MNIST``, or Debian's package installed (``apt-get install dataset-fashion-mnist``).
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from ._dataset import ImageDataset

# IDX type code -> big-endian element dtype.
IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"

# Where fashion_mnist() looks when no folder is given: this environment variable, then Debian's
# ``dataset-fashion-mnist`` package.
FASHION_MNIST_ENV = "EMJAX_FASHION_MNIST"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL = "apt-get install dataset-fashion-mnist"

# (train images, train labels, test images, test labels), as distributed.
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def read_idx(path) -> np.ndarray:
    r"""Read one IDX file (the MNIST format), plain or gzipped, into a NumPy array.

    An IDX file is a 4-byte magic number ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian
    ``int32`` dimension sizes, then the data in C order, big-endian. Type codes: ``0x08`` uint8,
    ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64. A file that
    starts with the gzip magic bytes ``1f 8b`` is decompressed first, whatever its name.

    Args:
        path: the file, a ``str`` or ``os.PathLike``.

    Returns:
        An array of shape ``(d_1, ..., d_ndim)`` with the file's element type in native byte order
        (``uint8`` for MNIST images and labels).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file, if the gzip stream is corrupt, the magic number is wrong, the
            type code is unknown, or the payload is shorter or longer than the header says.

    Example:
        >>> import gzip, os, struct, tempfile
        >>> from emjax.datasets import read_idx
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "labels.gz")
        ...     header = bytes([0, 0, 0x08, 1]) + struct.pack(">i", 3)
        ...     with open(path, "wb") as stream:
        ...         _ = stream.write(gzip.compress(header + bytes([7, 8, 9])))
        ...     labels = read_idx(path)
        >>> labels
        array([7, 8, 9], dtype=uint8)
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"{path}: starts like a gzip file but cannot be decompressed ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{path}: not an IDX file; its magic number must start with bytes 00 00, "
            f"got {raw[:4].hex(' ') or 'an empty file'}"
        )
    type_code, ndim = raw[2], raw[3]
    if type_code not in IDX_TYPES:
        known = ", ".join(f"0x{code:02X} ({dtype.newbyteorder('=').name})" for code, dtype in IDX_TYPES.items())
        raise ValueError(f"{path}: unknown IDX type code 0x{type_code:02X}; known codes are {known}")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(
            f"{path}: truncated header; {ndim} dimensions need {header_size} header bytes, the file has {len(raw)}"
        )
    shape = tuple(int(size) for size in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize
    actual = len(raw) - header_size
    if actual != expected:
        problem = "truncated" if actual < expected else "has extra data"
        raise ValueError(
            f"{path}: payload {problem}; the header says shape {shape} of {dtype.newbyteorder('=').name} "
            f"({expected} bytes), the file holds {actual} bytes after the header"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _resolve(folder: Path) -> list[Path]:
    """The four Fashion-MNIST files in ``folder``, each plain if present, else gzipped."""
    found, missing = [], []
    for name in FASHION_MNIST_FILES:
        plain, zipped = folder / name, folder / f"{name}.gz"
        if plain.is_file():
            found.append(plain)
        elif zipped.is_file():
            found.append(zipped)
        else:
            missing.append(name)
    if missing:
        accepted = ", ".join(f"{name}[.gz]" for name in FASHION_MNIST_FILES)
        raise FileNotFoundError(
            f"{folder} lacks {', '.join(f'{name} (or {name}.gz)' for name in missing)}. "
            f"The folder must hold the four files {accepted}, plain or gzipped; "
            "emjax downloads nothing, so fetch them yourself."
        )
    return found


def _read_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(pixels / 255 as float32 rows, labels as int32, (H, W)) after checking the pair of files."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{images_path}: images must be a 3-D uint8 array (n, H, W); got shape {images.shape} of {images.dtype}"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{labels_path}: labels must be a 1-D integer array; got shape {labels.shape} of {labels.dtype}"
        )
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{labels_path} holds {labels.shape[0]} labels but {images_path} holds {images.shape[0]} images"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{labels_path}: labels must lie in 0..9; got values in {labels.min()}..{labels.max()}")
    x = images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255)
    return x, labels.astype(np.int32), images.shape[1:]


def fashion_mnist_folder(path=None) -> Path:
    r"""The folder :func:`fashion_mnist` reads: ``path`` if given, else the folder named by the
    environment variable ``EMJAX_FASHION_MNIST``, else Debian's ``/usr/share/datasets/fashion-mnist``
    (where ``apt-get install dataset-fashion-mnist`` puts the four files).

    Raises:
        FileNotFoundError: when no folder is given and neither default holds the four files; the
            message names the places searched and the install command.

    Example:
        >>> from emjax.datasets import fashion_mnist_folder
        >>> str(fashion_mnist_folder("/data/fmnist"))
        '/data/fmnist'
    """
    if path is not None:
        return Path(os.fspath(path))
    searched = []
    from_env = os.environ.get(FASHION_MNIST_ENV)
    if from_env:
        return Path(from_env)  # named explicitly: errors about it come from fashion_mnist itself
    for folder in (DEBIAN_FASHION_MNIST,):
        searched.append(str(folder))
        if folder.is_dir() and all(
            (folder / name).is_file() or (folder / f"{name}.gz").is_file() for name in FASHION_MNIST_FILES
        ):
            return folder
    raise FileNotFoundError(
        "Fashion-MNIST was not found: no path was given, the environment variable "
        f"{FASHION_MNIST_ENV} is not set, and {', '.join(searched)} does not hold the four IDX files. "
        f"Install them with `{FASHION_MNIST_INSTALL}` (Debian, Ubuntu), or set {FASHION_MNIST_ENV} "
        "to (or pass) a folder holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]; emjax downloads nothing."
    )


def fashion_mnist(path=None) -> ImageDataset:
    r"""Fashion-MNIST from the standard IDX files in a folder you already have (nothing is downloaded).

    Without ``path`` the folder is found by :func:`fashion_mnist_folder`: the environment variable
    ``EMJAX_FASHION_MNIST``, then Debian's ``/usr/share/datasets/fashion-mnist``
    (``apt-get install dataset-fashion-mnist``). The folder must hold ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each
    plain or with ``.gz`` appended; when both forms exist the plain file is read. The split is the
    distributed one: the ``train`` files (60,000 images) and the ``t10k`` files (10,000 images).
    Pixels $0, \dots, 255$ are divided by 255 into ``float32`` values in $[0, 1]$ (255 becomes
    exactly 1.0) and each image is flattened to a row; ``image_shape`` is read from the files,
    (28, 28) for the real data.

    The original MNIST digits use the same file names and format, so ``fashion_mnist`` on an MNIST
    folder loads MNIST (the result is still named ``"fashion_mnist"``).

    Args:
        path: the folder, a ``str`` or ``os.PathLike``, or None to search the standard places.

    Returns:
        An ``ImageDataset`` named ``"fashion_mnist"`` with 10 classes.

    Raises:
        FileNotFoundError: if the folder or any of the four files is missing (the message names
            them and lists the accepted file names), or, without ``path``, if no standard place
            holds them (the message gives the install command).
        ValueError: if a file is not valid IDX, the images are not 3-D ``uint8``, the labels are
            not 1-D, the counts of images and labels differ, the train and test images differ in
            size, or a label lies outside 0..9.

    Example:
        >>> import os, struct, tempfile
        >>> from emjax.datasets import fashion_mnist
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     for split, n in (("train", 3), ("t10k", 2)):  # tiny fake files of 2x2 images
        ...         with open(os.path.join(folder, f"{split}-images-idx3-ubyte"), "wb") as stream:
        ...             _ = stream.write(bytes([0, 0, 8, 3]) + struct.pack(">3i", n, 2, 2) + bytes([255] * 4 * n))
        ...         with open(os.path.join(folder, f"{split}-labels-idx1-ubyte"), "wb") as stream:
        ...             _ = stream.write(bytes([0, 0, 8, 1]) + struct.pack(">i", n) + bytes(range(n)))
        ...     data = fashion_mnist(folder)
        >>> data, float(data.x_train.max())
        (ImageDataset(name='fashion_mnist', image_shape=(2, 2), num_classes=10, n_train=3, n_test=2), 1.0)
    """
    folder = fashion_mnist_folder(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Fashion-MNIST folder {folder} does not exist (or is not a folder); "
            "emjax downloads nothing, so point to a folder holding the four IDX files"
        )
    train_images, train_labels, test_images, test_labels = _resolve(folder)
    x_train, y_train, train_shape = _read_split(train_images, train_labels)
    x_test, y_test, test_shape = _read_split(test_images, test_labels)
    if train_shape != test_shape:
        raise ValueError(
            f"train images are {train_shape[0]}x{train_shape[1]} ({train_images}) but test images are "
            f"{test_shape[0]}x{test_shape[1]} ({test_images})"
        )
    return ImageDataset(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        image_shape=train_shape,
        num_classes=10,
        name="fashion_mnist",
    )
