"""Property tests for the capstone modules: lwkit.huffman, lwkit.pipeline, lwkit.search, lwkit.pareto, and the
variants part of lwkit.report / lwkit.run.

Generated bad arguments must raise ValueError/TypeError naming the argument (or the recipe step); generated
good arguments agree with a reference (a round trip, a brute-force front, a hand-computed size).
"""

import heapq
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lwkit import huffman, models, pareto, pipeline, report, run, search

COVERED = {
    "lwkit.huffman.code_lengths", "lwkit.huffman.canonical_codes", "lwkit.huffman.huffman_encode",
    "lwkit.huffman.huffman_decode", "lwkit.sharing.share_weights", "lwkit.sharing.group_labels",
    "lwkit.sharing.finetune_shared", "lwkit.huffman.save_compressed", "lwkit.huffman.load_compressed",
    "lwkit.steps.Prune", "lwkit.steps.FineTune", "lwkit.steps.Distill", "lwkit.steps.LoRA",
    "lwkit.steps.Quantize", "lwkit.steps.Export", "lwkit.pipeline.Recipe", "lwkit.pipeline.file_size",
    "lwkit.search.greedy_search", "lwkit.search.uniform_policy", "lwkit.search.policy_size_bytes",
    "lwkit.search.apply_size_policy", "lwkit.search.size_knobs", "lwkit.search.slice_hidden",
    "lwkit.search.width_knobs", "lwkit.search.latency_cost",
    "lwkit.pareto.pareto_front", "lwkit.pareto.course_variants", "lwkit.pareto.plot", "lwkit.pareto.export_html",
    "lwkit.pareto.explorer",
    "lwkit.report.record_variant", "lwkit.report.read_variants", "lwkit.run.write_variants",
}
EXEMPT = {
    "lwkit.huffman.CompressionReport": "plain dataclass returned by save_compressed",
    "lwkit.steps.STEPS": "constant (step name -> class)",
    "lwkit.pipeline.PipelineReport": "plain dataclass returned by Recipe.run",
    "lwkit.search.SPARSITIES": "constant (default options)",
    "lwkit.search.BITS": "constant (default options)",
    "lwkit.search.WIDTHS": "constant (default options)",
    "lwkit.search.SearchResult": "plain dataclass returned by the searches",
    "lwkit.pareto.AXES": "constant (axis names)",
    "lwkit.pareto.PALETTE": "constant (colours)",
    "lwkit.pareto.MARKERS": "constant (markers)",
    "lwkit.report.VARIANTS_ENV": "constant (an environment variable name)",
    "lwkit.report.TECHNIQUES": "constant (technique names)",
    "lwkit.report.Variant": "plain dataclass returned by record_variant and read_variants",
}

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
not_an_int_array = st.one_of(st.none(), st.text(max_size=3), st.lists(st.integers(0, 5), max_size=3),
                             st.just(np.zeros(3)), st.just(np.zeros((2, 2), dtype=np.int64)))


def optimal_bits(counts):
    heap, total = list(counts), 0
    if len(heap) == 1:
        return heap[0]
    heapq.heapify(heap)
    while len(heap) > 1:
        m = heapq.heappop(heap) + heapq.heappop(heap)
        total += m
        heapq.heappush(heap, m)
    return total


# --- huffman -------------------------------------------------------------------------------------------------

@FAST
@given(st.lists(st.integers(0, 40), min_size=1, max_size=300))
def test_huffman_round_trip_and_optimal_length(symbols):
    symbols = np.array(symbols)
    payload, lengths, nbits = huffman.huffman_encode(symbols)
    assert np.array_equal(huffman.huffman_decode(payload, lengths, len(symbols)), symbols)
    assert nbits == optimal_bits(np.unique(symbols, return_counts=True)[1].tolist())


@FAST
@given(not_an_int_array)
def test_huffman_bad_symbols(bad):
    with pytest.raises(TypeError, match="symbols"):
        huffman.code_lengths(bad)
    with pytest.raises(TypeError, match="symbols"):
        huffman.huffman_encode(bad)


@FAST
@given(st.integers(-5, -1))
def test_huffman_negative_symbols(low):
    with pytest.raises(ValueError, match="symbols"):
        huffman.code_lengths(np.array([low, 1]))


@FAST
@given(st.one_of(st.integers(-3, 0), st.integers(65, 100), st.just(1.5), st.just(True)))
def test_canonical_codes_bad_length(n):
    with pytest.raises(ValueError, match="lengths"):
        huffman.canonical_codes({0: n, 1: 2})


