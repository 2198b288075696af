"""lwkit.intarith: integer-only Linear/Conv2d against torch's real quantized kernels (x86/fbgemm)."""

import warnings

import pytest
import torch
from torch import nn

from lwkit import intarith, quant

pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per")


def _qparams_per_channel(weight):
    s_w, z_w = quant.choose_qparams(weight, bits=8, symmetric=True, axis=0)
    return s_w.flatten().double(), z_w.flatten().long()


def _reference(layer, x, qlayer_cls, **kw):
    """Our integer output and torch's quantized layer's output (codes) for one float layer and input."""
    torch.backends.quantized.engine = "x86"
    with torch.no_grad():
        y = layer(x)
    s_x, z_x = quant.choose_qparams(x, bits=7)  # torch's x86 default: activations in [0, 127] (reduce_range)
    s_y, z_y = quant.choose_qparams(y, bits=8)
    s_x, z_x, s_y, z_y = float(s_x), int(z_x), float(s_y), int(z_y)
    s_w, z_w = _qparams_per_channel(layer.weight.detach())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q_x = torch.quantize_per_tensor(x, s_x, z_x, torch.quint8)
        q_w = torch.quantize_per_channel(layer.weight.detach(), s_w, z_w, 0, torch.qint8)
        ql = qlayer_cls(*kw.pop("shape"), **kw)
        ql.set_weight_bias(q_w, layer.bias.detach())
        ql.scale, ql.zero_point = s_y, z_y
        ref = ql(q_x).int_repr().long()
    m0, shift = intarith.quantize_multiplier(s_x * s_w / s_y)
    b_q = intarith.quantize_bias(layer.bias.detach(), s_x, s_w)
    return q_x.int_repr(), z_x, q_w.int_repr(), b_q, m0, shift, z_y, ref


def test_int_linear_matches_torch_quantized_linear_within_one_lsb():
    gen = torch.Generator().manual_seed(0)
    lin = nn.Linear(64, 24)
    x = torch.rand(32, 64, generator=gen) * 3
    q_x, z_x, q_w, b_q, m0, shift, z_y, ref = _reference(lin, x, torch.ao.nn.quantized.Linear, shape=(64, 24))
    ours = intarith.int_linear(q_x, z_x, q_w, 0, b_q, m0, shift, z_y)
    assert ours.shape == ref.shape and int((ours - ref).abs().max()) <= 1
    assert float((ours == ref).float().mean()) > 0.95


def test_int_conv2d_matches_torch_quantized_conv2d_within_one_lsb():
    gen = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(3, 8, 3, padding=1, stride=2)
    x = torch.rand(4, 3, 9, 9, generator=gen)
    q_x, z_x, q_w, b_q, m0, shift, z_y, ref = _reference(conv, x, torch.ao.nn.quantized.Conv2d,
                                                         shape=(3, 8, 3), padding=1, stride=2)
    ours = intarith.int_conv2d(q_x, z_x, q_w, 0, b_q, m0, shift, z_y, padding=1, stride=2)
    assert ours.shape == ref.shape and int((ours - ref).abs().max()) <= 1


def test_quantize_multiplier_keeps_31_bits():
    for m in (1e-5, 0.0007, 0.3, 0.5, 0.999999999, 1.0, 3.7):
        m0, shift = intarith.quantize_multiplier(m)
        assert 2**30 <= int(m0) < 2**31
        assert abs(int(m0) / 2 ** int(shift) - m) <= m * 2.0**-30
    m0, shift = intarith.quantize_multiplier(torch.tensor([0.1, 0.2]))
    assert m0.shape == (2,) and shift.tolist() == [shift[0].item(), shift[0].item() - 1]


def test_requantize_equals_rounded_float_product():
    gen = torch.Generator().manual_seed(2)
    acc = torch.randint(-(2**20), 2**20, (500,), generator=gen)
    m0, shift = intarith.quantize_multiplier(0.0123)
    ours = intarith.requantize(acc, m0, shift, 0, -(2**31), 2**31 - 1)
    exact = acc.double() * int(m0) / 2 ** int(shift)
    expect = torch.sign(exact) * torch.floor(exact.abs() + 0.5)  # half away from zero
    assert torch.equal(ours, expect.long())
    assert intarith.requantize(torch.tensor([10**6]), m0, shift, 3, 0, 255).item() == 255  # clamps


def test_zero_point_terms_add_up_to_the_accumulator():
    gen = torch.Generator().manual_seed(3)
    q_x = torch.randint(0, 256, (5, 12), generator=gen)
    q_w = torch.randint(-128, 128, (4, 12), generator=gen)
    z_x, z_w = 37, torch.tensor([0, 3, -2, 5])
    terms = intarith.zero_point_terms(q_x, z_x, q_w, z_w)
    direct = (q_x - z_x) @ (q_w - z_w[:, None]).T
    assert torch.equal(sum(terms.values()), direct)
    assert torch.equal(terms["zx_sum_w"][0], terms["zx_sum_w"][4])  # independent of the input: folds into bias
    assert torch.equal(intarith.zero_point_terms(q_x, z_x, q_w, 0)["zw_sum_x"], torch.zeros(5, 4, dtype=torch.long))


def test_int_linear_agrees_with_fake_quant_float_path():
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(6, 20, generator=gen)
    x = torch.rand(10, 20, generator=gen)
    b = torch.randn(6, generator=gen)
    s_x, z_x = (float(v) for v in quant.choose_qparams(x, bits=8))
    s_w, _ = quant.choose_qparams(w, bits=8, symmetric=True, axis=0)
    q_x = quant.quantize(x, s_x, int(z_x), 0, 255)
    q_w = quant.quantize(w, s_w, 0, -128, 127)
    y_fake = quant.dequantize(q_x, s_x, int(z_x)) @ quant.dequantize(q_w, s_w, 0).T + b
    s_y, z_y = quant.choose_qparams(y_fake, bits=8)
    m0, shift = intarith.quantize_multiplier(s_x * s_w.flatten().double() / float(s_y))
    b_q = intarith.quantize_bias(b, s_x, s_w.flatten())
    ours = intarith.int_linear(q_x, int(z_x), q_w, 0, b_q, m0, shift, int(z_y))
    fake = quant.quantize(y_fake, s_y, z_y, 0, 255)
    assert int((ours - fake).abs().max()) <= 1
