"""Hypothesis properties for lwkit.measure, lwkit.macs, lwkit.compare and lwkit.widgets.

Bad arguments raise ValueError/TypeError whose message names the argument; good arguments agree with a
reference: count_params with the sum of numel, count_macs with torch's FlopCounterMode (MACs = FLOPs / 2) or
a hand formula (attention, recurrent layers), model_size_bytes with the file torch.save writes, predict_proba
with torch.softmax.
"""

import math
import os
import tempfile
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from lwkit import compare, macs, measure, models, train, widgets  # noqa: E402

COVERED = {
    "lwkit.macs.count_macs",
    "lwkit.measure.count_params", "lwkit.measure.model_size_bytes", "lwkit.measure.measure_latency",
    "lwkit.measure.Latency", "lwkit.measure.compare",
    "lwkit.compare.Comparison", "lwkit.compare.format_bytes",
    "lwkit.widgets.interactive_or_static", "lwkit.widgets.predict_proba", "lwkit.widgets.show_image_prediction",
    "lwkit.widgets.browse_predictions", "lwkit.widgets.plot_examples", "lwkit.widgets.plot_history",
    "lwkit.widgets.bit_width_explorer",
}
EXEMPT = {
    "lwkit.macs.MAC_RULES": "a constant table: ATen op -> MAC formula",
    "lwkit.macs.MacCounter": "a dispatch mode constructed without arguments (count_macs drives it)",
    "lwkit.compare.COLUMNS": "a constant list of table columns",
    "lwkit.measure.default_threads": "takes no argument (its environment variable is tested in test_measure)",
    "lwkit.measure.cpu_flags": "takes no argument",
    "lwkit.measure.environment": "takes no argument",
    "lwkit.widgets.has_frontend": "takes no argument",
    "lwkit.widgets.OKABE_ITO": "a constant palette",
    "lwkit.widgets.HATCHES": "a constant tuple of hatch patterns",
    "lwkit.widgets.MARKERS": "a constant tuple of line markers",
}

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

bad_counts = st.one_of(st.integers(max_value=-1), st.booleans(), st.floats(allow_nan=True), st.text(max_size=2),
                       st.none())
bad_positive = st.one_of(st.integers(max_value=0), st.booleans(), st.floats(allow_nan=True), st.text(max_size=2))
bad_bools = st.one_of(st.integers(), st.text(max_size=3), st.none(), st.floats(allow_nan=False))
not_modules = st.one_of(st.integers(), st.text(max_size=3), st.none(), st.just(torch.zeros(2)))


def raises_naming(name, fn, *args, **kwargs):
    """fn(*args, **kwargs) raises ValueError or TypeError and the message names `name`."""
    with pytest.raises((ValueError, TypeError)) as info:
        fn(*args, **kwargs)
    assert name in str(info.value), f"{name!r} not in {str(info.value)!r}"


def flop_counter_macs(model, x):
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(x)
    return counter.get_total_flops() // 2


@pytest.fixture(autouse=True)
def _headless(monkeypatch):
    monkeypatch.setenv("LWKIT_HEADLESS", "1")
    monkeypatch.setattr(plt, "show", lambda: None)
    yield
    plt.close("all")


# --------------------------------------------------------------------------------------------------- counts


@FAST
@given(sizes=st.lists(st.integers(1, 6), min_size=2, max_size=4), bias=st.booleans(), tie=st.booleans(),
       frozen=st.lists(st.booleans(), min_size=3, max_size=3), zeros=st.integers(0, 5))
def test_count_params_agrees_with_numel(sizes, bias, tie, frozen, zeros):
    layers = [nn.Linear(a, b, bias=bias) for a, b in zip(sizes, sizes[1:])]
    if tie and len(layers) > 1 and layers[0].weight.shape == layers[-1].weight.shape:
        layers[-1].weight = layers[0].weight
    model = nn.Sequential(*layers)
    for p, f in zip(model.parameters(), frozen):
        p.requires_grad_(not f)
    with torch.no_grad():
        model[0].weight.view(-1)[:zeros] = 0
    unique = {id(p): p for p in model.parameters()}.values()
    assert measure.count_params(model) == sum(p.numel() for p in unique)
    assert measure.count_params(model, trainable_only=True) == sum(p.numel() for p in unique if p.requires_grad)
    assert measure.count_params(model, nonzero_only=True) == sum(int(torch.count_nonzero(p)) for p in unique)


