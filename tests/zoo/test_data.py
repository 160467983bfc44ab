"""zoo.data: the embedded digits split and tiny CIFAR / MNIST files written here in their real formats."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from zoo.data import DATASETS, Dataset, DatasetError, load_dataset


def unnormalise(ds: Dataset, x: torch.Tensor, scale: float) -> torch.Tensor:
    """Back to the file's integer pixel values."""
    mean = torch.tensor(ds.mean).view(-1, 1, 1)
    std = torch.tensor(ds.std).view(-1, 1, 1)
    return torch.round((x * std + mean) * scale)


# --- digits -----------------------------------------------------------------------------------------------------

def test_digits_shapes_and_classes():
    ds = load_dataset("digits")
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert ds.x_train.shape[1:] == (1, 8, 8) and ds.x_train.dtype == torch.float32
    assert ds.y_train.dtype == torch.int64
    assert ds.num_classes == 10 and set(ds.y_train.tolist()) == set(range(10))
    assert ds.summary() == {"name": "digits", "n_train": 1347, "n_test": 450, "classes": 10, "shape": (1, 8, 8)}
    # the hard-coded constants are the full set's statistics, so the normalised pixels are ~N(0, 1)
    pixels = torch.cat([ds.x_train, ds.x_test])
    assert abs(pixels.mean().item()) < 1e-3 and abs(pixels.std().item() - 1) < 1e-3


def test_digits_pixels_are_sklearn_values_over_16():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    values = set(unnormalise(ds, ds.x_train, 16).unique().tolist())
    assert values == set(np.unique(load_digits().images).tolist())  # the integers 0..16


def test_digits_split_is_stratified_and_fixed_by_seed():
    a, b, c = load_dataset("digits", seed=0), load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    counts_train = torch.bincount(a.y_train).float()
    counts_test = torch.bincount(a.y_test).float()
    # every class has a quarter (+-1 image) of its images in the test split
    assert torch.all((counts_test / (counts_train + counts_test) - 0.25).abs() < 1 / 170)


def test_digits_test_fraction():
    ds = load_dataset("digits", test_fraction=0.5)
    assert len(ds.y_test) == 899
    with pytest.raises(DatasetError, match="test_fraction"):
        load_dataset("digits", test_fraction=1.0)


# --- subsetting -------------------------------------------------------------------------------------------------

def test_num_classes_keeps_first_classes_in_both_splits():
    ds = load_dataset("digits", num_classes=3)
    assert ds.num_classes == 3
    assert set(ds.y_train.tolist()) == {0, 1, 2} and set(ds.y_test.tolist()) == {0, 1, 2}
    for k in (1, 11):
        with pytest.raises(DatasetError, match="num_classes"):
            load_dataset("digits", num_classes=k)


def test_n_train_subset_is_stratified_and_deterministic():
    full = load_dataset("digits")
    a = load_dataset("digits", n_train=100, n_test=50)
    assert len(a.y_train) == 100 and len(a.y_test) == 50
    assert torch.bincount(a.y_train).tolist() == [10] * 10  # digits classes are near balanced
    assert torch.bincount(a.y_test).tolist() == [5] * 10
    assert torch.equal(a.x_train, load_dataset("digits", n_train=100, n_test=50).x_train)
    other = load_dataset("digits", n_train=100, n_test=50, seed=1)
    assert not torch.equal(a.x_train, other.x_train)
    # a subset is drawn from the split of the same seed, never from the test images
    train_rows = {tuple(r) for r in full.x_train.flatten(1).tolist()}
    assert all(tuple(r) in train_rows for r in a.x_train.flatten(1).tolist())


def test_n_train_bounds():
    with pytest.raises(DatasetError, match="n_train=5 must be between 10"):
        load_dataset("digits", n_train=5)
    with pytest.raises(DatasetError, match="n_train=2000"):
        load_dataset("digits", n_train=2000)
    assert len(load_dataset("digits", n_train=1347).y_train) == 1347  # all of it is allowed


def test_unknown_name_lists_allowed():
    with pytest.raises(DatasetError, match="choose one of digits, cifar10, cifar100, mnist, fashion-mnist"):
        load_dataset("imagenet")
    assert DATASETS == ("digits", "cifar10", "cifar100", "mnist", "fashion-mnist")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashion-mnist"])
