"""emjax.datasets: the IDX reader, Fashion-MNIST on tiny fake folders, digits, the transforms."""

import gzip
import hashlib
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emjax.datasets import (
    ImageDataset,
    add_intercept,
    digits,
    fashion_mnist,
    fashion_mnist_folder,
    random_invert,
    read_idx,
    stratified_split,
)

TYPE_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array, type_code=None, extra=b""):
    """An IDX file's bytes, written independently of the reader (struct header, big-endian data)."""
    array = np.asarray(array)
    code = TYPE_CODES[array.dtype.type] if type_code is None else type_code
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes() + extra


def write_idx(path, array, compress=False, **kwargs):
    data = idx_bytes(array, **kwargs)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


# ----------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(60, dtype=np.uint8).reshape(5, 4, 3) * 4,
        np.array([3, 0, 9, 1, 7], dtype=np.uint8),
        np.array([[-1.5, 2.25e-3], [np.pi, -0.0]], dtype=np.float32),
        np.array([-(2**31), -1, 0, 2**31 - 1, 123456], dtype=np.int32),
        np.array([-128, -1, 0, 127], dtype=np.int8),
        np.array([[-32768, 300], [1, 32767]], dtype=np.int16),
        np.array([1e-300, -np.e, 1e300], dtype=np.float64),
    ],
    ids=["uint8-3d", "uint8-1d", "float32", "int32", "int8", "int16", "float64"],
)
def test_read_idx_round_trip(tmp_path, array, compress):
    # The name never says ".gz": compression is detected from the magic bytes.
    path = write_idx(tmp_path / "data-idx-ubyte", array, compress=compress)
    result = read_idx(str(path))
    assert result.dtype == array.dtype and result.dtype.isnative
    assert result.shape == array.shape
    np.testing.assert_array_equal(result, array)
    assert read_idx(path).tobytes() == array.tobytes()  # bit-identical, also through a PathLike


