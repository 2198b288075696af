"""Property tests for lwkit.prune, lwkit.channels and lwkit.sparse.

Bad arguments raise ValueError/TypeError naming the argument; good arguments agree with torch.nn.utils.prune
(l1_unstructured, random_unstructured's count, global_unstructured, ln_structured) and with hand computations;
sparse formats round-trip bit for bit; interrupted in-place functions leave the model bit-identical.
"""

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune as tprune

from lwkit import channels, models, prune, sparse

COVERED = {f"lwkit.prune.{n}" for n in (
    "n_to_prune", "magnitude_mask", "random_mask", "global_threshold", "global_magnitude_masks", "layer_masks",
    "apply_masks", "cubic_sparsity", "iterative_levels", "fine_tune", "iterative_prune", "gradual_prune",
    "sensitivity_scan", "prune")} | {f"lwkit.channels.{n}" for n in (
    "channel_scores", "keep_channels", "prune_channels")} | {f"lwkit.sparse.{n}" for n in (
    "prunable_layers", "sparsity", "sparsity_report", "SparseLinear", "to_sparse_csr", "encode_csr", "decode_csr",
    "encode_bitmask", "decode_bitmask", "pack_bits", "unpack_bits", "encode_relative", "decode_relative",
    "save_sparse", "load_sparse", "file_sizes")}
EXEMPT = {
    "lwkit.prune.METHODS": "a constant tuple of method names",
    "lwkit.sparse.PRUNABLE": "a constant tuple of layer classes",
    "lwkit.sparse.FORMATS": "a constant tuple of format names",
    "lwkit.sparse.ENCODERS": "a constant dict of (encoder, decoder) pairs, tested through them",
    "lwkit.sparse.SparsityReport": "a result container built by sparsity_report (tested there), not user input",
}

FAST = settings(max_examples=25, deadline=None)
BAD_SPARSITY = st.one_of(
    st.floats(max_value=-1e-9, allow_nan=False), st.floats(min_value=1.0), st.just(float("nan")),
    st.just(float("-inf")), st.booleans(), st.text(max_size=3), st.none(), st.lists(st.floats(0, 0.5), max_size=2),
    st.integers(min_value=1), st.integers(max_value=-1))
GOOD_SPARSITY = st.floats(0.0, 0.999, allow_nan=False)
NOT_A_TENSOR = st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=3),
                         st.lists(st.floats(-1, 1), min_size=1, max_size=4), st.just(np.ones(3, np.float32)))
NOT_A_MODEL = st.one_of(st.none(), st.integers(), st.text(max_size=3), st.just(torch.ones(3)),
                        st.just([nn.Linear(2, 2)]), st.just({"fc1": nn.Linear(2, 2)}))
SHAPES = st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple)


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return models.LeNet300100(hidden=(12, 8), in_features=16)


def tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return models.SmallCNN(channels=(4, 6), head_pool=2).eval()


def raises_naming(fn, name, exc=(ValueError, TypeError)):
    with pytest.raises(exc) as info:
        fn()
    assert name in str(info.value), f"{name!r} not named in: {info.value}"