@FAST
@given(model=not_modules, flag=bad_bools)
def test_count_params_bad_args(model, flag):
    raises_naming("model", measure.count_params, model)
    raises_naming("trainable_only", measure.count_params, nn.Linear(2, 2), trainable_only=flag)
    raises_naming("nonzero_only", measure.count_params, nn.Linear(2, 2), nonzero_only=flag)


@FAST
@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=3), fan_in=st.integers(1, 8), fan_out=st.integers(1, 8),
       bias=st.booleans())
def test_count_macs_linear_agrees_with_flop_counter(lead, fan_in, fan_out, bias):
    layer, x = nn.Linear(fan_in, fan_out, bias=bias), torch.randn(*lead, fan_in)
    assert macs.count_macs(layer, x) == flop_counter_macs(layer, x) == math.prod(lead) * fan_in * fan_out


@FAST
@given(dims=st.sampled_from([1, 2, 3]), groups=st.integers(1, 3), c_in=st.integers(1, 2), c_out=st.integers(1, 2),
       k=st.integers(1, 3), stride=st.integers(1, 2), padding=st.integers(0, 1), dilation=st.integers(1, 2),
       transposed=st.booleans(), size=st.integers(5, 7), batch=st.integers(1, 2))
def test_count_macs_conv_agrees_with_flop_counter(dims, groups, c_in, c_out, k, stride, padding, dilation,
                                                 transposed, size, batch):
    kind = {(1, False): nn.Conv1d, (2, False): nn.Conv2d, (3, False): nn.Conv3d,
            (1, True): nn.ConvTranspose1d, (2, True): nn.ConvTranspose2d, (3, True): nn.ConvTranspose3d}
    layer = kind[dims, transposed](c_in * groups, c_out * groups, k, stride=stride, padding=padding,
                                   dilation=dilation, groups=groups)
    x = torch.randn(batch, c_in * groups, *[size] * dims)
    assert macs.count_macs(layer, x) == flop_counter_macs(layer, x) > 0


@SLOW
@given(heads=st.integers(1, 3), head_dim=st.integers(1, 4), b=st.integers(1, 2), s=st.integers(1, 5),
       t=st.integers(1, 5), batch_first=st.booleans(), self_attention=st.booleans())
def test_count_macs_attention_by_hand(heads, head_dim, b, s, t, batch_first, self_attention):
    e = heads * head_dim
    mha = nn.MultiheadAttention(e, heads, batch_first=batch_first)
    t = s if self_attention else t
    q, kv = torch.randn(b, s, e), torch.randn(b, t, e)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    inputs = (q, q, q) if self_attention else (q, kv, kv)
    # q, k, v and out projections (e x e per token) plus q k^T and attn v (s*t*e each)
    assert macs.count_macs(mha, inputs) == b * (2 * s * e * e + 2 * t * e * e + 2 * s * t * e)


@SLOW
@given(kind=st.sampled_from(["LSTM", "GRU", "RNN"]), i=st.integers(1, 5), h=st.integers(1, 5),
       layers=st.integers(1, 2), bidirectional=st.booleans(), seq=st.integers(1, 4), batch=st.integers(1, 3))
def test_count_macs_recurrent_by_hand(kind, i, h, layers, bidirectional, seq, batch):
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]
    rnn = getattr(nn, kind)(i, h, num_layers=layers, bidirectional=bidirectional)
    d = 2 if bidirectional else 1
    # per token and direction: gates * h * (input + h); layers above the first see d * h inputs
    expected = seq * batch * d * sum(gates * h * ((i if n == 0 else d * h) + h) for n in range(layers))
    assert macs.count_macs(rnn, torch.randn(seq, batch, i)) == expected


