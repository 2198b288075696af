"""Hypothesis properties for lwkit.quant, lwkit.qat, lwkit.mixed and lwkit.int8.

Bad arguments raise ValueError/TypeError whose message names the argument; good arguments agree with
torch (fake_quantize_per_tensor/per_channel_affine, quantize_per_tensor's int_repr, torch.ao's min-max
observers) or a hand computation, exactly.
"""

import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from lwkit import int8, mixed, models, qat, quant

COVERED = {
    "lwkit.quant.qrange", "lwkit.quant.choose_qparams", "lwkit.quant.quantize", "lwkit.quant.dequantize",
    "lwkit.quant.fake_quantize_with", "lwkit.quant.fake_quantize", "lwkit.quant.sqnr_db",
    "lwkit.quant.kmeans_quantize", "lwkit.quant.kmeans_fake_quantize",
    "lwkit.mixed.quantizable_layers", "lwkit.mixed.quantize_weights", "lwkit.mixed.quantized_size_bytes",
    "lwkit.mixed.layer_sensitivity", "lwkit.mixed.allocate_bits",
    "lwkit.qat.Observer", "lwkit.qat.ActQuantizer", "lwkit.qat.QuantWrapper", "lwkit.qat.prepare_qat",
    "lwkit.qat.prepare_ptq", "lwkit.qat.calibrate", "lwkit.qat.freeze_weights",
    "lwkit.int8.fusable_groups", "lwkit.int8.eager_static_int8", "lwkit.int8.eager_dynamic_int8",
    "lwkit.int8.pt2e_static_int8", "lwkit.int8.torchao_dynamic_int8", "lwkit.int8.compile_int8",
    "lwkit.int8.Autocast", "lwkit.int8.saved_size_bytes", "lwkit.int8.compare",
}
EXEMPT = {
    "lwkit.quant.METHODS": "a constant tuple of method names",
    "lwkit.mixed.QUANTIZABLE": "a constant tuple of layer types",
    "lwkit.int8.ENGINES": "a constant tuple of engine names",
    "lwkit.int8.engine": "takes no argument",
    "lwkit.int8.supported_engines": "takes no argument",
    "lwkit.int8.has_torchao": "takes no argument",
    "lwkit.int8.bf16_supported": "takes no argument",
}

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

floats = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32)
tensors = st.lists(floats, min_size=1, max_size=32).map(lambda v: torch.tensor(v, dtype=torch.float32))
good_bits = st.integers(2, 16)
bad_bits = st.one_of(st.integers(max_value=0), st.integers(min_value=17), st.floats(allow_nan=True),
                     st.booleans(), st.text(max_size=3))  # None means "keep float" where it is allowed
not_finite = st.sampled_from([float("nan"), float("inf"), -float("inf")])
bad_bools = st.one_of(st.integers(), st.text(max_size=3), st.none(), st.floats(allow_nan=False))
bad_counts = st.one_of(st.integers(max_value=0), st.booleans(), st.floats(allow_nan=True), st.text(max_size=2))
layer_names = st.text(alphabet="abcfz0123.", min_size=1, max_size=5)


def raises_naming(name, fn, *args, **kwargs):
    """fn(*args, **kwargs) raises ValueError or TypeError and the message names `name`."""
    with pytest.raises((ValueError, TypeError)) as info:
        fn(*args, **kwargs)
    assert name in str(info.value), f"{name!r} not in {str(info.value)!r}"


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


# ---------------------------------------------------------------------------------------------------------
# lwkit.quant: bad arguments


