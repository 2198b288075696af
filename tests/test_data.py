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
