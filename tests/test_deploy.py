"""lwkit.deploy: export -> load -> run -> measure for ONNX Runtime and ExecuTorch on tiny models, bad inputs."""

import importlib

import pytest
import torch
from torch import nn

from lwkit import deploy


class Tiny(nn.Module):
    """conv-bn-relu -> pool -> linear on 1x8x8 inputs: every op kind the course CNN uses."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.MaxPool2d(2))
        self.classifier = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@torch.library.custom_op("lwkit_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


class Mystery(nn.Module):
    """A custom op that no runtime knows."""

    def forward(self, x):
        return mystery(x)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.features[1].running_mean.uniform_(-0.5, 0.5)
        model.features[1].running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 4, (64,), generator=g)


@pytest.fixture(scope="module")
def files(tiny, inputs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("deploy")
    x = inputs[0]
    out = {"onnx": deploy.export_onnx(tiny, x[:1], folder / "tiny.onnx")}
    out["onnx_static"] = deploy.quantize_onnx_static(out["onnx"], folder / "tiny_static.onnx", x)
    out["onnx_dynamic"] = deploy.quantize_onnx_dynamic(out["onnx"], folder / "tiny_dynamic.onnx")
    out["pte"] = deploy.export_pte(tiny, x[:1], folder / "tiny.pte", max_batch=64)
    out["pte_int8"] = deploy.export_pte(tiny, x[:1], folder / "tiny_int8.pte", int8=True,
                                        calibration_data=[(x, None)], max_batch=64)
    return out


def _agree(a, b):
    return (a.argmax(1) == b.argmax(1)).float().mean().item()


@pytest.mark.parametrize("key, runtime", [("onnx", "onnxruntime"), ("pte", "executorch")])
def test_fp32_files_equal_the_eager_model_at_any_batch(files, tiny, inputs, key, runtime):
    runner = deploy.load(files[key], threads=deploy.executorch_threads())
    assert runner.runtime == runtime and runner.path == files[key]
    assert runner.size_bytes == files[key].stat().st_size
    for batch in (1, 3, 17, 64):  # 17: past the [2, 15] range XNNPACK lowering narrows the batch to
        x = inputs[0][:batch]
        with torch.no_grad():
            torch.testing.assert_close(runner(x), tiny(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("key", ["onnx_static", "onnx_dynamic", "pte_int8"])
def test_int8_files_stay_close_to_fp32(files, tiny, inputs, key):
    runner = deploy.load(files[key], threads=deploy.executorch_threads())
    x = inputs[0]
    with torch.no_grad():
        ref = tiny(x)
    out = runner(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() < 0.1 * ref.abs().max() + 0.05, "int8 = fp32 up to rounding"
    assert _agree(out, ref) >= 0.85


def test_pte_threads_must_match_the_process_pool(files):
    with pytest.raises(ValueError, match="thread pool"):
        deploy.load(files["pte"], threads=deploy.executorch_threads() + 1)


def test_pte_refuses_a_batch_beyond_its_memory_plan(files, inputs):
    runner = deploy.load(files["pte"])
    assert runner.max_batch == 64
    with pytest.raises(ValueError, match="batch"):
        runner(torch.randn(65, 1, 8, 8))


def test_measure_table(files, tiny, inputs):
    table = deploy.measure({"eager": tiny, "ort": files["onnx"], "ort int8": deploy.load(files["onnx_static"]),
                            "pte": files["pte"]}, inputs[0], test_data=inputs, batch_sizes=(1, 8),
                           warmup=1, repeats=4, rounds=2, threads=deploy.executorch_threads())
    assert [r["name"] for r in table.rows] == ["eager", "ort", "ort int8", "pte"]
    assert table["ort"]["runtime"] == "onnxruntime" and table["pte"]["runtime"] == "executorch"
    assert table["ort"]["size_bytes"] == files["onnx"].stat().st_size
    assert table["eager"]["agreement"] == 1.0 and table["eager"]["max_abs_diff"] == 0.0
    assert table["ort"]["agreement"] == 1.0 and table["pte"]["max_abs_diff"] < 1e-4
    with torch.no_grad():
        acc = (tiny(inputs[0]).argmax(1) == inputs[1]).float().mean().item()
    assert table["eager"]["accuracy"] == pytest.approx(acc)
    assert table["eager"]["speedup_b1"] == 1.0 and table["ort"]["latency_ms_b8"] > 0
    text = str(table)
    assert "ms @ batch 8" in text and "top-1 agreement" in text and "<table>" in table._repr_html_()


def test_measure_with_keyword_inputs():
    class KeywordModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.head = nn.Embedding(10, 4), nn.Linear(4, 2)

        def forward(self, input_ids, attention_mask):
            h = self.embed(input_ids) * attention_mask.unsqueeze(-1)
            return self.head(h.mean(1))

    torch.manual_seed(0)
    model = KeywordModel().eval()
    example = {"input_ids": torch.randint(0, 10, (4, 5)), "attention_mask": torch.ones(4, 5)}
    table = deploy.measure({"eager": model}, example, batch_sizes=(2,), warmup=0, repeats=2, rounds=1)
    assert table["eager"]["agreement"] == 1.0


def test_onnx_export_with_keyword_inputs(tmp_path):
    class TwoInputs(nn.Module):
        def forward(self, a, b):
            return a * 2 + b

    path = deploy.export_onnx(TwoInputs(), {"a": torch.ones(2, 3), "b": torch.zeros(2, 3)}, tmp_path / "k.onnx")
    runner = deploy.load(path)
    assert runner.input_names == ["a", "b"]
    torch.testing.assert_close(runner(a=torch.ones(5, 3), b=torch.ones(5, 3)), torch.full((5, 3), 3.0))


# ---------------------------------------------------------------------------------------------------------
# Bad inputs


def test_never_overwrites_a_file(tmp_path, tiny):
    target = tmp_path / "mine.onnx"
    target.write_text("a user's file")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        deploy.export_onnx(tiny, torch.randn(1, 1, 8, 8), target)
    assert target.read_text() == "a user's file"
    (tmp_path / "mine.pte").write_text("another user's file")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        deploy.export_pte(tiny, torch.randn(1, 1, 8, 8), tmp_path / "mine.pte")


@pytest.mark.parametrize("call, error, match", [
    (lambda m, p: deploy.export_onnx(m, torch.randn(1, 1, 8, 8), p / "model.pte"), ValueError, ".onnx"),
    (lambda m, p: deploy.export_onnx(m, [torch.randn(1, 1, 8, 8)], p / "m.onnx"), TypeError, "example_input"),
    (lambda m, p: deploy.export_onnx("model", torch.randn(1, 1, 8, 8), p / "m.onnx"), TypeError, "model"),
    (lambda m, p: deploy.export_onnx(m, torch.randn(1, 1, 8, 8), p / "no" / "m.onnx"), FileNotFoundError, "folder"),
    (lambda m, p: deploy.export_onnx(m, torch.randn(1, 1, 8, 8), p / "m.onnx", opset=5), ValueError, "opset"),
    (lambda m, p: deploy.export_pte(m, torch.randn(1, 1, 8, 8), p / "m.pte", int8=True), ValueError,
     "calibration_data"),
    (lambda m, p: deploy.export_pte(m, torch.randn(1, 1, 8, 8), p / "m.pte", calibration_data=torch.randn(2)),
     ValueError, "int8=True"),
    (lambda m, p: deploy.export_pte(m, torch.randn(1, 1, 8, 8), p / "m.pte", max_batch=1), ValueError, "max_batch"),
    (lambda m, p: deploy.export_pte(m, torch.randn(1, 1, 8, 8), p / "m.pte", int8=True,
                                    calibration_data=torch.empty(0, 1, 8, 8)), ValueError, "empty"),
    (lambda m, p: deploy.quantize_onnx_static(p / "missing.onnx", p / "o.onnx", torch.randn(2)),
     FileNotFoundError, "fp32_path"),
    (lambda m, p: deploy.load(p / "missing.pte"), FileNotFoundError, "missing.pte"),
    (lambda m, p: deploy.load(p / "model.tflite"), ValueError, ".onnx or .pte"),
    (lambda m, p: deploy.measure({}, torch.randn(1, 1, 8, 8)), ValueError, "variants"),
    (lambda m, p: deploy.measure({"a": m}, torch.randn(1, 1, 8, 8), baseline="b"), ValueError, "baseline"),
    (lambda m, p: deploy.measure({"a": 3}, torch.randn(1, 1, 8, 8)), TypeError, "variant 'a'"),
    (lambda m, p: deploy.measure({"a": m}, torch.randn(1, 1, 8, 8), threads=0), ValueError, "threads"),
    (lambda m, p: deploy.measure({"a": m}, torch.randn(1, 1, 8, 8), batch_sizes=(0,)), ValueError, "batch_sizes"),
    (lambda m, p: deploy.measure({"a": m}, torch.randn(1, 1, 8, 8), test_data=5), TypeError, "test_data"),
])
def test_bad_arguments_name_themselves(tmp_path, tiny, call, error, match):
    with pytest.raises(error, match=match):
        call(tiny, tmp_path)


@pytest.mark.parametrize("exporter, runtime", [("export_onnx", "ONNX"), ("export_pte", "ExecuTorch")])
def test_a_failing_export_names_the_runtime_and_what_to_try(tmp_path, exporter, runtime):
    suffix = ".onnx" if exporter == "export_onnx" else ".pte"
    with pytest.raises(deploy.DeployError, match=runtime) as info:
        getattr(deploy, exporter)(Mystery(), torch.randn(2, 3), tmp_path / f"b{suffix}")
    assert "What to try" in str(info.value) and "mystery" in str(info.value)
    assert not (tmp_path / f"b{suffix}").exists() and not list(tmp_path.glob("*.partial"))


def test_a_missing_runtime_says_what_to_install(monkeypatch, tmp_path, tiny):
    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name.split(".")[0] == "executorch":
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ImportError, match="pip install executorch"):
        deploy.export_pte(tiny, torch.randn(1, 1, 8, 8), tmp_path / "m.pte")


def test_runner_checks_its_inputs(files):
    runner = deploy.load(files["onnx"])
    with pytest.raises(TypeError, match="tensor input"):
        runner(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="named"):
        runner(y=torch.randn(1, 1, 8, 8))


def test_versions_lists_each_runtime():
    v = deploy.versions()
    assert {"torch", "onnx", "onnxruntime", "executorch"} <= set(v) and v["onnxruntime"]


def test_measure_skips_batch_sizes_a_fixed_batch_program_cannot_run(tiny, inputs, tmp_path):
    class FixedBatch:  # stands in for an ExecuTorch method exported for batch 1
        def execute(self, tensors):
            assert len(tensors[0]) == 1
            with torch.no_grad():
                return [tiny(tensors[0])]

    path = tmp_path / "b1.pte"
    path.write_bytes(b"x" * 10)
    runner = deploy.Runner(path, "executorch", 1, 10, ["input_0"], FixedBatch(), max_batch=1)
    table = deploy.measure({"eager": tiny, "b1": runner}, inputs[0], test_data=inputs, batch_sizes=(1, 4),
                           warmup=0, repeats=2, rounds=1, threads=1)
    assert table["b1"]["latency_ms_b1"] > 0 and table["b1"]["latency_ms_b4"] is None
    assert table["b1"]["speedup_b4"] is None and table["b1"]["agreement"] == 1.0
    assert "–" in str(table)


def test_fixed_batch_int8_pte_calibrates_with_whole_batches(tiny, inputs, tmp_path):
    x = inputs[0]
    path = deploy.export_pte(tiny, x[:1], tmp_path / "b1.pte", int8=True, calibration_data=x, dynamic_batch=False)
    runner = deploy.load(path)
    assert runner.max_batch == 1
    with torch.no_grad():
        ref = tiny(x[:1])
    assert (runner(x[:1]) - ref).abs().max() < 0.1 * ref.abs().max() + 0.05
    with pytest.raises(ValueError, match="batch"):
        runner(x[:2])