@FAST
@given(st.one_of(st.integers(-5, -1), st.just(1.0), st.just(None)))
def test_huffman_decode_bad_count(count):
    with pytest.raises(ValueError, match="count"):
        huffman.huffman_decode(b"\x00", {0: 1, 1: 1}, count)
    with pytest.raises(TypeError, match="payload"):
        huffman.huffman_decode("text", {0: 1, 1: 1}, 1)


@FAST
@given(st.one_of(st.integers(-3, 0), st.integers(9, 20), st.just(2.5), st.just("4")))
def test_share_weights_bad_bits(bits):
    with pytest.raises(ValueError, match="bits"):
        huffman.share_weights(models.LeNet300100(hidden=(8, 4)), bits=bits)


def test_group_labels_and_finetune_shared_bad_arguments():
    with pytest.raises(TypeError, match="model"):
        huffman.group_labels("mlp")
    m = models.LeNet300100(hidden=(8, 4))
    with pytest.raises(ValueError, match="labels"):
        huffman.finetune_shared(m, {"fc9": torch.zeros(1)}, [], epochs=1)
    with pytest.raises(TypeError, match="after_step"):
        huffman.finetune_shared(m, huffman.share_weights(m, 2), [], after_step=print)


@FAST
@given(st.one_of(st.integers(-2, 0), st.integers(17, 40), st.just(5.0)), st.sampled_from(["index_bits", "max_bits"]))
def test_save_compressed_bad_bits(bits, arg):
    with pytest.raises(ValueError, match=arg):
        huffman.save_compressed(models.LeNet300100(hidden=(8, 4)), "unused.dc", **{arg: bits})


def test_save_load_compressed_bad_paths(tmp_path):
    with pytest.raises(TypeError, match="path"):
        huffman.save_compressed(models.LeNet300100(hidden=(8, 4)), 3)
    with pytest.raises(TypeError, match="model"):
        huffman.save_compressed("model", tmp_path / "x.dc")
    with pytest.raises(TypeError, match="path"):
        huffman.load_compressed(None)
    with pytest.raises(FileNotFoundError):
        huffman.load_compressed(tmp_path / "absent.dc")


# --- pipeline ------------------------------------------------------------------------------------------------

bad_fraction = st.one_of(st.floats(allow_nan=True).filter(lambda v: not 0 <= v < 1), st.just("0.5"), st.just(True))
bad_epochs = st.one_of(st.integers(-10, -1), st.integers(1001, 5000), st.just(1.5), st.just("2"))


@FAST
@given(bad_fraction)
def test_prune_bad_sparsity(s):
    with pytest.raises(ValueError, match=r"prune: sparsity"):
        pipeline.Prune(sparsity=s)
    with pytest.raises(ValueError, match=r"step 1 \(prune\): sparsity"):
        pipeline.Recipe.from_dict({"steps": [{"prune": {"sparsity": s}}]})


@FAST
@given(bad_epochs, st.sampled_from([pipeline.FineTune, pipeline.Distill, pipeline.LoRA]))
def test_training_steps_bad_epochs(epochs, cls):
    with pytest.raises(ValueError, match=f"{cls.name}: epochs"):
        cls(epochs=epochs)


@FAST
@given(st.one_of(st.floats(max_value=0), st.floats(min_value=1.01), st.just(float("nan"))),
       st.sampled_from([pipeline.Prune, pipeline.FineTune, pipeline.Distill, pipeline.LoRA, pipeline.Quantize]))
def test_steps_bad_lr(lr, cls):
    with pytest.raises(ValueError, match=f"{cls.name}: lr"):
        cls(lr=lr)


@FAST
@given(st.text(max_size=10).filter(lambda s: s not in pipeline.STEPS))
def test_recipe_unknown_step(name):
    with pytest.raises(ValueError, match="step 1: unknown step"):
        pipeline.Recipe.from_dict({"steps": [{name: {}}]})


@FAST
@given(st.sampled_from(list(pipeline.STEPS)), st.text(alphabet="abcxyz_", min_size=1, max_size=8))
def test_recipe_unknown_argument(step, arg):
    if arg in {f for f in pipeline.STEPS[step].__dataclass_fields__}:
        return
    with pytest.raises(ValueError, match=rf"step 1 \({step}\): unknown argument"):
        pipeline.Recipe.from_dict({"steps": [{step: {arg: 1}}]})


