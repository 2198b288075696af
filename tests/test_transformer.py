import pytest
import torch
import torch.nn.functional as F

from lwkit import transformer as tr

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def minilm():
    from lwkit import text

    try:
        return text.load_model()
    except text.DataFileError as exc:
        pytest.skip(str(exc))


def tiny_bert(layers=3, heads=4, hidden=16, seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=32, max_position_embeddings=16,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertModel(config, add_pooling_layer=False).eval()


def inputs(batch=2, seq=7):
    ids = torch.randint(0, 50, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, 5:] = 0  # one padded row
    return {"input_ids": ids, "attention_mask": mask}


def context_of(model, layer, x):
    """The concatenated per-head outputs entering layer `layer`'s output projection."""
    seen = {}
    handle = tr.encoder_layers(model)[layer].attention.output.dense.register_forward_pre_hook(
        lambda m, a: seen.setdefault("ctx", a[0].detach()))
    with torch.no_grad():
        model(**x)
    handle.remove()
    return seen["ctx"]


def test_masked_heads_all_ones_is_identity_and_zero_gate_silences_a_head():
    model, x = tiny_bert(), inputs()
    with torch.no_grad():
        ref = model(**x).last_hidden_state
        with tr.masked_heads(model, torch.ones(3, 4)):
            same = model(**x).last_hidden_state
    torch.testing.assert_close(same, ref)
    mask = torch.ones(3, 4)
    mask[1, 2] = 0
    with tr.masked_heads(model, mask):
        ctx = context_of(model, 1, x)
    d = 16 // 4
    assert ctx.shape[-1] == 16
    # the gate is applied in a pre-hook, so the hook above sees the ungated context; check the effect instead:
    with torch.no_grad(), tr.masked_heads(model, mask):
        gated = model(**x).last_hidden_state
    assert not torch.allclose(gated, ref)
    assert d == 4
    assert not tr.encoder_layers(model)[1].attention.output.dense._forward_pre_hooks  # hooks removed


def test_prune_heads_keeps_shapes_and_equals_masking():
    model, x = tiny_bert(), inputs()
    keep = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad(), tr.masked_heads(model, keep.float()):
        masked = model(**x).last_hidden_state
    before_ctx = context_of(model, 0, x)
    tr.prune_heads(model, keep)
    assert tr.count_heads(model) == [3, 1, 4]
    attn = tr.encoder_layers(model)[1].attention
    assert attn.self.query.weight.shape == (4, 16) and attn.output.dense.weight.shape == (16, 4)
    with torch.no_grad():
        pruned = model(**x).last_hidden_state
    assert pruned.shape == masked.shape == (2, 7, 16)
    torch.testing.assert_close(pruned, masked, atol=1e-5, rtol=1e-5)
    # the unpruned heads of layer 0 (heads 0, 2, 3) compute exactly what they did before
    after_ctx = context_of(model, 0, x)
    d = 4
    kept_cols = torch.cat([torch.arange(h * d, (h + 1) * d) for h in (0, 2, 3)])
    torch.testing.assert_close(after_ctx, before_ctx[..., kept_cols], atol=1e-6, rtol=1e-5)


def test_prune_heads_on_minilm_keeps_unpruned_heads(minilm):
    tokenizer, model = minilm
    import copy

    pruned = copy.deepcopy(model)
    enc = tokenizer(["a small dog", "a tool for cutting wood"], padding=True, return_tensors="pt")
    x = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    keep = torch.ones(6, 12, dtype=torch.bool)
    keep[0, [1, 5]] = False
    keep[3, 0] = False
    with torch.no_grad(), tr.masked_heads(model, keep.float()):
        masked = model(**x).last_hidden_state
    tr.prune_heads(pruned, keep)
    assert tr.count_heads(pruned) == [10, 12, 12, 11, 12, 12]
    with torch.no_grad():
        out = pruned(**x).last_hidden_state
    torch.testing.assert_close(out, masked, atol=1e-4, rtol=1e-4)
    kept = torch.cat([torch.arange(h * 32, (h + 1) * 32) for h in range(12) if h not in (1, 5)])
    torch.testing.assert_close(context_of(pruned, 0, x), context_of(model, 0, x)[..., kept], atol=1e-5, rtol=1e-5)


def test_prune_heads_validates_before_changing_the_model():
    model = tiny_bert()
    keep = torch.ones(3, 4, dtype=torch.bool)
    keep[2] = False
    with pytest.raises(ValueError, match="keep must keep at least one head"):
        tr.prune_heads(model, keep)
    assert tr.count_heads(model) == [4, 4, 4]
    with pytest.raises(ValueError, match="keep must have shape"):
        tr.prune_heads(model, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="keep must be a bool tensor"):
        tr.prune_heads(model, torch.ones(3, 4))


def test_head_importance_matches_finite_difference():
    model, x = tiny_bert(layers=2, heads=2).double(), inputs()  # float64: the finite difference is exact enough
    target = torch.randn(2, 7, 16, dtype=torch.float64)

    def loss_fn(batch):
        return F.mse_loss(model(**batch).last_hidden_state, target)

    scores = tr.head_importance(model, loss_fn, [x], normalize=False)
    assert scores.shape == (2, 2)
    eps = 1e-5
    for layer in range(2):
        for head in range(2):
            values = []
            for sign in (1, -1):
                gates = torch.ones(2, 2, dtype=torch.float64)
                gates[layer, head] += sign * eps
                with torch.no_grad(), tr.masked_heads(model, gates):
                    values.append(loss_fn(x))
            numeric = abs(float(values[0] - values[1]) / (2 * eps))
            assert scores[layer, head].item() == pytest.approx(numeric, rel=1e-4, abs=1e-9)
    assert all(p.grad is None for p in model.parameters())


def test_heads_to_keep_removes_the_least_important_and_protects_each_layer():
    importance = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.05, 0.04, 0.03, 0.02]])
    keep = tr.heads_to_keep(importance, 0.5)
    assert keep.sum() == 4
    assert keep[1, 0]  # the best head of a weak layer survives
    assert keep[0].tolist() == [False, True, True, True]
    assert tr.heads_to_keep(importance, 0.0).all()