@FAST
@given(bad_bits, st.booleans())
def test_bits_refused_everywhere(bits, symmetric):
    x, net = torch.randn(5), _mlp()
    raises_naming("bits", quant.qrange, bits, symmetric)
    raises_naming("bits", quant.choose_qparams, x, bits=bits, symmetric=symmetric)
    raises_naming("bits", quant.fake_quantize, x, bits=bits, symmetric=symmetric)
    raises_naming("bits", quant.kmeans_quantize, x, bits=bits)
    raises_naming("bits", quant.kmeans_fake_quantize, x, bits=bits)
    raises_naming("bits", mixed.quantize_weights, net, bits=bits, symmetric=symmetric)
    raises_naming("bits", mixed.quantize_weights, net, bits={"0": bits}, symmetric=symmetric)
    raises_naming("bits", mixed.quantized_size_bytes, net, bits)
    raises_naming("bits", mixed.layer_sensitivity, net, lambda m: 0.0, bits_options=[8, bits], symmetric=symmetric)
    raises_naming("bits", mixed.allocate_bits, {"0": {bits: 1.0}}, {"0": 30}, 1e6)
    raises_naming("bits", qat.Observer, bits=bits, symmetric=symmetric)
    raises_naming("bits", qat.ActQuantizer, bits=bits)
    raises_naming("bits", qat.QuantWrapper, nn.Linear(2, 2), bits=bits, symmetric=symmetric)
    raises_naming("act_bits", qat.QuantWrapper, nn.Linear(2, 2), act_bits=bits)
    raises_naming("bits", qat.prepare_qat, net, bits=bits, symmetric=symmetric)
    raises_naming("act_bits", qat.prepare_qat, net, act_bits=bits)
    raises_naming("bits", qat.prepare_ptq, net, bits=bits, symmetric=symmetric)
    raises_naming("act_bits", qat.prepare_ptq, net, act_bits=bits)


@FAST
@given(st.sampled_from(["qrange", "choose_qparams", "fake_quantize", "quantize_weights", "Observer",
                        "QuantWrapper", "prepare_qat", "prepare_ptq", "layer_sensitivity"]))
def test_one_bit_symmetric_refused_naming_bits_and_symmetric(where):
    x, net = torch.randn(5), _mlp()
    call = {"qrange": lambda: quant.qrange(1, True),
            "choose_qparams": lambda: quant.choose_qparams(x, bits=1, symmetric=True),
            "fake_quantize": lambda: quant.fake_quantize(x, bits=1, symmetric=True),
            "quantize_weights": lambda: mixed.quantize_weights(net, bits={"2": 1}),
            "Observer": lambda: qat.Observer(bits=1, symmetric=True),
            "QuantWrapper": lambda: qat.QuantWrapper(nn.Linear(2, 2), bits=1),
            "prepare_qat": lambda: qat.prepare_qat(net, bits=1),
            "prepare_ptq": lambda: qat.prepare_ptq(net, bits=1),
            "layer_sensitivity": lambda: mixed.layer_sensitivity(net, lambda m: 0.0, bits_options=[1])}[where]
    with pytest.raises(ValueError, match=r"bits.*=1 with symmetric=True.*symmetric=False"):
        call()


@FAST
@given(tensors, st.integers(0, 31), not_finite)
def test_non_finite_tensors_refused(x, i, bad):
    x = x.clone()
    x[i % len(x)] = bad
    raises_naming("x", quant.choose_qparams, x)
    raises_naming("x", quant.fake_quantize, x)
    raises_naming("x", quant.kmeans_quantize, x)
    raises_naming("x", quant.kmeans_fake_quantize, x)
    raises_naming("x_hat", quant.sqnr_db, torch.ones_like(x), x)
    raises_naming("x", quant.sqnr_db, x, torch.ones_like(x))
    raises_naming("x", qat.Observer().update, x)
    raises_naming("activation", qat.ActQuantizer().train(), x)
    if math.isnan(bad):  # ±inf saturate in quantize, as in torch; NaN has no integer
        raises_naming("x", quant.quantize, x, 0.1, 0, 0, 255)
        raises_naming("x", quant.fake_quantize_with, x, 0.1, 0, 0, 255)


@FAST
@given(st.one_of(st.integers(), st.floats(allow_nan=True), st.booleans(), st.none()),
       st.one_of(st.integers(), st.floats(allow_nan=True), st.booleans(), st.none()))
def test_bad_qmin_qmax_refused(qmin, qmax):
    ok = (all(isinstance(v, int) and not isinstance(v, bool) and -(2**31) <= v <= 2**31 - 1 for v in (qmin, qmax))
          and qmin < qmax)
    assume(not ok)
    for fn in (quant.quantize, quant.fake_quantize_with):
        with pytest.raises((ValueError, TypeError)) as info:
            fn(torch.randn(4), 0.1, 0, qmin, qmax)
        assert "qmin" in str(info.value) or "qmax" in str(info.value)