def weights(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def state_bits(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_bits(a, model):
    return all(torch.equal(a[k].view(-1).view(torch.uint8) if a[k].dim() else a[k],
                           v.view(-1).view(torch.uint8) if v.dim() else v) for k, v in model.state_dict().items())


# --- bad sparsity: every function that takes one names it ---------------------------------------------------


@FAST
@given(bad=BAD_SPARSITY)
def test_bad_sparsity_is_named_everywhere(bad):
    w, mlp, cnn = weights((4, 5), 0), tiny_mlp(), tiny_cnn()
    loader = [(torch.randn(4, 16), torch.randint(0, 10, (4,)))]
    raises_naming(lambda: prune.n_to_prune(10, bad), "sparsity")
    raises_naming(lambda: prune.magnitude_mask(w, bad), "sparsity")
    raises_naming(lambda: prune.random_mask(w, bad), "sparsity")
    raises_naming(lambda: prune.global_threshold({"a": w}, bad), "sparsity")
    raises_naming(lambda: prune.global_magnitude_masks({"a": w}, bad), "sparsity")
    raises_naming(lambda: prune.layer_masks(mlp, bad), "sparsity")
    raises_naming(lambda: prune.layer_masks(mlp, {"fc2": bad}), "sparsity['fc2']")
    raises_naming(lambda: prune.prune(mlp, "magnitude", bad), "sparsity")
    raises_naming(lambda: prune.prune(cnn, "l1_channel", bad), "sparsity")
    raises_naming(lambda: channels.keep_channels(torch.rand(6), bad), "sparsity")
    raises_naming(lambda: channels.prune_channels(cnn, bad), "sparsity")
    raises_naming(lambda: channels.prune_channels(cnn, {"features.0.0": bad}), "sparsity['features.0.0']")
    raises_naming(lambda: prune.cubic_sparsity(3, 10, bad), "final_sparsity")
    raises_naming(lambda: prune.cubic_sparsity(3, 10, 0.5, bad), "initial_sparsity")
    raises_naming(lambda: prune.iterative_levels(bad, 3), "final_sparsity")
    raises_naming(lambda: prune.sensitivity_scan(mlp, lambda m: 0.0, [0.5, bad]), "sparsities[1]")
    before = state_bits(mlp)
    raises_naming(lambda: prune.iterative_prune(mlp, loader, final_sparsity=bad, progress=False), "final_sparsity")
    raises_naming(lambda: prune.gradual_prune(mlp, loader, final_sparsity=bad, progress=False), "final_sparsity")
    assert same_bits(before, mlp)


# --- bad tensors, models, names, ints --------------------------------------------------------------------------


@FAST
@given(bad=NOT_A_TENSOR)
def test_non_tensors_are_type_errors_naming_the_argument(bad):
    raises_naming(lambda: prune.magnitude_mask(bad, 0.5), "tensor", TypeError)
    raises_naming(lambda: prune.random_mask(bad, 0.5), "tensor", TypeError)
    raises_naming(lambda: prune.global_threshold({"a": bad}, 0.5), "tensors['a']", TypeError)
    raises_naming(lambda: prune.global_magnitude_masks({"a": bad}, 0.5), "tensors['a']", TypeError)
    raises_naming(lambda: prune.global_magnitude_masks(bad, 0.5), "tensors", TypeError)
    raises_naming(lambda: channels.channel_scores(bad), "weight", TypeError)
    raises_naming(lambda: channels.keep_channels(bad, 0.5), "scores", TypeError)
    for encode in (sparse.encode_csr, sparse.encode_bitmask, sparse.encode_relative):
        raises_naming(lambda f=encode: f(bad), "weight", TypeError)
    for decode in (sparse.decode_csr, sparse.decode_bitmask, sparse.decode_relative):
        raises_naming(lambda f=decode: f(bad), "code")
    raises_naming(lambda: sparse.sparsity(bad), "model_or_tensor", TypeError)
    raises_naming(lambda: sparse.pack_bits(bad, 4), "codes", TypeError)
    raises_naming(lambda: sparse.unpack_bits(bad, 4, 1), "packed", TypeError)


@FAST
@given(shape=st.lists(st.integers(0, 4), min_size=1, max_size=3).filter(lambda s: 0 in s), bad=st.sampled_from(
    [float("nan"), float("inf"), float("-inf")]), seed=st.integers(0, 99))
def test_empty_and_non_finite_tensors(shape, bad, seed):
    empty = torch.empty(shape)
    raises_naming(lambda: prune.magnitude_mask(empty, 0.5), "tensor", ValueError)
    raises_naming(lambda: prune.random_mask(empty, 0.5), "tensor", ValueError)
    raises_naming(lambda: sparse.sparsity(empty), "model_or_tensor", ValueError)
    raises_naming(lambda: sparse.encode_csr(empty), "weight", ValueError)
    w = weights((3, 4), seed)
    w[seed % 3, seed % 4] = bad
    raises_naming(lambda: prune.magnitude_mask(w, 0.5), "NaN/inf", ValueError)
    raises_naming(lambda: prune.global_magnitude_masks({"a": w}, 0.5), "tensors['a']", ValueError)
    raises_naming(lambda: prune.global_threshold({"a": w}, 0.5), "tensors['a']", ValueError)
    raises_naming(lambda: channels.channel_scores(w), "weight", ValueError)
    raises_naming(lambda: channels.keep_channels(w[seed % 3], 0.5), "scores", ValueError)
    assert prune.random_mask(w, 0.5).sum() == 12 - round(0.5 * 12)  # random never reads the values


@FAST
@given(bad=NOT_A_MODEL)
def test_non_models_are_type_errors_naming_model(bad):
    loader = [(torch.randn(4, 16), torch.randint(0, 10, (4,)))]
    for call in (lambda: prune.layer_masks(bad, 0.5), lambda: prune.apply_masks(bad, {}),
                 lambda: prune.fine_tune(bad, {}, loader), lambda: prune.prune(bad),
                 lambda: prune.iterative_prune(bad, loader, final_sparsity=0.5),
                 lambda: prune.gradual_prune(bad, loader, final_sparsity=0.5),
                 lambda: prune.sensitivity_scan(bad, lambda m: 0.0, [0.5]),
                 lambda: channels.prune_channels(bad, 0.5), lambda: sparse.prunable_layers(bad),
                 lambda: sparse.sparsity_report(bad), lambda: sparse.to_sparse_csr(bad)):
        raises_naming(call, "model", TypeError)
    if not isinstance(bad, torch.Tensor):
        raises_naming(lambda: sparse.sparsity(bad), "model_or_tensor", TypeError)
    if not isinstance(bad, dict):
        raises_naming(lambda: sparse.save_sparse(bad, "/nonexistent/x.pt"), "model", TypeError)
    raises_naming(lambda: sparse.SparseLinear(bad), "linear", TypeError)


@FAST
@given(layers=st.one_of(st.text(min_size=1, max_size=4).filter(lambda s: s not in ("fc1", "fc2", "fc3")),
                        st.integers(), st.lists(st.integers(), min_size=1, max_size=2), st.just([]),
                        st.lists(st.sampled_from(["fc1", "fc9", "relu"]), min_size=1).filter(lambda x: "fc1" != x[-1])))
def test_bad_layer_names_are_named_and_never_iterated_as_characters(layers):
    mlp = tiny_mlp()
    raises_naming(lambda: prune.layer_masks(mlp, 0.5, layers=layers), "layers")
    raises_naming(lambda: prune.sensitivity_scan(mlp, lambda m: 0.0, [0.5], layers=layers), "layers")
    raises_naming(lambda: prune.prune(mlp, "magnitude", 0.5, layers=layers), "layers")
    if isinstance(layers, str):
        raises_naming(lambda: prune.layer_masks(mlp, {layers: 0.5}), "prunable: ['fc1', 'fc2', 'fc3']")


@FAST
@given(bad=st.one_of(st.integers(max_value=0), st.booleans(), st.floats(), st.text(max_size=2), st.none()))
def test_bad_counts_are_named(bad):
    mlp, loader = tiny_mlp(), [(torch.randn(4, 16), torch.randint(0, 10, (4,)))]
    before = state_bits(mlp)
    raises_naming(lambda: prune.cubic_sparsity(1, bad, 0.5), "total_steps")
    raises_naming(lambda: prune.iterative_levels(0.5, bad), "rounds")
    raises_naming(lambda: prune.iterative_prune(mlp, loader, final_sparsity=0.5, rounds=bad), "rounds")
    raises_naming(lambda: prune.iterative_prune(mlp, loader, final_sparsity=0.5, epochs_per_round=bad),
                  "epochs_per_round")
    raises_naming(lambda: prune.gradual_prune(mlp, loader, final_sparsity=0.5, prune_every=bad), "prune_every")
    raises_naming(lambda: prune.gradual_prune(mlp, loader, final_sparsity=0.5, epochs=bad), "epochs")
    if not (isinstance(bad, float) and 0 < bad <= 1):
        raises_naming(lambda: prune.gradual_prune(mlp, loader, final_sparsity=0.5, prune_fraction=bad),
                      "prune_fraction")
    raises_naming(lambda: prune.fine_tune(mlp, prune.layer_masks(mlp, 0.5), loader, epochs=bad), "epochs")
    raises_naming(lambda: sparse.encode_relative(torch.ones(3), index_bits=bad), "index_bits")
    raises_naming(lambda: sparse.save_sparse(mlp, "/nonexistent/x.pt", index_bits=bad), "index_bits")
    raises_naming(lambda: sparse.pack_bits(np.zeros(3, np.int64), bad), "bits")
    raises_naming(lambda: sparse.unpack_bits(np.zeros(3, np.uint8), bad, 1), "bits")
    if not (isinstance(bad, int) and bad == 0):
        raises_naming(lambda: sparse.unpack_bits(np.zeros(3, np.uint8), 4, bad), "count")
        raises_naming(lambda: prune.n_to_prune(bad, 0.5), "numel")
    if not (isinstance(bad, int) and not isinstance(bad, bool) and bad == 0):
        raises_naming(lambda: prune.cubic_sparsity(bad, 10, 0.5) if bad != 0 else prune.cubic_sparsity(-1, 10, .5),
                      "step")
    assert same_bits(before, mlp)


@FAST
@given(text=st.text(max_size=4), obj=NOT_A_TENSOR)
def test_bad_strings_and_files_are_named(tmp_path_factory, text, obj):
    mlp, folder = tiny_mlp(), tmp_path_factory.mktemp("props")
    assume(text not in prune.METHODS)
    raises_naming(lambda: prune.prune(mlp, text), "method")
    if text not in ("layer", "global"):
        raises_naming(lambda: prune.layer_masks(mlp, 0.5, scope=text), "scope")
    if text not in ("magnitude", "random"):
        raises_naming(lambda: prune.layer_masks(mlp, 0.5, criterion=text), "criterion")
    if text not in ("l1", "l2"):
        raises_naming(lambda: channels.channel_scores(torch.ones(2, 2), text), "norm")
        raises_naming(lambda: channels.prune_channels(tiny_cnn(), 0.5, norm=text), "norm")
    if text not in sparse.FORMATS:
        raises_naming(lambda: sparse.save_sparse(mlp, folder / "x.pt", fmt=text), "fmt")
    if not isinstance(obj, str):
        raises_naming(lambda: sparse.save_sparse(mlp, obj), "path", TypeError)
        raises_naming(lambda: sparse.load_sparse(obj), "path", TypeError)
        raises_naming(lambda: sparse.file_sizes(mlp, obj), "folder", TypeError)
    raises_naming(lambda: sparse.file_sizes(mlp, folder, name=f"a/{text}"), "name", ValueError)
    if obj is not None:
        raises_naming(lambda: prune.random_mask(torch.ones(3), 0.5, generator=obj), "generator", TypeError)
    raises_naming(lambda: prune.sensitivity_scan(mlp, obj, [0.5]), "evaluate", TypeError)
    raises_naming(lambda: prune.sensitivity_scan(mlp, lambda m: 0.0, text), "sparsities", TypeError)


# --- masks: bool only, right shape, known layer; checked before any weight changes ---------------------------


@FAST
@given(dtype=st.sampled_from([torch.float32, torch.float64, torch.int64, torch.uint8, torch.float16]),
       value=st.sampled_from([0, 1, 2, 0.5]), shape_ok=st.booleans(), seed=st.integers(0, 99))
def test_apply_masks_rejects_non_bool_masks_before_touching_weights(dtype, value, shape_ok, seed):
    mlp = tiny_mlp(seed)
    before = state_bits(mlp)
    shape = (8, 12) if shape_ok else (12, 8)
    masks = {"fc1": torch.ones(12, 16, dtype=torch.bool), "fc2": torch.full(shape, value).to(dtype)}
    raises_naming(lambda: prune.apply_masks(mlp, masks), "masks['fc2']", TypeError)
    masks["fc2"] = torch.ones(shape, dtype=torch.bool)
    if not shape_ok:
        raises_naming(lambda: prune.apply_masks(mlp, masks), "masks['fc2']", ValueError)
    raises_naming(lambda: prune.apply_masks(mlp, {"fc1": masks["fc1"], "fc7": masks["fc1"]}), "masks['fc7']",
                  ValueError)
    raises_naming(lambda: prune.fine_tune(mlp, {"fc1": masks["fc1"].float()}, []), "masks['fc1']", TypeError)
    assert same_bits(before, mlp)


# --- good arguments agree with torch.nn.utils.prune and hand computations -------------------------------------


@FAST
@given(shape=SHAPES, amount=GOOD_SPARSITY, seed=st.integers(0, 10_000))
def test_magnitude_mask_matches_l1_unstructured_or_refuses_to_empty(shape, amount, seed):
    layer = nn.Linear(1, 1)
    layer.weight = nn.Parameter(weights(shape, seed))
    n, k = layer.weight.numel(), round(amount * layer.weight.numel())
    assert prune.n_to_prune(n, amount) == k
    tprune.l1_unstructured(layer, "weight", amount=amount)
    if k == n:
        raises_naming(lambda: prune.magnitude_mask(layer.weight_orig, amount), f"sparsity {amount}", ValueError)
        raises_naming(lambda: prune.random_mask(layer.weight_orig, amount), f"all {n} weights", ValueError)
        return
    assert torch.equal(prune.magnitude_mask(layer.weight_orig, amount), layer.weight_mask.bool())
    ref = nn.Linear(1, 1)
    ref.weight = nn.Parameter(weights(shape, seed))
    tprune.random_unstructured(ref, "weight", amount=amount)
    rnd = prune.random_mask(ref.weight_orig, amount, generator=torch.Generator().manual_seed(seed))
    assert rnd.dtype == torch.bool and int((~rnd).sum()) == int((ref.weight_mask == 0).sum()) == k


@FAST
@given(amount=st.floats(0.0, 0.9), seed=st.integers(0, 10_000))
def test_global_masks_match_global_unstructured(amount, seed):
    mlp = tiny_mlp(seed)
    ref = copy.deepcopy(mlp)
    tprune.global_unstructured([(ref.fc1, "weight"), (ref.fc2, "weight"), (ref.fc3, "weight")],
                               pruning_method=tprune.L1Unstructured, amount=amount)
    empties = any(not getattr(ref, n).weight_mask.any() for n in ("fc1", "fc2", "fc3"))
    if empties:
        raises_naming(lambda: prune.layer_masks(mlp, amount, scope="global"), "would remove all", ValueError)
        return
    masks = prune.layer_masks(mlp, amount, scope="global")
    for name in ("fc1", "fc2", "fc3"):
        assert torch.equal(masks[name], getattr(ref, name).weight_mask.bool()), name
    pooled = torch.cat([getattr(mlp, n).weight.detach().abs().flatten() for n in ("fc1", "fc2", "fc3")])
    k = round(amount * pooled.numel())
    expected = 0.0 if k == 0 else pooled.sort().values[k - 1].item()  # hand: the k-th smallest |w|
    assert prune.global_threshold({n: getattr(mlp, n).weight for n in ("fc1", "fc2", "fc3")}, amount) == expected


@FAST
@given(out=st.integers(1, 10), amount=GOOD_SPARSITY, n=st.sampled_from([1, 2]), seed=st.integers(0, 10_000))
def test_keep_channels_matches_ln_structured(out, amount, n, seed):
    conv = nn.Conv2d(3, out, 2)
    w = torch.randint(-3, 4, (out, 3, 2, 2), generator=torch.Generator().manual_seed(seed)).float()  # exact norms
    conv.weight = nn.Parameter(w.clone())
    scores = channels.channel_scores(w, f"l{n}")
    assert torch.allclose(scores, w.flatten(1).abs().pow(n).sum(1).pow(1 / n))  # hand: the filter's Ln norm
    if round(amount * out) == out:
        raises_naming(lambda: channels.keep_channels(scores, amount), f"all {out} channels", ValueError)
        return
    tprune.ln_structured(conv, "weight", amount=amount, n=n, dim=0)
    assert torch.equal(channels.keep_channels(scores, amount), conv.weight_mask.flatten(1).all(1).nonzero().flatten())


@FAST
@given(s=st.tuples(GOOD_SPARSITY, GOOD_SPARSITY), seed=st.integers(0, 99),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_prune_channels_slices_what_keep_channels_keeps(s, seed, dtype):
    cnn = tiny_cnn(seed).to(dtype)
    before = state_bits(cnn)
    if round(s[0] * 4) == 4 or round(s[1] * 6) == 6:
        raises_naming(lambda: channels.prune_channels(cnn, {"features.0.0": s[0], "features.2.0": s[1]}),
                      "would remove all", ValueError)
        return
    small = channels.prune_channels(cnn, {"features.0.0": s[0], "features.2.0": s[1]})
    keep0 = channels.keep_channels(channels.channel_scores(cnn.features[0][0].weight), s[0])
    keep1 = channels.keep_channels(channels.channel_scores(cnn.features[2][0].weight), s[1])
    assert torch.equal(small[0].weight, cnn.features[0][0].weight[keep0])
    assert torch.equal(small[4].weight, cnn.features[2][0].weight[keep1][:, keep0])
    assert {p.dtype for p in small.parameters()} == {dtype} and same_bits(before, cnn)


@FAST
@given(step=st.integers(0, 300), total=st.integers(1, 200), final=GOOD_SPARSITY, initial=GOOD_SPARSITY,
       rounds=st.integers(1, 8))
def test_schedules_match_their_formulas(step, total, final, initial, rounds):
    t = min(step, total) / total
    assert math.isclose(prune.cubic_sparsity(step, total, final, initial),
                        final + (initial - final) * (1 - t) ** 3, abs_tol=1e-12)
    levels = prune.iterative_levels(final, rounds)
    assert len(levels) == rounds and math.isclose(levels[-1], final, abs_tol=1e-9)
    keep = [1 - v for v in [0.0, *levels]]
    assert all(math.isclose(keep[i + 1] / keep[i], keep[1], rel_tol=1e-9) for i in range(rounds))  # same share


@FAST
@given(amount=st.floats(0.0, 0.9), method=st.sampled_from(["magnitude", "global", "random"]), seed=st.integers(0, 99))
def test_prune_equals_layer_masks_then_apply_masks(amount, method, seed):
    mlp = tiny_mlp(seed)
    before = state_bits(mlp)
    scope, criterion = ("global" if method == "global" else "layer"), ("random" if method == "random" else "magnitude")
    try:
        masks = prune.layer_masks(mlp, amount, scope=scope, criterion=criterion,
                                  generator=torch.Generator().manual_seed(seed))
    except ValueError as err:
        assert "would remove all" in str(err)
        return
    pruned = prune.prune(mlp, method, amount, generator=torch.Generator().manual_seed(seed))
    for name, mask in masks.items():
        w = getattr(mlp, name).weight
        assert torch.equal(getattr(pruned, name).weight, torch.where(mask, w, torch.zeros_like(w)))
        assert mask.any()
    report = sparse.sparsity_report(pruned)
    assert [r["zeros"] for r in report.rows] == [int((getattr(pruned, n).weight == 0).sum()) for n in masks]
    assert same_bits(before, mlp)  # prune works on a copy


# --- interrupts leave the model bit-identical -------------------------------------------------------------------


@FAST
@given(k=st.integers(1, 9), sparsities=st.lists(st.floats(0.0, 0.9), min_size=1, max_size=3),
       exc=st.sampled_from([KeyboardInterrupt, RuntimeError, ValueError]))
def test_sensitivity_scan_restores_on_any_exception(k, sparsities, exc):
    mlp = tiny_mlp(k)
    before, calls = state_bits(mlp), []

    def evaluate(m):
        calls.append(1)
        if len(calls) == k:
            raise exc("stop")
        return prune.sparsity(m)
    if k > 3 * len(sparsities):
        result = prune.sensitivity_scan(mlp, evaluate, sparsities)
        assert len(result) == 3 and all(len(v) == len(sparsities) for v in result.values())
    else:
        with pytest.raises(exc):
            prune.sensitivity_scan(mlp, evaluate, sparsities)
    assert same_bits(before, mlp)


# --- sparse formats round-trip exactly ----------------------------------------------------------------------------


@FAST
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple), density=st.floats(0.0, 1.0),
       bits=st.integers(1, 16), seed=st.integers(0, 10_000),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
def test_formats_round_trip_bit_for_bit(shape, density, bits, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < density)).to(dtype)
    w = torch.where(w == 0, torch.zeros_like(w), w)  # -0.0 is stored as a zero (documented)
    for encode, decode in ((sparse.encode_csr, sparse.decode_csr), (sparse.encode_bitmask, sparse.decode_bitmask),
                           (lambda t: sparse.encode_relative(t, bits), sparse.decode_relative)):
        back = decode(encode(w))
        assert back.dtype == dtype and back.shape == w.shape
        assert torch.equal(back.view(-1).view(torch.uint8), w.view(-1).view(torch.uint8))
    codes = torch.randint(0, 2**bits, (int(np.prod(shape)),), generator=g).numpy()
    assert np.array_equal(sparse.unpack_bits(sparse.pack_bits(codes, bits), bits, len(codes)), codes)


@settings(max_examples=10, deadline=None)
@given(amount=st.floats(0.0, 0.95), fmt=st.sampled_from(sparse.FORMATS), bits=st.integers(1, 8),
       seed=st.integers(0, 99))
def test_files_round_trip_and_csr_matches_dense(tmp_path_factory, amount, fmt, bits, seed):
    folder = tmp_path_factory.mktemp("files")
    try:
        mlp = prune.prune(tiny_mlp(seed), "global", amount)
    except ValueError as err:  # the global cut would empty the 80-weight fc3: refused, as tested above
        assert "would remove all" in str(err)
        return
    size = sparse.save_sparse(mlp, folder / "m.pt", fmt=fmt, index_bits=bits)
    assert size == (folder / "m.pt").stat().st_size
    state = sparse.load_sparse(folder / "m.pt")
    assert all(torch.equal(state[k], v) and state[k].dtype == v.dtype for k, v in mlp.state_dict().items())
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.allclose(sparse.to_sparse_csr(mlp)(x), mlp(x), atol=1e-5)
    assert set(sparse.file_sizes(mlp, folder, name="f", index_bits=bits)) == set(sparse.FORMATS)
    assert sparse.sparsity(mlp) == pytest.approx(sum(r["zeros"] for r in sparse.sparsity_report(mlp).rows) / sum(
        m.weight.numel() for m in sparse.prunable_layers(mlp).values()))
