"""lwkit.export's transformer path: the TorchScript exporter, a dynamic sequence axis, ONNX Runtime's transformer
optimizer (fused Attention / EmbedLayerNormalization) and dynamic int8 with the embedding tables in int8 — on a
tiny random BERT, checked against the transformers model it came from; bad inputs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lwkit import deploy, export, text

transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

LAYERS, HEADS, HIDDEN = 2, 4, 32


def tiny_encoder(attention="eager"):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=120, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                     num_attention_heads=HEADS, intermediate_size=64, max_position_embeddings=64)
    bert = transformers.BertModel(config, add_pooling_layer=False).eval()
    bert.set_attn_implementation(attention)
    return text.SentenceEncoder(bert).eval()


def batch(seq, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 120, (n, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, seq // 2:] = 0  # one padded row: the fused attention must honour the mask
    return ids, mask


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    enc = tiny_encoder()
    names = ["input_ids", "attention_mask"]
    traced = deploy.export_onnx(enc, batch(8), folder / "traced.onnx", dynamic_seq=True, input_names=names,
                                exporter="torchscript")
    fused, ops = deploy.optimize_onnx_transformer(traced, folder / "fused.onnx", num_heads=HEADS, hidden_size=HIDDEN)
    int8 = deploy.quantize_onnx_dynamic(fused, folder / "int8.onnx")
    int8_emb = deploy.quantize_onnx_dynamic(fused, folder / "int8_emb.onnx", embeddings=True)
    return dict(enc=enc, folder=folder, traced=traced, fused=fused, ops=ops, int8=int8, int8_emb=int8_emb)


def test_optimizer_fuses_one_attention_per_layer_and_embeddings(files):
    assert files["ops"]["Attention"] == LAYERS
    assert files["ops"]["EmbedLayerNormalization"] == 1
    assert files["ops"]["SkipLayerNormalization"] == 2 * LAYERS


@pytest.mark.parametrize("seq", [5, 8, 23])
def test_traced_and_fused_graphs_match_the_model_at_any_length_with_padding(files, seq):
    ids, mask = batch(seq)
    with torch.no_grad():
        ref = files["enc"](ids, mask)
    for key in ("traced", "fused"):
        out = deploy.load(files[key], threads=1)(ids, mask)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_int8_keeps_the_embedding_direction_and_embeddings_shrink_the_file(files):
    ids, mask = batch(16)
    with torch.no_grad():
        ref = files["enc"](ids, mask)
    for key in ("int8", "int8_emb"):
        out = deploy.load(files[key], threads=1)(ids, mask)
        assert F.cosine_similarity(out, ref).min() > 0.98, key
    sizes = {k: deploy.file_size_bytes(files[k]) for k in ("fused", "int8", "int8_emb")}
    assert sizes["int8_emb"] < sizes["int8"] < sizes["fused"], sizes


def test_the_dynamo_graph_and_sdpa_attention_are_not_fused_and_say_why(tmp_path):
    enc = tiny_encoder(attention="sdpa")
    path = deploy.export_onnx(enc, batch(8), tmp_path / "sdpa.onnx", dynamic_seq=True, exporter="torchscript")
    with pytest.raises(ValueError, match="no attention was fused.*set_attn_implementation"):
        deploy.optimize_onnx_transformer(path, tmp_path / "fused.onnx", num_heads=HEADS, hidden_size=HIDDEN)
    assert not (tmp_path / "fused.onnx").exists() and not list(tmp_path.glob("*.partial"))


def test_dynamo_export_with_dynamic_seq_runs_at_other_lengths(tmp_path):
    enc = tiny_encoder(attention="sdpa")
    path = deploy.export_onnx(enc, batch(8), tmp_path / "d.onnx", dynamic_seq=True)
    ids, mask = batch(13, n=2)
    with torch.no_grad():
        torch.testing.assert_close(deploy.load(path, threads=1)(ids, mask), enc(ids, mask), atol=1e-4, rtol=1e-4)


def test_existing_files_are_never_overwritten(files, tmp_path):
    target = tmp_path / "mine.onnx"
    target.write_text("a user's file")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        deploy.optimize_onnx_transformer(files["traced"], target, num_heads=HEADS, hidden_size=HIDDEN)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        deploy.quantize_onnx_dynamic(files["fused"], target, embeddings=True)
    assert target.read_text() == "a user's file"


class Linear2(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


@pytest.mark.parametrize("call, error, match", [
    (lambda f, p: export.export_onnx(Linear2(), torch.randn(2, 4), p / "m.onnx", exporter="tflite"), ValueError,
     "exporter must be one of"),
    (lambda f, p: export.export_onnx(Linear2(), torch.randn(2, 4), p / "m.onnx", dynamic_seq="yes"), TypeError,
     "dynamic_seq"),
    (lambda f, p: export.export_onnx(Linear2(), torch.randn(2, 4), p / "m.onnx", dynamic_batch=1), TypeError,
     "dynamic_batch"),
    (lambda f, p: export.export_onnx(Linear2(), torch.randn(4), p / "m.onnx", dynamic_seq=True), ValueError,
     "dim 1"),
    (lambda f, p: export.optimize_onnx_transformer(f["traced"], p / "o.onnx", num_heads=0, hidden_size=HIDDEN),
     ValueError, "num_heads"),
    (lambda f, p: export.optimize_onnx_transformer(f["traced"], p / "o.onnx", num_heads=HEADS, hidden_size=True),
     ValueError, "hidden_size"),
    (lambda f, p: export.optimize_onnx_transformer(f["traced"], p / "o.onnx", num_heads=5, hidden_size=HIDDEN),
     ValueError, "multiple of num_heads"),
    (lambda f, p: export.optimize_onnx_transformer(f["traced"], p / "o.onnx", num_heads=HEADS, hidden_size=HIDDEN,
                                                   model_type="gpt2"), ValueError, "model_type"),
    (lambda f, p: export.optimize_onnx_transformer(p / "missing.onnx", p / "o.onnx", num_heads=HEADS,
                                                   hidden_size=HIDDEN), FileNotFoundError, "fp32_path"),
    (lambda f, p: export.quantize_onnx_dynamic(f["fused"], p / "o.onnx", embeddings="all"), TypeError, "embeddings"),
])
def test_bad_arguments_name_themselves(files, tmp_path, call, error, match):
    with pytest.raises(error, match=match):
        call(files, tmp_path)
    assert not (tmp_path / "o.onnx").exists() and not (tmp_path / "m.onnx").exists()


def test_dynamic_seq_alone_keeps_the_batch_fixed_at_the_example_s(tmp_path):
    enc = tiny_encoder(attention="sdpa")
    ids, mask = batch(8, n=1)
    path = deploy.export_onnx(enc, (ids, mask), tmp_path / "b1.onnx", dynamic_batch=False, dynamic_seq=True)
    runner = deploy.load(path, threads=1)
    ids11, mask11 = batch(11, n=1)
    with torch.no_grad():
        torch.testing.assert_close(runner(ids11, mask11), enc(ids11, mask11), atol=1e-4, rtol=1e-4)