@FAST
@given(st.one_of(st.floats(max_value=0.0), not_finite, st.booleans(), st.text(max_size=2), st.none(),
                 st.floats(min_value=1e-60, max_value=1e-46)))
def test_bad_scale_refused(scale):
    x, q = torch.randn(4), torch.zeros(4, dtype=torch.int32)
    raises_naming("scale", quant.quantize, x, scale, 0, 0, 255)
    raises_naming("scale", quant.dequantize, q, scale, 0)
    raises_naming("scale", quant.fake_quantize_with, x, scale, 0, 0, 255)


@FAST
@given(st.integers(1, 5), st.integers(1, 5), st.integers(2, 6))
def test_per_channel_qparam_shape_must_fit(rows, cols, wrong):
    assume(wrong not in (rows, cols))
    x, q = torch.randn(rows, cols), torch.zeros(rows, cols, dtype=torch.int32)
    for shape in [(wrong, 1), (1, wrong), (rows, 1, 1)]:
        raises_naming("scale", quant.quantize, x, torch.ones(shape), 0, 0, 255)
        raises_naming("scale", quant.dequantize, q, torch.ones(shape), 0)
        raises_naming("zero_point", quant.fake_quantize_with, x, 0.1, torch.zeros(shape, dtype=torch.long), 0, 255)
    if rows != cols and rows > 1:  # a 1-d per-channel scale would broadcast along the wrong axis
        raises_naming("scale", quant.quantize, x, torch.ones(rows), 0, 0, 255)


@FAST
@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=256), st.booleans(), st.text(max_size=2),
                 st.floats(min_value=0.1, max_value=254.9).filter(lambda v: v != round(v))))
def test_bad_zero_point_refused(zero_point):
    x = torch.randn(4)
    raises_naming("zero_point", quant.quantize, x, 0.1, zero_point, 0, 255)
    raises_naming("zero_point", quant.fake_quantize_with, x, 0.1, zero_point, 0, 255)
    if not isinstance(zero_point, int) or isinstance(zero_point, bool):
        raises_naming("zero_point", quant.dequantize, torch.zeros(4, dtype=torch.int32), 0.1, zero_point)


@FAST
@given(st.one_of(st.text(max_size=4), st.integers(), st.none()), bad_bools, bad_counts)
def test_choose_qparams_method_axis_percentile_and_kmeans_iters(method, symmetric, iters):
    assume(method not in quant.METHODS)
    x = torch.randn(3, 4)
    raises_naming("method", quant.choose_qparams, x, method=method)
    raises_naming("method", quant.fake_quantize, x, method=method)
    raises_naming("symmetric", quant.choose_qparams, x, symmetric=symmetric)
    raises_naming("symmetric", quant.qrange, 8, symmetric)
    raises_naming("axis", quant.choose_qparams, x, axis=2)
    raises_naming("axis", quant.choose_qparams, x, axis=True)
    raises_naming("percentile", quant.choose_qparams, x, method="percentile", percentile=50)
    raises_naming("iters", quant.kmeans_quantize, x, iters=iters)
    raises_naming("x", quant.choose_qparams, torch.tensor([1, 2]))
    raises_naming("x", quant.choose_qparams, [1.0, 2.0])
    raises_naming("x", quant.sqnr_db, torch.randn(3), torch.randn(4))


# ---------------------------------------------------------------------------------------------------------
# lwkit.quant: good arguments agree with torch


@FAST
@given(tensors, st.floats(1e-4, 10.0), st.integers(0, 2**31 - 1), st.sampled_from([(0, 255), (-128, 127), (0, 15),
                                                                                   (-8, 7), (0, 1), (-(2**15), 2**15 - 1)]))
