"""Real int8 models (torch.ao eager, torchao PT2E / dynamic) give outputs close to fp32 and are smaller."""

import warnings

import pytest
import torch
from torch import nn

from lwkit import int8, models

needs_x86 = pytest.mark.skipif("x86" not in int8.supported_engines(), reason="needs the x86 quantized engine")
needs_torchao = pytest.mark.skipif(not int8.has_torchao(), reason="torchao is not installed")


@pytest.fixture(scope="module")
def cnn_and_data():
    torch.manual_seed(0)
    net = models.SmallCNN().eval()
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():  # give BatchNorm realistic statistics
        net.train()(x)
    return net.eval(), x


def _close(a, b, tol):
    """int8 outputs are within `tol` of the fp32 logits' spread, and agree on most predictions."""
    err = (a - b).abs().max() / b.abs().max()
    agree = (a.argmax(1) == b.argmax(1)).float().mean()
    return err < tol and agree >= 0.8


def test_fusable_groups():
    assert int8.fusable_groups(models.SmallCNN()) == [["features.0.0", "features.0.1", "features.0.2"],
                                                     ["features.2.0", "features.2.1", "features.2.2"],
                                                     ["features.4.0", "features.4.1", "features.4.2"]]
    assert int8.fusable_groups(models.LeNet300100()) == []


@needs_x86
def test_eager_static_int8_close_to_fp32_and_smaller(cnn_and_data):
    net, x = cnn_and_data
    q = int8.eager_static_int8(net, x, num_batches=None)
    with torch.no_grad():
        assert _close(q(x), net(x), 0.1)
    assert int8.saved_size_bytes(net) / int8.saved_size_bytes(q) > 3


@pytest.mark.parametrize("convert", [
    int8.eager_dynamic_int8,
    pytest.param(int8.torchao_dynamic_int8, marks=needs_torchao),
], ids=["eager_dynamic_int8", "torchao_dynamic_int8"])
def test_dynamic_int8_mlp_close_to_fp32(convert):
    torch.manual_seed(0)
    mlp = models.LeNet300100().eval()
    x = torch.randn(16, 1, 28, 28)
    q = convert(mlp)
    with torch.no_grad():
        assert _close(q(x), mlp(x), 0.05)
    if convert is int8.eager_dynamic_int8:
        assert int8.saved_size_bytes(mlp) / int8.saved_size_bytes(q) > 3.5


def test_no_deprecation_warnings_leak():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        int8.eager_dynamic_int8(models.LeNet300100())


@needs_torchao
def test_pt2e_static_int8_close_to_fp32(cnn_and_data):
    net, x = cnn_and_data
    q = int8.pt2e_static_int8(net, x[:8], x, num_batches=None)
    with torch.no_grad():
        assert _close(q(x), net(x), 0.1)
        assert q(x[:5]).shape == (5, 10), "exported with a dynamic batch size"
    assert int8.saved_size_bytes(net) / int8.saved_size_bytes(q) > 3


def test_autocast_bf16():
    mlp = models.LeNet300100().eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        out = int8.Autocast(mlp)(x)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, mlp(x), atol=0.05, rtol=0.05)


def test_bad_inputs():
    with pytest.raises(TypeError, match="model"):
        int8.eager_dynamic_int8("not a model")
    with pytest.raises(ValueError, match="no nn.Linear"):
        int8.eager_dynamic_int8(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match=r"backend must be one of this build's engines \["):
        int8.eager_static_int8(models.SmallCNN(), torch.randn(2, 1, 28, 28), backend="tpu")
    with pytest.raises(ValueError, match="calibration_data is empty"):
        int8.eager_static_int8(models.SmallCNN(), [])
    with pytest.raises(TypeError, match="calibration_data"):
        int8.eager_static_int8(models.SmallCNN(), "images")
    with pytest.raises(ValueError, match="dtype"):
        int8.Autocast(models.LeNet300100(), dtype=torch.int8)
    net = models.LeNet300100()
    with pytest.raises(ValueError, match=r"accuracy names unknown models \['int9'\]"):
        int8.compare({"fp32": net}, torch.randn(2, 1, 28, 28), accuracy={"int9": 0.5})
    with pytest.raises(ValueError, match="repeats"):
        int8.compare({"fp32": net}, torch.randn(2, 1, 28, 28), repeats=0)


# ---------------------------------------------------------------------------------------------------------
# Regression tests for the reliability review (shared/reviews/reliability.md)