def test_read_idx_gzipped_file_with_plain_name_and_plain_file_with_gz_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    zipped = write_idx(tmp_path / "looks-plain", array, compress=True)
    plain = write_idx(tmp_path / "looks-zipped.gz", array, compress=False)
    assert zipped.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(zipped), array)
    np.testing.assert_array_equal(read_idx(plain), array)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda a: b"\x01\x00" + idx_bytes(a)[2:], "magic number"),
        (lambda a: b"\x00", "magic number"),
        (lambda a: idx_bytes(a, type_code=0x0A), "unknown IDX type code 0x0A"),
        (lambda a: idx_bytes(a)[:-1], "payload truncated"),
        (lambda a: idx_bytes(a, extra=b"\x00"), "payload has extra data"),
        (lambda a: idx_bytes(a)[:9], "truncated header"),
    ],
    ids=["bad-magic", "too-short", "type-code", "truncated", "extra", "header"],
)
def test_read_idx_errors_name_the_file(tmp_path, make, match, compress):
    data = make(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    path = tmp_path / "broken-file-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(ValueError, match=match) as info:
        read_idx(path)
    assert "broken-file-idx3-ubyte" in str(info.value)


def test_read_idx_corrupt_gzip(tmp_path):
    path = tmp_path / "corrupt.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.arange(50, dtype=np.uint8)))[:-12])
    with pytest.raises(ValueError, match="corrupt.gz.*cannot be decompressed"):
        read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


# ----------------------------------------------------------------------------- fashion_mnist


def fake_fashion(folder, n_train=12, n_test=5, size=(4, 3), compressed=(), seed=0, labels=None):
    """Write a tiny fake Fashion-MNIST folder; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(exist_ok=True)
    arrays = {
        FILES[0]: rng.integers(0, 256, size=(n_train, *size), dtype=np.uint8),
        FILES[1]: rng.integers(0, 10, size=n_train, dtype=np.uint8) if labels is None else labels[0],
        FILES[2]: rng.integers(0, 256, size=(n_test, *size), dtype=np.uint8),
        FILES[3]: rng.integers(0, 10, size=n_test, dtype=np.uint8) if labels is None else labels[1],
    }
    arrays[FILES[0]][0, 0, 0], arrays[FILES[0]][0, 0, 1] = 255, 0  # both ends of the pixel range
    for name, array in arrays.items():
        zipped = name in compressed
        write_idx(folder / (name + ".gz" if zipped else name), array, compress=zipped)
    return arrays


@pytest.mark.parametrize("compressed", [(), FILES, FILES[::2]], ids=["plain", "gzipped", "mixed"])
def test_fashion_mnist_tiny_folder(tmp_path, compressed):
    arrays = fake_fashion(tmp_path / "fm", compressed=compressed)
    data = fashion_mnist(tmp_path / "fm")
    assert isinstance(data, ImageDataset)
    assert (data.name, data.image_shape, data.num_classes) == ("fashion_mnist", (4, 3), 10)
    assert data.x_train.shape == (12, 12) and data.x_test.shape == (5, 12)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32 and data.y_test.dtype == np.int32
    expected = arrays[FILES[0]].reshape(12, 12).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(data.x_train, expected)
    assert data.x_train[0, 0] == 1.0 and data.x_train[0, 1] == 0.0  # 255 -> exactly 1.0
    np.testing.assert_array_equal(data.x_test * 255, arrays[FILES[2]].reshape(5, 12).astype(np.float32))
    np.testing.assert_array_equal(data.y_train, arrays[FILES[1]])
    np.testing.assert_array_equal(data.y_test, arrays[FILES[3]])
    np.testing.assert_array_equal(data.x_train[3].reshape(data.image_shape) * 255, arrays[FILES[0]][3])


def test_fashion_mnist_prefers_plain_file(tmp_path):
    folder = tmp_path / "fm"
    arrays = fake_fashion(folder)
    write_idx(folder / (FILES[1] + ".gz"), (arrays[FILES[1]] + 1) % 10, compress=True)  # different labels
    np.testing.assert_array_equal(fashion_mnist(str(folder)).y_train, arrays[FILES[1]])


def test_fashion_mnist_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        fashion_mnist(tmp_path / "no-such-folder")
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="a-file"):
        fashion_mnist(tmp_path / "a-file")


@pytest.mark.parametrize("missing", FILES)
def test_fashion_mnist_missing_file(tmp_path, missing):
    folder = tmp_path / "fm"
    fake_fashion(folder, compressed=FILES[1:2])
    target = folder / missing if (folder / missing).exists() else folder / (missing + ".gz")
    target.unlink()
    with pytest.raises(FileNotFoundError) as info:
        fashion_mnist(folder)
    message = str(info.value)
    assert f"lacks {missing} (or {missing}.gz)" in message
    assert all(f"{name}[.gz]" in message for name in FILES)  # the accepted names
    assert "downloads nothing" in message
    assert sum(name in message.split(". The folder")[0] for name in FILES) == 1  # only the missing one


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": (np.zeros(11, np.uint8), np.zeros(5, np.uint8))}, "holds 11 labels but .* holds 12 images"),
        ({"labels": (np.full(12, 10, np.uint8), np.zeros(5, np.uint8))}, "labels must lie in 0..9"),
        ({"labels": (np.zeros(12, np.uint8), np.array([0, 1, 2, 3, -1], np.int8))}, "labels must lie in 0..9"),
        ({"labels": (np.zeros((12, 1), np.uint8), np.zeros(5, np.uint8))}, "labels must be a 1-D"),
    ],
    ids=["count", "label-10", "label-negative", "labels-2d"],
)
def test_fashion_mnist_invalid_contents(tmp_path, kwargs, match):
    fake_fashion(tmp_path / "fm", **kwargs)
    with pytest.raises(ValueError, match=match):
        fashion_mnist(tmp_path / "fm")


def test_fashion_mnist_invalid_images(tmp_path):
    folder = tmp_path / "fm"
    fake_fashion(folder)
    write_idx(folder / FILES[2], np.zeros((5, 12), np.uint8))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte: images must be a 3-D uint8"):
        fashion_mnist(folder)
    write_idx(folder / FILES[2], np.zeros((5, 4, 3), np.float32))
    with pytest.raises(ValueError, match="3-D uint8"):
        fashion_mnist(folder)
    write_idx(folder / FILES[2], np.zeros((5, 3, 4), np.uint8))
    with pytest.raises(ValueError, match="train images are 4x3 .* test images are 3x4"):
        fashion_mnist(folder)


# ----------------------------------------------------------------------------- where Fashion-MNIST is found


def test_fashion_mnist_folder_search_order(no_default_fashion, monkeypatch):
    tmp_path = no_default_fashion
    with pytest.raises(FileNotFoundError) as info:
        fashion_mnist_folder()
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and "EMJAX_FASHION_MNIST" in message
    assert str(tmp_path / "debian-empty") in message and "downloads nothing" in message
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist()

    debian = tmp_path / "debian"
    arrays = fake_fashion(debian, compressed=FILES)  # gzipped, as the Debian package installs them
    monkeypatch.setattr("emjax.datasets._idx.DEBIAN_FASHION_MNIST", debian)
    assert fashion_mnist_folder() == debian
    np.testing.assert_array_equal(fashion_mnist().y_test, arrays[FILES[3]])

    (debian / (FILES[2] + ".gz")).unlink()  # an incomplete default folder is not taken
    with pytest.raises(FileNotFoundError, match="does not hold the four IDX files"):
        fashion_mnist_folder()

    from_env = tmp_path / "from-env"
    arrays = fake_fashion(from_env, seed=1)
    monkeypatch.setenv("EMJAX_FASHION_MNIST", str(from_env))
    assert fashion_mnist_folder() == from_env  # the variable comes before the default
    np.testing.assert_array_equal(fashion_mnist().y_train, arrays[FILES[1]])
    explicit = tmp_path / "explicit"
    arrays = fake_fashion(explicit, seed=2)
    assert fashion_mnist_folder(explicit) == explicit  # an explicit path comes before both
    np.testing.assert_array_equal(fashion_mnist(explicit).y_train, arrays[FILES[1]])

    monkeypatch.setenv("EMJAX_FASHION_MNIST", str(tmp_path / "typo"))
    with pytest.raises(FileNotFoundError, match="typo"):  # a named folder that is absent is an error
        fashion_mnist()


# sha256 of each real file's decoded array (read_idx(...).tobytes()), the Fashion-MNIST release
# zalandoresearch distributes and Debian packages.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
    "train-labels-idx1-ubyte": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
    "t10k-images-idx3-ubyte": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
    "t10k-labels-idx1-ubyte": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
}


def real_fashion_mnist_folder():
    """The real files where the standard search finds them, else skip the test."""
    try:
        return fashion_mnist_folder()
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


def test_fashion_mnist_real_files():
    folder = real_fashion_mnist_folder()
    for name, digest in FASHION_MNIST_SHA256.items():
        path = folder / name if (folder / name).is_file() else folder / f"{name}.gz"
        assert hashlib.sha256(read_idx(path).tobytes()).hexdigest() == digest, name
    data = fashion_mnist()
    assert repr(data) == (
        "ImageDataset(name='fashion_mnist', image_shape=(28, 28), num_classes=10, n_train=60000, n_test=10000)"
    )
    assert data.x_train.shape == (60000, 784) and data.x_test.shape == (10000, 784)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0
    np.testing.assert_array_equal(np.bincount(data.y_train, minlength=10), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(data.y_test, minlength=10), np.full(10, 1000))


# ----------------------------------------------------------------------------- digits and the split


def test_digits_split():
    data = digits()
    assert repr(data) == "ImageDataset(name='digits', image_shape=(8, 8), num_classes=10, n_train=1347, n_test=450)"
    assert data.x_train.shape == (1347, 64) and data.x_test.shape == (450, 64)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels, labels = bunch.data / 16, bunch.target
    train, test = stratified_split(labels, 0.25, seed=0)
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    np.testing.assert_array_equal(data.x_train, pixels[train].astype(np.float32))
    np.testing.assert_array_equal(data.x_test, pixels[test].astype(np.float32))
    np.testing.assert_array_equal(data.y_train, labels[train])
    np.testing.assert_array_equal(data.y_test, labels[test])
    # Stratified: each class holds out a quarter of its members, up to rounding.
    per_class_test = np.bincount(data.y_test, minlength=10)
    per_class = np.bincount(labels, minlength=10)
    assert np.all(np.abs(per_class_test - 0.25 * per_class) <= 0.5)
    assert 0.0 <= data.x_train.min() and data.x_train.max() == 1.0 and data.x_test.max() <= 1.0
    np.testing.assert_array_equal(np.unique(data.x_train * 16), np.arange(17))  # the k/16 grid


def test_digits_is_deterministic_and_cache_safe():
    first = digits()
    first.x_train[:] = -7.0
    first.y_test[:] = 99
    second = digits()
    assert second.x_train.min() == 0.0 and second.y_test.max() == 9
    third = digits()
    np.testing.assert_array_equal(second.x_train, third.x_train)
    np.testing.assert_array_equal(second.y_test, third.y_test)


def test_stratified_split_properties():
    labels = np.repeat(np.array([5, 1, 3]), [40, 8, 13])
    train, test = stratified_split(labels, 0.25, seed=3)
    assert train.dtype == np.int64 and np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(labels.size))
    assert [int(np.sum(labels[test] == c)) for c in (5, 1, 3)] == [10, 2, 3]  # rint(10), rint(2), rint(3.25)
    again, _ = stratified_split(labels, 0.25, seed=3)
    np.testing.assert_array_equal(train, again)
    other, _ = stratified_split(labels, 0.25, seed=4)
    assert not np.array_equal(train, other)


@pytest.mark.parametrize(
    ("labels", "fraction", "match"),
    [
        (np.zeros((3, 2)), 0.5, "1-D"),
        (np.zeros(0), 0.5, "non-empty"),
        (np.arange(4), 0.0, "strictly between 0 and 1"),
        (np.arange(4), 1.0, "strictly between 0 and 1"),
        (np.arange(4), "0.5", "must be a number"),
        (np.arange(4), 0.25, "both sets must be non-empty"),  # every class has one member: no test set
    ],
)
def test_stratified_split_errors(labels, fraction, match):
    with pytest.raises(ValueError, match=match):
        stratified_split(labels, fraction, seed=0)


# ----------------------------------------------------------------------------- ImageDataset


def toy(n_train=10, n_test=6):
    return ImageDataset(
        x_train=np.linspace(0, 1, n_train * 4).reshape(n_train, 4),
        y_train=np.arange(n_train) % 3,
        x_test=np.linspace(1, 0, n_test * 4).reshape(n_test, 4),
        y_test=np.arange(n_test) % 3,
        image_shape=(2, 2),
        num_classes=3,
        name="toy",
    )


def test_subsample():
    data = toy()
    small = data.subsample(n_train=4, n_test=2, seed=1)
    assert (small.n_train, small.n_test, small.name, small.image_shape) == (4, 2, "toy", (2, 2))
    # Rows are distinct rows of the original, in their original order (no replacement).
    rows = [int(np.flatnonzero(np.all(data.x_train == row, axis=1))[0]) for row in small.x_train]
    assert len(set(rows)) == 4 and rows == sorted(rows)
    np.testing.assert_array_equal(small.y_train, data.y_train[rows])
    again = data.subsample(n_train=4, n_test=2, seed=1)
    np.testing.assert_array_equal(small.x_train, again.x_train)
    np.testing.assert_array_equal(small.x_test, again.x_test)
    assert not np.array_equal(small.x_train, data.subsample(n_train=4, n_test=2, seed=2).x_train)
    whole = data.subsample()
    np.testing.assert_array_equal(whole.x_train, data.x_train)
    np.testing.assert_array_equal(whole.y_test, data.y_test)
    assert data.subsample(n_test=np.int64(6)).n_test == 6


@pytest.mark.parametrize(
    "kwargs", [{"n_train": 0}, {"n_train": 11}, {"n_test": 7}, {"n_test": -1}, {"n_train": 2.0}, {"n_train": True}]
)
def test_subsample_validation(kwargs):
    with pytest.raises(ValueError, match="n_train|n_test"):
        toy().subsample(**kwargs)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"x_train": np.zeros((10, 5))}, "x_train must have shape"),
        ({"y_test": np.zeros(5, int)}, "y_test must have shape"),
        ({"x_test": np.full((6, 4), 1.5)}, r"\[0, 1\]"),
        ({"y_train": np.full(10, 3)}, "labels in 0..2"),
        ({"y_train": np.zeros(10)}, "integer labels"),
        ({"image_shape": (4,)}, "image_shape"),
        ({"image_shape": 4}, "image_shape"),
        ({"image_shape": (2.0, 2.0)}, "image_shape"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_image_dataset_validation(change, match):
    fields = {name: getattr(toy(), name) for name in ("x_train", "y_train", "x_test", "y_test")}
    fields.update(image_shape=(2, 2), num_classes=3, name="toy")
    fields.update(change)
    with pytest.raises(ValueError, match=match):
        ImageDataset(**fields)


def test_image_dataset_is_frozen():
    with pytest.raises(AttributeError):
        toy().name = "other"


# ----------------------------------------------------------------------------- transforms


def test_random_invert_values_and_flag_rate():
    n, p = 4000, 0.3
    x = jax.random.uniform(jax.random.key(1), (n, 3, 2), dtype=jnp.float32)
    inverted, flags = random_invert(jax.random.key(0), x, p)
    assert flags.shape == (n,) and flags.dtype == jnp.bool_
    assert abs(float(flags.mean()) - p) < 5 * np.sqrt(p * (1 - p) / n)
    x_np, inv, f = np.asarray(x), np.asarray(inverted), np.asarray(flags)
    assert 0 < f.sum() < n
    np.testing.assert_array_equal(inv[f], np.float32(1) - x_np[f])  # exactly 1 - x where flagged
    np.testing.assert_array_equal(inv[~f], x_np[~f])  # untouched elsewhere
    assert inverted.dtype == jnp.float32


def test_random_invert_is_an_involution():
    key = jax.random.key(7)
    grid = jnp.asarray(np.random.default_rng(0).integers(0, 17, size=(50, 64)) / 16)  # the digits grid
    once, flags = random_invert(key, grid, 0.5)
    twice, flags_again = random_invert(key, once, 0.5)
    np.testing.assert_array_equal(flags, flags_again)
    assert not np.array_equal(once, grid)
    np.testing.assert_array_equal(twice, grid)  # exact on k/16 values
    pixels = jnp.asarray(np.random.default_rng(1).integers(0, 256, size=(50, 30)) / 255, dtype=jnp.float32)
    twice, _ = random_invert(key, random_invert(key, pixels, 0.5)[0], 0.5)
    np.testing.assert_allclose(twice, pixels, rtol=0, atol=2.0**-25)  # one rounding of 1 - x


def test_random_invert_extremes_and_dtype():
    x = jnp.linspace(0, 1, 30, dtype=jnp.float64).reshape(10, 3)
    none, flags = random_invert(jax.random.key(0), x, 0.0)
    assert not flags.any() and none.dtype == jnp.float64
    np.testing.assert_array_equal(none, x)
    every, flags = random_invert(jax.random.key(0), x, 1)
    assert flags.all() and every.dtype == jnp.float64
    np.testing.assert_array_equal(every, 1 - x)
    vector, flags = random_invert(jax.random.key(0), jnp.array([0.25, 0.5, 1.0], jnp.float32), 1.0)
    assert vector.dtype == jnp.float32 and vector.tolist() == [0.75, 0.5, 0.0]


def test_random_invert_jit_and_vmap():
    x = jax.random.uniform(jax.random.key(3), (20, 5), dtype=jnp.float64)
    key = jax.random.key(11)
    eager = random_invert(key, x, 0.4)
    jitted = jax.jit(random_invert)(key, x, 0.4)  # p traced
    np.testing.assert_array_equal(eager[0], jitted[0])
    np.testing.assert_array_equal(eager[1], jitted[1])
    keys = jax.random.split(key, 6)
    batched, batched_flags = jax.jit(jax.vmap(random_invert, in_axes=(0, None, None)))(keys, x, 0.4)
    for i in range(6):
        one, one_flags = random_invert(keys[i], x, 0.4)
        np.testing.assert_array_equal(batched[i], one)
        np.testing.assert_array_equal(batched_flags[i], one_flags)
    # A vmapped p (traced) gives all-or-nothing at the ends.
    flags_by_p = jax.vmap(lambda p: random_invert(key, x, p)[1])(jnp.array([0.0, 1.0]))
    assert not flags_by_p[0].any() and flags_by_p[1].all()


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "0.5", True, np.array([0.5, 0.5]), 1j])
def test_random_invert_bad_p(p):
    with pytest.raises(ValueError, match="p must be"):
        random_invert(jax.random.key(0), jnp.zeros((3, 2)), p)


def test_random_invert_bad_images():
    with pytest.raises(ValueError, match="at least one axis"):
        random_invert(jax.random.key(0), jnp.float32(0.5), 0.5)
    with pytest.raises(ValueError, match="floating-point"):
        random_invert(jax.random.key(0), np.zeros((3, 2), np.uint8), 0.5)


def test_add_intercept():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = add_intercept(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 1, 1], [2, 3, 1], [4, 5, 1]])
    out = add_intercept(jnp.asarray(x, jnp.float64))
    assert isinstance(out, jax.Array) and out.dtype == jnp.float64 and out.shape == (3, 3)
    np.testing.assert_array_equal(out[:, -1], 1.0)
    jitted = jax.jit(add_intercept)(jnp.asarray(x))
    assert jitted.dtype == jnp.float32
    np.testing.assert_array_equal(jitted, add_intercept(x))
    np.testing.assert_array_equal(add_intercept(np.array([2.0, 3.0])), [2.0, 3.0, 1.0])
    assert add_intercept(np.zeros((2, 4, 3), np.int32)).shape == (2, 4, 4)
    assert add_intercept([[1.0]]).tolist() == [[1.0, 1.0]]
    with pytest.raises(ValueError, match="at least one axis"):
        add_intercept(np.float32(1.0))