@FAST
@given(st.lists(st.sampled_from([
    pipeline.Prune(sparsity=0.5), pipeline.Prune(sparsity={"fc1": 0.9}, scope="layer", epochs=1),
    pipeline.FineTune(epochs=2), pipeline.Distill(temperature=2.5), pipeline.LoRA(targets=["fc1", "fc2"], rank=3)]),
    min_size=0, max_size=4), st.sampled_from([[], [pipeline.Quantize(bits=4, method="kmeans")],
                                              [pipeline.Quantize(bits={"fc1": 6}, act_bits=8), pipeline.Export("dc")]]))
def test_recipe_text_round_trip(head, tail):
    if not head + tail:
        return
    recipe = pipeline.Recipe(head + tail)
    assert pipeline.Recipe.from_text(recipe.to_text()) == recipe
    assert pipeline.Recipe.from_dict(recipe.to_dict()) == recipe


@FAST
@given(st.one_of(st.none(), st.integers(), st.text(max_size=5)))
def test_recipe_bad_containers(bad):
    with pytest.raises((ValueError, TypeError), match="steps|text"):
        pipeline.Recipe(bad)
    with pytest.raises((ValueError, TypeError), match="recipe dict|steps"):
        pipeline.Recipe.from_dict(bad)


def test_quantize_export_bad_choices(tmp_path):
    with pytest.raises(ValueError, match="quantize: method"):
        pipeline.Quantize(method="fdr")
    with pytest.raises(ValueError, match="quantize: bits"):
        pipeline.Quantize(bits=9, method="kmeans")
    with pytest.raises(ValueError, match="quantize: per_channel"):
        pipeline.Quantize(per_channel="yes")
    with pytest.raises(ValueError, match="export: format"):
        pipeline.Export(format="tflite")
    with pytest.raises(ValueError, match="lora: targets"):
        pipeline.LoRA(targets="fc1")
    with pytest.raises(ValueError, match="folder"):
        pipeline.file_size(models.LeNet300100(hidden=(4, 4)), tmp_path / "absent")
    with pytest.raises(TypeError, match="model"):
        pipeline.file_size("m", tmp_path)
    with pytest.raises(TypeError, match="path"):
        pipeline.Recipe.load(1)


# --- search --------------------------------------------------------------------------------------------------

@FAST
@given(st.one_of(st.floats(max_value=0), st.just(float("nan")), st.just(float("inf")), st.just("10"), st.just(True)))
def test_search_bad_budget(budget):
    knobs = {"a": [0, 1]}
    for f in (search.greedy_search, search.uniform_policy):
        with pytest.raises(ValueError, match="budget"):
            f(knobs, lambda p: p, lambda m: 0.0, lambda p, m: 1.0, budget)


@FAST
@given(st.one_of(st.none(), st.just({}), st.just({"a": []}), st.just({1: [0]}), st.just([0, 1])))
def test_search_bad_knobs(knobs):
    for f in (search.greedy_search, search.uniform_policy):
        with pytest.raises(ValueError, match="knobs"):
            f(knobs, lambda p: p, lambda m: 0.0, lambda p, m: 1.0, 1.0)


@FAST
@given(st.sampled_from(["build", "evaluate", "cost"]))
def test_search_bad_callables(which):
    args = {"build": lambda p: p, "evaluate": lambda m: 0.0, "cost": lambda p, m: 1.0, which: "nope"}
    with pytest.raises(TypeError, match=which):
        search.greedy_search({"a": [0]}, args["build"], args["evaluate"], args["cost"], 1.0)


@FAST
@given(st.floats(0, 0.99), st.integers(1, 8), st.floats(0, 0.99), st.integers(1, 8))
def test_policy_size_bytes_reference(s1, b1, s2, b2):
    m = models.LeNet300100(hidden=(10, 6))
    policy = {"fc1.sparsity": s1, "fc1.bits": b1, "fc2.sparsity": s2, "fc2.bits": b2}
    ref = 0
    for (s, b), n in (((s1, b1), 7840), ((s2, b2), 60)):
        kept = n - round(s * n)
        ref += kept * (b + (5 if s > 0 else 0)) + 32 * 2**b
    ref += 60 * 32 + 32 * (10 + 6 + 10)  # fc3 in fp32, biases
    assert math.isclose(search.policy_size_bytes(m, policy), ref / 8)


@FAST
@given(st.sampled_from(["fc9.bits", "fc1.width", "fc1", "bits"]))
def test_size_policy_bad_knob(knob):
    m = models.LeNet300100(hidden=(10, 6))
    with pytest.raises(ValueError, match="policy|layers"):
        search.policy_size_bytes(m, {knob: 4})
    with pytest.raises(ValueError, match="policy|layers"):
        search.apply_size_policy(m, {knob: 4})


