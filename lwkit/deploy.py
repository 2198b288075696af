"""Deployment (部署): export a model to a real runtime file, load it back, and measure it against PyTorch.

Two runtimes, used as they are (nothing re-implemented here):

* **ONNX + ONNX Runtime**: `export_onnx` (torch.onnx's torch.export-based exporter), then int8 with
  `quantize_onnx_dynamic` (int8 weights, activation ranges measured per batch at run time: for
  Linear-heavy models) or `quantize_onnx_static` (QDQ format, activation ranges calibrated in advance:
  for CNNs). ONNX Runtime fuses QuantizeLinear -> Conv -> DequantizeLinear into one int8 kernel.
* **ExecuTorch + XNNPACK**: `export_pte` writes a `.pte` program whose layers are delegated to XNNPACK;
  int8 goes through PT2E with the `XNNPACKQuantizer` (per-channel symmetric weights).

`load(path)` gives a `Runner` (torch tensors in, a torch tensor out) for either file, and `measure`
lays eager models, runners and files side by side: bytes on disk, latency, agreement with the eager
model and accuracy. Files are never overwritten unless `overwrite=True`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lwkit import measure as _measure

__all__ = ["RUNTIMES", "DeployError", "Runner", "DeployTable", "export_onnx", "quantize_onnx_dynamic",
           "quantize_onnx_static", "export_pte", "load", "measure", "versions", "file_size_bytes", "executorch_threads"]

RUNTIMES = ("onnxruntime", "executorch")
MAX_BATCH = 1024  # upper bound of the dynamic batch dimension in .pte files (memory is planned for it)


class DeployError(RuntimeError):
    """An export or a runtime refused a model: the message names the runtime, the op and what to try."""


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
def _native_stderr(runtime: str, what: str):
    """Capture what native code writes to fd 2 and what ExecuTorch's pybindings log through Python's
    sys.stdout/sys.stderr; on failure, put it in the error message instead of the output."""
    import io

    texts = io.StringIO()
    try:
        saved, capture = os.dup(2), tempfile.TemporaryFile(mode="w+b")
    except OSError:  # no real fd 2 (some embedded interpreters): capture the Python streams only
        saved = capture = None
    if capture is not None:
        os.dup2(capture.fileno(), 2)
    try:
        with contextlib.redirect_stdout(texts), contextlib.redirect_stderr(texts):
            yield
    except Exception as exc:
        native = texts.getvalue()
        if capture is not None:
            os.dup2(saved, 2)
            capture.seek(0)
            native += capture.read().decode(errors="replace")
        if native.strip():
            raise DeployError(f"{runtime}: {what} failed: {exc}\n{runtime} said:\n{native.strip()}") from exc
        raise
    finally:
        if capture is not None:
            os.dup2(saved, 2)
            os.close(saved)
            capture.close()


def _require(package: str, runtime: str):
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as exc:
        pip = {"onnxruntime": "onnxruntime", "onnx": "onnx", "onnxscript": "onnxscript",
               "executorch": "executorch"}[package.split(".")[0]]
        raise ImportError(f"{runtime} needs the package {pip!r}, which is not installed: pip install {pip} "
                          f"(or install the course's environment, which includes it)") from exc


def versions() -> dict:
    """Versions of torch and each runtime package (None where not installed)."""
    from importlib import metadata

    out = {"torch": torch.__version__}
    for pkg in ("onnx", "onnxruntime", "onnxscript", "executorch", "torchao"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


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


def _dynamic_shapes(args: tuple, kwargs: dict, dynamic_batch: bool, max_batch: int | None):
    if not dynamic_batch:
        return None
    batch = torch.export.Dim("batch", min=1, max=max_batch) if max_batch else torch.export.Dim("batch", min=1)
    if kwargs:
        return {k: {0: batch} for k in kwargs}
    return tuple({0: batch} for _ in args)


# ---------------------------------------------------------------------------------------------------------
# ONNX and ONNX Runtime


def export_onnx(model: nn.Module, example_input, path, *, dynamic_batch: bool = True,
                input_names: list[str] | None = None, opset: int | None = None,
                overwrite: bool = False) -> Path:
    """Export `model` (eval mode, a copy) to a single fp32 `.onnx` file with torch.onnx's torch.export path.

    `example_input`: a tensor, a tuple of tensors, or a dict name -> tensor (keyword inputs, e.g. a
    transformers model's `input_ids` / `attention_mask`). With `dynamic_batch` the file accepts any batch.
    """
    _check_model(model)
    args, kwargs = _check_inputs(example_input)
    path = _check_out_path(path, ".onnx", overwrite)
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or not 17 <= opset <= 23):
        raise ValueError(f"opset must be None or an int in [17, 23] (what the exporter supports), got {opset!r}")
    names = list(kwargs) if kwargs else [f"input_{i}" for i in range(len(args))] if len(args) > 1 else ["x"]
    if input_names is not None:
        if (not isinstance(input_names, (list, tuple)) or len(input_names) != len(names)
                or not all(isinstance(n, str) and n for n in input_names)):
            raise ValueError(f"input_names must be a list of {len(names)} non-empty strings, got {input_names!r}")
        names = list(input_names)
    _require("onnx", "ONNX export")
    _require("onnxscript", "ONNX export")
    model = copy.deepcopy(model).cpu().eval()
    t_args, t_kwargs = _trace_inputs(args, kwargs, dynamic_batch)
    tmp = path.with_name(path.name + ".partial")
    try:
        with _quiet(), _native_stderr("ONNX export", "export"):
            torch.onnx.export(model, t_args, str(tmp), kwargs=t_kwargs or None, dynamo=True, verbose=False,
                              external_data=False, input_names=names if not kwargs else None,
                              output_names=["output"], opset_version=opset,
                              dynamic_shapes=_dynamic_shapes(t_args, t_kwargs, dynamic_batch, None))
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise _export_error("ONNX (torch.onnx.export, dynamo)", exc,
                            "replace or rewrite that op (a custom op without an ONNX translation, a custom autograd.Function or data-dependent "
                            "Python control flow cannot be exported), try opset=20, or export with "
                            "dynamic_batch=False") from exc
    os.replace(tmp, path)
    return path


def quantize_onnx_dynamic(fp32_path, out_path, *, per_channel: bool = True, overwrite: bool = False) -> Path:
    """Dynamic int8 with ONNX Runtime: int8 weights for MatMul/Gemm (and friends), activations quantized
    per batch at run time. No calibration; the usual choice for Linear-heavy models (MLPs, transformers)."""
    fp32_path = _check_in_path(fp32_path, (".onnx",), "fp32_path")
    out_path = _check_out_path(out_path, ".onnx", overwrite, "out_path")
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel must be True or False, got {per_channel!r}")
    q = _require("onnxruntime.quantization", "ONNX Runtime quantization")
    with tempfile.TemporaryDirectory() as folder, _quiet():
        pre = Path(folder) / "pre.onnx"
        q.shape_inference.quant_pre_process(str(fp32_path), str(pre))
        q.quantize_dynamic(str(pre), str(out_path), per_channel=per_channel, weight_type=q.QuantType.QInt8,
                           op_types_to_quantize=["MatMul", "Gemm", "Attention"])
    return out_path


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of input batches."""

    def __init__(self, name: str, batches: list[torch.Tensor]):
        self.items = iter([{name: b.detach().cpu().numpy()} for b in batches])

    def get_next(self):
        return next(self.items, None)

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def quantize_onnx_static(fp32_path, out_path, calibration_data, *, per_channel: bool = True,
                         num_batches: int | None = None, overwrite: bool = False) -> Path:
    """Static int8 with ONNX Runtime, QDQ format: int8 weights (per channel) and int8 activations whose
    ranges are calibrated (min-max) on `calibration_data` (a tensor of inputs or a loader of (x, y))."""
    fp32_path = _check_in_path(fp32_path, (".onnx",), "fp32_path")
    out_path = _check_out_path(out_path, ".onnx", overwrite, "out_path")
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel must be True or False, got {per_channel!r}")
    batches = _calibration_inputs(calibration_data, num_batches)
    q = _require("onnxruntime.quantization", "ONNX Runtime quantization")
    ort = _require("onnxruntime", "ONNX Runtime")
    inputs = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).get_inputs()
    if len(inputs) != 1:
        raise ValueError(f"quantize_onnx_static calibrates models with one input, {fp32_path} has "
                         f"{[i.name for i in inputs]}: use quantize_onnx_dynamic for multi-input models")
    with tempfile.TemporaryDirectory() as folder, _quiet():
        pre = Path(folder) / "pre.onnx"
        q.shape_inference.quant_pre_process(str(fp32_path), str(pre))
        q.quantize_static(str(pre), str(out_path), _Reader(inputs[0].name, batches),
                          quant_format=q.QuantFormat.QDQ, per_channel=per_channel,
                          activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                          calibrate_method=q.CalibrationMethod.MinMax)
    return out_path


