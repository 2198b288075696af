"""lwkit.qat: observers, activation quantizers, QAT/PTQ wrappers; `calibrate` restores the model on any failure."""

import pytest
import torch
from torch import nn

from lwkit import models, qat, quant


def test_reexported_from_quant():
    for name in qat.__all__:
        assert getattr(quant, name) is getattr(qat, name)
    assert "prepare_qat" in dir(quant)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        quant.nope  # noqa: B018


def test_prepare_qat_wraps_and_trains():
    torch.manual_seed(0)
    net = models.LeNet300100()
    qat = quant.prepare_qat(net, bits=4, act_bits=8)
    assert isinstance(net.fc1, nn.Linear), "the original model is untouched"
    assert all(isinstance(getattr(qat, n), quant.QuantWrapper) for n in ("fc1", "fc2", "fc3"))
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    loss = nn.functional.cross_entropy(qat.train()(x), y)
    loss.backward()
    assert qat.fc1.layer.weight.grad is not None and qat.fc1.layer.weight.grad.abs().sum() > 0
    w = qat.fc1.quantized_weight()
    assert all(len(row.unique()) <= 16 for row in w.detach())
    out = qat.eval()(x)
    assert out.shape == (16, 10)
    frozen = quant.freeze_weights(quant.prepare_qat(net, bits=4))
    assert isinstance(frozen.fc1, nn.Linear)
    torch.testing.assert_close(frozen(x), quant.prepare_qat(net, bits=4).eval()(x))


def test_prepare_qat_cnn_and_ptq_calibration():
    torch.manual_seed(0)
    cnn = models.SmallCNN().eval()
    x = torch.randn(8, 1, 28, 28)
    q = quant.prepare_ptq(cnn, bits=8, act_bits=8)
    with pytest.raises(RuntimeError, match="calibrate"):
        q(x)
    quant.calibrate(q, [(x, None)])
    torch.testing.assert_close(q(x), cnn(x), atol=0.1, rtol=0.1)
    w8 = quant.quantize_weights(cnn, bits=8)
    torch.testing.assert_close(w8(x), cnn(x), atol=0.05, rtol=0.05)
    assert quant.prepare_qat(cnn, bits=2)(x).shape == (8, 10)


def test_observer_methods():
    obs = quant.Observer(bits=8, method="percentile", percentile=99.0)
    obs.update(torch.cat([torch.rand(10_000), torch.tensor([1000.0])]))
    scale, _ = obs.qparams()
    assert scale < 0.01  # the outlier was clipped away
    obs = quant.Observer(bits=8)
    obs.update(torch.tensor([-1.0, 3.0]))
    assert obs.qparams()[0].item() == pytest.approx(4 / 255)


def test_observer_matches_torch_ao_min_max_observer():
    from torch.ao.quantization.observer import MinMaxObserver

    batches = [torch.randn(16, 5) * (i + 1) + 0.3 for i in range(3)]
    ours, ref = quant.Observer(bits=8), MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    for b in batches:
        ours.update(b)
        ref(b)
    (s, z), (s_ref, z_ref) = ours.qparams(), ref.calculate_qparams()
    assert s.item() == s_ref.item() and z.item() == z_ref.item()


def test_act_quantizer_qat_moving_average_and_frozen_eval():
    aq = quant.ActQuantizer(bits=8, momentum=0.5).train()
    aq(torch.tensor([-1.0, 1.0]))
    aq(torch.tensor([-3.0, 3.0]))
    assert (aq.lo.item(), aq.hi.item()) == (-2.0, 2.0)  # lerp half way
    assert aq.scale.item() == pytest.approx(4 / 255)
    x = torch.linspace(-2, 2, 9)
    out = aq.eval()(x)
    assert torch.equal(out, torch.fake_quantize_per_tensor_affine(x, aq.scale.item(), int(aq.zero_point), 0, 255))


def _quantizer_state(model):
    return [(q.calibrating, q.observer.min_val, q.observer.count, {k: b.clone() for k, b in q.named_buffers()})
            for q in model.modules() if isinstance(q, quant.ActQuantizer)]


def _same_state(a, b):
    for (c1, m1, n1, b1), (c2, m2, n2, b2) in zip(a, b, strict=True):
        assert c1 == c2 and n1 == n2 and (m1 is None) == (m2 is None)
        assert m1 is None or torch.equal(m1, m2)
        assert all(torch.equal(b1[k], b2[k]) for k in b1)


# ---------------------------------------------------------------------------------------------------------
# Regression tests for the reliability review (shared/reviews/reliability.md)


def test_review_act_quantizer_momentum():
    """ActQuantizer(momentum=5) left lo > hi and a scale of 1.2e-7."""
    for momentum in (5, 0, -0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="momentum"):
            quant.ActQuantizer(momentum=momentum)
    for momentum in (True, "0.1", None):
        with pytest.raises(TypeError, match="momentum"):
            quant.ActQuantizer(momentum=momentum)
    assert quant.ActQuantizer(momentum=1).momentum == 1.0


