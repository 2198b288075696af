"""The pruning canon: N:M masks (vs torch.ao's 2:4 sparsifier), Wanda scores (by hand), lottery rewinding,
BatchNorm recalibration (vs statistics computed by hand)."""

import copy

import torch
from torch import nn
from torch.ao.pruning import WeightNormSparsifier

from lwkit import channels, lottery, models, nm, prune, saliency


def test_nm_mask_by_hand():
    w = torch.tensor([[1.0, -4.0, 3.0, 2.0, 0.5, 0.1, -0.2, 9.0]])
    assert nm.nm_mask(w, 2, 4).tolist() == [[False, True, True, False, True, False, False, True]]
    assert nm.is_nm_sparse(w * nm.nm_mask(w, 2, 4), 2, 4) and not nm.is_nm_sparse(w, 2, 4)


def test_nm_mask_matches_torch_ao_sparsifier():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8))
    ours = nm.nm_masks(net, 2, 4)["0"]
    ref = copy.deepcopy(net)
    sparsifier = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
    sparsifier.prepare(ref, [{"tensor_fqn": "0.weight"}])
    sparsifier.step()
    theirs = ref[0].parametrizations.weight[0].mask.bool()
    assert torch.equal(ours, theirs)
    assert ours.float().mean() == 0.5


def test_nm_conv_groups_over_flattened_inputs():
    w = torch.randn(4, 2, 3, 3)  # 18 inputs per output: 2:3 groups divide, 2:4 do not
    assert nm.nm_mask(w, 2, 3).reshape(4, -1, 3).sum(-1).eq(2).all()


def test_wanda_is_per_row_magnitude_with_unit_norms():
    torch.manual_seed(1)
    net = models.LeNet300100(hidden=(12, 8), in_features=16)
    ones = {k: torch.ones(m.in_features) for k, m in prune.prunable_layers(net).items()}
    masks = saliency.wanda_masks(net, ones, 0.5)
    for k, m in prune.prunable_layers(net).items():
        for row, keep in zip(m.weight, masks[k]):
            assert torch.equal(keep, prune.magnitude_mask(row, 0.5))


def test_input_norms_by_hand_and_wanda_scores():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 2))
    xs = [torch.randn(5, 3), torch.randn(4, 3)]
    norms = saliency.input_norms(net, [(x, None) for x in xs])["0"]
    assert torch.allclose(norms, torch.cat(xs).norm(dim=0))
    w = net[0].weight
    assert torch.allclose(saliency.wanda_scores(w, norms), w.abs() * norms)


def test_rewind_restores_initial_survivors():
    torch.manual_seed(3)
    net = models.LeNet300100(hidden=(12, 8), in_features=16)
    init = copy.deepcopy(net.state_dict())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    masks = prune.layer_masks(net, 0.5)
    lottery.rewind(net, init, masks)
    for k, m in prune.prunable_layers(net).items():
        assert torch.equal(m.weight, init[f"{k}.weight"] * masks[k])
    assert lottery.ticket_sparsities(0.2, 3) == [1 - 0.8, 1 - 0.8 ** 2, 1 - 0.8 ** 3]


def test_recalibrate_bn_equals_batch_statistics():
    torch.manual_seed(4)
    net = models.SmallCNN(channels=(4, 6), head_pool=2).eval()
    x = torch.randn(32, 1, 28, 28)
    channels.recalibrate_bn(net, [(x[:16], None), (x[16:], None)], num_batches=2)
    bn = net.features[0][1]
    act = net.features[0][0](x)  # (32, 4, 28, 28): the first conv's output feeds the first BatchNorm
    assert torch.allclose(bn.running_mean, act.mean((0, 2, 3)), atol=1e-5)
    assert not net.training and bn.momentum == 0.1


def test_paired_accuracy_by_hand():
    from lwkit import paired
    x = torch.eye(4)
    y = torch.tensor([0, 1, 2, 3])
    a = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        a.weight.copy_(torch.eye(4))  # right on all 4
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.weight[0].copy_(torch.tensor([0.0, 2.0, 0, 0]))  # wrong on image 0
    r = paired.paired_accuracy(a, b, [(x, y)])
    assert r["acc_a"] == 1.0 and r["acc_b"] == 0.75 and r["n"] == 4 and abs(r["diff_pp"] - 25) < 1e-9
    d = torch.tensor([1.0, 0, 0, 0])
    assert abs(r["se_pp"] - 100 * float(d.std()) / 2) < 1e-9
    assert abs(paired.accuracy_se(0.88, 3000) - 0.00593) < 1e-5
