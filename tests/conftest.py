import os

import pytest
import torch

os.environ.setdefault("LWKIT_HEADLESS", "1")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty lwkit cache (checkpoints, downloads) for one test."""
    monkeypatch.setenv("LWKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"