@FAST
@given(model=not_modules, example=st.one_of(st.integers(), st.lists(st.integers(), max_size=2), st.just(())),
       unknown=st.text(max_size=5).filter(lambda u: u not in ("raise", "warn")))
def test_count_macs_bad_args(model, example, unknown):
    raises_naming("model", macs.count_macs, model, torch.zeros(1, 2))
    raises_naming("example_input", macs.count_macs, nn.Linear(2, 2), example)
    raises_naming("unknown", macs.count_macs, nn.Linear(2, 2), torch.zeros(1, 2), unknown=unknown)


@SLOW
@given(shapes=st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=2), min_size=1, max_size=5))
def test_model_size_bytes_is_the_saved_file(shapes):
    state = {f"layer{i}.weight": torch.randn(*s) for i, s in enumerate(shapes)}
    raw = sum(t.numel() * t.element_size() for t in state.values())
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.pt")
        torch.save(state, path)
        saved = os.path.getsize(path)
    size = measure.model_size_bytes(state)
    assert size == saved
    assert raw <= size <= raw + 1024 + 768 * len(state)  # zip headers, pickle, 64-byte alignment per tensor


@FAST
@given(bad=st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2), st.none()),
       key=st.integers())
def test_model_size_bytes_bad_args(bad, key):
    raises_naming("model", measure.model_size_bytes, bad)
    raises_naming("model", measure.model_size_bytes, {"w": object()})
    raises_naming("str keys", measure.model_size_bytes, {key: torch.zeros(1)})


# --------------------------------------------------------------------------------------------------- latency


@FAST
@given(warmup=bad_counts, repeats=bad_positive, threads=bad_positive)
def test_measure_latency_bad_args(warmup, repeats, threads):
    layer, x = nn.Linear(2, 2), torch.zeros(1, 2)
    previous = torch.get_num_threads()
    raises_naming("warmup", measure.measure_latency, layer, x, warmup=warmup)
    raises_naming("repeats", measure.measure_latency, layer, x, repeats=repeats)
    raises_naming("threads", measure.measure_latency, layer, x, threads=threads)
    raises_naming("example_input", measure.measure_latency, layer, torch.zeros(0, 2))
    raises_naming("model", measure.measure_latency, 3, x)
    assert torch.get_num_threads() == previous


@settings(max_examples=8, deadline=None)
@given(warmup=st.integers(0, 2), repeats=st.integers(1, 6), batch=st.integers(1, 4), train_mode=st.booleans())
def test_measure_latency_good_args(warmup, repeats, batch, train_mode):
    layer = nn.Linear(3, 2).train(train_mode)
    lat = measure.measure_latency(layer, torch.zeros(batch, 3), warmup=warmup, repeats=repeats, threads=1)
    assert len(lat.samples_ms) == lat.repeats == repeats and lat.batch_size == batch and lat.warmup == warmup
    assert 0 <= lat.min_ms <= lat.q25_ms <= lat.median_ms <= lat.q75_ms <= max(lat.samples_ms)
    assert layer.training == train_mode


@FAST
@given(ms=st.one_of(st.floats(max_value=-1e-9), st.just(float("nan")), st.text(max_size=2)), count=bad_positive)
def test_latency_record_bad_args(ms, count):
    good = dict(median_ms=1.0, q25_ms=0.5, q75_ms=1.5, min_ms=0.4, threads=1, batch_size=1, repeats=3,
                warmup=0, device="cpu")
    raises_naming("median_ms", measure.Latency, **(good | {"median_ms": ms}))
    raises_naming("threads", measure.Latency, **(good | {"threads": count}))
    raises_naming("batch_size", measure.Latency, **(good | {"batch_size": count}))


# --------------------------------------------------------------------------------------------------- compare


@FAST
@given(acc=st.one_of(st.floats(min_value=1.0001, max_value=1e6), st.floats(max_value=-1e-6), st.just(float("nan")),
                     st.booleans(), st.text(max_size=2)),
       count=st.one_of(st.integers(max_value=-1), st.floats(allow_nan=True), st.text(max_size=2)),
       name=st.text(min_size=1, max_size=3).filter(lambda n: n != "a"))
