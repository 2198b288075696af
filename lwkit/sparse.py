"""Sparse models: how sparse they are, how to store them (dense, CSR, bitmask, relative index) and run them.

Every file format stores the kept values exactly, so `load_sparse` gives back the identical dense weights
(-0.0 comes back as 0.0); they differ only in how they say *where* the nonzeros are. Tensors with < 2 dims
(biases, BatchNorm statistics) are stored dense. Files are written atomically and carry a checksum.

    bytes_on_disk = save_sparse(model, "mlp.relative.pt", fmt="relative", index_bits=5)
    model.load_state_dict(load_sparse("mlp.relative.pt"))
"""

from __future__ import annotations

import copy
import hashlib
import numbers
import os
import pickle
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["PRUNABLE", "FORMATS", "ENCODERS", "prunable_layers", "sparsity", "SparsityReport", "sparsity_report",
           "SparseLinear", "to_sparse_csr", "encode_csr", "decode_csr", "encode_bitmask", "decode_bitmask",
           "pack_bits", "unpack_bits", "encode_relative", "decode_relative", "save_sparse", "load_sparse",
           "file_sizes"]

PRUNABLE = (nn.Linear, nn.Conv2d)  # layers whose `weight` unstructured pruning may touch
FORMATS = ("dense", "csr", "bitmask", "relative")


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _check_int(value, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo or (hi and value > hi):
        raise ValueError(f"{name} must be an int in [{lo}, {hi if hi else 'inf'}], got {value!r}")
    return int(value)


# --- How sparse: which layers count, the fraction of zeros, a per-layer table ------------------------------


def prunable_layers(model: nn.Module, kinds: tuple = PRUNABLE) -> dict[str, nn.Module]:
    """name -> module for every Linear/Conv2d (the layers unstructured pruning acts on), in model order."""
    _check_model(model)
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not kinds or not all(isinstance(k, type) and issubclass(k, nn.Module) for k in kinds):
        raise TypeError(f"kinds must be an nn.Module class or a tuple of them, got {kinds!r}")
    layers = {name: m for name, m in model.named_modules()
              if isinstance(m, kinds) and isinstance(getattr(m, "weight", None), torch.Tensor)}
    if not layers:
        raise ValueError(f"model {type(model).__name__} has no prunable layers ({', '.join(k.__name__ for k in kinds)})")
    return layers


def sparsity(model_or_tensor: nn.Module | torch.Tensor) -> float:
    """Fraction of zeros: of a tensor, or of all Linear/Conv2d weights of a model (biases and norms excluded)."""
    if isinstance(model_or_tensor, torch.Tensor):
        tensors = [model_or_tensor]
    elif isinstance(model_or_tensor, nn.Module):
        tensors = [m.weight for m in prunable_layers(model_or_tensor).values()]
    else:
        raise TypeError(f"model_or_tensor must be an nn.Module or a tensor, got {type(model_or_tensor).__name__}")
    total = sum(t.numel() for t in tensors)
    if total == 0:
        raise ValueError("model_or_tensor is empty: the sparsity of no weights is undefined")
    return 1.0 - sum(torch.count_nonzero(t).item() for t in tensors) / total


def _percent(zeros: int, total: int) -> str:
    """zeros / total as a percentage, with decimals enough that 'all' and 'none' never appear by rounding."""
    for decimals in range(1, 8):
        text = f"{zeros / total:.{decimals}%}"
        if (float(text[:-1]) == 100) == (zeros == total) and (float(text[:-1]) == 0) == (zeros == 0):
            break
    return text


@dataclass
class SparsityReport:
    """Per-layer weights and zeros; prints as a table (99.95 %, never a rounded 100.0 %, if any weight is left)."""

    rows: list[dict]  # name, kind, shape, params, zeros, sparsity

    @property
    def total(self) -> float:
        return sum(r["zeros"] for r in self.rows) / max(1, sum(r["params"] for r in self.rows))

    def __str__(self) -> str:
        lines = [f"{'layer':<16}{'kind':<8}{'shape':>18}{'weights':>10}{'zeros':>10}{'sparsity':>11}"]
        for r in self.rows:
            lines.append(f"{r['name']:<16}{r['kind']:<8}{str(r['shape']):>18}{r['params']:>10,}{r['zeros']:>10,}"
                         f"{_percent(r['zeros'], max(1, r['params'])):>11}")
        params, zeros = sum(r["params"] for r in self.rows), sum(r["zeros"] for r in self.rows)
        lines.append(f"{'all':<42}{params:>10,}{zeros:>10,}{_percent(zeros, max(1, params)):>11}")
        return "\n".join(lines)

    __repr__ = __str__


def sparsity_report(model: nn.Module) -> SparsityReport:
    """Sparsity of every Linear/Conv2d weight of `model`, and of all of them together."""
    rows = []
    for name, m in prunable_layers(model).items():
        zeros = m.weight.numel() - int(torch.count_nonzero(m.weight))
        rows.append({"name": name, "kind": type(m).__name__, "shape": tuple(m.weight.shape),
                     "params": m.weight.numel(), "zeros": zeros, "sparsity": zeros / max(1, m.weight.numel())})
    return SparsityReport(rows)


# --- Sparse kernels: a Linear whose weight is a torch sparse CSR matrix ------------------------------------


class SparseLinear(nn.Module):
    """A Linear layer whose weight is stored as a torch sparse CSR matrix (same outputs, sparse kernel)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            self.weight = nn.Parameter(linear.weight.detach().to_sparse_csr(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # (batch, in), any leading dims folded into batch
        y = torch.sparse.mm(self.weight, flat.T).T.reshape(*x.shape[:-1], self.out_features)  # sparse @ dense
        return y if self.bias is None else y + self.bias


def to_sparse_csr(model: nn.Module) -> nn.Module:
    """A copy of `model` with every Linear replaced by a SparseLinear (torch sparse CSR weights)."""
    _check_model(model)
    model = copy.deepcopy(model)
    linears = [(m, n, c) for m in model.modules() for n, c in m.named_children() if isinstance(c, nn.Linear)]
    if not linears:
        raise ValueError(f"model {type(model).__name__} has no nn.Linear to convert to sparse CSR")
    for parent, name, child in linears:
        setattr(parent, name, SparseLinear(child))
    return model.eval()


# --- CSR: per row, where its nonzeros start (crow) and their column numbers (col) --------------------------


def _check_weight(weight, name: str = "weight") -> None:
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got "
                        f"{weight.dtype if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    if weight.dim() == 0 or weight.numel() == 0:
        raise ValueError(f"{name} must have at least one dimension and one element, got shape {tuple(weight.shape)}")


def _check_code(code, keys: tuple[str, ...]) -> list[int]:
    """The shape of an encoded tensor, after checking that `code` has the fields its decoder reads."""
    if not isinstance(code, dict):
        raise TypeError(f"code must be a dict made by an lwkit.sparse encoder, got {type(code).__name__}")
    for k in (*keys, "values"):
        if not isinstance(code.get(k), torch.Tensor) or code[k].dim() != 1:
            raise ValueError(f"code[{k!r}] must be a 1-D tensor (as the matching encoder makes), got "
                             f"{code.get(k)!r:.60}")
    shape = code.get("shape")
    if not isinstance(shape, (list, tuple)) or not shape or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ValueError(f"code['shape'] must be a non-empty list of non-negative ints, got {shape!r}")
    return list(shape)


def encode_csr(weight: torch.Tensor) -> dict:
    """weight (viewed as rows x cols) -> crow (rows+1,), col (nnz,), values (nnz,)."""
    _check_weight(weight)
    matrix = weight.detach().cpu().reshape(weight.shape[0], -1)  # (rows, cols)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        csr = matrix.to_sparse_csr()
    col_dtype = torch.int16 if matrix.shape[1] <= 2**15 else torch.int32  # smallest type for indices < cols
    return {"crow": csr.crow_indices().to(torch.int32), "col": csr.col_indices().to(col_dtype),
            "values": csr.values().clone(), "shape": list(weight.shape)}


def decode_csr(code: dict) -> torch.Tensor:
    shape = _check_code(code, ("crow", "col"))
    rows, cols = shape[0], int(np.prod(shape[1:]))
    crow, col, values = code["crow"].long(), code["col"].long(), code["values"]
    if (len(crow) != rows + 1 or crow[0] != 0 or (crow.diff() < 0).any() or crow[-1] != len(values)
            or len(col) != len(values) or (len(col) and (col.min() < 0 or col.max() >= cols))):
        raise ValueError(f"code's crow/col/values do not describe a CSR matrix of shape {shape}")
    row_idx = torch.repeat_interleave(torch.arange(rows), crow.diff())  # (nnz,) row of each nonzero
    dense = torch.zeros(rows, cols, dtype=values.dtype)
    dense[row_idx, col] = values
    return dense.reshape(shape)


# --- Bitmask: one bit per weight says "nonzero here", then the nonzero values in order ---------------------


def encode_bitmask(weight: torch.Tensor) -> dict:
    _check_weight(weight)
    flat = weight.detach().cpu().flatten()
    bits = np.packbits((flat != 0).numpy())  # (ceil(n / 8),) uint8
    return {"bits": torch.from_numpy(bits), "values": flat[flat != 0].clone(), "shape": list(weight.shape)}


def decode_bitmask(code: dict) -> torch.Tensor:
    shape = _check_code(code, ("bits",))
    n = int(np.prod(shape))
    if code["bits"].dtype != torch.uint8 or len(code["bits"]) != (n + 7) // 8:
        raise ValueError(f"code['bits'] must be {(n + 7) // 8} uint8 bytes for shape {shape}")
    keep = torch.from_numpy(np.unpackbits(code["bits"].numpy())[:n].astype(bool))
    if int(keep.sum()) != len(code["values"]):
        raise ValueError(f"code['bits'] marks {int(keep.sum())} nonzeros, code['values'] has {len(code['values'])}")
    flat = torch.zeros(n, dtype=code["values"].dtype)
    flat[keep] = code["values"]
    return flat.reshape(shape)


# --- Relative index (Han et al. 2016): each nonzero stores the gap to the previous one in `index_bits` bits --


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ints < 2**bits -> a packed uint8 stream of `bits` bits each (little-endian within a code)."""
    bits = _check_int(bits, "bits", 1, 32)
    if not isinstance(codes, np.ndarray) or codes.ndim != 1 or codes.dtype.kind not in "iu":
        raise TypeError(f"codes must be a 1-D numpy array of ints, got {codes!r:.60}")
    if len(codes) and (codes.min() < 0 or codes.max() >= 2**bits):
        raise ValueError(f"codes must be in [0, 2**{bits}), got values in [{codes.min()}, {codes.max()}]")
    as_bits = (codes.astype(np.int64)[:, None] >> np.arange(bits)) & 1  # (n, bits)
    return np.packbits(as_bits.astype(np.uint8).flatten())


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first `count` codes of `bits` bits each from a stream made by `pack_bits`."""
    bits, count = _check_int(bits, "bits", 1, 32), _check_int(count, "count", 0)
    if not isinstance(packed, np.ndarray) or packed.ndim != 1 or packed.dtype != np.uint8:
        raise TypeError(f"packed must be a 1-D numpy uint8 array, got {packed!r:.60}")
    if len(packed) * 8 < count * bits:
        raise ValueError(f"packed holds {len(packed) * 8} bits, fewer than count * bits = {count * bits}")
    as_bits = np.unpackbits(packed)[:count * bits].reshape(count, bits).astype(np.int64)
    return (as_bits << np.arange(bits)).sum(1)


def encode_relative(weight: torch.Tensor, index_bits: int = 5) -> dict:
    """Nonzeros in order, each with (gap to the previous one - 1) in `index_bits` bits; longer gaps get fillers."""
    _check_weight(weight)
    index_bits = _check_int(index_bits, "index_bits", 1, 16)
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
    shape = _check_code(code, ("index",))
    n, count = int(np.prod(shape)), code.get("count")
    if code["index"].dtype != torch.uint8 or count != len(code["values"]):
        raise ValueError(f"code['count'] ({count!r}) must be len(code['values']), code['index'] must be uint8")
    steps = unpack_bits(code["index"].numpy(), code.get("index_bits"), count) + 1
    pos = torch.from_numpy(np.cumsum(steps) - 1)
    if len(pos) and pos[-1] >= n:
        raise ValueError(f"code's index reaches position {int(pos[-1])}, beyond the {n} weights of shape {shape}")
    flat = torch.zeros(n, dtype=code["values"].dtype)
    flat[pos] = code["values"]  # fillers write zeros
    return flat.reshape(shape)


ENCODERS = {"csr": (encode_csr, decode_csr), "bitmask": (encode_bitmask, decode_bitmask),
            "relative": (encode_relative, decode_relative)}


# --- Files -------------------------------------------------------------------------------------------------


def _state_dict(model_or_state) -> dict:
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    if not isinstance(state, dict):
        raise TypeError(f"model must be an nn.Module or a state_dict, got {type(model_or_state).__name__}")
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"model's state_dict entry {name!r} must be a tensor, got {type(t).__name__}")
    return state


def _digest(tensors: dict) -> str:
    """sha256 over every stored tensor's bytes and every field, so a damaged file is caught on load."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        for key, v in sorted(tensors[name].items()):
            is_tensor = isinstance(v, torch.Tensor)
            h.update(f"{name}/{key}/{(v.dtype, tuple(v.shape)) if is_tensor else v!r}".encode())
            if is_tensor:
                h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _path(path, name: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or Path, got {type(path).__name__}")
    return Path(path)


def _read(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"no sparse file at {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} is damaged, not a torch file, or holds objects other than tensors (refused: "
                         f"loaded with weights_only=True): {str(err).splitlines()[0][:200]}") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable sparse file (corrupted or truncated?): {err}") from err


def _written_by_us(path: Path) -> bool:
    try:
        return _read(path).get("lwkit_sparse") is not None
    except (ValueError, AttributeError):
        return False


def save_sparse(model: nn.Module | dict, path: str | Path, *, fmt: str = "csr", index_bits: int = 5,
                overwrite: bool = False) -> int:
    """Write the state_dict with every >= 2-D float tensor in format `fmt`; returns the file's size in bytes.

    The file appears whole or not at all (a temporary file, then renamed). An existing file is replaced only if
    `save_sparse` wrote it or `overwrite=True`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    index_bits, path = _check_int(index_bits, "index_bits", 1, 16), _path(path)
    if path.is_dir():
        raise IsADirectoryError(f"path {path} is a folder; give a file name such as {path / 'model.pt'}")
    if path.exists() and not overwrite and not _written_by_us(path):
        raise FileExistsError(f"{path} exists and was not written by save_sparse; pass overwrite=True to "
                              f"replace it, or choose another path")
    payload = {}
    for name, t in _state_dict(model).items():
        t = t.detach().cpu().to_dense() if t.layout != torch.strided else t.detach().cpu()
        if fmt == "dense" or t.dim() < 2 or not t.is_floating_point() or t.numel() == 0:
            payload[name] = {"kind": "dense", "tensor": t.clone()}
        else:
            codes = encode_relative(t, index_bits) if fmt == "relative" else ENCODERS[fmt][0](t)
            payload[name] = {"kind": fmt, **codes}
    blob = {"lwkit_sparse": 2, "format": fmt, "tensors": payload, "sha256": _digest(payload)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return os.path.getsize(path)


def load_sparse(path: str | Path) -> dict:
    """The dense state_dict from a file written by `save_sparse` (loaded with weights_only=True, checksum checked)."""
    path = _path(path)
    blob = _read(path)
    if not isinstance(blob, dict) or blob.get("lwkit_sparse") not in (1, 2) or not isinstance(blob.get("tensors"), dict):
        raise ValueError(f"{path} is not a file written by lwkit.sparse.save_sparse")
    if blob["lwkit_sparse"] == 2 and blob.get("sha256") != _digest(blob["tensors"]):
        raise ValueError(f"{path} is corrupted: its contents do not match the checksum written with them")
    state = {}
    for name, code in blob["tensors"].items():
        kind = code.get("kind") if isinstance(code, dict) else None
        try:
            state[name] = code["tensor"] if kind == "dense" else ENCODERS[kind][1](code)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
            raise ValueError(f"{path}: tensor {name!r} (kind {kind!r}) cannot be decoded: {err}") from err
    return state


def file_sizes(model: nn.Module, folder: str | Path, *, name: str = "model", index_bits: int = 5) -> dict[str, int]:
    """Write `model` in every format into `folder` as `{name}.{fmt}.pt`; format -> bytes on disk."""
    folder = _path(folder, "folder")
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise ValueError(f"name must be a plain file name stem (no folders), got {name!r}")
    return {fmt: save_sparse(model, folder / f"{name}.{fmt}.pt", fmt=fmt, index_bits=index_bits)
            for fmt in FORMATS}
