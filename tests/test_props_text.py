"""Property tests for lwkit.text and lwkit.transformer: bad arguments raise naming the argument; good ones
agree with a reference."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lwkit import text
from lwkit import transformer as tr

transformers = pytest.importorskip("transformers")

COVERED = {
    "lwkit.text.split_glosses", "lwkit.text.model_dir", "lwkit.text.load_model", "lwkit.text.tokenize",
    "lwkit.text.mean_pool", "lwkit.text.embed", "lwkit.text.cached_embed", "lwkit.text.cosine_fidelity",
    "lwkit.text.neighbour_agreement", "lwkit.text.train_probe", "lwkit.text.probe_accuracy",
    "lwkit.text.load_checkpoint", "lwkit.text.load_glosses",
    "lwkit.transformer.encoder_layers", "lwkit.transformer.head_shape", "lwkit.transformer.count_heads",
    "lwkit.transformer.masked_heads", "lwkit.transformer.head_importance", "lwkit.transformer.heads_to_keep",
    "lwkit.transformer.prune_heads", "lwkit.transformer.drop_layers", "lwkit.transformer.alternate_layers",
    "lwkit.transformer.student_from_teacher", "lwkit.transformer.hidden_state_loss",
    "lwkit.transformer.embedding_distill_loss", "lwkit.transformer.train_steps",
}
EXEMPT = {
    "lwkit.text.CLASSES": "a constant", "lwkit.text.LEXFILE_NUMBERS": "a constant",
    "lwkit.text.SUBSET_FILE": "a constant", "lwkit.text.SUBSET_SHA256": "a constant",
    "lwkit.text.DEFAULT_MODEL": "a constant", "lwkit.text.CHECKPOINTS": "a constant",
    "lwkit.text.Glosses": "a dataclass of loaded data", "lwkit.text.TextSplits": "a dataclass of loaded data",
    "lwkit.text.quiet_transformers": "takes no argument",
    "lwkit.text.SentenceEncoder": "wraps any module; forward is checked through mean_pool",
    "lwkit.text.SentenceClassifier": "wraps any modules",
}

bad_ints = st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3))


def tiny_bert(layers=2, heads=2):
    config = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=layers, num_attention_heads=heads,
                                     intermediate_size=16, max_position_embeddings=8)
    return transformers.BertModel(config, add_pooling_layer=False).eval()


@settings(max_examples=25, deadline=None)
@given(k=st.one_of(st.integers(max_value=0), st.integers(min_value=6), st.booleans(), st.floats()))
def test_neighbour_agreement_bad_k_and_reference(k):
    x = torch.randn(6, 3)
    with pytest.raises((ValueError, TypeError), match="k must be"):
        text.neighbour_agreement(x, x, k=k)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 12), d=st.integers(2, 6), seed=st.integers(0, 1000))
def test_cosine_fidelity_matches_torch(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    assert text.cosine_fidelity(a, b) == pytest.approx(float(F.cosine_similarity(a, b).mean()), abs=1e-6)
    assert text.neighbour_agreement(a, a * 3.0, k=min(2, n - 1)) == pytest.approx(1.0)  # scale keeps neighbours


@settings(max_examples=25, deadline=None)
@given(seq=st.integers(1, 6), keep=st.integers(1, 6), seed=st.integers(0, 1000))
def test_mean_pool_matches_loop(seq, keep, seed):
    keep = min(keep, seq)
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(1, seq, 4, generator=g)
    mask = torch.zeros(1, seq, dtype=torch.long)
    mask[0, :keep] = 1
    torch.testing.assert_close(text.mean_pool(hidden, mask)[0], hidden[0, :keep].mean(0))


@settings(max_examples=25, deadline=None)
@given(bad=bad_ints)
def test_split_and_probe_bad_counts(bad):
    glosses = text.load_glosses()
    with pytest.raises(ValueError, match="test_per_class"):
        text.split_glosses(glosses, test_per_class=bad if not isinstance(bad, int) or isinstance(bad, bool) else -1)
    with pytest.raises(ValueError, match="steps"):
        text.train_probe(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), classes=2, steps=bad)


def test_text_bad_arguments_name_the_argument():
    with pytest.raises(TypeError, match="glosses"):
        text.split_glosses([1, 2])
    with pytest.raises(TypeError, match="name"):
        text.model_dir(3)
    with pytest.raises(TypeError, match="offline"):
        text.load_model(offline="yes")
    with pytest.raises(TypeError, match="texts"):
        text.tokenize(None, "one string")
    with pytest.raises(ValueError, match="texts"):
        text.tokenize(None, [])
    with pytest.raises(TypeError, match="encoder"):
        text.embed(3, None, ["a"])
    with pytest.raises(ValueError, match="key"):
        text.cached_embed(None, None, ["a"], key="a b")
    with pytest.raises(ValueError, match="reference"):
        text.cosine_fidelity(torch.randn(3), torch.randn(3))
    with pytest.raises(ValueError, match="features"):
        text.train_probe(torch.randn(4), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(TypeError, match="head"):
        text.probe_accuracy("head", torch.randn(2, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="name"):
        text.load_checkpoint("x")
    with pytest.raises(text.DataFileError, match="missing"):
        text.load_glosses("/nonexistent/file.tsv")


@settings(max_examples=25, deadline=None)
@given(fraction=st.one_of(st.floats(max_value=-1e-6), st.floats(min_value=0.51), st.booleans(), st.just(float("nan"))))
def test_heads_to_keep_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        tr.heads_to_keep(torch.rand(3, 2), fraction)


@settings(max_examples=25, deadline=None)
@given(layers=st.integers(1, 4), heads=st.integers(2, 6), fraction=st.floats(0, 0.5), seed=st.integers(0, 99))
def test_heads_to_keep_counts_against_reference(layers, heads, fraction, seed):
    importance = torch.rand(layers, heads, generator=torch.Generator().manual_seed(seed))
    keep = tr.heads_to_keep(importance, fraction)
    assert int((~keep).sum()) == min(int(round(fraction * layers * heads)), layers * (heads - 1))
    assert keep.any(dim=1).all()
    # every removed head scores at most every kept head that is not some layer's protected best head
    best = importance.argmax(1)
    free = keep.clone()
    free[torch.arange(layers), best] = False
    if (~keep).any() and free.any():
        assert importance[~keep].max() <= importance[free].min()


@settings(max_examples=25, deadline=None)
@given(total=st.integers(1, 24), kept=st.integers(1, 24))
def test_alternate_layers(total, kept):
    if kept > total:
        with pytest.raises(ValueError, match="kept"):
            tr.alternate_layers(total, kept)
        return
    idx = tr.alternate_layers(total, kept)
    assert len(idx) == kept and idx == sorted(set(idx)) and idx[0] == 0 and idx[-1] < total


@settings(max_examples=25, deadline=None)
@given(keep=st.lists(st.integers(-2, 4), max_size=4))
def test_drop_layers_bad_keep(keep):
    model = tiny_bert(layers=3)
    valid = bool(keep) and keep == sorted(set(keep)) and all(0 <= i < 3 for i in keep)
    if valid:
        assert len(tr.encoder_layers(tr.drop_layers(model, keep))) == len(keep)
    else:
        with pytest.raises(ValueError, match="keep"):
            tr.drop_layers(model, keep)
        assert len(tr.encoder_layers(model)) == 3


def test_transformer_bad_arguments_name_the_argument():
    model = tiny_bert()
    for fn in (tr.encoder_layers, tr.head_shape, tr.count_heads):
        with pytest.raises(TypeError, match="model"):
            fn("bert")
    with pytest.raises(ValueError, match="mask must have shape"), tr.masked_heads(model, torch.ones(3, 2)):
        pass
    with pytest.raises(TypeError, match="loss_fn"):
        tr.head_importance(model, 3, [])
    with pytest.raises(ValueError, match="batches"):
        tr.head_importance(model, lambda b: b, [])
    with pytest.raises(TypeError, match="keep"):
        tr.prune_heads(model, [[True]])
    with pytest.raises(TypeError, match="keep"):
        tr.drop_layers(model, "01")
    with pytest.raises(TypeError, match="model"):
        tr.student_from_teacher(torch.nn.Linear(2, 2), [0])
    with pytest.raises(ValueError, match="layer_map"):
        tr.hidden_state_loss([torch.randn(1, 2, 3)], [torch.randn(1, 2, 3)], torch.ones(1, 2), [])
    with pytest.raises(ValueError, match="beta"):
        tr.embedding_distill_loss(torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 2), torch.randn(2, 2),
                                  torch.tensor([0, 1]), beta=-1)
    with pytest.raises(ValueError, match="lr"):
        tr.train_steps(model, [], lambda m, b: b, lr=0)
    with pytest.raises(ValueError, match="epochs"):
        tr.train_steps(model, [], lambda m, b: b, epochs=0)
    with pytest.raises(TypeError, match="model"):
        tr.train_steps("m", [], lambda m, b: b)
