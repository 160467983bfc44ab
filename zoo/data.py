"""Image classification datasets for the zoo: the embedded default and four real formats read from disk.

``digits`` (scikit-learn's 8x8 digits) ships in the sklearn wheel, so the default benchmark needs no download
and no path. CIFAR-10/100 (the official "python version" pickle batches) and MNIST/Fashion-MNIST (IDX files,
optionally gzipped) are read from ``data_dir`` by the small loaders below; there is no torchvision here.

Every loader returns raw numpy arrays (N, C, H, W) plus integer labels; ``load_dataset`` then keeps the first
``num_classes`` classes, draws stratified ``n_train``/``n_test`` subsets with ``seed``, and only then converts to
normalised float32 tensors, so a small subset of CIFAR never costs the memory of the full float copy.
"""
from __future__ import annotations

import functools
import gzip
import importlib
import pickle
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import UsageError

DATASETS = ("digits", "cifar10", "cifar100", "mnist", "fashion-mnist")

# Per-channel (mean, std) of the training pixels scaled to [0, 1]. Fixed constants rather than statistics of
# whatever subset is loaded, so that one image maps to the same input tensor in every run of a zoo (a subset's
# own statistics would change with n_train, num_classes and seed, and make runs incomparable).
NORMALISATION = {
    # mean and population std over all 1797 x 64 pixels of sklearn's load_digits() divided by 16, computed once
    # with: x = load_digits().images / 16; x.mean(), x.std()  ->  0.30526..., 0.37604...
    "digits": ((0.3053,), (0.3760,)),
    # the widely used CIFAR-10 training-set statistics (per channel, over all 50,000 training images)
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    # the MNIST and Fashion-MNIST training-set statistics used throughout the literature
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}

_NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "mnist": 10, "fashion-mnist": 10}


class DatasetError(UsageError, ValueError):
    """A dataset that cannot be loaded: unknown name, missing or malformed file, impossible subset."""


@dataclass(frozen=True, eq=False)
class Dataset:
    name: str
    x_train: torch.Tensor = field(repr=False)  # (N, C, H, W) float32, normalised with mean/std below
    y_train: torch.Tensor = field(repr=False)  # (N,) int64 in [0, num_classes)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]  # per channel, subtracted from pixels in [0, 1]
    std: tuple[float, ...]   # per channel, divides after the mean is subtracted

    def summary(self) -> dict:
        return {
            "name": self.name,
            "n_train": len(self.y_train),
            "n_test": len(self.y_test),
            "classes": self.num_classes,
            "shape": (self.channels, self.image_size, self.image_size),
        }