# ---------------------------------------------------------------------------------------------------------
# ExecuTorch (XNNPACK)


def _restore_batch_bounds(edge, bounds: dict) -> None:
    """XNNPACK lowering re-traces convolutions on fake tensors, and torch's fake conv picks a kernel by
    `batch >= 16`, which narrows the batch to [2, 15]; memory would then be planned for 15 images.
    The delegate itself handles any batch, so put back the range the user exported with."""
    for node in edge.exported_program().graph.nodes:
        val = node.meta.get("val")
        for size in getattr(val, "shape", ()):
            if isinstance(size, torch.SymInt):
                env = size.node.shape_env
                for sym, value_range in bounds.items():
                    env.var_to_range[sym] = value_range
                return


def _drop_identity_pools(model: nn.Module, args: tuple) -> list[str]:
    """Replace adaptive pools whose output size equals their input size (identities, like SmallCNN's 7x7
    -> 7x7 pool) by nn.Identity: XNNPACK does not take `_adaptive_avg_pool2d`, so it would split the
    program into two delegates with a portable kernel between them. Returns the names replaced."""
    same, hooks = [], []
    for name, m in model.named_modules():
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: same.append(name) if inp[0].shape == out.shape else None))
    try:
        with torch.no_grad():
            model(*args)
    finally:
        for h in hooks:
            h.remove()
    for name in set(same):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    return sorted(set(same))


