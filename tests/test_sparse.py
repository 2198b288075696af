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


# --- files: atomic, never overwrite a foreign file, damaged files are reported ------------------------------


def test_save_is_atomic_and_leaves_no_temp_file(pruned_mlp, tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    sparse.save_sparse(pruned_mlp, path)
    good = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # interrupted in the middle of writing
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        sparse.save_sparse(pruned_mlp, path, fmt="bitmask")
    assert path.read_bytes() == good  # the old file is whole
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary left behind


def test_save_refuses_to_overwrite_a_file_it_did_not_write(pruned_mlp, tmp_path):
    mine = tmp_path / "checkpoint.pt"
    torch.save(pruned_mlp.state_dict(), mine)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    for path in (mine, notes):
        before = path.read_bytes()
        with pytest.raises(FileExistsError, match="overwrite=True"):
            sparse.save_sparse(pruned_mlp, path)
        assert path.read_bytes() == before
    sparse.save_sparse(pruned_mlp, notes, overwrite=True)  # explicit permission
    sparse.save_sparse(pruned_mlp, notes, fmt="relative")  # now it is an lwkit sparse file: replacing it is fine
    assert set(sparse.load_sparse(notes)) == set(pruned_mlp.state_dict())
    with pytest.raises(IsADirectoryError, match="folder"):
        sparse.save_sparse(pruned_mlp, tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "empty", "flip", "garbage"])
def test_load_reports_a_damaged_file_by_name(pruned_mlp, tmp_path, damage):
    path = tmp_path / "m.relative.pt"
    sparse.save_sparse(pruned_mlp, path, fmt="relative")
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = b""
    elif damage == "flip":  # one bit inside the stored values
        data[len(data) // 2] ^= 0x01
    else:
        data = b"not a torch file at all" * 10
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"m\.relative\.pt.*(corrupted|truncated|not a file|damaged)"):
        sparse.load_sparse(path)


def test_load_refuses_pickles_and_missing_files(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))
    torch.save({"lwkit_sparse": 2, "tensors": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt.*weights_only"):
        sparse.load_sparse(tmp_path / "evil.pt")
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        sparse.load_sparse(tmp_path / "nothing.pt")
    with pytest.raises(TypeError, match="path must be"):
        sparse.load_sparse(42)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_round_trip_keeps_dtype_bits(tmp_path, dtype):
    torch.manual_seed(0)
    w = torch.randn(12, 9).to(dtype)
    w[w.abs() < 0.7] = 0
    w[0, 0] = float("nan")  # a NaN is a nonzero: it is stored and comes back
    state = {"w": w, "b": torch.randn(12).to(dtype), "steps": torch.tensor(3)}
    for fmt in sparse.FORMATS:
        sparse.save_sparse(state, tmp_path / f"s.{fmt}.pt", fmt=fmt)
        back = sparse.load_sparse(tmp_path / f"s.{fmt}.pt")
        for k, v in state.items():
            assert back[k].dtype == v.dtype and torch.equal(back[k].view(-1).view(torch.uint8) if v.dim() else
                                                            back[k], v.view(-1).view(torch.uint8) if v.dim() else v)


def test_csr_model_saves_and_sparse_linear_takes_any_batch_shape(pruned_mlp, tmp_path):
    fast = sparse.to_sparse_csr(pruned_mlp)
    x = torch.randn(3, 4, 784)
    with torch.no_grad():
        assert torch.allclose(fast.fc1(x), pruned_mlp.fc1(x), atol=1e-5)
    sparse.save_sparse(fast, tmp_path / "csr.pt")
    back = sparse.load_sparse(tmp_path / "csr.pt")
    assert all(torch.equal(back[k], v) for k, v in pruned_mlp.state_dict().items())
    with pytest.raises(TypeError, match="linear must be"):
        sparse.SparseLinear(torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="no nn.Linear"):
        sparse.to_sparse_csr(models.SmallCNN().features)


def test_decoders_reject_inconsistent_codes():
    w = torch.zeros(4, 5)
    w[1, 2], w[3, 4] = 1.0, -2.0
    csr, bm, rel = sparse.encode_csr(w), sparse.encode_bitmask(w), sparse.encode_relative(w, 2)
    with pytest.raises(ValueError, match="CSR"):
        sparse.decode_csr({**csr, "col": torch.tensor([2, 9], dtype=torch.int16)})
    with pytest.raises(ValueError, match="code\\['values'\\]"):
        sparse.decode_bitmask({**bm, "values": bm["values"][:1]})
    with pytest.raises(ValueError, match="count"):
        sparse.decode_relative({**rel, "count": rel["count"] + 1})
    with pytest.raises(TypeError, match="code must be a dict"):
        sparse.decode_csr([1, 2])