def load_dataset(name: str, data_dir=None, n_train: int | None = None, n_test: int | None = None,
                 num_classes: int | None = None, seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    """Load a dataset as normalised tensors, optionally restricted to its first classes and to subsets.

    Parameters
    ----------
    name : one of ``DATASETS``.
    data_dir : directory holding the files of a real dataset (ignored for ``digits``).
    n_train, n_test : sizes of stratified subsets drawn with ``seed``; None keeps the whole split.
    num_classes : keep only labels ``0 .. num_classes-1`` in both splits; None keeps all classes.
    seed : seeds the digits train/test split and the subsets; the same seed gives the same data.
    test_fraction : share of digits held out for test (digits has no official split).

    Examples
    --------
    >>> ds = load_dataset("digits", n_train=100, num_classes=3)
    >>> ds.summary()
    {'name': 'digits', 'n_train': 100, 'n_test': 135, 'classes': 3, 'shape': (1, 8, 8)}
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "digits":
        (x_tr, y_tr), (x_te, y_te) = _load_digits(seed, test_fraction)
        scale = 16.0
    else:
        if data_dir is None:
            raise DatasetError(f"{name}: --data-dir is required (a directory holding {_FORMAT[name]})")
        data_dir = Path(data_dir).expanduser()
        if not data_dir.is_dir():
            raise DatasetError(f"{name}: data directory {data_dir} does not exist (expected it to hold "
                               f"{_FORMAT[name]})")
        loader = _load_cifar if name.startswith("cifar") else _load_idx_dataset
        (x_tr, y_tr), (x_te, y_te) = loader(name, data_dir)
        scale = 255.0

    classes = _NUM_CLASSES[name]
    if num_classes is not None:
        if not 2 <= num_classes <= classes:
            raise DatasetError(f"{name}: num_classes={num_classes} must be between 2 and {classes}")
        x_tr, y_tr = x_tr[y_tr < num_classes], y_tr[y_tr < num_classes]
        x_te, y_te = x_te[y_te < num_classes], y_te[y_te < num_classes]
        classes = num_classes
    for split, y in (("train", y_tr), ("test", y_te)):
        if len(np.unique(y)) < 2:
            raise DatasetError(f"{name}: the {split} split holds {len(y)} images of {len(np.unique(y))} "
                               f"class(es); at least two classes are needed")
    if n_train is not None:
        x_tr, y_tr = _subset(name, "n_train", x_tr, y_tr, n_train, seed)
    if n_test is not None:
        x_te, y_te = _subset(name, "n_test", x_te, y_te, n_test, seed)

    mean, std = NORMALISATION[name]
    return Dataset(name=name, x_train=_normalise(x_tr, scale, mean, std), y_train=torch.as_tensor(y_tr),
                   x_test=_normalise(x_te, scale, mean, std), y_test=torch.as_tensor(y_te),
                   num_classes=classes, channels=x_tr.shape[1], image_size=x_tr.shape[2], mean=mean, std=std)


def _normalise(x: np.ndarray, scale: float, mean, std) -> torch.Tensor:
    x = torch.tensor(x, dtype=torch.float32) / scale  # (N, C, H, W) in [0, 1]; a copy, IDX arrays are read-only
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def _subset(name: str, what: str, x: np.ndarray, y: np.ndarray, n: int, seed: int):
    """A stratified subset of n items: every class keeps one, the rest is shared in proportion to class size.

    Integer largest-remainder allocation instead of sklearn's train_test_split, which refuses a subset whose
    complement is smaller than the number of classes (e.g. 15 of 20 images over 10 classes).
    """
    classes, counts = np.unique(y, return_counts=True)
    if not len(classes) <= n <= len(y):
        raise DatasetError(f"{name}: {what}={n} must be between {len(classes)} (one image per class) and "
                           f"{len(y)} (the images available)")
    spare, spare_total = n - len(classes), len(y) - len(classes)
    if spare_total == 0:
        take = counts.copy()
    else:
        quota, remainder = np.divmod(spare * (counts - 1), spare_total)
        leftover = spare - quota.sum()
        quota[np.argsort(-remainder, kind="stable")[:leftover]] += 1
        take = 1 + quota
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take)])
    keep.sort()  # keep the file's order, so the subset does not depend on how classes were visited
    return x[keep], y[keep]


# --- digits (embedded) ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _digits_arrays():
    # parsed once per process: a zoo loads digits for every run. Callers only index these (which copies).
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images[:, None].astype(np.float32), digits.target.astype(np.int64)  # (1797, 1, 8, 8) 0..16


def _load_digits(seed: int, test_fraction: float):
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise DatasetError(f"digits: test_fraction={test_fraction} must lie strictly between 0 and 1")
    x, y = _digits_arrays()
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)
    return (x_tr, y_tr), (x_te, y_te)


# --- CIFAR-10 / CIFAR-100: the official python pickle batches -------------------------------------------------

_CIFAR = {
    # name: (subfolder of the official archive, train files, test files, label key, human name)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels",
                "CIFAR-10"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", "CIFAR-100"),
}

_FORMAT = {
    "cifar10": "the CIFAR-10 python pickle batches data_batch_1..5 and test_batch",
    "cifar100": "the CIFAR-100 python pickle files train and test",
    "mnist": "the MNIST IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
             "t10k-labels-idx1-ubyte (each optionally .gz)",
    "fashion-mnist": "the Fashion-MNIST IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                     "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each optionally .gz)",
}


def _numpy_globals() -> dict:
    """The only globals a pickled numpy array refers to, under both numpy 1 (numpy.core) and 2 (numpy._core)."""
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy._core", "numpy.core"):  # numpy._core first: numpy.core warns under numpy 2
        try:
            multiarray = importlib.import_module(f"{package}.multiarray")
            numeric = importlib.import_module(f"{package}.numeric")
            reconstruct, frombuffer = multiarray._reconstruct, numeric._frombuffer
        except (ImportError, AttributeError):
            continue
        for alias in ("numpy._core", "numpy.core"):  # a file names whichever numpy wrote it
            allowed[(f"{alias}.multiarray", "_reconstruct")] = reconstruct  # protocols 0-4 (real CIFAR files)
            allowed[(f"{alias}.numeric", "_frombuffer")] = frombuffer       # protocol 5 re-saves
        break
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays only: any other global (os.system, ...) is refused
    before it can be called, so a doctored batch file cannot run code."""

    def __init__(self, file, path: Path, dataset: str):
        super().__init__(file, encoding="bytes")  # the batches were written by Python 2: keep str as bytes
        self.path, self.dataset = path, dataset
        self.allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        raise DatasetError(f"{self.dataset}: {self.path} refers to {module}.{name}; refusing to unpickle "
                           f"anything but numpy arrays (a real CIFAR batch holds only dicts, lists and arrays)")


def _read_pickle(path: Path, dataset: str):
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f, path, dataset).load()
    except DatasetError:
        raise
    except Exception as err:  # a truncated or foreign file fails in many ways (EOFError, UnpicklingError, ...)
        raise DatasetError(f"{dataset}: {path} is not a readable python pickle "
                           f"({type(err).__name__}: {err})") from err


