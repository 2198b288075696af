"""Export (导出) a PyTorch model to a runtime file: ONNX (fp32, then dynamic or static int8 with ONNX Runtime's
quantizer) and ExecuTorch `.pte` (fp32 or int8 through PT2E and the XNNPACK quantizer).

Nothing is re-implemented: these call torch.onnx, onnxruntime.quantization and ExecuTorch. Files are never
overwritten unless `overwrite=True`. `lwkit.deploy` loads the files back and measures them; the functions are
also reachable as `lwkit.deploy.export_onnx` etc.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from lwkit._runtime import (
    MAX_BATCH,
    _calibration_inputs,
    _check_in_path,
    _check_inputs,
    _check_model,
    _check_out_path,
    _dynamic_shapes,
    _export_error,
    _native_stderr,
    _quiet,
    _require,
    _trace_inputs,
)

__all__ = ["EXPORTERS", "export_onnx", "quantize_onnx_dynamic", "optimize_onnx_transformer", "quantize_onnx_static",
           "export_pte"]


# ---------------------------------------------------------------------------------------------------------
# ONNX and ONNX Runtime


EXPORTERS = ("dynamo", "torchscript")


def export_onnx(model: nn.Module, example_input, path, *, dynamic_batch: bool = True, dynamic_seq: bool = False,
                input_names: list[str] | None = None, opset: int | None = None, exporter: str = "dynamo",
                overwrite: bool = False) -> Path:
    """Export `model` (eval mode, a copy) to a single fp32 `.onnx` file.

    `example_input`: a tensor, a tuple of tensors, or a dict name -> tensor (keyword inputs, e.g. a
    transformers model's `input_ids` / `attention_mask`). With `dynamic_batch` the file accepts any batch;
    with `dynamic_seq` also any length along dim 1 of every input (token sequences).
    `exporter`: "dynamo" (torch.onnx's torch.export path, the default) or "torchscript" (the older tracer,
    deprecated in torch but still shipped: its graph of a BERT layer is the one ONNX Runtime's transformer
    optimizer recognises and fuses, see `optimize_onnx_transformer`).
    """
    _check_model(model)
    args, kwargs = _check_inputs(example_input)
    path = _check_out_path(path, ".onnx", overwrite)
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or not 17 <= opset <= 23):
        raise ValueError(f"opset must be None or an int in [17, 23] (what the exporter supports), got {opset!r}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    for flag, value in (("dynamic_batch", dynamic_batch), ("dynamic_seq", dynamic_seq)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be True or False, got {value!r}")
    if dynamic_seq and any(t.dim() < 2 for t in list(args) + list(kwargs.values())):
        raise ValueError("dynamic_seq=True needs every input to have a dim 1 (batch, sequence, ...), got shapes "
                         f"{[tuple(t.shape) for t in list(args) + list(kwargs.values())]}")
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
        with _quiet(), warnings.catch_warnings(), _native_stderr("ONNX export", "export"):
            if exporter == "torchscript":  # the tracer's TracerWarnings are Warning, not UserWarning
                warnings.simplefilter("ignore")
                axes = {0: "batch"} if dynamic_batch else {}
                axes.update({1: "sequence"} if dynamic_seq else {})
                torch.onnx.export(model, tuple(t_args) + ((t_kwargs,) if t_kwargs else ()), str(tmp), dynamo=False,
                                  input_names=names, output_names=["output"], opset_version=opset or 17,
                                  dynamic_axes={n: dict(axes) for n in names} | {"output": {0: "batch"}}
                                  if axes else None)
            else:
                shapes = _dynamic_shapes(t_args, t_kwargs, dynamic_batch, None, dynamic_seq)
                torch.onnx.export(model, t_args, str(tmp), kwargs=t_kwargs or None, dynamo=True, verbose=False,
                                  external_data=False, input_names=names if not kwargs else None,
                                  output_names=["output"], opset_version=opset, dynamic_shapes=shapes)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise _export_error(f"ONNX (torch.onnx.export, {exporter})", exc,
                            "replace or rewrite that op (a custom op without an ONNX translation, a custom autograd.Function or data-dependent "
                            "Python control flow cannot be exported), try opset=20, or export with "
                            "dynamic_batch=False") from exc
    os.replace(tmp, path)
    return path


def quantize_onnx_dynamic(fp32_path, out_path, *, per_channel: bool = True, embeddings: bool = False,
                          overwrite: bool = False) -> Path:
    """Dynamic int8 with ONNX Runtime: int8 weights for MatMul/Gemm and fused Attention, activations
    quantized per batch at run time. No calibration; the usual choice for Linear-heavy models (MLPs,
    transformers). `embeddings=True` also stores embedding tables in int8 (`Gather`, and ONNX Runtime's
    fused `EmbedLayerNormalization`): the file shrinks, the speed hardly changes (a lookup has no MACs).
    A graph fused by `optimize_onnx_transformer` is quantized as it is (its contrib ops defeat ONNX's
    shape inference, so the pre-processing pass is skipped for it)."""
    fp32_path = _check_in_path(fp32_path, (".onnx",), "fp32_path")
    out_path = _check_out_path(out_path, ".onnx", overwrite, "out_path")
    for flag, value in (("per_channel", per_channel), ("embeddings", embeddings)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be True or False, got {value!r}")
    q = _require("onnxruntime.quantization", "ONNX Runtime quantization")
    onnx = _require("onnx", "ONNX Runtime quantization")
    ops = ["MatMul", "Gemm", "Attention"] + (["Gather", "EmbedLayerNormalization"] if embeddings else [])
    fused = any(n.domain == "com.microsoft" for n in onnx.load(str(fp32_path), load_external_data=False).graph.node)
    with tempfile.TemporaryDirectory() as folder, _quiet():
        source = fp32_path
        if not fused:
            source = Path(folder) / "pre.onnx"
            q.shape_inference.quant_pre_process(str(fp32_path), str(source))
        partial = out_path.with_name(out_path.stem + ".partial.onnx")  # never a half-written out_path
        try:
            q.quantize_dynamic(str(source), str(partial), per_channel=per_channel, weight_type=q.QuantType.QInt8,
                               op_types_to_quantize=ops,
                               extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT} if fused else None)
        except Exception:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, out_path)
    return out_path


def optimize_onnx_transformer(fp32_path, out_path, *, num_heads: int, hidden_size: int, model_type: str = "bert",
                              overwrite: bool = False) -> tuple[Path, dict[str, int]]:
    """ONNX Runtime's transformer optimizer: fuse each layer's attention into one `Attention` op, the
    embeddings + LayerNorm into `EmbedLayerNormalization`, residual + LayerNorm into `SkipLayerNormalization`
    and bias + GELU into `BiasGelu` (contrib ops with hand-written CPU kernels). Still fp32: this is the fair
    "best fp32 runtime" baseline, and what `quantize_onnx_dynamic` should quantize. Returns the path and the
    count of each fused op; fusion needs the graph `export_onnx(..., exporter="torchscript")` writes (the
    dynamo exporter's attention is not recognised) of a model whose attention is the plain matmul-softmax one
    (transformers: `set_attn_implementation("eager")`, not SDPA); raises ValueError if no attention was fused."""
    fp32_path = _check_in_path(fp32_path, (".onnx",), "fp32_path")
    out_path = _check_out_path(out_path, ".onnx", overwrite, "out_path")
    for name, value in (("num_heads", num_heads), ("hidden_size", hidden_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_heads ({num_heads})")
    if model_type not in ("bert",):
        raise ValueError(f"model_type must be 'bert' (BERT, MiniLM and their relatives), got {model_type!r}")
    optimizer = _require("onnxruntime.transformers.optimizer", "ONNX Runtime's transformer optimizer")
    with _quiet(), _native_stderr("ONNX Runtime", "transformer optimization"):
        model = optimizer.optimize_model(str(fp32_path), model_type=model_type, num_heads=num_heads,
                                         hidden_size=hidden_size, opt_level=0)
        fused = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    if not fused.get("Attention"):
        raise ValueError(f"no attention was fused in {fp32_path.name} (fused: {fused or 'nothing'}): export it "
                         f"with export_onnx(..., exporter='torchscript') from a transformers model using its "
                         f"plain attention (model.set_attn_implementation('eager') on a copy: SDPA's graph is "
                         f"not recognised), and check num_heads={num_heads} and hidden_size={hidden_size}")
    partial = out_path.with_name(out_path.name + ".partial")
    with _quiet():
        model.save_model_to_file(str(partial))
    os.replace(partial, out_path)
    return out_path, fused


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
