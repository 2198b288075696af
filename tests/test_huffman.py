import heapq

import numpy as np
import pytest
import torch
from torch import nn

from lwkit import data, huffman, models, prune, sparse


def optimal_total_bits(counts) -> int:
    """Reference: the total length of an optimal prefix code is the sum of all merge weights of Huffman's
    algorithm (each merge adds one bit to every symbol below it), computed without building any tree."""
    heap = list(counts)
    if len(heap) == 1:
        return heap[0]
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        total += merged
        heapq.heappush(heap, merged)
    return total


def test_code_lengths_textbook_example():
    # CLRS's example: frequencies a45 b13 c12 d16 e9 f5 -> lengths 1,3,3,3,4,4 and 224 bits in total
    counts = {0: 45, 1: 13, 2: 12, 3: 16, 4: 9, 5: 5}
    symbols = np.repeat(np.array(list(counts)), list(counts.values()))
    lengths = huffman.code_lengths(symbols)
    assert lengths == {0: 1, 1: 3, 2: 3, 3: 3, 4: 4, 5: 4}
    assert sum(counts[s] * n for s, n in lengths.items()) == 224 == optimal_total_bits(counts.values())


@pytest.mark.parametrize("seed", range(5))
def test_code_lengths_are_optimal_and_complete(seed):
    rng = np.random.default_rng(seed)
    symbols = rng.geometric(0.3, size=2000) - 1  # skewed, like gap codes
    values, counts = np.unique(symbols, return_counts=True)
    lengths = huffman.code_lengths(symbols)
    total = sum(int(c) * lengths[int(v)] for v, c in zip(values, counts))
    assert total == optimal_total_bits(counts.tolist())
    assert abs(sum(2.0 ** -n for n in lengths.values()) - 1) < 1e-12  # a full tree: Kraft with equality


def test_canonical_codes_are_prefix_free():
    lengths = {0: 2, 1: 2, 2: 3, 3: 3, 4: 3, 5: 3}
    codes = huffman.canonical_codes(lengths)
    words = [format(c, f"0{n}b") for c, n in codes.values()]
    assert all(not b.startswith(a) for a in words for b in words if a != b)
    assert codes[0] == (0, 2) and codes[5] == (0b111, 3)


def test_canonical_codes_reject_impossible_lengths():
    with pytest.raises(ValueError, match="Kraft"):
        huffman.canonical_codes({0: 1, 1: 1, 2: 1})


@pytest.mark.parametrize("symbols", [np.array([3, 3, 3]), np.array([], dtype=np.int64), np.array([0, 1]),
                                     np.random.default_rng(0).integers(0, 33, 5000)])
def test_encode_decode_round_trip_is_bit_exact(symbols):
    payload, lengths, nbits = huffman.huffman_encode(symbols)
    assert len(payload) == (nbits + 7) // 8
    back = huffman.huffman_decode(payload, lengths, len(symbols))
    assert np.array_equal(back, symbols)


def test_decode_detects_truncation():
    payload, lengths, _ = huffman.huffman_encode(np.arange(10) % 4)
    with pytest.raises(ValueError, match="ends after"):
        huffman.huffman_decode(payload[:1], lengths, 10)


def test_encode_needs_a_code_for_every_symbol():
    with pytest.raises(ValueError, match="no code for symbols"):
        huffman.huffman_encode(np.array([0, 1, 7]), {0: 1, 1: 1})


def small_mlp(sparsity=0.9, seed=0):
    torch.manual_seed(seed)
    m = models.LeNet300100(hidden=(64, 32))
    prune.apply_masks(m, prune.layer_masks(m, sparsity, scope="layer"))
    return m


def test_share_weights_keeps_zeros_and_limits_distinct_values():
    m = small_mlp()
    zeros_before = {n: (layer.weight == 0) for n, layer in sparse.prunable_layers(m).items()}
    labels = huffman.share_weights(m, bits={"fc1": 3, "fc2": 4, "fc3": 5})
    for name, layer in sparse.prunable_layers(m).items():
        w = layer.weight
        assert torch.equal(w == 0, zeros_before[name])
        assert len(torch.unique(w[w != 0])) <= {"fc1": 8, "fc2": 16, "fc3": 32}[name]
        assert torch.equal(labels[name] < 0, zeros_before[name])