def export_pte(model: nn.Module, example_input, path, *, int8: bool = False, calibration_data=None,
               num_batches: int | None = None, dynamic_batch: bool = True, max_batch: int = MAX_BATCH,
               overwrite: bool = False) -> Path:
    """Export `model` to an ExecuTorch `.pte` program delegated to XNNPACK (fp32, or int8 via PT2E).

    int8: `torch.export` -> `prepare_pt2e` with XNNPACKQuantizer (per-channel symmetric int8 weights,
    int8 activations) -> calibrate on `calibration_data` -> `convert_pt2e` -> export -> lower -> write.
    With `dynamic_batch` the program runs any batch from 1 to `max_batch` (memory is planned for
    `max_batch`); otherwise only the example's batch size, which lets XNNPACK take the whole graph as one
    delegate (a dynamic flatten stays outside it): the usual choice for batch-1 mobile inference.
    Adaptive pools that are identities on the example are dropped first (see `_drop_identity_pools`).
    """
    _check_model(model)
    args, kwargs = _check_inputs(example_input)
    path = _check_out_path(path, ".pte", overwrite)
    if not isinstance(int8, bool):
        raise TypeError(f"int8 must be True or False, got {int8!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 2:
        raise ValueError(f"max_batch must be an int >= 2, got {max_batch!r}")
    if kwargs:
        raise TypeError("export_pte takes a tensor or a tuple of tensors as example_input (positional inputs); "
                        "wrap a keyword-input model in a module whose forward takes positional tensors")
    if int8:
        if calibration_data is None:
            raise ValueError("calibration_data is required for int8=True: a tensor of inputs or a loader of (x, y)")
        batches = _calibration_inputs(calibration_data, num_batches)
    elif calibration_data is not None or num_batches is not None:
        raise ValueError("calibration_data and num_batches are only used with int8=True")
    _require("executorch", "ExecuTorch")
    with _quiet():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

    model = copy.deepcopy(model).cpu().eval()
    _drop_identity_pools(model, args)
    t_args, _ = _trace_inputs(args, {}, dynamic_batch)
    shapes = _dynamic_shapes(t_args, {}, dynamic_batch, max_batch)
    stage = "torch.export"
    try:
        with _quiet(), _native_stderr("ExecuTorch", "export"):
            if int8:
                from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                    XNNPACKQuantizer,
                    get_symmetric_quantization_config,
                )
                from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

                stage = "PT2E quantization (XNNPACKQuantizer)"
                # calibrate on a dynamic-batch graph (whole calibration batches at once), whatever the file's batch
                c_args, _ = _trace_inputs(args, {}, True)
                calib = torch.export.export(model, c_args, dynamic_shapes=_dynamic_shapes(c_args, {}, True, None))
                quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
                prepared = prepare_pt2e(calib.module(), quantizer)
                with torch.no_grad():
                    for x in batches:
                        prepared(x)
                model = convert_pt2e(prepared)
                stage = "torch.export of the int8 model"
            exported = torch.export.export(model, t_args, dynamic_shapes=shapes)
            stage = "lowering to XNNPACK"
            bounds = dict(exported.range_constraints)
            edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
            _restore_batch_bounds(edge, bounds)
            program = edge.to_executorch()
    except Exception as exc:
        raise _export_error(f"ExecuTorch ({stage})", exc,
                            "ops XNNPACK does not take stay on ExecuTorch's portable CPU kernels; an op that neither "
                            "supports must be replaced in the model. For export errors about the batch dimension "
                            "try dynamic_batch=False (one file per batch size)") from exc
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(program.buffer)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------------------
# Running a file

