"""Property tests for the pruning canon: lwkit.nm, lwkit.saliency, lwkit.lottery and channels.recalibrate_bn.

Bad arguments raise ValueError/TypeError naming the argument, before anything changes; good arguments give
masks with the promised counts.
"""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lwkit import channels, lottery, models, nm, paired, prune, saliency

COVERED = {"lwkit.nm.nm_mask", "lwkit.nm.nm_masks", "lwkit.nm.is_nm_sparse", "lwkit.saliency.input_norms",
           "lwkit.saliency.wanda_scores", "lwkit.saliency.row_masks", "lwkit.saliency.wanda_masks",
           "lwkit.lottery.rewind", "lwkit.lottery.ticket_sparsities", "lwkit.channels.recalibrate_bn",
           "lwkit.paired.accuracy_se", "lwkit.paired.paired_accuracy"}
EXEMPT = {}

FAST = settings(max_examples=25, deadline=None)
NOT_INT = st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=2))
NOT_A_TENSOR = st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=3), st.lists(st.floats(-1, 1)))
BAD_SPARSITY = st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0), st.just(float("nan")), st.none(),
                         st.booleans(), st.text(max_size=2))


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return models.LeNet300100(hidden=(12, 8), in_features=16)


def raises_naming(fn, name, exc=(ValueError, TypeError)):
    with pytest.raises(exc) as info:
        fn()
    assert name in str(info.value), f"{name!r} not named in: {info.value}"


@FAST
@given(n=st.integers(1, 4), groups=st.integers(1, 4), rows=st.integers(1, 4), seed=st.integers(0, 99))
def test_nm_mask_keeps_n_per_group(n, groups, rows, seed):
    w = torch.randn(rows, 4 * groups, generator=torch.Generator().manual_seed(seed))
    mask = nm.nm_mask(w, n, 4)
    assert mask.reshape(rows, groups, 4).sum(-1).eq(n).all() and nm.is_nm_sparse(w * mask, n, 4)


@FAST
@given(bad=NOT_INT)
def test_nm_bad_n_or_m(bad):
    w = torch.randn(2, 8)
    raises_naming(lambda: nm.nm_mask(w, bad, 4), "n")
    raises_naming(lambda: nm.nm_mask(w, 2, bad), "m")
    raises_naming(lambda: nm.is_nm_sparse(w, bad, 4), "n")
    raises_naming(lambda: nm.nm_masks(tiny_mlp(), 2, bad), "m")


@FAST
@given(n=st.integers(-3, 9), m=st.integers(-3, 8))
def test_nm_out_of_range(n, m):
    if 1 <= n <= m and 8 % m == 0:
        return
    w = torch.randn(2, 8)
    raises_naming(lambda: nm.nm_mask(w, n, m), "m")


@FAST
@given(bad=NOT_A_TENSOR)
def test_tensors_checked(bad):
    raises_naming(lambda: nm.nm_mask(bad), "tensor")
    raises_naming(lambda: nm.is_nm_sparse(bad), "tensor")
    raises_naming(lambda: saliency.wanda_scores(bad, torch.ones(3)), "weight")
    raises_naming(lambda: saliency.wanda_scores(torch.ones(2, 3), bad), "input_norm")
    raises_naming(lambda: saliency.row_masks(bad, 0.5), "scores")


def test_shapes_checked():
    raises_naming(lambda: nm.nm_mask(torch.randn(2, 6), 2, 4), "m=4")
    raises_naming(lambda: nm.nm_mask(torch.randn(8), 2, 4), "tensor")
    raises_naming(lambda: saliency.wanda_scores(torch.ones(2, 3), torch.ones(4)), "input_norm")
    raises_naming(lambda: saliency.wanda_scores(torch.ones(2, 3), -torch.ones(3)), "input_norm")
    raises_naming(lambda: saliency.row_masks(torch.ones(3), 0.5), "scores")
    raises_naming(lambda: nm.nm_masks(tiny_mlp(), 2, 4, layers=["nope"]), "layers")
    raises_naming(lambda: nm.nm_masks(nn.Sequential(nn.Linear(3, 2)), 2, 4), "m=4")


@FAST
@given(bad=BAD_SPARSITY)
def test_bad_sparsity(bad):
    net = tiny_mlp()
    norms = {"fc1": torch.ones(16)}
    raises_naming(lambda: saliency.row_masks(torch.ones(2, 4), bad), "sparsity")
    raises_naming(lambda: saliency.wanda_masks(net, norms, bad), "sparsity")