def test_fake_quantize_with_matches_torch_per_tensor(x, scale, seed, bounds):
    qmin, qmax = bounds
    zero_point = qmin + seed % (qmax - qmin + 1)
    scale = float(torch.tensor(scale, dtype=torch.float32))
    ours = quant.fake_quantize_with(x, scale, zero_point, qmin, qmax)
    assert torch.equal(ours, torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax))
    q = quant.quantize(x, scale, zero_point, qmin, qmax)
    assert torch.equal(quant.dequantize(q, scale, zero_point), ours)


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")  # deprecated, still the reference
@FAST
@given(tensors, st.floats(1e-3, 10.0), st.integers(0, 255), st.booleans())
def test_quantize_matches_torch_quantize_per_tensor_int_repr(x, scale, zero_point, signed):
    dtype, (qmin, qmax) = (torch.qint8, (-128, 127)) if signed else (torch.quint8, (0, 255))
    zero_point = zero_point - 128 if signed else zero_point
    scale = float(torch.tensor(scale, dtype=torch.float32))
    ref = torch.quantize_per_tensor(x, scale, zero_point, dtype).int_repr().int()
    assert torch.equal(quant.quantize(x, scale, zero_point, qmin, qmax), ref)


@FAST
@given(st.integers(1, 5), st.integers(1, 8), good_bits, st.booleans(), st.integers(0, 2**31 - 1))
def test_choose_qparams_per_channel_matches_torch(rows, cols, bits, symmetric, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g) * 10
    for axis in (0, 1, -1):
        scale, zp = quant.choose_qparams(x, bits=bits, symmetric=symmetric, axis=axis)
        qmin, qmax = quant.qrange(bits, symmetric)
        ref = torch.fake_quantize_per_channel_affine(x, scale.flatten(), zp.flatten().int(), axis % 2, qmin, qmax)
        assert torch.equal(quant.fake_quantize(x, bits=bits, symmetric=symmetric, axis=axis), ref)


@FAST
@given(tensors, st.integers(2, 8), st.booleans())
def test_choose_qparams_matches_torch_ao_observers(x, bits, symmetric):
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    qmin, qmax = quant.qrange(bits, symmetric)
    dtype, qscheme = ((torch.qint8, torch.per_tensor_symmetric) if symmetric else
                      (torch.quint8, torch.per_tensor_affine))
    obs = MinMaxObserver(dtype=dtype, qscheme=qscheme, quant_min=qmin, quant_max=qmax)
    obs(x)
    s_ref, z_ref = obs.calculate_qparams()
    s, z = quant.choose_qparams(x, bits=bits, symmetric=symmetric)
    assert s.item() == s_ref.item() and z.item() == z_ref.item()
    ours = qat.Observer(bits=bits, symmetric=symmetric)
    for chunk in x.split(5):
        ours.update(chunk)
    assert ours.qparams()[0].item() == s_ref.item() and ours.qparams()[1].item() == z_ref.item()
    x2 = torch.stack([x, -2 * x])
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=dtype, quant_min=qmin, quant_max=qmax,
                                   qscheme=torch.per_channel_symmetric if symmetric else torch.per_channel_affine)
    obs(x2)
    s_ref, z_ref = obs.calculate_qparams()
    s, z = quant.choose_qparams(x2, bits=bits, symmetric=symmetric, axis=0)
    assert torch.equal(s.flatten(), s_ref) and torch.equal(z.flatten(), z_ref.long())


@FAST
@given(tensors, st.integers(1, 4))
def test_kmeans_assigns_the_nearest_centroid(x, bits):
    centroids, labels = quant.kmeans_quantize(x, bits=bits)
    assert len(centroids) == min(2**bits, x.numel()) and torch.equal(centroids, centroids.sort().values)
    nearest = (x[:, None] - centroids[None, :]).abs().min(1).values
    assert ((x - centroids[labels]).abs() <= nearest + 1e-6 * (1 + x.abs().max())).all()  # float32 means
    assert torch.equal(quant.kmeans_fake_quantize(x, bits=bits), centroids[labels])