def _default_threads(threads) -> int:
    threads = _measure.default_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be None or a positive int, got {threads!r}")
    return threads


def executorch_threads() -> int:
    """Threads of ExecuTorch's process-wide XNNPACK pool (the CPU count when Python started)."""
    _require("executorch", "ExecuTorch")
    with _quiet(), _native_stderr("ExecuTorch", "reading the thread pool size"):
        from executorch.extension.pybindings import portable_lib

        return int(portable_lib._threadpool_get_thread_count())


def file_size_bytes(path) -> int:
    """Bytes on disk of a model file (plus its `.data` side file, if ONNX external data was used)."""
    path = _check_in_path(path, (".onnx", ".pte"))
    extra = path.with_name(path.name + ".data")
    return path.stat().st_size + (extra.stat().st_size if extra.is_file() else 0)


@dataclass
class Runner:
    """A loaded `.onnx` (ONNX Runtime) or `.pte` (ExecuTorch) file: `runner(x)` -> logits as a torch tensor."""

    path: Path
    runtime: str  # 'onnxruntime' or 'executorch'
    threads: int  # intra-op threads (ONNX Runtime) or the XNNPACK thread pool size (ExecuTorch)
    size_bytes: int  # bytes of the file on disk
    input_names: list[str]
    _session: object = None
    max_batch: int | None = None  # ExecuTorch: the largest batch the program's memory plan holds
    _warm: bool = False  # ExecuTorch: ran once (its first run's native log lines were captured)

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        if kwargs and args:
            raise TypeError("pass inputs either positionally or by name, not both")
        tensors = [kwargs[n] for n in self.input_names if n in kwargs] if kwargs else list(args)
        if kwargs and set(kwargs) != set(self.input_names):
            raise ValueError(f"inputs must be named {self.input_names}, got {sorted(kwargs)}")
        if len(tensors) != len(self.input_names) or not all(isinstance(t, torch.Tensor) for t in tensors):
            raise TypeError(f"{self.path.name} takes {len(self.input_names)} tensor input(s) "
                            f"{self.input_names}, got {[type(t).__name__ for t in tensors]}")
        if self.runtime == "onnxruntime":
            feed = {n: t.detach().cpu().numpy() for n, t in zip(self.input_names, tensors)}
            return torch.from_numpy(self._session.run(None, feed)[0])
        batch = int(tensors[0].shape[0]) if tensors[0].dim() else 0
        if self.max_batch is not None and not 1 <= batch <= self.max_batch:
            raise ValueError(f"{self.path.name} was exported for batches of 1 to {self.max_batch} "
                             f"(export_pte(..., max_batch=...) or dynamic_batch), got batch {batch}")
        inputs = tuple(t.detach().cpu().contiguous() for t in tensors)
        if self._warm:  # no capture on the timed path: it would cost more than a batch-1 int8 inference
            return self._session.execute(inputs)[0]
        with _native_stderr("ExecuTorch", f"running {self.path.name}"):  # the first run prints CPU probes
            out = self._session.execute(inputs)
        self._warm = True
        return out[0]

    def __repr__(self) -> str:
        return (f"Runner({self.runtime}, {self.path.name}, {_measure.format_bytes(self.size_bytes)}, "
                f"{self.threads} threads)")