def test_compare_bad_args(acc, count, name):
    a = {"a": nn.Linear(2, 2)}
    raises_naming("accuracy", measure.compare, a, accuracy={"a": acc}, latency=False)
    raises_naming("macs", measure.compare, a, macs={"a": count}, latency=False)
    raises_naming("baseline", measure.compare, a, baseline=name, latency=False)
    raises_naming("not in models", measure.compare, a, accuracy={name: 0.5}, latency=False)
    raises_naming("models", measure.compare, {})
    raises_naming("threads", measure.compare, a, threads=0)


@FAST
@given(fan_outs=st.lists(st.integers(1, 20), min_size=1, max_size=4),
       accs=st.lists(st.floats(0, 1), min_size=4, max_size=4), batch=st.integers(1, 4))
def test_compare_ratios_agree_with_their_definition(fan_outs, accs, batch):
    nets = {f"m{i}": nn.Linear(10, n) for i, n in enumerate(fan_outs)}
    accuracy = {name: a for name, a in zip(nets, accs)}
    table = measure.compare(nets, torch.zeros(batch, 10), accuracy=accuracy, latency=False)
    base = table.row("m0")
    for name, net in nets.items():
        row = table.row(name)
        assert row["params"] == 10 * net.out_features + net.out_features
        assert row["macs"] == batch * 10 * net.out_features
        assert row["macs_ratio"] == pytest.approx(base["macs"] / row["macs"])
        assert row["acc_delta_pp"] == pytest.approx(100 * (accuracy[name] - accuracy["m0"]))
    assert table.batch_size == batch and table.threads is None


@FAST
@given(count=bad_positive, rows=st.one_of(st.integers(), st.lists(st.integers(), min_size=1, max_size=2)),
       n=st.one_of(st.floats(max_value=-1e-9), st.just(float("inf")), st.just(float("nan")), st.text(max_size=2)))
def test_comparison_and_format_bytes_bad_args(count, rows, n):
    raises_naming("threads", compare.Comparison, rows=[], baseline="a", threads=count)
    raises_naming("batch_size", compare.Comparison, rows=[], baseline="a", batch_size=count)
    raises_naming("rows", compare.Comparison, rows=rows, baseline="a")
    raises_naming("baseline", compare.Comparison, rows=[], baseline=rows)
    raises_naming("n", compare.format_bytes, n)


@FAST
@given(n=st.integers(0, 2**40))
def test_format_bytes_reads_back(n):
    value, unit = compare.format_bytes(n).split()
    scale = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[unit]
    assert abs(float(value) * scale - n) <= 0.05 * scale
    assert unit == "GB" or float(value) < 1024


# --------------------------------------------------------------------------------------------------- widgets

MLP = models.build("mlp")
X = torch.randn(12, 1, 28, 28)
Y = torch.arange(12) % 10


@FAST
@given(draw_arg=st.one_of(st.integers(), st.none(), st.text(max_size=2)),
       statics=st.one_of(st.just([]), st.integers(), st.lists(st.integers(), min_size=1, max_size=2)))
def test_interactive_or_static_bad_args(draw_arg, statics):
    raises_naming("draw", widgets.interactive_or_static, draw_arg, {}, [{}])
    raises_naming("controls", widgets.interactive_or_static, lambda: None, draw_arg, [{}])
    raises_naming("static_values", widgets.interactive_or_static, lambda: None, {}, statics)


@FAST
@given(batch=st.integers(1, 6), classes=st.integers(2, 6), train_mode=st.booleans())
def test_predict_proba_is_softmax(batch, classes, train_mode):
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, classes), nn.Dropout(0.5)).train(train_mode)
    x = torch.randn(batch, 1, 2, 2)
    probs = widgets.predict_proba(net, x)
    with torch.no_grad():
        expected = torch.softmax(net.eval()(x), 1)
    net.train(train_mode)
    torch.testing.assert_close(probs, expected)
    assert net.training == train_mode