@needs_torchao
def test_review_pt2e_one_image(cnn_and_data):
    """pt2e_static_int8 with a one-image example_input failed with torch.export's "Constraints violated (batch)"."""
    net, x = cnn_and_data
    q = int8.pt2e_static_int8(net, x[:1], x, num_batches=None)
    with torch.no_grad():
        assert q(x[:1]).shape == (1, 10) and q(x[:7]).shape == (7, 10), "the batch dimension stays dynamic"
        assert _close(q(x), net(x), 0.1)


@pytest.mark.parametrize("convert", [
    pytest.param(lambda m, data, **kw: int8.eager_static_int8(m, data, **kw), marks=needs_x86),
    pytest.param(lambda m, data, **kw: int8.pt2e_static_int8(m, torch.randn(2, 1, 28, 28), data, **kw),
                 marks=needs_torchao),
], ids=["eager_static_int8", "pt2e_static_int8"])
def test_review_num_batches_zero(convert):
    """num_batches=0 said "calibration data is empty"; now it names num_batches (before any export)."""
    net, x = models.SmallCNN().eval(), torch.randn(4, 1, 28, 28)
    for n, error in ((0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(error, match="num_batches"):
            convert(net, [(x, None)], num_batches=n)
    with pytest.raises(ValueError, match="calibration_data is empty"):
        convert(net, [])
    with pytest.raises(ValueError, match="calibration_data is empty"):
        convert(net, torch.empty(0, 1, 28, 28))
    with pytest.raises(ValueError, match="calibration_data batch 0 is empty"):
        convert(net, [(torch.empty(0, 1, 28, 28), None)])


def test_bf16_model_halves_the_file_and_stays_close(cnn_and_data):
    net, x = cnn_and_data
    from lwkit import bf16

    bf = bf16.BF16Model(net)
    assert all(p.dtype == torch.bfloat16 for p in bf.parameters())
    assert abs(int8.saved_size_bytes(bf) / int8.saved_size_bytes(net) - 0.5) < 0.05
    with torch.no_grad():
        out, ref = bf(x), net(x)
    assert out.dtype == torch.float32 and _close(out, ref, 0.05)
    assert next(net.parameters()).dtype == torch.float32, "the original is untouched"


def test_filter_known_warnings_drops_only_the_named_messages(caplog):
    import logging

    int8._filter_known_warnings()
    int8._filter_known_warnings()  # idempotent: one filter per logger
    log = logging.getLogger("torch.utils.cpp_extension")
    assert sum(type(f).__name__ == "_DropMessage" for f in log.filters) == 1
    with caplog.at_level(logging.WARNING, logger="torch.utils.cpp_extension"):
        log.warning("No CUDA runtime is found, using CUDA_HOME='/usr'")
        log.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


@needs_x86
def test_qat_to_real_int8_matches_the_fake_quant_model(cnn_and_data):
    from lwkit import int8qat

    net, x = cnn_and_data
    prepared = int8qat.prepare_eager_qat(net)
    opt = torch.optim.SGD(prepared.parameters(), lr=1e-3)
    for _ in range(3):  # a few steps so the observers have ranges
        opt.zero_grad()
        prepared(x).sum().backward()
        opt.step()
    prepared.eval()
    real = int8qat.convert_eager_qat(prepared)
    with torch.no_grad():
        fake, out = prepared(x), real(x)
    assert _close(out, fake, 0.05), "the converted int8 model computes what QAT simulated"
    rows = int8qat.inspect_int8(real)
    assert rows[0]["kind"].startswith("Quantize") and 0 <= rows[0]["out_zero_point"] <= 255
    convs = [r for r in rows if r["weight"] is not None]
    assert len(convs) == 4 and all(r["weight"].dtype == torch.int8 for r in convs)
    assert all(len(r["scales"]) == r["weight"].shape[0] for r in convs), "per-channel weight scales"
    assert all(int(r["zero_points"].abs().max()) == 0 for r in convs), "symmetric weights"


@needs_x86
def test_inspect_dynamic_int8_has_per_tensor_weights_and_no_output_grid():
    from lwkit import int8qat

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    rows = int8qat.inspect_int8(int8.eager_dynamic_int8(mlp))
    assert len(rows) == 2 and all(len(r["scales"]) == 1 and r["out_scale"] is None for r in rows)
    w = mlp[0].weight.detach()
    assert torch.allclose(rows[0]["weight"].float() * rows[0]["scales"].float(), w, atol=w.abs().max().item() / 127)
