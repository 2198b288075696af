"""count_macs against torch's flop counter (MACs = FLOPs / 2) where it has a formula, and hand counts where not."""

import warnings

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.flop_counter import FlopCounterMode

from lwkit import macs, measure, models

aten = torch.ops.aten


def reference_macs(model, *x):
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(*x)
    return counter.get_total_flops() // 2  # flop_counter counts 2 FLOPs per MAC


def counted(fn):
    """MACs that MacCounter sees while fn() runs (for ops called directly, e.g. on the meta device)."""
    counter = macs.MacCounter()
    with torch.no_grad(), counter:
        fn()
    assert not counter.uncounted, counter.uncounted
    return counter.macs


def meta(*shape):
    return torch.empty(*shape, device="meta")


def attention_macs(b, s, t, e):
    """Self/cross-attention by hand: q, k, v and out projections (e x e) plus q k^T and attn v (s*t*e each)."""
    return b * (s * e * e + 2 * t * e * e + 2 * s * t * e + s * e * e)


class SelfAttention(nn.Module):
    def __init__(self, e=16, heads=2):
        super().__init__()
        self.m = nn.MultiheadAttention(e, heads, batch_first=True)

    def forward(self, x):
        return self.m(x, x, x)[0]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_count_macs_agrees_with_flop_counter_on_torchvision(name):
    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(1, 3, 112, 112)
    assert measure.count_macs(model, x) == reference_macs(model, x)


def test_count_macs_by_hand():
    # Linear 784->300 on a batch of 2: 2*784*300; conv 1->16, 3x3, 28x28 output: 16*9*28*28
    assert measure.count_macs(nn.Linear(784, 300), torch.zeros(2, 784)) == 2 * 784 * 300
    assert measure.count_macs(nn.Conv2d(1, 16, 3, padding=1), torch.zeros(1, 1, 28, 28)) == 16 * 9 * 28 * 28
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert measure.count_macs(depthwise, torch.zeros(1, 8, 10, 10)) == 8 * 9 * 10 * 10


def test_count_macs_sees_functional_matmul_and_attention():
    class Attention(nn.Module):
        def forward(self, q):
            scores = q @ q.transpose(-1, -2)  # (b, h, s, s): b*h*s*s*d MACs
            return nn.functional.scaled_dot_product_attention(q, q, q) + scores.sum()  # 2 * b*h*s*s*d

    q = torch.randn(2, 3, 5, 4)  # (batch, heads, sequence, head dim)
    # by hand: the explicit matmul plus q k^T and attn v inside attention. (torch's flop_counter has no
    # formula for the CPU flash-attention kernel, so it would miss the last two.)
    assert measure.count_macs(Attention(), q) == 2 * 3 * 5 * 5 * 4 * 3


def test_review_count_macs_multihead_attention():
    # review #10: the fused fast path (_native_multi_head_attention) counted 0; hand count 14,592
    assert attention_macs(2, 6, 6, 16) == 14_592
    assert macs.count_macs(SelfAttention(), torch.randn(2, 6, 16)) == 14_592
    cross = nn.MultiheadAttention(16, 2, batch_first=True)
    q, kv = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    assert macs.count_macs(cross, (q, kv, kv)) == attention_macs(2, 3, 7, 16)
    assert macs.count_macs(nn.MultiheadAttention(16, 2), torch.randn(6, 2, 16).expand(3, 6, 2, 16).unbind(0)) \
        == 14_592  # sequence-first layout, three separate (but equal) tensors


def test_review_count_macs_transformer_encoder_layer():
    # review #10: _transformer_encoder_layer_fwd counted 0; attention 14,592 + feed-forward 2*2*6*16*32
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
    assert 14_592 + 2 * (2 * 6 * 16 * 32) == 26_880
    assert macs.count_macs(layer, torch.randn(2, 6, 16)) == 26_880
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 3,
                                    enable_nested_tensor=False)
    assert macs.count_macs(encoder, torch.randn(2, 6, 16)) == 3 * 26_880


def test_fused_fast_path_formulas_match_the_decomposed_count():
    # MacCounter alone (no fast-path switch) sees the fused kernels and counts them by formula
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True).eval()
    attn = SelfAttention().eval()
    x = torch.randn(2, 6, 16)
    assert torch.backends.mha.get_fastpath_enabled()
    assert counted(lambda: layer(x)) == 26_880
    m = attn.m
    fused = lambda: torch._native_multi_head_attention(  # noqa: E731
        x, x, x, 16, 2, m.in_proj_weight, m.in_proj_bias, m.out_proj.weight, m.out_proj.bias, need_weights=False)
    assert counted(fused) == 14_592


def test_count_macs_restores_fast_path_and_mode_even_on_error():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            raise RuntimeError("planted")

    model = Broken().train()
    with pytest.raises(RuntimeError, match="planted"):
        macs.count_macs(model, torch.zeros(1, 2))
    assert model.training and torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        macs.count_macs(nn.Linear(2, 2), torch.zeros(1, 2))
        assert not torch.backends.mha.get_fastpath_enabled()  # the caller's setting, restored
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


