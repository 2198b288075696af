import pytest
import torch
from torch import nn

from lwkit import data, models, pipeline, qat, sparse

GEN = torch.Generator().manual_seed(0)
X, Y = torch.randn(96, 1, 28, 28, generator=GEN), torch.randint(0, 10, (96,), generator=GEN)


def loaders():
    return data.BatchLoader(X, Y, batch_size=32, shuffle=True), data.BatchLoader(X, Y, batch_size=48)


def tiny():
    torch.manual_seed(0)
    return models.LeNet300100(hidden=(32, 16))


def run(steps, model=None, **kw):
    tr, ev = loaders()
    model = tiny() if model is None else model
    return pipeline.Recipe(steps).run(model, tr, ev, example_input=X[:8], threads=1, repeats=2, **kw)


def distinct_nonzero(layer):
    w = layer.weight
    return len(torch.unique(w[w != 0]))


def test_prune_step_and_report_rows():
    original = tiny()
    before = original.fc1.weight.clone()
    model, rep = run([pipeline.Prune(sparsity=0.8)], original)
    assert abs(sparse.sparsity(model) - 0.8) < 0.01
    assert torch.equal(original.fc1.weight, before)  # the input model is untouched
    assert [r["step"] for r in rep.rows] == ["input model", "prune: sparsity=0.8"]
    for r in rep.rows:
        assert set(r) == {"step", "accuracy", "size_bytes", "file", "macs", "latency_ms", "sparsity", "seconds"}
        assert 0 <= r["accuracy"] <= 1 and r["size_bytes"] > 0 and r["latency_ms"] > 0
    assert rep.rows[0]["macs"] == 784 * 32 + 32 * 16 + 16 * 10 == rep.rows[1]["macs"]  # dense kernels: same MACs
    assert rep.rows[1]["size_bytes"] < rep.rows[0]["size_bytes"] / 2  # the Huffman file knows the zeros
    assert "prune" in str(rep)


def test_prune_per_layer_dict_and_random():
    model, _ = run([pipeline.Prune(sparsity={"fc1": 0.5, "fc3": 0.25}, criterion="random")])
    assert abs(sparse.sparsity(model.fc1.weight) - 0.5) < 0.01 and sparse.sparsity(model.fc2.weight) == 0


@pytest.mark.parametrize("step", [pipeline.FineTune(epochs=1), pipeline.Distill(epochs=1),
                                  pipeline.LoRA(rank=2, epochs=1)])
def test_training_steps_keep_pruned_zeros(step):
    model, rep = run([pipeline.Prune(sparsity=0.7), step])
    assert sparse.sparsity(model) >= 0.699  # global 70 %: every pruned weight still zero after training
    assert all(type(m) in (nn.Linear, nn.ReLU, models.LeNet300100) for m in model.modules())  # LoRA merged
    assert all(p.requires_grad for p in model.parameters())


def test_lora_targets_must_exist():
    with pytest.raises(ValueError, match=r"step 1 \(lora\): unknown layer"):
        run([pipeline.LoRA(targets=["fc9"])])


def test_quantize_uniform_and_kmeans():
    model, _ = run([pipeline.Prune(sparsity=0.5), pipeline.Quantize(bits=4)])
    assert all(distinct_nonzero(layer) <= 16 for layer in sparse.prunable_layers(model).values())
    assert sparse.sparsity(model) >= 0.49  # symmetric: zero stays zero
    model, rep = run([pipeline.Quantize(bits={"fc1": 3, "fc2": 4}, method="kmeans", epochs=1)])
    assert distinct_nonzero(model.fc1) <= 8 and distinct_nonzero(model.fc2) <= 16 and distinct_nonzero(model.fc3) <= 256
    assert rep.rows[-1]["file"] == "Huffman .dc"


def test_quantize_activations():
    model, _ = run([pipeline.Quantize(bits=8, act_bits=8)])
    assert any(isinstance(m, qat.QuantWrapper) for m in model.modules())


def test_export_dc_and_onnx(tmp_path):
    _, rep = run([pipeline.Quantize(bits=6, method="kmeans"), pipeline.Export(format="dc")], out_dir=tmp_path)
    assert rep.rows[-1]["size_bytes"] == (tmp_path / "model.dc").stat().st_size
    model, rep = run([pipeline.Export(format="onnx")], out_dir=tmp_path)
    assert rep.rows[-1]["file"] == ".onnx" and abs(rep.rows[-1]["accuracy"] - rep.rows[0]["accuracy"]) < 0.02