def load(path, *, threads: int | None = None) -> Runner:
    """Load an `.onnx` file into ONNX Runtime or a `.pte` file into ExecuTorch, with a fixed thread count."""
    path = _check_in_path(path, (".onnx", ".pte"))
    if path.suffix == ".pte" and threads is None:
        threads = executorch_threads()
    threads = _default_threads(threads)
    if path.suffix == ".onnx":
        ort = _require("onnxruntime", "ONNX Runtime")
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only
        # ORT's idle workers spin for a while after each run; in interleaved timings they would steal the
        # CPU from whichever model is timed next, so they sleep instead (costs ORT a few µs per call).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise DeployError(f"onnxruntime could not load {path}: {str(exc).splitlines()[0]}\nWhat to try: "
                              f"re-export it (an op missing from onnxruntime {ort.__version__} needs a lower "
                              f"opset or a newer onnxruntime)") from exc
        names = [i.name for i in session.get_inputs()]
        return Runner(path, "onnxruntime", threads, file_size_bytes(path), names, session)
    _require("executorch", "ExecuTorch")
    with _quiet(), _native_stderr("ExecuTorch", f"loading {path.name}"):
        from executorch.runtime import Runtime
    pool = executorch_threads()
    if threads != pool:
        # The pool is process-wide and sized to the CPU count at start; executorch 1.5's
        # `_unsafe_reset_threadpool` crashed this process after an in-process export, so lwkit never calls it.
        raise ValueError(f"threads must equal ExecuTorch's process-wide XNNPACK thread pool size ({pool}) for "
                         f"{path.name}, got {threads}: time every variant with threads={pool}, or start Python "
                         f"with taskset/cgroups limiting it to {threads} CPUs")
    with _quiet(), _native_stderr("ExecuTorch", f"loading {path.name}"):

        program = Runtime.get().load_program(path)
        method = program.load_method("forward")
    meta = method.metadata
    names = [f"input_{i}" for i in range(meta.num_inputs())]
    max_batch = int(meta.input_tensor_meta(0).sizes()[0]) if meta.num_inputs() else None
    return Runner(path, "executorch", threads, file_size_bytes(path), names, method, max_batch)


# ---------------------------------------------------------------------------------------------------------
# Measuring variants side by side


class DeployTable(_measure.Comparison):
    """`lwkit.measure.Comparison` with the deployment columns: runtime, latency per batch size, agreement."""

    def __getitem__(self, name: str) -> dict:
        return self.row(name)

    def _columns(self):
        cols = [("runtime", "runtime", "{}"), ("size_bytes", "size on disk", None), ("size_ratio", "size ratio",
                                                                                       "{:.2f}x")]
        for b in self.batch_sizes:
            cols += [(f"latency_ms_b{b}", f"ms @ batch {b} (IQR)", None), (f"speedup_b{b}", f"speedup @ {b}",
                                                                            "{:.2f}x")]
        cols += [("agreement", "top-1 agreement", "{:.2%}"), ("max_abs_diff", "max |Δ logit|", "{:.3g}"),
                 ("accuracy", "accuracy", "{:.2%}"), ("acc_delta_pp", "Δ acc (pts)", "{:+.2f}")]
        return [c for c in cols if any(r.get(c[0]) is not None for r in self.rows)]

    def _cell(self, r: dict, key: str, fmt: str | None) -> str:
        if key.startswith("latency_ms_b") and r.get(key) is not None:
            return f"{r[key]:.3f} ({r.get(key.replace('latency_ms', 'latency_iqr_ms'), 0):.3f})"
        return super()._cell(r, key, fmt)

    @property
    def batch_sizes(self) -> list[int]:
        return sorted({int(k[len("latency_ms_b"):]) for r in self.rows for k in r if k.startswith("latency_ms_b")})

    def caption(self) -> str:
        text = f"ratios are baseline / model (higher = smaller or faster), baseline: {self.baseline}"
        if self.threads:
            text += (f"; latency: median of interleaved timed runs, {self.threads} threads; agreement: same "
                     f"top-1 class as the reference eager model")
        return text