def test_review_count_macs_mv_dot_addmv_addbmm_addr_einsum():
    class Misc(nn.Module):
        def forward(self, x, v):
            return ((x @ v).sum() + (v @ v) + torch.einsum("ij,j->i", x, v).sum()
                    + torch.addmv(torch.zeros(3), x, v).sum()
                    + torch.addbmm(torch.zeros(3, 5), torch.ones(2, 3, 4), torch.ones(2, 4, 5)).sum()
                    + torch.baddbmm(torch.zeros(2, 3, 5), torch.ones(2, 3, 4), torch.ones(2, 4, 5)).sum()
                    + torch.addr(torch.zeros(3, 4), torch.ones(3), v).sum()
                    + torch.einsum("bij,bjk->bik", torch.ones(2, 3, 4), torch.ones(2, 4, 5)).sum())

    # mv 3*4, dot 4, einsum-mv 3*4, addmv 3*4, addbmm 2*3*4*5, baddbmm 2*3*4*5, addr 3*4, einsum-bmm 2*3*4*5
    assert macs.count_macs(Misc(), (torch.randn(3, 4), torch.randn(4))) == 12 + 4 + 12 + 12 + 3 * 120 + 12


def test_count_macs_bilinear_cdist_and_convs_of_every_kind():
    class Misc(nn.Module):
        def forward(self, a, b):
            return (nn.functional.bilinear(a, b, torch.ones(6, 4, 5)).sum()  # 3*6*4*5
                    + torch.cdist(a, torch.ones(7, 4)).sum())  # 3*7*4
    assert macs.count_macs(Misc(), (torch.randn(3, 4), torch.randn(3, 5))) == 3 * 6 * 4 * 5 + 3 * 7 * 4
    for layer, x in [(nn.Conv1d(2, 4, 3, stride=2), torch.randn(2, 2, 11)),
                     (nn.Conv3d(2, 4, 2, groups=2), torch.randn(1, 2, 4, 4, 4)),
                     (nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), torch.randn(2, 4, 5, 5)),
                     (nn.ConvTranspose1d(3, 2, 4, dilation=2), torch.randn(1, 3, 9))]:
        assert macs.count_macs(layer, x) == reference_macs(layer, x) > 0, layer


def test_review_count_macs_lstm_by_hand():
    # per token, direction and layer: 4*h*(i + h); layer 2 sees the two directions' outputs, i = 2h
    lstm = nn.LSTM(4, 8, num_layers=2, bidirectional=True)
    tokens = 5 * 3
    expected = 2 * tokens * 4 * 8 * (4 + 8) + 2 * tokens * 4 * 8 * (16 + 8)
    assert macs.count_macs(lstm, torch.randn(5, 3, 4)) == expected == 34_560
    batch_first = nn.LSTM(4, 8, batch_first=True)
    assert macs.count_macs(batch_first, torch.randn(3, 5, 4)) == tokens * 4 * 8 * 12

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 8)

        def forward(self, x):
            return self.lstm(pack_padded_sequence(x, [5, 3, 2]))[0].data

    assert macs.count_macs(Packed(), torch.randn(5, 3, 4)) == (5 + 3 + 2) * 4 * 8 * 12  # only real tokens


