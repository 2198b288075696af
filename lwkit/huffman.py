"""Deep Compression's last two stages (Han et al. 2016): weight sharing, then Huffman coding into a real file.

    shared = share_weights(model, bits=5)                 # 1) k-means per layer (lwkit.sharing)
    finetune_shared(model, shared, train_loader, epochs=2) # 2) train the centroids, zeros and groups kept
    info = save_compressed(model, "lenet.dc")             # 3) Huffman-code indices and relative positions
    model.load_state_dict(load_compressed("lenet.dc"))    # 4) decode: bit-exact the same weights

A Huffman code gives frequent symbols short codewords: `code_lengths` builds the optimal lengths with a heap,
`canonical_codes` turns lengths into codewords (so a file only needs to store one length per symbol), and
`huffman_encode` / `huffman_decode` move between symbols and packed bits. The file stores, per weight tensor,
a codebook (the shared values), the Huffman-coded codebook index of every stored entry, and the
Huffman-coded gap to the previous stored entry (the relative-index stream of `lwkit.sparse.encode_relative`,
fillers included). A tensor with more distinct nonzero values than 2**max_bits (not shared) keeps its
values as raw fp32; 1-D tensors (biases) are stored raw. The file carries a SHA-256 of its body.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lwkit import sparse

__all__ = ["code_lengths", "canonical_codes", "huffman_encode", "huffman_decode", "CompressionReport",
           "save_compressed", "load_compressed"]

_MOVED = {"share_weights", "group_labels", "finetune_shared"}  # defined in lwkit.sharing


def __getattr__(name: str):
    # lwkit.huffman.share_weights etc.: looked up lazily in lwkit.sharing, where they are defined
    if name in _MOVED:
        import importlib
        return getattr(importlib.import_module("lwkit.sharing"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


MAGIC = b"LWKIT-DC1\n"  # first bytes of every file written by save_compressed


# --- Huffman codes: small pure functions --------------------------------------------------------------------


def _check_symbols(symbols, name: str = "symbols") -> np.ndarray:
    if isinstance(symbols, torch.Tensor):
        symbols = symbols.detach().cpu().numpy()
    if not isinstance(symbols, np.ndarray) or symbols.ndim != 1 or symbols.dtype.kind not in "iu":
        raise TypeError(f"{name} must be a 1-D numpy array (or tensor) of non-negative ints, got {symbols!r:.80}")
    if len(symbols) and symbols.min() < 0:
        raise ValueError(f"{name} must be non-negative ints, got a minimum of {symbols.min()}")
    return symbols.astype(np.int64)


def code_lengths(symbols) -> dict[int, int]:
    """Optimal (Huffman) codeword length in bits of every symbol that occurs in `symbols`.

    Repeatedly merge the two least frequent subtrees (a heap); a symbol's length is its depth in the final
    tree. One distinct symbol gets length 1 (a code needs at least one bit per symbol). Ties are broken by
    symbol value, so the lengths are deterministic.
    """
    symbols = _check_symbols(symbols)
    values, counts = np.unique(symbols, return_counts=True)
    if len(values) == 0:
        return {}
    if len(values) == 1:
        return {int(values[0]): 1}
    # heap entries: (count, tie-breaker, symbols in this subtree)
    heap = [(int(c), int(v), [int(v)]) for v, c in zip(values, counts)]
    heapq.heapify(heap)
    depth = dict.fromkeys((int(v) for v in values), 0)
    while len(heap) > 1:
        c1, t1, s1 = heapq.heappop(heap)
        c2, t2, s2 = heapq.heappop(heap)
        for s in s1 + s2:  # every symbol under the new node goes one level deeper
            depth[s] += 1
        heapq.heappush(heap, (c1 + c2, min(t1, t2), s1 + s2))
    return depth


def canonical_codes(lengths: dict[int, int]) -> dict[int, tuple[int, int]]:
    """Canonical Huffman codewords from lengths: symbol -> (codeword as an int, length).

    Sort by (length, symbol); each codeword is the previous one plus 1, shifted left when the length grows.
    The decoder rebuilds the same codes from the lengths alone, which is all the file stores.
    """
    if not isinstance(lengths, dict):
        raise TypeError(f"lengths must be a dict symbol -> length, got {type(lengths).__name__}")
    for s, n in lengths.items():
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"lengths must have non-negative int symbols as keys, got {s!r}")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= 64:
            raise ValueError(f"lengths[{s}] must be an int in [1, 64], got {n!r}")
    if sum(2.0 ** -int(n) for n in lengths.values()) > 1 + 1e-12:
        raise ValueError(f"lengths violate the Kraft inequality (sum of 2**-length > 1): no prefix code has them, "
                         f"got {dict(sorted(lengths.items()))}")
    codes, code, prev = {}, 0, None
    for s, n in sorted(lengths.items(), key=lambda kv: (kv[1], kv[0])):
        if prev is not None:
            code = (code + 1) << (int(n) - prev)
        codes[int(s)] = (code, int(n))
        prev = int(n)
    return codes


def huffman_encode(symbols, lengths: dict[int, int] | None = None) -> tuple[bytes, dict[int, int], int]:
    """Symbols -> (packed bits, the code lengths used, number of bits); lengths default to `code_lengths`."""
    symbols = _check_symbols(symbols)
    lengths = code_lengths(symbols) if lengths is None else lengths
    codes = canonical_codes(lengths)
    missing = sorted(set(np.unique(symbols).tolist()) - set(codes))
    if missing:
        raise ValueError(f"lengths has no code for symbols {missing[:10]}; build it with code_lengths(symbols)")
    table = {s: format(c, f"0{n}b") for s, (c, n) in codes.items()}
    bits = "".join(table[s] for s in symbols.tolist())
    as_array = np.frombuffer(bits.encode("ascii"), dtype=np.uint8) - ord("0")
    return np.packbits(as_array).tobytes(), lengths, len(bits)


def huffman_decode(payload: bytes, lengths: dict[int, int], count: int) -> np.ndarray:
    """The first `count` symbols of a bit stream made by `huffman_encode` with these `lengths`."""
    if not isinstance(payload, (bytes, bytearray)):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    codes = canonical_codes(lengths)
    if count and not codes:
        raise ValueError(f"lengths is empty, so no symbol can be decoded, but count is {count}")
    lookup = {(n, c): s for s, (c, n) in codes.items()}
    max_len = max((n for _, n in codes.values()), default=0)
    bits = np.unpackbits(np.frombuffer(bytes(payload), dtype=np.uint8)).tolist()
    out, pos, code, n = [], 0, 0, 0
    while len(out) < count:  # read bit by bit until the prefix is a codeword
        if pos >= len(bits):
            raise ValueError(f"payload ends after {len(out)} of {count} symbols (truncated or wrong lengths)")
        code, n, pos = (code << 1) | bits[pos], n + 1, pos + 1
        s = lookup.get((n, code))
        if s is not None:
            out.append(s)
            code, n = 0, 0
        elif n > max_len:
            raise ValueError(f"bits {pos - n}..{pos} match no codeword: the payload is damaged")
    return np.asarray(out, dtype=np.int64)


# --- The file ------------------------------------------------------------------------------------------------


@dataclass
class CompressionReport:
    """What `save_compressed` wrote: bytes on disk and, per tensor, how its bits were spent."""

    path: str
    size_bytes: int  # the whole file, header included
    rows: list[dict] = field(default_factory=list)  # one per tensor: name, kind, numel, stored, bits...

    def __str__(self) -> str:
        head = f"{'tensor':<14}{'kind':<8}{'weights':>9}{'stored':>9}{'codebook':>9}{'value bits':>11}{'index bits':>11}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r['name']:<14}{r['kind']:<8}{r['numel']:>9,}{r['stored']:>9,}{r['codebook']:>9}"
                         f"{r['value_bits_per_entry']:>11.2f}{r['index_bits_per_entry']:>11.2f}")
        lines.append(f"file {self.path}: {self.size_bytes:,} bytes")
        return "\n".join(lines)


def _encode_tensor(t: torch.Tensor, index_bits: int, max_bits: int) -> tuple[dict, list[bytes]]:
    """One tensor -> (header entry, body chunks)."""
    t = t.detach().cpu().contiguous()
    entry = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
    if t.dim() < 2 or t.dtype != torch.float32 or t.numel() == 0:
        raw = t.numpy().tobytes()
        entry.update(kind="raw", nbytes=len(raw))
        return entry, [raw]
    # 1) positions: the relative-index stream of lwkit.sparse (gap - 1 per entry, fillers for long gaps)
    rel = sparse.encode_relative(t, index_bits)
    gaps = sparse.unpack_bits(rel["index"].numpy(), index_bits, rel["count"])
    values = rel["values"]  # fillers hold 0.0
    # 2) values: a codebook of the distinct nonzeros when there are few (shared weights), else raw fp32
    distinct = torch.unique(values[values != 0])
    chunks = []
    if len(distinct) <= 2**max_bits:
        codebook = distinct.numpy().astype(np.float32)
        idx = np.searchsorted(codebook, values.numpy())  # exact: every nonzero is a codebook value
        idx[values.numpy() == 0] = len(codebook)  # fillers: one extra symbol meaning "zero"
        vpay, vlen, vbits = huffman_encode(idx)
        entry.update(kind="shared", codebook=len(codebook), value_bits=vbits)
        chunks += [codebook.tobytes(), _lengths_bytes(vlen, len(codebook) + 1), vpay]
    else:
        raw = values.numpy().tobytes()
        entry.update(kind="fp32", codebook=0, value_bits=8 * len(raw))
        chunks.append(raw)
    ipay, ilen, ibits = huffman_encode(gaps)
    entry.update(index_bits=index_bits, count=int(rel["count"]), gap_bits=ibits)
    chunks += [_lengths_bytes(ilen, 2**index_bits), ipay]
    entry["nbytes"] = sum(len(c) for c in chunks)
    return entry, chunks


def _lengths_bytes(lengths: dict[int, int], alphabet: int) -> bytes:
    """One byte per symbol of the alphabet: its code length (0 = unused)."""
    table = np.zeros(alphabet, dtype=np.uint8)
    for s, n in lengths.items():
        table[s] = n
    return table.tobytes()


def _read_lengths(buf: bytes) -> dict[int, int]:
    return {i: int(n) for i, n in enumerate(buf) if n}


def _state(model) -> dict:
    state = model.state_dict() if isinstance(model, nn.Module) else model
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TypeError(f"model must be an nn.Module or a state_dict of tensors, got {type(model).__name__}")
    return state


def save_compressed(model: nn.Module | dict, path: str | Path, *, index_bits: int = 5, max_bits: int = 8,
                    overwrite: bool = False) -> CompressionReport:
    """Write `model` Huffman-coded (Deep Compression's file); returns the bytes and a per-tensor breakdown.

    Weight tensors (>= 2-D fp32) with at most 2**max_bits distinct nonzero values store a codebook and a
    Huffman-coded index per entry; others store their nonzeros as raw fp32. Positions are the relative-index
    gaps (`index_bits` bits before coding), Huffman-coded. The file appears whole or not at all; an existing
    file is replaced only if save_compressed wrote it or `overwrite=True`.
    """
    state = _state(model)
    for arg, v, hi in (("index_bits", index_bits, 16), ("max_bits", max_bits, 16)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
            raise ValueError(f"{arg} must be an int in [1, {hi}], got {v!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"path {path} is a folder; give a file name such as {path / 'model.dc'}")
    if path.exists() and not overwrite and not _written_by_us(path):
        raise FileExistsError(f"{path} exists and was not written by save_compressed; pass overwrite=True or "
                              "choose another path")
    entries, body = {}, []
    for name, t in state.items():
        if t.layout != torch.strided:
            t = t.to_dense()
        entries[name], chunks = _encode_tensor(t, index_bits, max_bits)
        body += chunks
    body = b"".join(body)
    header = json.dumps({"tensors": entries, "sha256": hashlib.sha256(body).hexdigest()},
                        separators=(",", ":")).encode()
    blob = MAGIC + struct.pack("<I", len(header)) + header + body
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    rows = []
    for name, e in entries.items():
        n = int(np.prod(e["shape"])) if e["shape"] else 1
        stored = e.get("count", n)
        rows.append({"name": name, "kind": e["kind"], "numel": n, "stored": stored, "codebook": e.get("codebook", 0),
                     "value_bits_per_entry": e.get("value_bits", 8 * e["nbytes"]) / max(stored, 1),
                     "index_bits_per_entry": e.get("gap_bits", 0) / max(stored, 1)})
    return CompressionReport(path=str(path), size_bytes=os.path.getsize(path), rows=rows)


def _written_by_us(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def load_compressed(path: str | Path) -> dict:
    """The state_dict from a file written by `save_compressed` (checksum checked; no pickle involved)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no compressed file at {path}")
    blob = path.read_bytes()
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 4:
        raise ValueError(f"{path} is not a file written by lwkit.huffman.save_compressed")
    (n,) = struct.unpack("<I", blob[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    try:
        header = json.loads(blob[start:start + n])
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: header is damaged ({err})") from err
    body = blob[start + n:]
    if hashlib.sha256(body).hexdigest() != header.get("sha256"):
        raise ValueError(f"{path} is corrupted: its body does not match the checksum written with it")
    state, off = {}, 0
    for name, e in header["tensors"].items():
        chunk = body[off:off + e["nbytes"]]
        off += e["nbytes"]
        state[name] = _decode_tensor(e, chunk)
    return state


def _decode_tensor(e: dict, chunk: bytes) -> torch.Tensor:
    dtype = getattr(torch, e["dtype"])
    if e["kind"] == "raw":
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        return torch.from_numpy(np.frombuffer(chunk, dtype=np_dtype).copy()).reshape(e["shape"])
    off = 0
    if e["kind"] == "shared":
        k = e["codebook"]
        codebook = np.frombuffer(chunk[:4 * k], dtype=np.float32)
        vlen = _read_lengths(chunk[4 * k:4 * k + k + 1])
        off = 5 * k + 1
        vbytes = (e["value_bits"] + 7) // 8
        idx = huffman_decode(chunk[off:off + vbytes], vlen, e["count"])
        off += vbytes
        values = np.append(codebook, np.float32(0))[idx]  # the extra symbol k is a filler zero
    else:
        values = np.frombuffer(chunk[:4 * e["count"]], dtype=np.float32)
        off = 4 * e["count"]
    alphabet = 2 ** e["index_bits"]
    ilen = _read_lengths(chunk[off:off + alphabet])
    off += alphabet
    gaps = huffman_decode(chunk[off:off + (e["gap_bits"] + 7) // 8], ilen, e["count"])
    n = int(np.prod(e["shape"]))
    pos = np.cumsum(gaps + 1) - 1
    if len(pos) and pos[-1] >= n:
        raise ValueError(f"tensor positions reach {int(pos[-1])}, beyond its {n} weights: the file is damaged")
    flat = np.zeros(n, dtype=np.float32)
    flat[pos] = values
    return torch.from_numpy(flat).reshape(e["shape"])