@FAST
@given(bad=st.one_of(not_modules, st.just(torch.zeros(0, 1, 28, 28)), st.just(torch.zeros(3))))
def test_predict_proba_bad_args(bad):
    raises_naming("model", widgets.predict_proba, bad, X)
    raises_naming("x", widgets.predict_proba, MLP, bad)


def bad_labels():
    """Labels that would broadcast or mis-index: one-hot (n, k), (n, 1), float, bool, wrong length, out of range."""
    return st.one_of(
        st.integers(1, 10).map(lambda k: torch.zeros(12, k, dtype=torch.long)),
        st.just(Y.float()), st.just(Y.bool()), st.integers(1, 11).map(lambda n: Y[:n]),
        st.integers(10, 100).map(lambda c: Y.clone().index_fill_(0, torch.tensor([0]), c)),
        st.just(Y - 1),
    )


@FAST
@given(y=bad_labels(), per_class=bad_positive, static_count=bad_positive)
def test_label_checks_in_every_view(y, per_class, static_count):
    raises_naming("y", widgets.plot_examples, X, y, per_class=1)
    raises_naming("y", widgets.browse_predictions, MLP, X, y) if y.dim() != 1 or len(y) == len(X) else \
        raises_naming("equal length", widgets.browse_predictions, MLP, X, y)
    raises_naming("per_class", widgets.plot_examples, X, Y, per_class=per_class)
    raises_naming("static_count", widgets.browse_predictions, MLP, X, Y, static_count=static_count)
    assert plt.get_fignums() == []


@settings(max_examples=6, deadline=None)
@given(per_class=st.integers(1, 3), static_count=st.integers(1, 2))
def test_views_draw_one_figure_per_setting(per_class, static_count):
    assert widgets.plot_examples(X, Y, per_class=per_class) is None
    (fig,) = [plt.figure(n) for n in plt.get_fignums()]
    assert len(fig.axes) == 10 * per_class
    plt.close("all")
    assert widgets.browse_predictions(MLP, X, Y, static_count=static_count) is None
    assert len(plt.get_fignums()) == static_count
    plt.close("all")


@FAST
@given(label=st.one_of(st.integers(max_value=-1), st.integers(min_value=10), st.booleans(), st.floats()),
       n=st.integers(1, 20).filter(lambda n: n != 10))
def test_show_image_prediction_bad_args(label, n):
    raises_naming("label", widgets.show_image_prediction, X[0], label, torch.full((10,), 0.1))
    raises_naming("probs", widgets.show_image_prediction, X[0], 1, torch.full((n,), 0.1))
    raises_naming("classes", widgets.show_image_prediction, X[0], 1, torch.full((10,), 0.1), classes="abc")
    assert plt.get_fignums() == []


@FAST
@given(bad=st.one_of(st.just({}), st.integers(), st.dictionaries(st.text(max_size=2), st.integers(), min_size=1)))
def test_plot_history_bad_args(bad):
    raises_naming("histories", widgets.plot_history, bad)
    raises_naming("title", widgets.plot_history, {"m": train.History(loss=[1.0])}, title=3)


@FAST
@given(bits=st.one_of(st.integers(max_value=1), st.integers(min_value=9), st.booleans(), st.floats()),
       symmetric=bad_bools)
def test_bit_width_explorer_bad_args(bits, symmetric):
    ok = lambda m: 0.5  # noqa: E731
    raises_naming("bits", widgets.bit_width_explorer, MLP, ok,
                  static_values=[{"bits": bits, "symmetric": False, "per_channel": False}])
    raises_naming("symmetric", widgets.bit_width_explorer, MLP, ok,
                  static_values=[{"bits": 4, "symmetric": symmetric, "per_channel": False}])
    raises_naming("model", widgets.bit_width_explorer, "mlp", ok)
    raises_naming("evaluate", widgets.bit_width_explorer, MLP, 3)
    assert plt.get_fignums() == []


def test_no_warnings_from_a_plain_count():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert macs.count_macs(MLP, X) == 12 * (784 * 300 + 300 * 100 + 100 * 10)