def test_count_macs_recurrent_layers_agree_with_flop_counter():
    # GRU, RNN, LSTM with projections and the cells run as addmm on CPU, which flop_counter counts
    x_seq, x_one = torch.randn(5, 3, 4), torch.randn(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "LSTM with projections is not supported with oneDNN"
        for layer, x in [(nn.GRU(4, 8, 2, bidirectional=True), x_seq), (nn.RNN(4, 8, nonlinearity="relu"), x_seq),
                         (nn.LSTM(4, 8, proj_size=3), x_seq), (nn.LSTMCell(4, 8), x_one),
                         (nn.GRUCell(4, 8), x_one), (nn.RNNCell(4, 8), x_one)]:
            assert macs.count_macs(layer, x) == reference_macs(layer, x) > 0, layer


def test_rnn_and_attention_kernels_of_other_devices_by_formula():
    # the CUDA kernels, run on the meta device (shapes only): SDPA variants take (b, h, s, d), the kernels
    # under them (b, s, h, d); cuDNN's RNN takes the flat weight list; the fused LSTM cell gets its gates
    # from an mm that is counted separately, so it adds 0.
    b, h, s, t, d, d_v = 2, 3, 5, 7, 4, 6
    expected = b * h * s * t * (d + d_v)
    q, k, v = meta(b, h, s, d), meta(b, h, t, d), meta(b, h, t, d_v)
    assert counted(lambda: aten._scaled_dot_product_efficient_attention(q, k, v, None, False)) == expected
    same_d = b * h * s * t * 2 * d
    assert counted(lambda: aten._scaled_dot_product_flash_attention(q, k, meta(b, h, t, d))) == same_d
    assert counted(lambda: aten._scaled_dot_product_cudnn_attention(q, k, meta(b, h, t, d), None, False)) == same_d
    qs, ks, vs = meta(b, s, h, d), meta(b, t, h, d), meta(b, t, h, d_v)
    assert counted(lambda: aten._efficient_attention_forward(qs, ks, vs, None, None, None, None, None, 0.0, 0)) \
        == expected
    assert counted(lambda: aten._flash_attention_forward(qs, ks, meta(b, t, h, d), None, None, s, t, 0.0, False,
                                                         False)) == same_d
    weights = [meta(32, 4), meta(32, 8), meta(32), meta(32)]
    assert counted(lambda: aten._cudnn_rnn(meta(5, 3, 4), weights, 4, None, meta(1, 3, 8), meta(1, 3, 8), 2, 8, 0,
                                           1, False, 0.0, False, False, [], None)) == 15 * 4 * 8 * (4 + 8)
    assert counted(lambda: aten._thnn_fused_lstm_cell(meta(3, 32), meta(3, 32), meta(3, 8), meta(32),
                                                      meta(32))) == 0
    # aten.lstm itself (composite on CPU, so its formula is checked directly)
    args = [meta(5, 3, 4), [meta(1, 3, 8)] * 2, weights, True, 1, 0.0, False, False, False]
    assert macs.MAC_RULES[aten.lstm](args, None) == 15 * 4 * 8 * 12


def test_count_macs_works_on_the_meta_device():
    model = torchvision.models.resnet18(weights=None)
    x = torch.randn(1, 3, 64, 64)
    assert macs.count_macs(model.to("meta"), x.to("meta")) == reference_macs(torchvision.models.resnet18(), x)


def test_count_macs_small_bert_by_hand():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=100)
    b, s, e, f = 2, 7, 32, 64
    # per layer: q, k, v, out projections, q k^T and attn v, two feed-forward layers; plus the pooler (CLS only)
    expected = 2 * (4 * b * s * e * e + 2 * b * s * s * e + 2 * b * s * e * f) + b * e * e
    ids = torch.randint(0, 100, (b, s))
    mask = torch.ones(b, s, dtype=torch.long)
    mask[1, 5:] = 0  # padding: SDPA gets an attention mask
    for implementation in ("sdpa", "eager"):
        config._attn_implementation = implementation
        bert = transformers.BertModel(config)
        assert macs.count_macs(bert, {"input_ids": ids, "attention_mask": mask}) == expected == 243_968
        assert macs.count_macs(bert, ids) == expected


def test_lenet_and_cnn_agree_with_flop_counter():
    for name in ("mlp", "cnn"):
        model, x = models.build(name), torch.randn(2, 1, 28, 28)
        assert macs.count_macs(model, x) == reference_macs(model, x)


def test_count_macs_raises_on_an_op_it_cannot_count():
    @torch.library.custom_op("lwkit_test::blend", mutates_args=())
    def blend(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x @ w  # a matmul the counter cannot see inside

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 3))

        def forward(self, x):
            return blend(x, self.w) + nn.functional.linear(x, self.w.t())

    with pytest.raises(NotImplementedError, match="lwkit_test.blend"):
        macs.count_macs(Custom(), torch.randn(2, 4))
    with pytest.warns(UserWarning, match="lwkit_test.blend"):
        assert macs.count_macs(Custom(), torch.randn(2, 4), unknown="warn") == 2 * 4 * 3  # the linear only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        dynamic = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(4, 4)), {nn.Linear})
    with pytest.raises(NotImplementedError, match="quantized.linear_dynamic"):
        macs.count_macs(dynamic, torch.randn(2, 4))


def test_count_macs_warns_when_a_model_with_parameters_counts_zero():
    with pytest.warns(UserWarning, match="0 MACs for Embedding"):
        assert macs.count_macs(nn.Embedding(10, 3), torch.tensor([1, 2])) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert macs.count_macs(nn.ReLU(), torch.randn(2, 3)) == 0  # no parameters: no warning


def test_zero_mac_ops_do_not_raise():
    class Shuffle(nn.Module):
        def forward(self, x):
            y = torch.cat([x, x], 1)
            y = torch.stack([y, y]).sum(0)
            y = y.masked_fill(y > 0, 0.0).clone()
            y[:, :2] = x[:, :2]  # index_put / copy_
            return torch.where(y > 0, y, x.repeat(1, 2)) + nn.functional.interpolate(y[None], scale_factor=2)[0, :, ::2]

    assert macs.count_macs(Shuffle(), torch.randn(3, 4)) == 0


def test_bad_inputs():
    with pytest.raises(TypeError, match="model"):
        macs.count_macs("model", torch.zeros(1))
    with pytest.raises(TypeError, match="example_input"):
        macs.count_macs(nn.Linear(2, 2), [1, 2])
    with pytest.raises(TypeError, match="example_input"):
        macs.count_macs(nn.Linear(2, 2), ())
    with pytest.raises(ValueError, match="unknown"):
        macs.count_macs(nn.Linear(2, 2), torch.zeros(1, 2), unknown="ignore")
