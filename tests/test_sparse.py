"""Sparse files load back to the identical dense weights, in every format; sizes behave; bad inputs."""

import pytest
import torch

from lwkit import models, prune, sparse


@pytest.fixture
def pruned_mlp():
    torch.manual_seed(0)
    return prune.prune(models.LeNet300100(), method="global", sparsity=0.9)


@pytest.mark.parametrize("fmt", sparse.FORMATS)
def test_round_trip_is_identical(pruned_mlp, fmt, tmp_path):
    sparse.save_sparse(pruned_mlp, tmp_path / "m.pt", fmt=fmt)
    state = sparse.load_sparse(tmp_path / "m.pt")
    assert state.keys() == pruned_mlp.state_dict().keys()
    for name, t in pruned_mlp.state_dict().items():
        assert state[name].dtype == t.dtype and torch.equal(state[name], t), name
    fresh = models.LeNet300100()
    fresh.load_state_dict(state)


def test_round_trip_cnn_and_edge_cases(tmp_path):
    torch.manual_seed(0)
    net = prune.prune(models.SmallCNN(), method="magnitude", sparsity=0.7)
    net.features[0][0].weight.data.zero_()  # an all-zero tensor
    net.classifier.weight.data[0, -1] = 3.0  # a nonzero at the very end
    for fmt in sparse.FORMATS:
        for bits in (1, 3, 8):
            sparse.save_sparse(net, tmp_path / "c.pt", fmt=fmt, index_bits=bits)
            state = sparse.load_sparse(tmp_path / "c.pt")
            assert all(torch.equal(state[k], v) for k, v in net.state_dict().items()), (fmt, bits)


@pytest.mark.parametrize("bits", [1, 2, 4, 5, 8])
def test_relative_code_hand_example(bits):
    w = torch.zeros(40)
    w[[0, 3, 39]] = torch.tensor([1.5, -2.0, 7.0])
    code = sparse.encode_relative(w, index_bits=bits)
    assert torch.equal(sparse.decode_relative(code), w)
    # entries: 3 nonzeros plus one filler per full jump of 2**bits positions in each gap
    gaps = [1, 3, 36]
    assert code["count"] == sum(1 + (g - 1) // 2**bits for g in gaps)


def test_pack_bits_round_trip():
    codes = torch.randint(0, 32, (101,)).numpy()
    assert (sparse.unpack_bits(sparse.pack_bits(codes, 5), 5, 101) == codes).all()


def test_sparse_files_are_smaller(pruned_mlp, tmp_path):
    sizes = sparse.file_sizes(pruned_mlp, tmp_path)
    assert sizes["dense"] / sizes["relative"] > 7
    assert sizes["dense"] / sizes["csr"] > 5
    assert sizes["dense"] / sizes["bitmask"] > 6


def test_bad_inputs(tmp_path, pruned_mlp):
    with pytest.raises(ValueError, match="fmt must be one of"):
        sparse.save_sparse(pruned_mlp, tmp_path / "x.pt", fmt="coo")
    with pytest.raises(ValueError, match="index_bits"):
        sparse.save_sparse(pruned_mlp, tmp_path / "x.pt", fmt="relative", index_bits=0)
    with pytest.raises(TypeError, match="nn.Module or a state_dict"):
        sparse.save_sparse("model", tmp_path / "x.pt")
    torch.save({"a": torch.ones(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a file written by"):
        sparse.load_sparse(tmp_path / "plain.pt")