def test_drop_layers_and_student():
    model, x = tiny_bert(layers=4), inputs()
    student = tr.student_from_teacher(model, tr.alternate_layers(4, 2))
    assert tr.alternate_layers(6, 3) == [0, 2, 4]
    assert len(tr.encoder_layers(student)) == 2 and len(tr.encoder_layers(model)) == 4
    assert student.config.num_hidden_layers == 2 and model.config.num_hidden_layers == 4
    with torch.no_grad():
        out = student(**x, output_hidden_states=True)
        ref = model(**x, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 7, 16)
    torch.testing.assert_close(out.hidden_states[1], ref.hidden_states[1])  # layer 0 kept, same input
    with pytest.raises(ValueError, match="keep must be a non-empty increasing"):
        tr.drop_layers(model, [2, 1])
    with pytest.raises(ValueError, match="keep must be"):
        tr.drop_layers(model, [4])


def test_hidden_state_loss_zero_for_identical_states_and_ignores_padding():
    states = [torch.randn(2, 5, 8) for _ in range(3)]
    mask = torch.ones(2, 5, dtype=torch.long)
    assert float(tr.hidden_state_loss(states, states, mask, [(0, 0), (2, 2)])) == pytest.approx(0.0, abs=1e-6)
    mask[1, 3:] = 0
    other = [s.clone() for s in states]
    other[1][1, 3:] = torch.randn(2, 8)  # only padded positions differ
    assert float(tr.hidden_state_loss(states, other, mask, [(1, 1)])) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="layer_map"):
        tr.hidden_state_loss(states, states, mask, [(0, 5)])


def test_embedding_distill_loss_reference():
    s, t = torch.randn(4, 8), torch.randn(4, 8)
    sl, tl, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    from lwkit.distill import kd_loss

    expected = kd_loss(sl, tl, y, temperature=2.0, alpha=0.5) + 0.5 * (1 - F.cosine_similarity(s, t)).mean()
    torch.testing.assert_close(tr.embedding_distill_loss(s, t, sl, tl, y, beta=0.5), expected)


def test_train_steps_reduces_loss_and_restores_eval():
    model = torch.nn.Linear(3, 1)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    losses = tr.train_steps(model, [(x, y)], lambda m, b: F.mse_loss(m(b[0]), b[1]), lr=0.1, epochs=20)
    assert losses[-1] < losses[0] and not model.training
    with pytest.raises(ValueError, match="no trainable parameters"):
        tr.train_steps(model.requires_grad_(False), [(x, y)], lambda m, b: m(b[0]).sum())


def test_encoder_layers_rejects_non_bert():
    with pytest.raises(TypeError, match="model must be"):
        tr.encoder_layers(torch.nn.Linear(2, 2))