def test_share_weights_rejects_bad_bits():
    with pytest.raises(ValueError, match="fc2"):
        huffman.share_weights(small_mlp(), bits={"fc1": 3, "fc2": 9, "fc3": 2})
    with pytest.raises(ValueError, match="unknown layers"):
        huffman.share_weights(small_mlp(), bits={"fc9": 3})


def test_finetune_shared_keeps_groups_and_zeros():
    m = small_mlp()
    labels = huffman.share_weights(m, bits=3)
    gen = torch.Generator().manual_seed(0)
    loader = data.BatchLoader(torch.randn(64, 784, generator=gen), torch.randint(0, 10, (64,), generator=gen),
                              batch_size=32)
    before = {n: layer.weight.clone() for n, layer in sparse.prunable_layers(m).items()}
    huffman.finetune_shared(m, labels, loader, epochs=1, lr=1e-2, progress=False)
    for name, layer in sparse.prunable_layers(m).items():
        w, lab = layer.weight, labels[name]
        assert torch.equal(w == 0, lab < 0)
        for k in torch.unique(lab[lab >= 0]):  # one value per group
            assert len(torch.unique(w[lab == k])) == 1
        assert not torch.equal(w, before[name])  # and the centroids did move


def test_gap_stream_is_lwkit_sparse_relative_code():
    w = small_mlp(0.95).fc1.weight.detach()
    rel = sparse.encode_relative(w, 5)
    gaps = sparse.unpack_bits(rel["index"].numpy(), 5, rel["count"])
    pos = np.cumsum(gaps + 1) - 1
    assert torch.equal(sparse.decode_relative(rel), w)
    assert np.array_equal(pos[rel["values"].numpy() != 0], torch.nonzero(w.flatten()).flatten().numpy())


def test_save_load_compressed_round_trip_is_bit_exact(tmp_path):
    m = small_mlp(0.9)
    huffman.share_weights(m, bits=5)
    info = huffman.save_compressed(m, tmp_path / "m.dc")
    assert info.size_bytes == (tmp_path / "m.dc").stat().st_size
    assert {r["name"]: r["kind"] for r in info.rows} == {"fc1.weight": "shared", "fc1.bias": "raw",
                                                          "fc2.weight": "shared", "fc2.bias": "raw",
                                                          "fc3.weight": "shared", "fc3.bias": "raw"}
    state = huffman.load_compressed(tmp_path / "m.dc")
    for k, v in m.state_dict().items():
        assert torch.equal(state[k], v), k
    # far smaller than fp32: ~10 % of the weights at well under 16 bits each
    assert info.size_bytes < 0.06 * sum(v.numel() * 4 for v in m.state_dict().values())
    assert "fc1.weight" in str(info)


def test_unshared_and_dense_tensors_round_trip(tmp_path):
    torch.manual_seed(1)
    dense = models.LeNet300100(hidden=(16, 8))
    info = huffman.save_compressed(dense, tmp_path / "d.dc")
    kinds = {r["name"]: r["kind"] for r in info.rows}
    assert kinds["fc1.weight"] == "fp32" and kinds["fc1.bias"] == "raw"  # too many distinct values for a codebook
    assert kinds["fc3.weight"] == "shared"  # 80 weights: at most 80 distinct values, a codebook fits
    state = huffman.load_compressed(tmp_path / "d.dc")
    assert all(torch.equal(state[k], v) for k, v in dense.state_dict().items())


def test_all_zero_weight_round_trips(tmp_path):
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.zero_()
    huffman.save_compressed(layer, tmp_path / "z.dc")
    assert torch.equal(huffman.load_compressed(tmp_path / "z.dc")["weight"], torch.zeros(3, 4))


def test_compressed_file_checksum_and_no_overwrite(tmp_path):
    m = small_mlp()
    huffman.share_weights(m, bits=4)
    path = tmp_path / "m.dc"
    huffman.save_compressed(m, path)
    huffman.save_compressed(m, path)  # ours: may be replaced
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupted"):
        huffman.load_compressed(path)
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    with pytest.raises(FileExistsError):
        huffman.save_compressed(m, other)
    assert other.read_text() == "mine"
    with pytest.raises(ValueError, match="not a file written"):
        huffman.load_compressed(other)
