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
