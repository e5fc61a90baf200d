"""Image data sets for mixtures of experts, and two transforms; nothing is ever downloaded.

``digits`` loads scikit-learn's bundled 8x8 digits with a fixed stratified split; ``fashion_mnist``
reads the standard IDX files from a folder you already have, by default ``$EMJAX_FASHION_MNIST`` or
Debian's ``dataset-fashion-mnist`` package (``read_idx`` reads one such file).
``random_invert`` is the paper's Random Invert augmentation, in pure JAX; ``add_intercept`` appends
a column of ones to a design matrix.
"""

from ._dataset import ImageDataset as ImageDataset
from ._dataset import stratified_split as stratified_split
from ._digits import digits as digits
from ._idx import fashion_mnist as fashion_mnist
from ._idx import fashion_mnist_folder as fashion_mnist_folder
from ._idx import read_idx as read_idx
from ._transforms import add_intercept as add_intercept
from ._transforms import random_invert as random_invert

__all__ = [
    "ImageDataset",
    "add_intercept",
    "digits",
    "fashion_mnist",
    "fashion_mnist_folder",
    "random_invert",
    "read_idx",
    "stratified_split",
]