@FAST
@given(tensors, tensors)
def test_sqnr_db_matches_hand_computation(x, noise):
    n = min(len(x), len(noise))
    x, x_hat = x[:n], x[:n] + noise[:n]
    signal, err = float((x.double() ** 2).sum()), float(((x.double() - x_hat.double()) ** 2).sum())
    got = quant.sqnr_db(x, x_hat)
    if err == 0:
        assert got == math.inf
    elif signal == 0:
        assert got == -math.inf
    else:
        assert got == pytest.approx(10 * math.log10(signal / err))


# ---------------------------------------------------------------------------------------------------------
# lwkit.mixed


@FAST
@given(st.lists(layer_names, min_size=1, max_size=3), st.integers(1, 8))
def test_unknown_layer_names_refused_and_listed(names, bits):
    net = _mlp()  # layers '0' and '2'
    unknown = [n for n in names if n not in ("0", "2")]
    assume(unknown)
    spec = dict.fromkeys(names, bits)
    for fn in (lambda: mixed.quantize_weights(net, bits=spec, symmetric=False),
               lambda: mixed.quantized_size_bytes(net, spec),
               lambda: mixed.layer_sensitivity(net, lambda m: 0.0, layers=list(names))):
        with pytest.raises(ValueError, match="unknown layers") as info:
            fn()
        assert repr(unknown[0]) in str(info.value) and "['0', '2']" in str(info.value)
    raises_naming("sizes", mixed.allocate_bits, {"0": {8: 1.0}}, {"0": 30, **dict.fromkeys(unknown, 5)}, 1e6)


@FAST
@given(st.dictionaries(st.sampled_from(["0", "2"]), st.one_of(st.none(), st.integers(1, 16))), st.booleans())
def test_quantized_size_bytes_matches_hand_count(bits, per_channel):
    net = _mlp()
    expected = 0.0
    for name, layer in (("0", net[0]), ("2", net[2])):
        b = bits.get(name)
        groups = layer.out_features if per_channel else 1
        expected += 4 * layer.weight.numel() if b is None else layer.weight.numel() * b / 8 + 5 * groups
        expected += 4 * layer.bias.numel()
    assert mixed.quantized_size_bytes(net, bits, per_channel=per_channel) == expected


scores = st.floats(-10, 10, allow_nan=False)


@FAST
@given(st.dictionaries(st.sampled_from("abcd"), st.dictionaries(st.sampled_from([2, 4, 8]), scores, min_size=1),
                       min_size=1),
       st.integers(1, 50), st.floats(1, 2000))
def test_allocate_bits_matches_brute_force(sensitivity, size, budget):
    sizes = {n: size * (i + 1) for i, n in enumerate(sensitivity)}
    names = list(sensitivity)
    fits = [c for c in itertools.product(*(sorted(sensitivity[n]) for n in names))
            if sum(sizes[n] * b for n, b in zip(names, c, strict=True)) <= budget]
    if not fits:
        raises_naming("budget_bits", mixed.allocate_bits, sensitivity, sizes, budget)
        return
    got = mixed.allocate_bits(sensitivity, sizes, budget)
    best = max(sum(sensitivity[n][b] for n, b in zip(names, c, strict=True)) for c in fits)
    assert sum(sensitivity[n][got[n]] for n in names) == best
    assert sum(sizes[n] * got[n] for n in names) <= budget


@FAST
@given(st.one_of(not_finite, st.floats(max_value=0.0), st.booleans(), st.text(max_size=2), st.none()), bad_counts)
def test_allocate_bits_bad_budget_and_sizes(budget, count):
    sens = {"a": {8: 1.0, 4: 0.5}}
    raises_naming("budget_bits", mixed.allocate_bits, sens, {"a": 10}, budget)
    raises_naming("sizes", mixed.allocate_bits, sens, {"a": count}, 1e6)
    raises_naming("max_combinations", mixed.allocate_bits, sens, {"a": 10}, 1e6, max_combinations=count)
    raises_naming("sensitivity", mixed.allocate_bits, {"a": {8: float("nan")}}, {"a": 10}, 1e6)