def test_review_observer_nan_inf():
    """Observer on NaN gave scale=nan, zero_point=INT64_MIN; on ±inf scale=inf, all without an error."""
    for bad in (float("nan"), float("inf"), -float("inf")):
        obs = quant.Observer(bits=8, method="percentile")
        obs.update(torch.tensor([0.0, 1.0]))
        with pytest.raises(ValueError, match="contains"):
            obs.update(torch.tensor([0.5, bad]))
        assert obs.count == 2 and obs.max_val.item() == 1.0, "a refused batch records nothing"
        aq = quant.ActQuantizer()
        for mode in (aq.train, aq.eval):
            mode()
            with pytest.raises(ValueError, match="contains"):
                aq(torch.tensor([0.5, bad]))
    obs = quant.Observer()
    obs.update(torch.zeros(4))
    scale, zp = obs.qparams()
    assert scale.item() > 0 and torch.isfinite(scale) and zp.item() == 0


def test_review_calibrate_nan_qparams():
    """calibrate froze NaN qparams; the failure came only at the next forward, blaming scale."""
    torch.manual_seed(0)
    net = models.LeNet300100()
    q = quant.prepare_ptq(net)
    good = torch.randn(8, 1, 28, 28)
    quant.calibrate(q, [(good, None)])
    state, expected = _quantizer_state(q), q(good)
    bad = good.clone()
    bad[3, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="loader batch 1: .*NaN"):
        quant.calibrate(q, [(good, None), (bad, None)])
    _same_state(state, _quantizer_state(q))
    assert torch.equal(q(good), expected), "the earlier calibration is still in place"
    fresh = quant.prepare_ptq(net)
    with pytest.raises(ValueError, match="NaN"):
        quant.calibrate(fresh, [bad])
    assert not any(bool(m.ready) for m in fresh.modules() if isinstance(m, quant.ActQuantizer))


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError, ValueError])
def test_review_calibrate_restores_on_any_exception(failure):
    """An interrupted kernel (or any error) during calibration leaves the model exactly as it was."""
    torch.manual_seed(0)
    q = quant.prepare_ptq(models.SmallCNN())
    x = torch.randn(4, 1, 28, 28)
    quant.calibrate(q, [x])
    q.train()
    state = _quantizer_state(q)

    def loader():
        yield x * 3
        yield x * 5
        raise failure("injected")

    with pytest.raises(failure, match="injected"):
        quant.calibrate(q, loader())
    _same_state(state, _quantizer_state(q))
    assert all(m.training for m in q.modules()), "train/eval flags restored"


def test_review_calibrate_num_batches_and_empty():
    q = quant.prepare_ptq(models.LeNet300100())
    x = torch.randn(2, 1, 28, 28)
    for n, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="num_batches"):
            quant.calibrate(q, [x], num_batches=n)
    with pytest.raises(ValueError, match="loader is empty"):
        quant.calibrate(q, [])
    with pytest.raises(TypeError, match="loader"):
        quant.calibrate(q, 3)
    with pytest.raises(ValueError, match="loader batch 0 is empty"):
        quant.calibrate(q, x[:0])
    quant.calibrate(q, x)  # one tensor is one batch
    assert q.fc1.act.observer.count == x.numel()
    with pytest.raises(TypeError, match="loader"):
        quant.calibrate(q, [("not a tensor", None)])
    quant.calibrate(q, [x, x * 100], num_batches=1)
    assert q.fc1.act.observer.count == x.numel(), "only the first batch was observed"


def test_bad_inputs():
    with pytest.raises(ValueError, match="empty"):
        quant.calibrate(quant.prepare_ptq(models.LeNet300100()), [])
    with pytest.raises(ValueError, match="seen no data"):
        quant.Observer().qparams()
    with pytest.raises(ValueError, match="no nn.Linear"):
        quant.prepare_qat(nn.Sequential(nn.ReLU()))
    with pytest.raises(TypeError, match="only nn.Linear"):
        quant.QuantWrapper(nn.Conv1d(1, 1, 3))
    with pytest.raises(TypeError, match="model"):
        quant.prepare_qat("model")
    with pytest.raises(ValueError, match="act_method"):
        quant.prepare_ptq(models.LeNet300100(), act_method="best")
    with pytest.raises(TypeError, match="symmetric"):
        quant.prepare_qat(models.LeNet300100(), symmetric="yes")
    with pytest.raises(ValueError, match="percentile"):
        quant.Observer(percentile=30)
    with pytest.raises(ValueError, match="max_samples"):
        quant.Observer(max_samples=0)
    with pytest.raises(ValueError, match="no QuantWrapper"):
        quant.freeze_weights(models.LeNet300100())
    q = quant.prepare_qat(models.LeNet300100(), bits=4)
    with torch.no_grad():
        q.fc1.layer.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        q(torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match="NaN"):
        quant.freeze_weights(q)
