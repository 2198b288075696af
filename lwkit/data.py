"""Fashion-MNIST for the course: an embedded, checksummed subset by default, the full 70k on request.

The default path never touches the network: `data/fashion_mnist_subset.npz` ships with the repository
(made by `scripts/make_subset.py`) and is verified against its SHA-256 every time it is loaded.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import numbers
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CLASSES", "DEBIAN_DIR", "IDX_FILES", "MEAN", "STD", "SUBSET_FILE", "SUBSET_SHA256", "BatchLoader",
    "DataFileError", "Splits", "augment_batch", "balanced_indices", "cache_dir", "data_dir", "denormalize",
    "fashion_mnist", "load_arrays", "load_full_arrays", "load_subset_arrays", "read_idx", "sha256", "to_tensor",
    "verify_file",
]

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Pixel mean and std of the full 60k Fashion-MNIST training set (on [0, 1] pixels).
MEAN, STD = 0.2860, 0.3530

SUBSET_FILE = "fashion_mnist_subset.npz"
SUBSET_SHA256 = "ec5a59d72879122faea1045f4e83b33f8e9e0297934c42b71d8ff6040e4af0c5"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
REBUILD_HINT = (
    "restore it with `git checkout -- data/` (or re-clone the repository); "
    "to rebuild it from the full dataset run `python scripts/make_subset.py`"
)


class DataFileError(RuntimeError):
    """A shipped data or checkpoint file is missing, truncated or corrupted."""


def _check_path(path, name: str = "path") -> Path:
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or pathlib.Path, got {type(path).__name__}")
    return Path(path)


def _check_seed(seed, name: str = "seed") -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
        raise ValueError(f"{name} must be an int in [0, 2**32), got {seed!r}")


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_bool(value, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def data_dir() -> Path:
    """Folder with the embedded data: $LWKIT_DATA_DIR, else `data/` at the repository root."""
    return Path(os.environ.get("LWKIT_DATA_DIR", Path(__file__).resolve().parent.parent / "data"))


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    path = _check_path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str | Path, expected_sha256: str, *, hint: str = REBUILD_HINT) -> Path:
    """Raise DataFileError naming the file and the fix unless it exists with the expected checksum."""
    path = _check_path(path)
    if not isinstance(expected_sha256, str) or len(expected_sha256) != 64:
        raise ValueError(f"expected_sha256 must be a 64-character hex string, got {expected_sha256!r}")
    if not isinstance(hint, str):
        raise TypeError(f"hint must be a str, got {type(hint).__name__}")
    if not path.is_file():
        raise DataFileError(f"data file {path} is missing: {hint}")
    actual = sha256(path)
    if actual != expected_sha256:
        raise DataFileError(
            f"data file {path} is corrupted or truncated (SHA-256 {actual[:12]}..., "
            f"expected {expected_sha256[:12]}...): {hint}"
        )
    return path


# ---------------------------------------------------------------------------------------------------------
# Raw arrays: uint8 images (n, 28, 28) and int64 labels (n,)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one (optionally gzipped) IDX file, the format Fashion-MNIST is distributed in."""
    path = _check_path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataFileError(f"cannot read IDX file {path} ({type(exc).__name__}: {exc}): it is corrupt or "
                            f"truncated; {_IDX_HINT}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] == 0:
        raise DataFileError(f"{path} is not an unsigned-byte IDX file: {_IDX_HINT}")
    ndim = raw[3]
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DataFileError(f"{path} is truncated inside its header: {_IDX_HINT}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - offset != math.prod(shape):
        raise DataFileError(f"{path} is truncated or too long (header says {shape}, {len(raw) - offset} bytes of "
                            f"data): {_IDX_HINT}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


_IDX_HINT = ("reinstall it (sudo apt-get install --reinstall dataset-fashion-mnist) or, for the download "
             "cache, delete it so the next run downloads it again")


def _check_full(arrays: dict[str, np.ndarray], files: dict[str, Path]) -> None:
    """Images (n, 28, 28) and labels (n,) in 0..9 with matching counts, per split; else DataFileError naming the file."""
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        image_file, label_file = files[f"{split}_images"], files[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataFileError(f"{image_file} holds images of shape {images.shape}, expected (n, 28, 28): {_IDX_HINT}")
        if labels.ndim != 1:
            raise DataFileError(f"{label_file} holds labels of shape {labels.shape}, expected (n,): {_IDX_HINT}")
        if len(images) != len(labels) or not len(labels):
            raise DataFileError(f"{image_file} has {len(images)} images but {label_file} has {len(labels)} labels "
                                f"(they must match, and be > 0): {_IDX_HINT}")
        if labels.min() < 0 or labels.max() > 9:
            raise DataFileError(f"{label_file} has labels {labels.min()}..{labels.max()}, expected 0..9: {_IDX_HINT}")


def load_full_arrays(root: str | Path | None = None, *, download: bool = True) -> dict[str, np.ndarray]:
    """The full 60k/10k Fashion-MNIST: Debian's `dataset-fashion-mnist`, else torchvision's download.

    Every file is checked: readable gzip, IDX header matching its size, images (n, 28, 28) with as many
    labels in 0..9; a problem raises DataFileError naming the file.
    """
    if root is not None:
        root = _check_path(root, "root")
    _check_bool(download, "download")
    cached = cache_dir() / "fashion-mnist" / "FashionMNIST" / "raw"
    candidates = [root] if root is not None else [DEBIAN_DIR, cached]
    for folder in candidates:
        files = {key: folder / name for key, name in IDX_FILES.items()}
        if all(f.is_file() for f in files.values()):
            arrays = {key: read_idx(f) for key, f in files.items()}
            _check_full(arrays, files)
            return _as_arrays(arrays)
    reason = ""
    if download:
        try:
            from torchvision.datasets import FashionMNIST

            target = cache_dir() / "fashion-mnist"
            FashionMNIST(target, train=True, download=True)
            FashionMNIST(target, train=False, download=True)
        except Exception as exc:  # no internet, blocked host, ...
            reason = f" (download failed: {exc})"
        else:
            return load_full_arrays(target / "FashionMNIST" / "raw", download=False)
    raise DataFileError(
        "the full Fashion-MNIST dataset is not on this machine" + reason + ". Get it either way:\n"
        "  1) Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist  (files land in /usr/share/datasets/fashion-mnist)\n"
        "  2) with internet: python -c \"import lwkit.data as d; d.load_full_arrays()\"  (torchvision download into "
        f"{cache_dir() / 'fashion-mnist'})\n"
        "The default (full=False) uses the embedded subset in data/ and needs neither."
    )


def load_subset_arrays(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """The embedded class-balanced subset, checksum-verified."""
    path = _check_path(path) if path is not None else data_dir() / SUBSET_FILE
    verify_file(path, SUBSET_SHA256)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in IDX_FILES}
    except Exception as exc:
        raise DataFileError(f"data file {path} cannot be read ({exc}): {REBUILD_HINT}") from exc
    _check_full(arrays, {key: path for key in IDX_FILES})
    return _as_arrays(arrays)


def load_arrays(*, full: bool = False) -> dict[str, np.ndarray]:
    """Embedded subset (default) or the full dataset (`full=True`)."""
    if not isinstance(full, bool):
        raise TypeError(f"full must be True or False, got {full!r}")
    return load_full_arrays() if full else load_subset_arrays()


def _as_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in arrays.items():
        out[key] = value.astype(np.uint8) if key.endswith("images") else value.astype(np.int64)
    return out


def balanced_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """`per_class` indices of each label, drawn without replacement by a seeded generator, sorted."""
    if not isinstance(labels, np.ndarray) or labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer numpy array, got {labels!r:.60}")
    _check_positive_int(per_class, "per_class")
    _check_seed(seed)
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(labels):
        pool = np.flatnonzero(labels == label)
        if per_class > len(pool):
            raise ValueError(f"per_class={per_class} but class {label} has only {len(pool)} examples")
        picked.append(rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(picked))


def cache_dir() -> Path:
    """Where lwkit keeps downloads and trained checkpoints: $LWKIT_CACHE_DIR or ~/.cache/lwkit."""
    return Path(os.environ.get("LWKIT_CACHE_DIR", Path.home() / ".cache" / "lwkit"))


# ---------------------------------------------------------------------------------------------------------
# Tensors and loaders


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, 28, 28) -> normalised float32 (n, 1, 28, 28)."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 3:
        got = f"{images.dtype} array of shape {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be a uint8 numpy array shaped (n, height, width), got {got}")
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return ((x - MEAN) / STD).unsqueeze(1)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Back to [0, 1] pixels, for plotting."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    return (x * STD + MEAN).clamp(0, 1)


def augment_batch(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random horizontal flip and random shift by up to `max_shift` pixels, per image of x (n, c, h, w)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a float tensor of images shaped (n, channels, height, width), got {got}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or not 0 <= max_shift < min(x.shape[-2:]):
        raise ValueError(f"max_shift must be an int in [0, {min(x.shape[-2:])}) for {tuple(x.shape[-2:])} images, "
                         f"got {max_shift!r}")
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
    padded = F.pad(x, (max_shift,) * 4, value=float(-MEAN / STD))  # pad with the background (pixel 0)
    h, w = x.shape[-2:]
    out = torch.empty_like(x)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        out[i] = padded[i, :, max_shift + dy: max_shift + dy + h, max_shift + dx: max_shift + dx + w]
    return out


class BatchLoader:
    """An in-memory loader over (x, y) tensors: seeded shuffling per epoch, optional augmentation.

    Much faster than a DataLoader over a TensorDataset for data that fits in memory, and it iterates
    the same batches for the same seed and epoch on every machine. `augment=True` needs images: x shaped
    (n, channels, h, w), or flattened 28x28 images (n, 784), which are augmented as (n, 1, 28, 28) images
    and flattened back (any other flat width is refused: it is not known to be an image).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 128, shuffle: bool = False,
                 augment: bool = False, seed: int = 0):
        for name, t in (("x", x), ("y", y)):
            if not isinstance(t, torch.Tensor) or t.ndim == 0:
                raise TypeError(f"{name} must be a torch.Tensor with one row per example, got {t!r:.60}")
        _check_positive_int(batch_size, "batch_size")
        _check_bool(shuffle, "shuffle")
        _check_bool(augment, "augment")
        _check_seed(seed)
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        if augment and not (x.is_floating_point() and (x.ndim == 4 or (x.ndim == 2 and x.shape[1] == 28 * 28))):
            raise ValueError(f"augment=True flips and shifts images: x must be float images shaped (n, channels, "
                             f"height, width) or flattened 28x28 images (n, 784), got {x.dtype} of shape "
                             f"{tuple(x.shape)}; pass augment=False")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.augment, self.seed = int(batch_size), shuffle, augment, int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return (len(self.x) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.x), generator=generator) if self.shuffle else torch.arange(len(self.x))
        for start in range(0, len(order), self.batch_size):
            idx = order[start: start + self.batch_size]
            xb = self.x[idx]
            if self.augment and xb.ndim == 2:  # flattened 28x28 images: augment in image space
                xb = augment_batch(xb.reshape(len(xb), 1, 28, 28), generator).reshape(len(xb), -1)
            elif self.augment:
                xb = augment_batch(xb, generator)
            yield xb, self.y[idx]

    @property
    def num_examples(self) -> int:
        return len(self.x)


@dataclass
class Splits:
    """Normalised tensors for the three splits; `loaders()` turns them into BatchLoaders."""

    x_train: torch.Tensor  # (n_train, 1, 28, 28)
    y_train: torch.Tensor  # (n_train,)
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    full: bool

    def loaders(self, batch_size: int = 128, *, augment: bool = False, seed: int = 0,
                eval_batch_size: int = 256):
        """(train, val, test) loaders; only train is shuffled (and augmented if asked)."""
        _check_positive_int(eval_batch_size, "eval_batch_size")
        train = BatchLoader(self.x_train, self.y_train, batch_size=batch_size, shuffle=True,
                            augment=augment, seed=seed)
        val = BatchLoader(self.x_val, self.y_val, batch_size=eval_batch_size)
        test = BatchLoader(self.x_test, self.y_test, batch_size=eval_batch_size)
        return train, val, test


def fashion_mnist(*, full: bool = False, val_fraction: float = 1 / 6, seed: int = 0,
                  classes: tuple[int, ...] | None = None) -> Splits:
    """Train/validation/test splits of Fashion-MNIST, normalised, seeded.

    Args:
        full: False (default) for the embedded subset, True for the full 60k/10k set.
        val_fraction: part of the training images held out for validation, in [0, 1).
        seed: seeds the train/validation split.
        classes: keep only these labels (e.g. (0, 1, 2, 3, 4) for a transfer task); labels keep their values.
    """
    _check_bool(full, "full")
    if (isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real)
            or not math.isfinite(val_fraction) or not 0 <= val_fraction < 1):
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    _check_seed(seed)
    if isinstance(classes, np.ndarray) and classes.ndim == 1:
        classes = classes.tolist()
    if classes is not None:
        if not isinstance(classes, (tuple, list, range)) or not classes:
            raise TypeError(f"classes must be a non-empty tuple or list of labels in 0..9 (e.g. (0, 1, 2)), "
                            f"got {classes!r}")
        bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, numbers.Integral) or not 0 <= c <= 9]
        if bad:
            raise ValueError(f"classes must be labels in 0..9 ({', '.join(f'{i}={n}' for i, n in enumerate(CLASSES))}); "
                             f"unknown: {bad}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes must not repeat a label, got {classes!r}")
    arrays = load_arrays(full=full)
    x_tr, y_tr = arrays["train_images"], arrays["train_labels"]
    x_te, y_te = arrays["test_images"], arrays["test_labels"]
    if classes is not None:
        classes = [int(c) for c in classes]
        keep_tr, keep_te = np.isin(y_tr, classes), np.isin(y_te, classes)
        x_tr, y_tr, x_te, y_te = x_tr[keep_tr], y_tr[keep_tr], x_te[keep_te], y_te[keep_te]
    order = np.random.default_rng(seed).permutation(len(y_tr))
    n_val = int(round(len(order) * val_fraction))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    if not len(train_idx):
        raise ValueError(f"val_fraction={val_fraction} leaves no training images out of {len(order)}")
    return Splits(
        x_train=to_tensor(x_tr[train_idx]), y_train=torch.from_numpy(y_tr[train_idx]),
        x_val=to_tensor(x_tr[val_idx]), y_val=torch.from_numpy(y_tr[val_idx]),
        x_test=to_tensor(x_te), y_test=torch.from_numpy(y_te),
        full=full,
    )