@FAST
@given(st.one_of(st.just(()), st.just((0.5, 1.2)), st.just((0, 0.5)), st.just("1.0")))
def test_width_and_size_knobs_bad_options(widths):
    with pytest.raises(ValueError, match="widths"):
        search.width_knobs(models.LeNet300100(hidden=(10, 6)), widths=widths)
    with pytest.raises(ValueError, match="sparsities"):
        search.size_knobs(models.LeNet300100(hidden=(10, 6)), sparsities=(0.5, 1.5))


@FAST
@given(st.one_of(st.floats(max_value=0), st.floats(min_value=1.001), st.just("0.5")))
def test_slice_hidden_bad_width(w):
    with pytest.raises(ValueError, match="fc1.width"):
        search.slice_hidden(models.LeNet300100(hidden=(10, 6)), {"fc1.width": w})


def test_latency_cost_measures():
    m = models.LeNet300100(hidden=(10, 6))
    cost = search.latency_cost(torch.zeros(4, 1, 28, 28), threads=1, repeats=2)
    assert cost({}, m) > 0
    with pytest.raises(ValueError, match="repeats"):
        search.latency_cost(torch.zeros(4, 1, 28, 28), repeats=0)({}, m)


# --- pareto, report variants, run ----------------------------------------------------------------------------

@FAST
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 100)), min_size=1, max_size=25))
def test_pareto_front_reference(points):
    acc, cost = [p[0] for p in points], [p[1] for p in points]
    front = set(pareto.pareto_front(acc, cost))
    for i in range(len(points)):
        dominated = any(acc[j] >= acc[i] and cost[j] <= cost[i] and (acc[j] > acc[i] or cost[j] < cost[i])
                        for j in range(len(points)))
        assert (i in front) == (not dominated)


@FAST
@given(st.one_of(st.none(), st.just("0.5"), st.just([0.5, "a"]), st.just([True])))
def test_pareto_front_bad_values(bad):
    with pytest.raises(TypeError, match="accuracy"):
        pareto.pareto_front(bad, [1.0])


@FAST
@given(bad=st.one_of(st.none(), st.just([{"name": "a"}]), st.just("variants")))
def test_pareto_views_bad_variants(bad, tmp_path_factory):
    with pytest.raises(TypeError, match="variants"):
        pareto.plot(bad)
    with pytest.raises(TypeError, match="variants"):
        pareto.explorer(bad)
    with pytest.raises(TypeError, match="variants"):
        pareto.export_html(bad, tmp_path_factory.mktemp("p") / "p.html")


def test_export_html_and_course_variants_bad_paths(tmp_path):
    with pytest.raises(TypeError, match="path"):
        pareto.export_html([], 5)
    with pytest.raises(IsADirectoryError):
        pareto.export_html([], tmp_path)
    with pytest.raises(TypeError, match="path"):
        pareto.course_variants(5)


GOOD = dict(name="v", technique="pruning", accuracy=0.8, size_bytes=10, macs=5, latency_ms=1.0, batch=1, threads=1)
BAD = {"name": [None, 3, "  "], "technique": ["fdr", None], "accuracy": [-0.1, 1.5, float("nan"), "0.8", True],
       "size_bytes": [0, -1, 1.5, "10"], "macs": [-1, 2.5], "latency_ms": [-1.0, float("inf"), None],
       "batch": [0, 1.5], "threads": [0, "2"]}


@FAST
@given(kv=st.sampled_from([(k, v) for k, vs in BAD.items() for v in vs]))
def test_record_variant_bad_arguments(kv, monkeypatch):
    arg, value = kv
    monkeypatch.delenv(report.VARIANTS_ENV, raising=False)
    with pytest.raises((ValueError, TypeError), match=arg):
        report.record_variant(**{**GOOD, arg: value}, quiet=True)
    with pytest.raises(TypeError, match="recipe"):
        report.record_variant(**GOOD, recipe=None, quiet=True)


def test_read_variants_and_write_variants_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="path"):
        report.read_variants(None)
    with pytest.raises(TypeError, match="ran"):
        run.write_variants(tmp_path, tmp_path / "v.jsonl", "02")
    with pytest.raises(TypeError, match="variants_path"):
        run.run_notebook(run.find_notebooks(["00"])[0], Path("unused"), {}, Path("unused.jsonl"), 10, 5)
