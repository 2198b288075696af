"""Shared plumbing of lwkit.deploy and lwkit.export (private): the error type, known-noise filters, argument
checks and the export helpers. Users import these names from lwkit.deploy."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

__all__: list[str] = []  # private module: users import DeployError, RUNTIMES and MAX_BATCH from lwkit.deploy

RUNTIMES = ("onnxruntime", "executorch")
MAX_BATCH = 1024  # upper bound of the dynamic batch dimension in .pte files (memory is planned for it)


class DeployError(RuntimeError):
    """An export or a runtime refused a model: the message names the runtime, the op and what to try."""



DeployError.__module__ = "lwkit.deploy"  # raised by every runtime; documented and imported from lwkit.deploy


# ---------------------------------------------------------------------------------------------------------
# Known harmless noise, silenced in one place:
# * torch.utils._pytree logs "<enum 'KernelPreference'> is an Enum subclass ... register_constant()" when
#   torchao (used by ExecuTorch's quantizer) is imported: a deprecation notice for torchao, not for us.
# * torch.onnx's exporter prints "[torch.onnx] Obtain model graph ... ✅" progress lines and warns about
#   its own internals (onnxscript optimizer, deprecated TorchScript paths it probes).
# * torch.export / PT2E warn that `capture_pre_autograd_graph`-era APIs and some ops are deprecated, and
#   ExecuTorch warns about experimental pybinding APIs (the thread-pool setter).
# * onnxruntime.quantization logs "Please consider to run pre-processing before quantization" even after
#   `quant_pre_process`, and ExecuTorch's C++ runtime prints cpuinfo probes ("[cpuinfo_utils.cpp] ...")
#   straight to file descriptor 2 when it loads a program; `_native_stderr` captures those and shows them
#   only inside an error message.


class _DropKnownLogs(logging.Filter):
    PATTERNS = ("is an Enum subclass", "pre-processing before quantization", "Obtain model graph",
                "Run decompositions", "Translate the graph", "Optimize the ONNX graph")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(p in record.getMessage() for p in self.PATTERNS)


for _name in ("torch.utils._pytree", "root", "onnxruntime", "torch.onnx", "onnxscript"):
    logging.getLogger(None if _name == "root" else _name).addFilter(_DropKnownLogs())


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(open(os.devnull, "w")) as sink:  # noqa: SIM115
        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        try:
            yield
        finally:
            sink.close()


@contextlib.contextmanager
def _captured_fd2():
    """Send what native code writes to file descriptor 2 into a temporary file while the block runs; yields a
    list that holds the captured text once the block has ended (also when it raised)."""
    out: list[str] = []
    try:
        saved, capture = os.dup(2), tempfile.TemporaryFile(mode="w+b")
    except OSError:  # no real fd 2 (some embedded interpreters): nothing to capture
        saved = capture = None
    if capture is not None:
        os.dup2(capture.fileno(), 2)
    try:
        yield out
    finally:
        if capture is not None:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            out.append(capture.read().decode(errors="replace"))
            capture.close()


@contextlib.contextmanager
def _native_stderr(runtime: str, what: str):
    """Capture what native code writes to fd 2 and what ExecuTorch's pybindings log through Python's
    sys.stdout/sys.stderr; on failure, put it in the error message instead of the output."""
    import io

    texts, failure = io.StringIO(), None
    with _captured_fd2() as native:
        try:
            with contextlib.redirect_stdout(texts), contextlib.redirect_stderr(texts):
                yield
        except Exception as exc:
            failure = exc
    if failure is not None:
        said = (texts.getvalue() + "".join(native)).strip()
        if said:
            raise DeployError(f"{runtime}: {what} failed: {failure}\n{runtime} said:\n{said}") from failure
        raise failure


def _require(package: str, runtime: str):
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as exc:
        pip = {"onnxruntime": "onnxruntime", "onnx": "onnx", "onnxscript": "onnxscript",
               "executorch": "executorch"}[package.split(".")[0]]
        raise ImportError(f"{runtime} needs the package {pip!r}, which is not installed: pip install {pip} "
                          f"(or install the course's environment, which includes it)") from exc



# ---------------------------------------------------------------------------------------------------------
# Checking arguments


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _check_inputs(example_input, name: str = "example_input") -> tuple[tuple, dict]:
    """(args, kwargs) from a tensor, a tuple of tensors, or a dict name -> tensor (for transformers)."""
    if isinstance(example_input, torch.Tensor):
        args, kwargs = (example_input,), {}
    elif isinstance(example_input, tuple) and example_input:
        args, kwargs = example_input, {}
    elif isinstance(example_input, dict) and example_input:
        args, kwargs = (), dict(example_input)
    else:
        raise TypeError(f"{name} must be a tensor, a non-empty tuple of tensors or a non-empty dict of "
                        f"name -> tensor, got {type(example_input).__name__}")
    tensors = list(args) + list(kwargs.values())
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError(f"{name} must hold only tensors, got {[type(t).__name__ for t in tensors]}")
    if any(t.dim() == 0 for t in tensors):
        raise ValueError(f"{name} tensors need a batch dimension (dim 0), got a 0-d tensor")
    batches = {int(t.shape[0]) for t in tensors}
    if len(batches) != 1 or 0 in batches:
        raise ValueError(f"{name} tensors must share one non-zero batch size (dim 0), got {sorted(batches)}")
    return args, kwargs


def _check_out_path(path, suffix: str, overwrite: bool, name: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}")
    path = Path(path)
    if path.suffix != suffix:
        raise ValueError(f"{name} must end in {suffix!r}, got {str(path)!r}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists: choose another {name} or pass overwrite=True")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder of {name} does not exist: {path.parent} (create it first)")
    return path


def _check_in_path(path, suffixes: tuple[str, ...], name: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if path.suffix not in suffixes:
        raise ValueError(f"{name} must be a {' or '.join(suffixes)} file, got {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{name} {str(path)!r} does not exist")
    return path


def _check_num_batches(num_batches) -> None:
    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int)
                                    or num_batches < 1):
        raise ValueError(f"num_batches must be None or an int >= 1, got {num_batches!r}")


def _calibration_inputs(data, num_batches: int | None, name: str = "calibration_data") -> list[torch.Tensor]:
    """Input tensors from a loader of (x, y) batches or one tensor (split into batches of 128)."""
    _check_num_batches(num_batches)
    if isinstance(data, torch.Tensor):
        batches = list(data.split(128)) if data.dim() > 0 else []
    elif data is None or isinstance(data, (str, bytes, dict)) or not hasattr(data, "__iter__"):
        raise TypeError(f"{name} must be a tensor of inputs or an iterable of (x, y) batches, "
                        f"got {type(data).__name__}")
    else:
        batches = []
        for b in data:
            if num_batches is not None and len(batches) >= num_batches:
                break
            x = b[0] if isinstance(b, (tuple, list)) else b
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name} must yield tensors or (x, y) batches, got {type(x).__name__}")
            batches.append(x)
    batches = [b for b in batches if b.numel()][:num_batches]
    if not batches:
        raise ValueError(f"{name} is empty: it yielded no input batches")
    return batches


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _op_from(exc: BaseException) -> str | None:
    """The operator an exporter complained about, if its message (or its cause's) names one."""
    text = _ANSI.sub("", f"{exc}\n{exc.__cause__ or ''}")
    for pattern in (r"\b(?!torch::|c10::|std::)(\w+::\w+(?:\.\w+)?)", r"\b((?:aten|torch\.ops\.\w+)\.\w+(?:\.\w+)?)",
                    r"\b(\w+\.\w+\.default)\b"):
        match = re.search(pattern, text)
        if match:
            return match.group(1)
    return None


def _export_error(runtime: str, exc: Exception, hint: str) -> DeployError:
    op = _op_from(exc)
    lines = _ANSI.sub("", str(exc)).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    where = f" at op {op}" if op else " (no op named in the error; see the chained exception)"
    return DeployError(f"{runtime} export failed{where}: {first}\nWhat to try: {hint}")


def _trace_inputs(args: tuple, kwargs: dict, dynamic_batch: bool) -> tuple[tuple, dict]:
    """torch.export specialises a dimension of size 1, so a dynamic batch is traced with batch 2."""
    if not dynamic_batch or next(iter(args or kwargs.values())).shape[0] != 1:
        return args, kwargs
    twice = lambda t: torch.cat([t, t])  # noqa: E731
    return tuple(twice(t) for t in args), {k: twice(t) for k, t in kwargs.items()}


def _dynamic_shapes(args: tuple, kwargs: dict, dynamic_batch: bool, max_batch: int | None,
                    dynamic_seq: bool = False):
    """torch.export dynamic_shapes: dim 0 (batch) and, with dynamic_seq, dim 1 (sequence) of every input."""
    dims = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=max_batch) if max_batch else torch.export.Dim("batch", min=1)
    if dynamic_seq:
        dims[1] = torch.export.Dim("sequence", min=2, max=4096)
    if not dims:
        return None
    if kwargs:
        return {k: dict(dims) for k in kwargs}
    return tuple(dict(dims) for _ in args)