@pytest.mark.parametrize("text, match", [
    ("- prun: sparsity=0.5", r"step 1: unknown step 'prun'; did you mean 'prune'"),
    ("- prune: sparsity=0.5\n- quantize: bitz=4", r"step 2 \(quantize\): unknown argument\(s\) \['bitz'\]"),
    ("- prune: sparsity=1.5", r"step 1 \(prune\): sparsity must be"),
    ("- prune: scope='everywhere'", r"step 1 \(prune\): scope must be one of"),
    ("- quantize: bits=4\n- fine_tune: epochs=1", r"step 1 \(quantize\) may only be followed by export"),
    ("- export: format='onnx'\n- prune: sparsity=0.5", r"step 1 \(export\) must be the last step"),
    ("- quantize: bits=4, epochs=2", r"step 1 \(quantize\): epochs=2 fine-tunes k-means centroids"),
    ("- fine_tune: epochs=0", r"step 1 \(fine_tune\): epochs must be in"),
    ("prune: sparsity=0.5", r"line 1: a step line starts with '- '"),
    ("- prune: sparsity=", r"line 1 \(prune\): cannot read arguments"),
    ("- prune: 0.5", r"line 1 \(prune\): cannot read arguments"),
])
def test_validation_errors_name_the_step(text, match):
    with pytest.raises(ValueError, match=match):
        pipeline.Recipe.from_text(text)


def test_python_steps_validate_and_name_the_step():
    with pytest.raises(ValueError, match=r"^lora: rank must be"):
        pipeline.LoRA(rank=0)
    with pytest.raises(ValueError, match="not a step"):
        pipeline.Recipe([pipeline.Prune(), "quantize"])
    with pytest.raises(ValueError, match=r"step 1 \(quantize\): unknown layer"):
        run([pipeline.Quantize(bits={"conv9": 4})])


def test_nothing_runs_when_a_layer_is_unknown():
    calls = []
    tr, ev = loaders()
    recipe = pipeline.Recipe([pipeline.FineTune(epochs=1), pipeline.Prune(sparsity={"nope": 0.5})])
    recipe.steps[0].apply = lambda ctx: calls.append(1)
    with pytest.raises(ValueError, match="unknown layer"):
        recipe.run(tiny(), tr, ev, example_input=X[:4])
    assert calls == []


def test_recipe_round_trips_through_text_dict_and_file(tmp_path):
    recipe = pipeline.Recipe([pipeline.Prune(sparsity={"fc1": 0.9, "fc2": 0.5}, scope="layer", epochs=2),
                              pipeline.FineTune(epochs=3, lr=0.01), pipeline.Distill(temperature=2.0),
                              pipeline.LoRA(targets=["fc1"], rank=2), pipeline.Quantize(bits=5, method="kmeans"),
                              pipeline.Export(format="dc")])
    assert pipeline.Recipe.from_text(recipe.to_text()) == recipe
    assert pipeline.Recipe.from_dict(recipe.to_dict()) == recipe
    path = recipe.save(tmp_path / "recipe.txt")
    assert pipeline.Recipe.load(path) == recipe
    with pytest.raises(FileExistsError):
        recipe.save(path)
    text = "# a comment\n\n- prune: sparsity=0.5  # half\n- quantize\n"
    assert pipeline.Recipe.from_text(text) == pipeline.Recipe([pipeline.Prune(sparsity=0.5), pipeline.Quantize()])


def test_the_surveys_example_runs():
    # pruning(model, method='fdr', alpha=0.5, bit_width=8); Quantization(activation='uniform', weight='uniform',
    # bit_width=8).quantize(); evaluate(model, data_loader) -- as notebook 10 rewrites it
    survey = pipeline.Recipe([pipeline.Prune(sparsity=0.5, scope="global"), pipeline.Quantize(bits=8, act_bits=8)])
    model, rep = run(survey.steps)
    accuracy = rep.rows[-1]["accuracy"]
    assert abs(rep.rows[1]["sparsity"] - 0.5) < 0.01 and 0 <= accuracy <= 1
    assert any(isinstance(m, qat.QuantWrapper) for m in model.modules())


def test_file_size_picks_the_smaller_real_file(tmp_path):
    dense = tiny()
    size, kind = pipeline.file_size(dense, tmp_path)
    assert kind == "fp32 .pt"
    _, rep = run([pipeline.Prune(sparsity=0.9)])
    assert rep.rows[-1]["file"] == "Huffman .dc"