def _as_callable(variant, name: str, threads: int):
    """(callable, runtime, size_bytes) for an nn.Module, a Runner or a model file path."""
    if isinstance(variant, Runner):
        if variant.threads != threads:
            return load(variant.path, threads=threads), variant.runtime, variant.size_bytes
        return variant, variant.runtime, variant.size_bytes
    if isinstance(variant, (str, os.PathLike)):
        runner = load(variant, threads=threads)
        return runner, runner.runtime, runner.size_bytes
    if isinstance(variant, nn.Module):
        return variant.eval(), "PyTorch eager", _measure.model_size_bytes(variant)
    raise TypeError(f"variant {name!r} must be an nn.Module, a Runner or a path to an .onnx/.pte file, "
                    f"got {type(variant).__name__}")


def _call(model, x):
    with torch.inference_mode():
        if isinstance(x, dict):
            return model(**x)
        limit = getattr(model, "max_batch", None)  # a fixed-batch .pte: run the batch in pieces it takes
        if isinstance(x, torch.Tensor) and limit and len(x) > limit:
            return torch.cat([_logits(model(c)) for c in x.split(limit)])
        return model(*x) if isinstance(x, tuple) else model(x)


def _fits(fn, batch: int) -> bool:
    limit = getattr(fn, "max_batch", None)
    return limit is None or batch <= limit


