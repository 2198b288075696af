import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lwkit import data

ROOT = Path(__file__).resolve().parent.parent


def test_subset_is_balanced_and_verified():
    arrays = data.load_arrays()
    assert arrays["train_images"].shape == (12000, 28, 28) and arrays["train_images"].dtype == np.uint8
    assert arrays["test_images"].shape == (3000, 28, 28)
    assert np.bincount(arrays["train_labels"]).tolist() == [1200] * 10
    assert np.bincount(arrays["test_labels"]).tolist() == [300] * 10


def test_checksum_is_documented_in_data_readme():
    readme = (ROOT / "data" / "README.md").read_text()
    assert data.SUBSET_SHA256 in readme
    assert data.sha256(ROOT / "data" / data.SUBSET_FILE) == data.SUBSET_SHA256


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_subset_names_file_and_fix(tmp_path, monkeypatch, damage):
    copy = tmp_path / data.SUBSET_FILE
    shutil.copy(ROOT / "data" / data.SUBSET_FILE, copy)
    if damage == "truncate":
        copy.write_bytes(copy.read_bytes()[:1000])
    elif damage == "flip":
        raw = bytearray(copy.read_bytes())
        raw[5000] ^= 0xFF
        copy.write_bytes(bytes(raw))
    else:
        copy.unlink()
    monkeypatch.setenv("LWKIT_DATA_DIR", str(tmp_path))
    with pytest.raises(data.DataFileError) as info:
        data.fashion_mnist()
    message = str(info.value)
    assert str(copy) in message
    assert "git checkout -- data/" in message and "make_subset.py" in message


def test_splits_are_seeded_disjoint_and_normalised():
    a, b, c = data.fashion_mnist(seed=0), data.fashion_mnist(seed=0), data.fashion_mnist(seed=1)
    assert torch.equal(a.x_val, b.x_val) and not torch.equal(a.x_val, c.x_val)
    assert len(a.y_train) == 10000 and len(a.y_val) == 2000 and len(a.y_test) == 3000
    assert abs(a.x_train.mean().item()) < 0.05 and abs(a.x_train.std().item() - 1) < 0.05
    # train and validation come from disjoint images of the 12k training subset
    flat_train = {bytes(x.numpy().tobytes()) for x in a.x_train[:2000]}
    assert not any(bytes(x.numpy().tobytes()) in flat_train for x in a.x_val)


def test_class_filter():
    s = data.fashion_mnist(classes=(5, 6, 7))
    assert set(s.y_train.unique().tolist()) == {5, 6, 7} and set(s.y_test.unique().tolist()) == {5, 6, 7}


def test_loader_is_deterministic_and_covers_everything():
    s = data.fashion_mnist()
    first = [y for _, y in s.loaders(256, seed=3)[0]]
    again = [y for _, y in s.loaders(256, seed=3)[0]]
    assert all(torch.equal(p, q) for p, q in zip(first, again))
    assert torch.equal(torch.cat(first).sort().values, s.y_train.sort().values)


def test_augmentation_flips_and_shifts_but_keeps_shape():
    s = data.fashion_mnist()
    loader = data.BatchLoader(s.x_train[:64], s.y_train[:64], batch_size=64, augment=True, seed=0)
    (xb, yb), = list(loader)
    assert xb.shape == (64, 1, 28, 28) and torch.equal(yb, s.y_train[:64])
    assert not torch.equal(xb, s.x_train[:64])


def test_read_idx_roundtrip_and_truncation(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in images.shape)
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + images.tobytes()))
    assert np.array_equal(data.read_idx(path), images)
    path.write_bytes(gzip.compress(header + images.tobytes()[:-1]))
    with pytest.raises(data.DataFileError, match="truncated"):
        data.read_idx(path)