@FAST
@given(s=st.floats(0, 0.9), seed=st.integers(0, 50))
def test_row_masks_count(s, seed):
    scores = torch.rand(3, 10, generator=torch.Generator().manual_seed(seed))
    mask = saliency.row_masks(scores, s)
    assert mask.sum(1).eq(10 - prune.n_to_prune(10, s)).all()


def test_wanda_masks_and_input_norms_bad_arguments():
    net = tiny_mlp()
    raises_naming(lambda: saliency.wanda_masks(net, None, 0.5), "norms")
    raises_naming(lambda: saliency.wanda_masks(net, {"nope": torch.ones(3)}, 0.5), "norms")
    raises_naming(lambda: saliency.input_norms(net, torch.ones(2, 16)), "data")
    raises_naming(lambda: saliency.input_norms(net, [], num_batches=1), "data")
    raises_naming(lambda: saliency.input_norms(net, [torch.ones(2, 16)], num_batches=0), "num_batches")
    raises_naming(lambda: saliency.input_norms(net, [torch.ones(2, 16)], layers="nope"), "layers")
    raises_naming(lambda: saliency.input_norms("net", [torch.ones(2, 16)]), "model")
    raises_naming(lambda: saliency.row_masks(torch.ones(2, 1), 0.9), "sparsity")


@FAST
@given(bad=st.one_of(st.none(), st.integers(), st.text(max_size=2), st.just({"fc1.weight": torch.ones(2)})))
def test_rewind_bad_state_changes_nothing(bad):
    net = tiny_mlp()
    before = copy.deepcopy(net.state_dict())
    masks = prune.layer_masks(net, 0.5)
    raises_naming(lambda: lottery.rewind(net, bad, masks), "state")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_rewind_bad_masks():
    net = tiny_mlp()
    raises_naming(lambda: lottery.rewind(net, net.state_dict(), {"fc1": torch.ones(3)}), "masks")
    raises_naming(lambda: lottery.rewind(net, net.state_dict(), None), "masks")


@FAST
@given(p=st.one_of(st.floats(max_value=0), st.floats(min_value=1), st.none(), st.booleans(), st.just(float("nan"))),
       r=st.one_of(st.integers(max_value=0), st.none(), st.booleans(), st.floats()))
def test_ticket_sparsities_bad(p, r):
    raises_naming(lambda: lottery.ticket_sparsities(p, 2), "prune_per_round")
    raises_naming(lambda: lottery.ticket_sparsities(0.2, r), "rounds")


@FAST
@given(bad=st.one_of(st.integers(max_value=0), st.none(), st.booleans(), st.floats()))
def test_recalibrate_bn_bad_arguments_change_nothing(bad):
    torch.manual_seed(0)
    net = models.SmallCNN(channels=(4, 6), head_pool=2).eval()
    before = copy.deepcopy(net.state_dict())
    data = [torch.randn(4, 1, 28, 28)]
    raises_naming(lambda: channels.recalibrate_bn(net, data, num_batches=bad), "num_batches")
    raises_naming(lambda: channels.recalibrate_bn(net, torch.ones(3)), "data")
    raises_naming(lambda: channels.recalibrate_bn(net, []), "data")
    raises_naming(lambda: channels.recalibrate_bn(net, [[None]]), "data")
    raises_naming(lambda: channels.recalibrate_bn(tiny_mlp(), data), "BatchNorm")
    raises_naming(lambda: channels.recalibrate_bn("net", data), "model")
    raises_naming(lambda: channels.recalibrate_bn(net, [torch.ones(4, 3, 28, 28)]), "channels", RuntimeError)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@FAST
@given(p=st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0001), st.none(), st.booleans(), st.text(max_size=2),
                   st.just(float("nan"))),
       n=st.one_of(st.integers(max_value=0), st.none(), st.booleans(), st.floats()))
def test_accuracy_se_bad(p, n):
    raises_naming(lambda: paired.accuracy_se(p, 10), "accuracy")
    raises_naming(lambda: paired.accuracy_se(0.5, n), "n")


def test_paired_accuracy_bad():
    net = nn.Linear(4, 3)
    batch = [(torch.randn(2, 4), torch.tensor([0, 1]))]
    raises_naming(lambda: paired.paired_accuracy(None, net, batch), "model_a")
    raises_naming(lambda: paired.paired_accuracy(net, 3, batch), "model_b")
    raises_naming(lambda: paired.paired_accuracy(net, net, torch.ones(2)), "loader")
    raises_naming(lambda: paired.paired_accuracy(net, net, []), "loader")
