"""Sparse files: a pruned state_dict written as dense, CSR, bitmask or relative-index (Deep Compression) code.

Every format stores the kept fp32 values exactly, so `load_sparse` gives back the identical dense weights;
they differ only in how they say *where* the nonzeros are. Tensors with fewer than 2 dimensions (biases,
BatchNorm statistics) are always stored dense.

    bytes_on_disk = save_sparse(model, "mlp.relative.pt", fmt="relative", index_bits=5)
    model.load_state_dict(load_sparse("mlp.relative.pt"))
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

FORMATS = ("dense", "csr", "bitmask", "relative")


def _check_weight(weight) -> None:
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError(f"weight must be a floating-point torch.Tensor, got {type(weight).__name__}")


def _index_dtype(n: int) -> torch.dtype:
    """The smallest signed int type that holds indices up to n - 1."""
    return torch.int16 if n <= 2**15 else torch.int32


# --- CSR: per row, where its nonzeros start (crow) and their column numbers (col) --------------------------


def encode_csr(weight: torch.Tensor) -> dict:
    """weight (viewed as rows x cols) -> crow (rows+1,), col (nnz,), values (nnz,)."""
    _check_weight(weight)
    matrix = weight.detach().cpu().reshape(weight.shape[0], -1)  # (rows, cols)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        csr = matrix.to_sparse_csr()
    return {"crow": csr.crow_indices().to(torch.int32), "col": csr.col_indices().to(_index_dtype(matrix.shape[1])),
            "values": csr.values().clone(), "shape": list(weight.shape)}


def decode_csr(code: dict) -> torch.Tensor:
    shape = code["shape"]
    rows, cols = shape[0], int(np.prod(shape[1:]))
    counts = code["crow"].long().diff()  # nonzeros per row
    row_idx = torch.repeat_interleave(torch.arange(rows), counts)
    dense = torch.zeros(rows, cols, dtype=code["values"].dtype)
    dense[row_idx, code["col"].long()] = code["values"]
    return dense.reshape(shape)


# --- Bitmask: one bit per weight says "nonzero here", then the nonzero values in order ---------------------


def encode_bitmask(weight: torch.Tensor) -> dict:
    _check_weight(weight)
    flat = weight.detach().cpu().flatten()
    bits = np.packbits((flat != 0).numpy())  # (ceil(n / 8),) uint8
    return {"bits": torch.from_numpy(bits), "values": flat[flat != 0].clone(), "shape": list(weight.shape)}


def decode_bitmask(code: dict) -> torch.Tensor:
    n = int(np.prod(code["shape"]))
    keep = torch.from_numpy(np.unpackbits(code["bits"].numpy())[:n].astype(bool))
    flat = torch.zeros(n, dtype=code["values"].dtype)
    flat[keep] = code["values"]
    return flat.reshape(code["shape"])


# --- Relative index (Han et al. 2016): each nonzero stores the gap to the previous one in `index_bits` bits --


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ints < 2**bits -> a packed uint8 stream of `bits` bits each (little-endian within a code)."""
    as_bits = (codes[:, None] >> np.arange(bits)) & 1  # (n, bits)
    return np.packbits(as_bits.astype(np.uint8).flatten())


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    as_bits = np.unpackbits(packed)[:count * bits].reshape(count, bits).astype(np.int64)
    return (as_bits << np.arange(bits)).sum(1)


def encode_relative(weight: torch.Tensor, index_bits: int = 5) -> dict:
    """Nonzeros in order, each with (gap to the previous nonzero - 1) in `index_bits` bits.

    A gap too long for the field gets filler entries: a zero value 2**index_bits positions further on.
    """
    _check_weight(weight)
    if not isinstance(index_bits, int) or not 1 <= index_bits <= 16:
        raise ValueError(f"index_bits must be an int in [1, 16], got {index_bits!r}")
    flat = weight.detach().cpu().flatten()
    pos = torch.nonzero(flat).flatten().numpy()  # (nnz,)
    step = 2**index_bits  # the longest jump one code can make
    gaps = np.diff(pos, prepend=-1)  # >= 1
    fillers = (gaps - 1) // step  # filler entries needed before each nonzero
    # 1) each nonzero becomes `fillers` jumps of `step` (code step-1, value 0), then its own shorter jump
    last = gaps - 1 - fillers * step
    ends = np.cumsum(fillers + 1) - 1  # where each real entry lands in the stream
    stream = np.full(len(pos) + fillers.sum(), step - 1, dtype=np.int64)
    values = torch.zeros(len(stream), dtype=flat.dtype)
    stream[ends] = last
    values[torch.from_numpy(ends)] = flat[pos]
    return {"index": torch.from_numpy(pack_bits(stream, index_bits)), "values": values, "count": len(stream),
            "index_bits": index_bits, "shape": list(weight.shape)}


def decode_relative(code: dict) -> torch.Tensor:
    n = int(np.prod(code["shape"]))
    steps = unpack_bits(code["index"].numpy(), code["index_bits"], code["count"]) + 1
    pos = torch.from_numpy(np.cumsum(steps) - 1)
    flat = torch.zeros(n, dtype=code["values"].dtype)
    flat[pos] = code["values"]  # fillers write zeros
    return flat.reshape(code["shape"])


ENCODERS = {"csr": (encode_csr, decode_csr), "bitmask": (encode_bitmask, decode_bitmask),
            "relative": (encode_relative, decode_relative)}


# --- Files -------------------------------------------------------------------------------------------------


def _state_dict(model_or_state) -> dict:
    if isinstance(model_or_state, nn.Module):
        return model_or_state.state_dict()
    if isinstance(model_or_state, dict):
        return model_or_state
    raise TypeError(f"model must be an nn.Module or a state_dict, got {type(model_or_state).__name__}")


def save_sparse(model: nn.Module | dict, path: str | Path, *, fmt: str = "csr", index_bits: int = 5) -> int:
    """Write the state_dict with every >= 2-D float tensor in format `fmt`; returns the file's size in bytes."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    state = _state_dict(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {}
    for name, t in state.items():
        if fmt == "dense" or t.dim() < 2 or not t.is_floating_point():
            payload[name] = {"kind": "dense", "tensor": t.detach().cpu().clone()}
        elif fmt == "relative":
            payload[name] = {"kind": fmt, **encode_relative(t, index_bits)}
        else:
            payload[name] = {"kind": fmt, **ENCODERS[fmt][0](t)}
    torch.save({"lwkit_sparse": 1, "format": fmt, "tensors": payload}, path)
    return os.path.getsize(path)


def load_sparse(path: str | Path) -> dict:
    """The dense state_dict from a file written by `save_sparse` (loaded with weights_only=True)."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("lwkit_sparse") != 1:
        raise ValueError(f"{path} is not a file written by lwkit.sparse.save_sparse")
    state = {}
    for name, code in blob["tensors"].items():
        state[name] = code["tensor"] if code["kind"] == "dense" else ENCODERS[code["kind"]][1](code)
    return state


def file_sizes(model: nn.Module, folder: str | Path, *, name: str = "model", index_bits: int = 5) -> dict[str, int]:
    """Write `model` in every format into `folder`; format -> bytes on disk."""
    return {fmt: save_sparse(model, Path(folder) / f"{name}.{fmt}.pt", fmt=fmt, index_bits=index_bits)
            for fmt in FORMATS}
