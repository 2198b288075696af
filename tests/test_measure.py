import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lwkit import measure, models


def reference_macs(model, x):
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() // 2  # flop_counter counts 2 FLOPs per MAC


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


def test_count_params_options():
    model = models.build("mlp")
    assert measure.count_params(model) == 266_610
    model.fc1.requires_grad_(False)
    assert measure.count_params(model, trainable_only=True) == 266_610 - (784 * 300 + 300)
    with torch.no_grad():
        model.fc3.weight.zero_()
    assert measure.count_params(model, nonzero_only=True) == 266_610 - 1000
    tied = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    tied[1].weight = tied[0].weight
    assert measure.count_params(tied) == 9 + 3 + 3


def test_model_size_bytes_is_what_torch_save_writes(tmp_path):
    model = models.build("mlp")
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    assert measure.model_size_bytes(model) == path.stat().st_size
    assert measure.model_size_bytes(model.state_dict()) == path.stat().st_size
    assert 266_610 * 4 < path.stat().st_size < 266_610 * 4 * 1.05


def test_measure_latency_reports_and_restores_threads():
    torch.set_num_threads(2)
    lat = measure.measure_latency(nn.Linear(8, 8), torch.zeros(4, 8), warmup=2, repeats=7, threads=1)
    assert lat.threads == 1 and lat.repeats == 7 and lat.batch_size == 4 and len(lat.samples_ms) == 7
    assert 0 < lat.min_ms <= lat.median_ms and lat.q25_ms <= lat.median_ms <= lat.q75_ms
    assert torch.get_num_threads() == 2
    assert "1 threads" in str(lat)


def test_compare_ratios_and_rendering():
    big, small = nn.Linear(100, 100), nn.Linear(100, 10)
    table = measure.compare({"big": big, "small": small}, torch.zeros(8, 100), accuracy={"big": 0.9, "small": 0.8},
                            repeats=5, warmup=1)
    row = table.row("small")
    assert row["params"] == 1010 and row["macs"] == 8 * 100 * 10
    assert row["macs_ratio"] == pytest.approx(10.0)
    assert row["acc_delta_pp"] == pytest.approx(-10.0)
    assert row["speedup"] == pytest.approx(table.row("big")["latency_ms"] / row["latency_ms"])
    html = table._repr_html_()
    assert "<table>" in html and "measured speedup" in html and "MACs ratio" in html
    assert "small" in str(table)
    with pytest.raises(KeyError, match="no row named"):
        table.row("medium")


def test_environment_lists_what_later_notebooks_need():
    env = measure.environment()
    for key in ("torch", "cpu_capability", "quantized_engines", "timing_threads"):
        assert key in env


def test_bad_inputs():
    with pytest.raises(TypeError, match="model"):
        measure.count_params("model")
    with pytest.raises(TypeError, match="example_input"):
        measure.count_macs(nn.Linear(2, 2), [1, 2])
    with pytest.raises(TypeError, match="state_dict"):
        measure.model_size_bytes(3)
    with pytest.raises(ValueError, match="repeats"):
        measure.measure_latency(nn.Linear(2, 2), torch.zeros(1, 2), repeats=0)
    with pytest.raises(ValueError, match="threads"):
        measure.measure_latency(nn.Linear(2, 2), torch.zeros(1, 2), threads=0)
    with pytest.raises(ValueError, match="warmup"):
        measure.measure_latency(nn.Linear(2, 2), torch.zeros(1, 2), warmup=-1)
    with pytest.raises(ValueError, match="non-empty"):
        measure.compare({})
    with pytest.raises(ValueError, match="baseline"):
        measure.compare({"a": nn.Linear(2, 2)}, baseline="b", latency=False)
    with pytest.raises(ValueError, match="not in models"):
        measure.compare({"a": nn.Linear(2, 2)}, accuracy={"b": 0.5}, latency=False)


def test_count_params_on_sparse_csr_weights():
    layer = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 1, 0, 2], [0, 0, 0, 0], [3, 0, 0, 0]]))
    layer.weight = nn.Parameter(layer.weight.detach().to_sparse_csr(), requires_grad=False)
    assert measure.count_params(layer) == 12
    assert measure.count_params(layer, nonzero_only=True) == 3