def test_full_dataset_missing_explains_both_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "nothing")
    monkeypatch.setenv("LWKIT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(data.DataFileError) as info:
        data.load_full_arrays(download=False)
    assert "apt-get install dataset-fashion-mnist" in str(info.value) and "torchvision" in str(info.value)


@pytest.mark.skipif(not data.DEBIAN_DIR.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_full_dataset_from_debian_package():
    arrays = data.load_full_arrays(download=False)
    assert arrays["train_images"].shape == (60000, 28, 28) and arrays["test_labels"].shape == (10000,)


def test_balanced_indices():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    idx = data.balanced_indices(labels, 2, seed=0)
    assert np.bincount(labels[idx]).tolist() == [2, 2, 2]
    assert np.array_equal(idx, data.balanced_indices(labels, 2, seed=0))
    with pytest.raises(ValueError, match="per_class=4"):
        data.balanced_indices(labels, 4, seed=0)


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"val_fraction": 1.0}, ValueError, "val_fraction"),
    ({"val_fraction": -0.1}, ValueError, "val_fraction"),
    ({"full": "yes"}, TypeError, "full"),
    ({"classes": (3, 12)}, ValueError, "classes"),
])
def test_bad_arguments(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        data.fashion_mnist(**kwargs)


def test_bad_loader_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        data.BatchLoader(torch.zeros(4, 1), torch.zeros(4), batch_size=0)
    with pytest.raises(ValueError, match="same length"):
        data.BatchLoader(torch.zeros(4, 1), torch.zeros(3))


# ---------------------------------------------------------------------------------------------------------
# Reliability review (issue #8): the full dataset, BatchLoader on flat data, argument checks


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_full(folder: Path, *, n_train=6, n_test=4, train_images=None, train_labels=None) -> dict[str, Path]:
    """A tiny dataset in the Debian/torchvision layout: four gzipped IDX files."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)) if train_images is None else train_images,
        "train_labels": np.arange(n_train) % 10 if train_labels is None else train_labels,
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": np.arange(n_test) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, name in data.IDX_FILES.items():
        files[key] = folder / name
        files[key].write_bytes(gzip.compress(idx_bytes(np.asarray(arrays[key]))))
    return files


def test_full_dataset_from_idx_files(tmp_path):
    write_full(tmp_path)
    arrays = data.load_full_arrays(tmp_path, download=False)
    assert arrays["train_images"].shape == (6, 28, 28) and arrays["train_labels"].tolist() == [0, 1, 2, 3, 4, 5]
    assert arrays["train_labels"].dtype == np.int64 and arrays["test_images"].dtype == np.uint8


@pytest.mark.parametrize("kwargs, bad_file, words", [
    ({"train_labels": np.arange(5)}, "train-images", "6 images but"),  # count mismatch
    ({"train_images": np.zeros((6, 14, 14))}, "train-images", "28, 28"),  # wrong image size
    ({"train_labels": np.array([0, 1, 2, 10, 11, 3])}, "train-labels", "0..9"),  # labels outside 0..9
    ({"train_labels": np.zeros((6, 2))}, "train-labels", "expected (n,)"),
    ({"train_images": np.zeros(6 * 28 * 28)}, "train-images", "28, 28"),
])
def test_review_full_dataset_validated(tmp_path, kwargs, bad_file, words):
    write_full(tmp_path, **kwargs)
    with pytest.raises(data.DataFileError) as info:
        data.load_full_arrays(tmp_path, download=False)
    message = str(info.value)
    assert words in message and bad_file in message and str(tmp_path) in message


@pytest.mark.parametrize("damage", ["truncated gzip", "bad crc", "bad deflate", "not gzip", "empty", "header only"])
def test_review_full_dataset_corrupt_gzip(tmp_path, damage):
    files = write_full(tmp_path)
    target = files["test_labels"]
    raw = target.read_bytes()
    if damage == "truncated gzip":  # EOFError
        target.write_bytes(raw[:-12])
    elif damage == "bad crc":  # gzip.BadGzipFile
        target.write_bytes(raw[:-8] + bytes(8))
    elif damage == "bad deflate":  # zlib.error
        target.write_bytes(raw[:10] + b"\xff" * (len(raw) - 10))
    elif damage == "not gzip":
        target.write_bytes(b"hello, this is not gzip")
    elif damage == "empty":
        target.write_bytes(b"")
    else:
        target.write_bytes(gzip.compress(bytes([0, 0, 8, 3, 0, 0])))
    with pytest.raises(data.DataFileError) as info:
        data.load_full_arrays(tmp_path, download=False)
    assert str(target) in str(info.value)


@pytest.mark.skipif(not data.DEBIAN_DIR.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_full_dataset_debian_files_pass_the_checks():
    arrays = data.load_full_arrays(data.DEBIAN_DIR, download=False)
    assert np.bincount(arrays["test_labels"]).tolist() == [1000] * 10


def test_review_batchloader_augment_flat():
    s = data.fashion_mnist()
    images = s.x_train[:32]  # (32, 1, 28, 28)
    flat = images.flatten(1)  # (32, 784)
    (xf, yf), = list(data.BatchLoader(flat, s.y_train[:32], batch_size=32, augment=True, seed=5))
    (xi, _), = list(data.BatchLoader(images, s.y_train[:32], batch_size=32, augment=True, seed=5))
    assert xf.shape == (32, 784), "flat in, flat out"
    assert torch.equal(xf, xi.flatten(1)), "the same flips and shifts as on the images"
    assert not torch.equal(xf, flat)
    for bad in (torch.randn(8, 100), torch.randn(8, 28, 28), torch.zeros(8, 784, dtype=torch.uint8)):
        with pytest.raises(ValueError, match="augment") as info:
            data.BatchLoader(bad, torch.zeros(8, dtype=torch.long), augment=True)
        assert str(tuple(bad.shape)) in str(info.value)
    assert len(list(data.BatchLoader(torch.randn(8, 100), torch.zeros(8), batch_size=3))) == 3  # no augment: fine


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"val_fraction": float("nan")}, ValueError, "val_fraction"),
    ({"val_fraction": float("inf")}, ValueError, "val_fraction"),
    ({"val_fraction": True}, ValueError, "val_fraction"),
    ({"val_fraction": "0.1"}, ValueError, "val_fraction"),
    ({"seed": -1}, ValueError, "seed"),
    ({"seed": 1.5}, ValueError, "seed"),
    ({"seed": 2**40}, ValueError, "seed"),
    ({"classes": (3, 12, -1)}, ValueError, r"unknown: \[12, -1\]"),
    ({"classes": ()}, TypeError, "non-empty"),
    ({"classes": "012"}, TypeError, "classes"),
    ({"classes": 3}, TypeError, "classes"),
    ({"classes": (1, 1)}, ValueError, "repeat"),
    ({"classes": (True, 2)}, ValueError, "classes"),
    ({"full": 1}, TypeError, "full"),
])
def test_more_bad_arguments(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        data.fashion_mnist(**kwargs)


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"batch_size": True}, ValueError, "batch_size"), ({"batch_size": 2.0}, ValueError, "batch_size"),
    ({"seed": -3}, ValueError, "seed"), ({"shuffle": "yes"}, TypeError, "shuffle"),
    ({"augment": 1}, TypeError, "augment"),
])
def test_more_bad_loader_arguments(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        data.BatchLoader(torch.zeros(4, 1, 28, 28), torch.zeros(4), **kwargs)
    with pytest.raises(TypeError, match="x must be"):
        data.BatchLoader([1, 2], torch.zeros(2))
    with pytest.raises(ValueError, match="eval_batch_size"):
        data.fashion_mnist().loaders(eval_batch_size=0)