@SLOW
@given(st.lists(st.integers(2, 8), min_size=1, max_size=2, unique=True), st.booleans(), bad_bools)
def test_layer_sensitivity_scores_quantized_copies(bits_options, per_channel, bad):
    net = _mlp()
    x = torch.randn(4, 6)
    evaluate = lambda m: float(m(x).detach().sum())  # noqa: E731
    got = mixed.layer_sensitivity(net, evaluate, bits_options=bits_options, per_channel=per_channel)
    for name in ("0", "2"):
        for b in bits_options:
            ref = mixed.quantize_weights(net, bits={name: b}, per_channel=per_channel)
            assert got[name][b] == evaluate(ref)
    raises_naming("evaluate", mixed.layer_sensitivity, net, None)
    raises_naming("per_channel", mixed.layer_sensitivity, net, evaluate, per_channel=bad)
    raises_naming("bits_options", mixed.layer_sensitivity, net, evaluate, bits_options=[4, 4])
    raises_naming("bits_options", mixed.layer_sensitivity, net, evaluate, bits_options=[])
    raises_naming("layers", mixed.layer_sensitivity, net, evaluate, layers="0")
    raises_naming("evaluate", mixed.layer_sensitivity, net, lambda m: "high")
    raises_naming("model", mixed.quantizable_layers, "net")
    raises_naming("per_channel", mixed.quantize_weights, net, per_channel=bad)
    raises_naming("method", mixed.quantize_weights, net, method="best")
    raises_naming("per_channel", mixed.quantized_size_bytes, net, 8, per_channel=bad)


# ---------------------------------------------------------------------------------------------------------
# lwkit.qat


@FAST
@given(st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0001), not_finite, st.booleans(), st.none()))
def test_act_quantizer_momentum_refused(momentum):
    raises_naming("momentum", qat.ActQuantizer, momentum=momentum)


@FAST
@given(st.floats(0.01, 1.0), tensors, tensors)
def test_act_quantizer_moving_average_matches_hand_lerp(momentum, a, b):
    aq = qat.ActQuantizer(momentum=momentum).train()
    aq(a)
    aq(b)
    lo = torch.lerp(a.min().clamp(max=0), b.min().clamp(max=0), momentum)
    hi = torch.lerp(a.max().clamp(min=0), b.max().clamp(min=0), momentum)
    assert torch.equal(aq.lo, lo) and torch.equal(aq.hi, hi)
    scale, zp = quant.choose_qparams(torch.stack([lo, hi]), bits=8)
    assert torch.equal(aq.scale, scale) and torch.equal(aq.zero_point, zp)


@FAST
@given(good_bits, st.booleans(), st.booleans(), st.integers(0, 2**31 - 1))
def test_quant_wrapper_matches_torch_fake_quantize(bits, per_channel, symmetric, seed):
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(5, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(4, 5, generator=g))
    x = torch.randn(3, 5, generator=g)
    w = qat.QuantWrapper(layer, bits=bits, per_channel=per_channel, symmetric=symmetric)
    scale, zp = quant.choose_qparams(layer.weight, bits=bits, symmetric=symmetric, axis=0 if per_channel else None)
    qmin, qmax = quant.qrange(bits, symmetric)
    if per_channel:
        ref_w = torch.fake_quantize_per_channel_affine(layer.weight, scale.flatten(), zp.flatten().int(), 0, qmin, qmax)
    else:
        ref_w = torch.fake_quantize_per_tensor_affine(layer.weight, scale.item(), int(zp), qmin, qmax)
    assert torch.equal(w(x), nn.functional.linear(x, ref_w, layer.bias))
    frozen = qat.freeze_weights(nn.Sequential(w))
    assert torch.equal(frozen[0].weight, ref_w) and isinstance(frozen[0], nn.Linear)