def test_real_dataset_needs_data_dir(name):
    with pytest.raises(DatasetError, match="--data-dir is required"):
        load_dataset(name)


# --- CIFAR ------------------------------------------------------------------------------------------------------

def cifar_images(n: int, offset: int) -> np.ndarray:
    """(n, 3072) uint8 rows: image i has value (i + offset + 7c) at pixel (row 3, col 5) of channel c and
    (c + 1) * 10 at (0, 0), zero elsewhere, so a wrong channel or row/column order is visible."""
    data = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    for c in range(3):
        data[:, c, 3, 5] = np.arange(n) + offset + 7 * c
        data[:, c, 0, 0] = (c + 1) * 10
    return data.reshape(n, 3072)


def write_pickle(path, obj, protocol=4):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10(directory, per_batch=20, protocol=4):
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        write_pickle(directory / name, {
            b"batch_label": name.encode(),
            b"labels": [(b + i) % 10 for i in range(per_batch)],
            b"data": cifar_images(per_batch, 20 * b),
            b"filenames": [b"x.png"] * per_batch,
        }, protocol)
    return directory


def test_cifar10_reads_pixels_and_labels(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x_train.shape == (100, 3, 32, 32) and ds.x_test.shape == (20, 3, 32, 32)
    assert ds.channels == 3 and ds.image_size == 32 and ds.num_classes == 10
    pixels = unnormalise(ds, ds.x_train, 255)
    # train image 47 is image 7 of data_batch_3 (offset 40): value 47 + 7c at (c, 3, 5)
    assert pixels[47, :, 3, 5].tolist() == [47, 54, 61]
    assert pixels[47, :, 0, 0].tolist() == [10, 20, 30]
    assert pixels[47].sum().item() == 47 + 54 + 61 + 60
    assert ds.y_train[47].item() == (2 + 7) % 10
    test_pixels = unnormalise(ds, ds.x_test, 255)
    assert test_pixels[3, :, 3, 5].tolist() == [103, 110, 117] and ds.y_test[3].item() == (5 + 3) % 10


def test_cifar10_accepts_the_folder_itself_and_protocol_5(tmp_path):
    folder = write_cifar10(tmp_path / "batches", protocol=5)  # numpy pickles arrays via _frombuffer here
    ds = load_dataset("cifar10", folder)
    assert unnormalise(ds, ds.x_train, 255)[0, :, 3, 5].tolist() == [0, 7, 14]


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n, offset in (("train", 30, 0), ("test", 12, 100)):
        write_pickle(folder / name, {b"data": cifar_images(n, offset), b"fine_labels": [99 - i for i in range(n)],
                                     b"coarse_labels": [0] * n})
    ds = load_dataset("cifar100", tmp_path)
    assert ds.num_classes == 100 and ds.x_train.shape == (30, 3, 32, 32)
    assert ds.y_train[:3].tolist() == [99, 98, 97]
    assert unnormalise(ds, ds.x_test, 255)[2, :, 3, 5].tolist() == [102, 109, 116]
    assert ds.mean == (0.5071, 0.4865, 0.4409)


def test_cifar_missing_batch_names_file_and_places(tmp_path):
    folder = write_cifar10(tmp_path / "cifar-10-batches-py")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", tmp_path)
    message = str(err.value)
    assert f"missing {folder / 'data_batch_3'}" in message
    assert "data_batch_1..5 and test_batch" in message and f"{tmp_path} or {folder}" in message


def test_cifar_missing_directory(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "nowhere")


def test_cifar_wrong_keys_truncated_and_bad_shape(tmp_path):
    folder = write_cifar10(tmp_path)
    write_pickle(folder / "data_batch_2", {b"pixels": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DatasetError, match=r"data_batch_2 is not a CIFAR-10 batch .*b'data'"):
        load_dataset("cifar10", folder)

    write_cifar10(folder)
    raw = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="test_batch is not a readable python pickle"):
        load_dataset("cifar10", folder)

    write_cifar10(folder)
    write_pickle(folder / "data_batch_1", {b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DatasetError, match=r"data_batch_1 holds data .* shape \(2, 1024\)"):
        load_dataset("cifar10", folder)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    folder = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    write_pickle(folder / "data_batch_4", {b"data": _Payload(marker), b"labels": [0]})
    with pytest.raises(DatasetError, match=r"data_batch_4 refers to (posix|nt|os)\.system; refusing"):
        load_dataset("cifar10", folder)
    assert not marker.exists()


def test_unpickler_accepts_python2_numpy_paths(tmp_path):
    # the official batches were written by numpy 1 under Python 2 and name numpy.core.multiarray
    from zoo.data import _NumpyOnlyUnpickler

    with open(os.devnull, "rb") as f:
        unpickler = _NumpyOnlyUnpickler(f, tmp_path, "cifar10")
        assert callable(unpickler.find_class("numpy.core.multiarray", "_reconstruct"))
        assert unpickler.find_class("numpy", "dtype") is np.dtype
        with pytest.raises(DatasetError):
            unpickler.find_class("builtins", "eval")


# --- MNIST / Fashion-MNIST --------------------------------------------------------------------------------------

def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def mnist_arrays(n: int, seed: int):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    return images, labels


def write_mnist(directory, compress: bool, n_train=30, n_test=20):
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = mnist_arrays(n, seed)
        arrays[prefix] = images, labels
        for kind, array, magic in (("images-idx3", images, 0x803), ("labels-idx1", labels, 0x801)):
            data = idx_bytes(array, magic)
            name = f"{prefix}-{kind}-ubyte"
            if compress:
                (directory / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (directory / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("layout", [".", "MNIST/raw", "mnist"])
def test_mnist_reads_back_exactly(tmp_path, compress, layout):
    arrays = write_mnist(tmp_path / layout, compress)
    ds = load_dataset("mnist", tmp_path)
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.channels == 1 and ds.image_size == 28
    assert torch.equal(unnormalise(ds, ds.x_train, 255)[:, 0], torch.tensor(arrays["train"][0], dtype=torch.float32))
    assert torch.equal(unnormalise(ds, ds.x_test, 255)[:, 0], torch.tensor(arrays["t10k"][0], dtype=torch.float32))
    assert ds.y_test.tolist() == arrays["t10k"][1].tolist()


def test_fashion_mnist_torchvision_layout(tmp_path):
    write_mnist(tmp_path / "FashionMNIST" / "raw", compress=True)
    ds = load_dataset("fashion-mnist", tmp_path, num_classes=2)
    assert ds.mean == (0.2860,) and ds.std == (0.3530,)
    assert set(ds.y_train.tolist()) == {0, 1} and len(ds.y_train) == 6


def test_mnist_missing_file_names_it(tmp_path):
    write_mnist(tmp_path, compress=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", tmp_path)
    assert f"missing {tmp_path / 't10k-labels-idx1-ubyte'}[.gz]" in str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in str(err.value)


def test_idx_bad_magic(tmp_path):
    write_mnist(tmp_path, compress=False)
    images, _ = mnist_arrays(30, 0)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(images, 0x801))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte is not an IDX .*0x00000803 expected, "
                                           r"found 0x00000801"):
        load_dataset("mnist", tmp_path)


def test_idx_truncated_raw_and_gzipped(tmp_path):
    write_mnist(tmp_path, compress=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte is truncated .* 15695 bytes, its IDX header "
                                           r"says 15696"):
        load_dataset("mnist", tmp_path)

    gz_dir = tmp_path / "gz"
    write_mnist(gz_dir, compress=True)
    path = gz_dir / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz is not a readable gzip file"):
        load_dataset("mnist", gz_dir)


def test_idx_count_mismatch(tmp_path):
    write_mnist(tmp_path, compress=False)
    _, labels = mnist_arrays(29, 0)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels, 0x801))
    with pytest.raises(DatasetError, match="holds 30 images but .*train-labels-idx1-ubyte 29 labels"):
        load_dataset("mnist", tmp_path)


def test_empty_or_single_class_split_is_an_error(tmp_path):
    write_mnist(tmp_path, compress=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((0, 28, 28), np.uint8), 0x803))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(0, np.uint8), 0x801))
    with pytest.raises(DatasetError, match="test split holds 0 images"):
        load_dataset("mnist", tmp_path)

    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8), 0x803))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(4, 3, np.uint8), 0x801))
    with pytest.raises(DatasetError, match="test split holds 4 images of 1 class"):
        load_dataset("mnist", tmp_path)