def _find_files(name: str, candidates: list[Path], files: list[str], suffixes=("",)):
    """The first candidate directory holding every file (in any of the suffixes), or an error naming what is
    missing from the most complete candidate."""
    def present(directory: Path, file: str):
        return next((directory / (file + s) for s in suffixes if (directory / (file + s)).is_file()), None)

    best, best_found = None, -1
    for directory in candidates:
        found = [present(directory, f) for f in files]
        if all(found):
            return found
        if sum(p is not None for p in found) > best_found:
            best, best_found = (directory, found), sum(p is not None for p in found)
    directory, found = best
    missing = [str(directory / f) + ("[.gz]" if len(suffixes) > 1 else "") for f, p in zip(files, found)
               if p is None]
    where = " or ".join(str(c) for c in candidates)
    raise DatasetError(f"{name}: missing {', '.join(missing)} (expected {_FORMAT[name]} in {where})")


def _load_cifar(name: str, data_dir: Path):
    subfolder, train_files, test_files, label_key, human = _CIFAR[name]
    paths = _find_files(name, [data_dir, data_dir / subfolder], train_files + test_files)
    splits = []
    for part in (paths[:len(train_files)], paths[len(train_files):]):
        batches = [_read_cifar_batch(p, name, label_key, human) for p in part]
        splits.append((np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])))
    return splits


def _read_cifar_batch(path: Path, name: str, label_key: bytes, human: str):
    batch = _read_pickle(path, name)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DatasetError(f"{name}: {path} is not a {human} batch (expected a dict with keys b'data' and "
                           f"{label_key!r}, found {keys})")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DatasetError(f"{name}: {path} holds data of dtype {data.dtype} and shape {data.shape} with "
                           f"{len(labels)} labels (expected uint8 (N, 3072) and N labels)")
    if labels.size and not (labels.min() >= 0 and labels.max() < _NUM_CLASSES[name]):
        raise DatasetError(f"{name}: {path} has labels outside 0..{_NUM_CLASSES[name] - 1}")
    # each row is 1024 red, 1024 green, 1024 blue values, each plane row-major 32x32
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


# --- MNIST / Fashion-MNIST: IDX files ------------------------------------------------------------------------

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte")
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801  # unsigned-byte data with 3 and 1 dimensions
_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def _load_idx_dataset(name: str, data_dir: Path):
    candidates = [data_dir, data_dir / _TORCHVISION_FOLDER[name] / "raw", data_dir / name]
    paths = _find_files(name, candidates, list(_IDX_FILES), suffixes=("", ".gz"))
    splits = []
    for image_path, label_path in (paths[:2], paths[2:]):
        x = _read_idx(image_path, name, _IMAGES_MAGIC)
        y = _read_idx(label_path, name, _LABELS_MAGIC)
        if x.shape[1:] != (28, 28):
            raise DatasetError(f"{name}: {image_path} holds images of {x.shape[1]}x{x.shape[2]} (expected 28x28)")
        if len(x) != len(y):
            raise DatasetError(f"{name}: {image_path} holds {len(x)} images but {label_path} {len(y)} labels")
        if y.size and y.max() >= _NUM_CLASSES[name]:
            raise DatasetError(f"{name}: {label_path} has labels outside 0..{_NUM_CLASSES[name] - 1}")
        splits.append((x[:, None], y.astype(np.int64)))  # (N, 1, 28, 28)
    return splits


def _read_idx(path: Path, name: str, magic: int) -> np.ndarray:
    """An IDX file: a big-endian magic (0x0000, type 0x08 = unsigned byte, number of dims), the dims as
    big-endian int32, then the data row-major."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(f"{name}: {path} is not a readable gzip file ({err})") from err
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = f"0x{int.from_bytes(raw[:4], 'big'):08x}" if len(raw) >= 4 else f"{len(raw)} bytes"
        raise DatasetError(f"{name}: {path} is not an IDX file of this kind (magic 0x{magic:08x} expected, "
                           f"found {found})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">i4")) if len(raw) >= header else ()
    expected = header + int(np.prod(dims)) if len(dims) == ndim else None
    if expected is None or len(raw) != expected:
        raise DatasetError(f"{name}: {path} is truncated or padded: it has {len(raw)} bytes, its IDX header "
                           f"{'says ' + str(expected) if expected is not None else 'is incomplete'}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