@FAST
@given(bad_bools, st.one_of(st.text(max_size=4), st.none()))
def test_qat_bad_flags_and_methods(flag, method):
    net = _mlp()
    assume(method not in quant.METHODS)
    for name in ("per_channel", "symmetric"):
        raises_naming(name, qat.prepare_qat, net, **{name: flag})
        raises_naming(name, qat.prepare_ptq, net, **{name: flag})
        raises_naming(name, qat.QuantWrapper, nn.Linear(2, 2), **{name: flag})
    raises_naming("symmetric", qat.Observer, symmetric=flag)
    raises_naming("method", qat.Observer, method=method)
    raises_naming("method", qat.ActQuantizer, method=method)
    raises_naming("method", qat.QuantWrapper, nn.Linear(2, 2), method=method)
    raises_naming("act_method", qat.prepare_ptq, net, act_method=method)
    raises_naming("model", qat.prepare_qat, "net")
    raises_naming("model", qat.prepare_ptq, None)
    raises_naming("model", qat.freeze_weights, "net")
    raises_naming("model", qat.calibrate, "net", [torch.randn(2, 6)])
    raises_naming("layer", qat.QuantWrapper, nn.ReLU())


@FAST
@given(bad_counts, st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_calibrate_num_batches_and_reference_qparams(bad, num_batches, seed):
    g = torch.Generator().manual_seed(seed)
    net = _mlp()
    model = qat.prepare_ptq(net, bits=None, act_bits=8)
    raises_naming("num_batches", qat.calibrate, model, [torch.randn(2, 6)], num_batches=bad)
    raises_naming("loader", qat.calibrate, model, "batches")
    raises_naming("loader", qat.calibrate, model, torch.randn(0, 6))
    raises_naming("loader", qat.calibrate, model, [])
    assert not bool(model[0].act.ready), "a refused calibration freezes nothing"
    batches = [torch.randn(3, 6, generator=g) * (i + 1) for i in range(4)]
    qat.calibrate(model, [(b, None) for b in batches], num_batches=num_batches)
    seen = torch.cat(batches[:num_batches])
    scale, zp = quant.choose_qparams(seen, bits=8)  # the first layer's input is the data itself
    assert torch.equal(model[0].act.scale, scale) and torch.equal(model[0].act.zero_point, zp)


# ---------------------------------------------------------------------------------------------------------
# lwkit.int8 (bad arguments are refused before any export or compile, so these stay fast)


@SLOW
@given(bad_counts, st.text(min_size=1, max_size=6))
def test_int8_bad_arguments(num_batches, backend):
    assume(backend not in int8.supported_engines())
    net, x = models.SmallCNN().eval(), torch.randn(2, 1, 28, 28)
    raises_naming("num_batches", int8.eager_static_int8, net, [x], num_batches=num_batches)
    raises_naming("num_batches", int8.pt2e_static_int8, net, x, [x], num_batches=num_batches)
    raises_naming("backend", int8.eager_static_int8, net, [x], backend=backend)
    raises_naming("calibration_data", int8.eager_static_int8, net, [])
    raises_naming("calibration_data", int8.eager_static_int8, net, backend)
    raises_naming("calibration_data", int8.pt2e_static_int8, net, x, torch.empty(0, 1, 28, 28))
    raises_naming("example_input", int8.pt2e_static_int8, net, x[:0], [x])
    raises_naming("example_input", int8.pt2e_static_int8, net, [x], [x])
    for fn in (int8.fusable_groups, int8.eager_dynamic_int8, int8.torchao_dynamic_int8, int8.compile_int8,
               int8.saved_size_bytes, int8.Autocast):
        raises_naming("model", fn, backend)
    raises_naming("dtype", int8.Autocast, net, dtype=torch.int8)
    raises_naming("accuracy", int8.compare, {"fp32": net}, x, accuracy={backend + "?": 0.5})
    raises_naming("repeats", int8.compare, {"fp32": net}, x, repeats=0)
    raises_naming("baseline", int8.compare, {"fp32": net}, x, baseline=backend + "?")


def test_int8_saved_size_and_fusable_groups_match_references():
    import io

    net = models.LeNet300100()
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    assert int8.saved_size_bytes(net) == buf.tell()
    seq = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2))
    assert int8.fusable_groups(seq) == [["0", "1", "2"], ["3", "4"]]


def test_covered_and_exempt_list_every_public_name():
    public = {f"lwkit.{m.__name__.split('.')[-1]}.{n}" for m in (quant, qat, mixed, int8) for n in m.__all__}
    assert public == COVERED | EXEMPT.keys() and not COVERED & EXEMPT.keys()