def _logits(out) -> torch.Tensor:
    """The logits of a model output: a tensor, the first of a tuple, or `.logits` (transformers)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot find logits in a model output of type {type(out).__name__}")


def _batch_of(example, n: int):
    """The first n rows of every input tensor (repeated if the example is smaller than n)."""
    def take(t):
        reps = -(-n // t.shape[0])
        return t.repeat(reps, *([1] * (t.dim() - 1)))[:n] if reps > 1 else t[:n]

    if isinstance(example, dict):
        return {k: take(t) for k, t in example.items()}
    if isinstance(example, tuple):
        return tuple(take(t) for t in example)
    return take(example)


class _Positional:
    """Calls `model(**dict(zip(names, args)))`, so `measure_latency` can time keyword-input models."""

    def __init__(self, model, names):
        self.model, self.names = model, names

    def __call__(self, *args):
        return self.model(**dict(zip(self.names, args)))


def _test_pairs(test_data, name: str = "test_data") -> list[tuple]:
    if isinstance(test_data, tuple) and len(test_data) == 2 and isinstance(test_data[1], torch.Tensor):
        x, y = test_data
        if len(y) == 0:
            raise ValueError(f"{name} is empty")
        xs = x.split(256) if isinstance(x, torch.Tensor) else [x]
        return list(zip(xs, y.split(256), strict=True)) if isinstance(x, torch.Tensor) else [(x, y)]
    if isinstance(test_data, (str, bytes, dict)) or not hasattr(test_data, "__iter__"):
        raise TypeError(f"{name} must be an (x, y) pair of tensors or a loader of (x, y) batches, "
                        f"got {type(test_data).__name__}")
    pairs = [tuple(b) for b in test_data]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"{name} must yield (x, y) batches, got {len(pairs)} batches")
    return pairs


def measure(variants: dict, example_input, *, reference=None, test_data=None, batch_sizes=(1, 64),
            threads: int | None = None, warmup: int = 10, repeats: int = 50, rounds: int = 5,
            baseline: str | None = None) -> DeployTable:
    """Size on disk, latency at each batch size, agreement with `reference` and accuracy, for each variant.

    Args:
        variants: name -> nn.Module (eager), `Runner`, or path to an `.onnx` / `.pte` file.
        example_input: a batch (tensor, tuple or dict of tensors); it is cut (or repeated) to each batch size.
        reference: the eager model agreement is measured against (default: the baseline, if an nn.Module).
        test_data: (x, y) tensors or a loader of (x, y): accuracy, and agreement on all of its inputs
            (without it, agreement is measured on `example_input`).
        rounds: latency is measured in `rounds` interleaved passes over the variants (`repeats` timed runs
            per variant in all), so a machine that gets busier mid-way slows every variant alike.
    """
    if not isinstance(variants, dict) or not variants or not all(isinstance(k, str) for k in variants):
        raise ValueError("variants must be a non-empty dict of name (str) -> model, Runner or file path")
    _check_inputs(example_input)
    threads = _default_threads(threads)
    for arg, value, low in (("warmup", warmup, 0), ("repeats", repeats, 1), ("rounds", rounds, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{arg} must be an int >= {low}, got {value!r}")
    if (not isinstance(batch_sizes, (tuple, list)) or not batch_sizes
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in batch_sizes)):
        raise ValueError(f"batch_sizes must be a non-empty tuple of ints >= 1, got {batch_sizes!r}")
    baseline = next(iter(variants)) if baseline is None else baseline
    if baseline not in variants:
        raise ValueError(f"baseline must be one of {list(variants)}, got {baseline!r}")
    if reference is None and isinstance(variants[baseline], nn.Module):
        reference = variants[baseline]
    if reference is not None:
        _check_model(reference)
    pairs = _test_pairs(test_data) if test_data is not None else None
    calls = {}
    rows = []
    for name, variant in variants.items():
        fn, runtime, size = _as_callable(variant, name, threads)
        calls[name] = fn
        rows.append({"name": name, "runtime": runtime, "size_bytes": size})
    # 1) latency, interleaved: each round times every variant for repeats / rounds runs
    per_round = max(1, repeats // rounds)
    for b in batch_sizes:
        xb = _batch_of(example_input, b)
        args = tuple(xb.values()) if isinstance(xb, dict) else xb
        samples = {name: [] for name in variants}
        for i in range(rounds):
            for name, fn in calls.items():
                if not _fits(fn, b):  # a fixed-batch .pte cannot run this batch size: no timing
                    continue
                timed = _Positional(fn, list(xb)) if isinstance(xb, dict) else fn
                lat = _measure.measure_latency(timed, args, warmup=warmup if i == 0 else 1, repeats=per_round,
                                               threads=threads)
                samples[name] += lat.samples_ms
        for r in rows:
            if samples[r["name"]]:
                q = torch.tensor(samples[r["name"]]).quantile(torch.tensor([0.25, 0.5, 0.75])).tolist()
                r[f"latency_ms_b{b}"], r[f"latency_iqr_ms_b{b}"] = q[1], q[2] - q[0]
            else:
                r[f"latency_ms_b{b}"] = r[f"latency_iqr_ms_b{b}"] = None
    # 2) agreement with the reference and accuracy
    inputs = [x for x, _ in pairs] if pairs else [example_input]
    ref_logits = [_logits(_call(reference, x)).float() for x in inputs] if reference is not None else None
    for r in rows:
        fn = calls[r["name"]]
        outs = [_logits(_call(fn, x)).float() for x in inputs]
        if ref_logits is not None:
            same = sum(int((o.argmax(-1) == ref.argmax(-1)).sum()) for o, ref in zip(outs, ref_logits))
            r["agreement"] = same / sum(len(ref) for ref in ref_logits)
            r["max_abs_diff"] = max(float((o - ref).abs().max()) for o, ref in zip(outs, ref_logits))
        if pairs:
            correct = sum(int((o.argmax(-1) == y).sum()) for o, (_, y) in zip(outs, pairs))
            r["accuracy"] = correct / sum(len(y) for _, y in pairs)
    base = next(r for r in rows if r["name"] == baseline)
    for r in rows:
        r["size_ratio"] = base["size_bytes"] / r["size_bytes"]
        for b in batch_sizes:
            ok = r[f"latency_ms_b{b}"] is not None and base[f"latency_ms_b{b}"] is not None
            r[f"speedup_b{b}"] = base[f"latency_ms_b{b}"] / r[f"latency_ms_b{b}"] if ok else None
        first = batch_sizes[0]  # Comparison's own columns: the first batch size
        r["latency_ms"], r["latency_iqr_ms"], r["speedup"] = (r[f"latency_ms_b{first}"],
                                                              r[f"latency_iqr_ms_b{first}"], r[f"speedup_b{first}"])
        if r.get("accuracy") is not None and base.get("accuracy") is not None:
            r["acc_delta_pp"] = 100 * (r["accuracy"] - base["accuracy"])
    return DeployTable(rows=rows, baseline=baseline, threads=threads, batch_size=batch_sizes[0])
