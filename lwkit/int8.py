"""Real int8 (and bf16) inference on the CPU: thin wrappers over torchao's PT2E flow and torch.ao's eager flow.

`lwkit.quant` *simulates* quantization in float to teach the math; this module makes models that really
store int8 weights and run int8 kernels, so their size and latency can be measured.

Two paths:
* **PT2E (torchao)**, the supported one: `torch.export` the model, annotate it with the x86 Inductor
  quantizer, calibrate, convert; it is only fast after `torch.compile` (which fuses quantize ->
  int8 conv/matmul -> dequantize into oneDNN kernels). Dynamic int8 for Linear layers uses torchao's
  `quantize_(model, Int8DynamicActivationInt8WeightConfig())`, also to be compiled.
* **Eager `torch.ao.quantization`**: QuantStub/DeQuantStub, fuse conv-bn-relu, observe, convert. It is
  deprecated (every call warns) but still ships and is fast on x86 for CNNs without any compile step;
  the course shows it because most tutorials and deployed code still use it. Its warnings are filtered
  in one place, `_quiet_deprecation`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import numbers
import warnings

import torch
from torch import nn

ENGINES = ("x86", "fbgemm", "qnnpack", "onednn")  # torch.ao's engine names; supported_engines() lists this build's


@contextlib.contextmanager
def _quiet_deprecation():
    """torch.ao.quantization warns on every call that it is deprecated (we know; see the module docstring)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization.*")
        warnings.filterwarnings("ignore", message=r".*deprecat.*")
        yield


__all__ = ["ENGINES", "engine", "supported_engines", "fusable_groups", "eager_static_int8", "eager_dynamic_int8",
           "has_torchao", "pt2e_static_int8", "torchao_dynamic_int8", "compile_int8", "Autocast",
           "bf16_supported", "saved_size_bytes", "compare"]


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _check_count(name: str, value, low: int, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {'None or ' if allow_none else ''}an int, got {value!r} "
                        f"({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name} must be {'None or ' if allow_none else ''}an int >= {low}, got {value}")


def _check_calibration(calibration_data, num_batches) -> None:
    """Checks that need no iteration (a loader may be a one-shot generator): type and num_batches."""
    _check_count("num_batches", num_batches, 1, allow_none=True)
    if isinstance(calibration_data, torch.Tensor):
        if calibration_data.dim() == 0 or len(calibration_data) == 0:
            raise ValueError(f"calibration_data is empty: got a tensor of shape {tuple(calibration_data.shape)}; "
                             f"give a batch of inputs (n >= 1) or a loader of (x, y) batches")
    elif isinstance(calibration_data, (str, bytes)) or not hasattr(calibration_data, "__iter__"):
        raise TypeError(f"calibration_data must be a loader of (x, y) batches or a tensor of inputs, got "
                        f"{type(calibration_data).__name__}")


def _calibration_batches(data, num_batches: int | None):
    """Yield input tensors from a loader of (x, y) batches, or one tensor (as a single batch)."""
    chunks = [data] if isinstance(data, torch.Tensor) else (b[0] if isinstance(b, (tuple, list)) and b else b
                                                            for b in data)
    seen = 0
    for i, x in enumerate(chunks):
        if num_batches is not None and i >= num_batches:
            break
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"calibration_data must yield tensors or (x, y) pairs; batch {i} holds {type(x).__name__}")
        if x.numel() == 0:
            raise ValueError(f"calibration_data batch {i} is empty (shape {tuple(x.shape)})")
        seen += 1
        yield x
    if seen == 0:
        raise ValueError("calibration_data is empty: it yielded no batches (give at least one batch of inputs)")


def engine() -> str:
    """The quantized engine torch.ao's eager int8 kernels use on this machine ('x86' on Intel/AMD)."""
    return torch.backends.quantized.engine


def supported_engines() -> list[str]:
    """The quantized engines this torch build has (the `backend` values eager_static_int8 accepts)."""
    return [e for e in torch.backends.quantized.supported_engines if e != "none"]


# ---------------------------------------------------------------------------------------------------------
# Eager torch.ao.quantization (deprecated, still fast for CNNs on x86)


class _Stubbed(nn.Module):
    """The float model between a QuantStub (float -> int8) and a DeQuantStub (int8 -> float)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant, self.model, self.dequant = QuantStub(), model, DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.model(self.quant(x)))


def fusable_groups(model: nn.Module) -> list[list[str]]:
    """Names of [Conv2d, BatchNorm2d, (ReLU)] runs inside Sequentials, to fuse into one int8 conv."""
    _check_model(model)
    groups = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for i, (child, layer) in enumerate(children):
            if isinstance(layer, nn.Conv2d) and i + 1 < len(children) and isinstance(children[i + 1][1],
                                                                                      nn.BatchNorm2d):
                group = [child, children[i + 1][0]]
                if i + 2 < len(children) and isinstance(children[i + 2][1], nn.ReLU):
                    group.append(children[i + 2][0])
                groups.append([f"{name}.{c}" if name else c for c in group])
    return groups


def _prepare_eager(model: nn.Module, backend: str, *, qat: bool) -> nn.Module:
    """A fused, stubbed copy of `model` with torch.ao's default (QAT) qconfig for `backend`, observers in place."""
    from torch.ao import quantization as tq

    torch.backends.quantized.engine = backend
    float_model = copy.deepcopy(model).cpu().train(qat)
    groups = fusable_groups(float_model)
    if groups:
        (tq.fuse_modules_qat if qat else tq.fuse_modules)(float_model, groups, inplace=True)
    wrapped = _Stubbed(float_model).train(qat)
    wrapped.qconfig = (tq.get_default_qat_qconfig if qat else tq.get_default_qconfig)(backend)
    (tq.prepare_qat if qat else tq.prepare)(wrapped, inplace=True)
    return wrapped


def eager_static_int8(model: nn.Module, calibration_data, *, backend: str = "x86",
                      num_batches: int | None = 8) -> nn.Module:
    """Static int8 with torch.ao's eager flow: fuse conv-bn-relu, observe activations, convert.

    `calibration_data`: a loader of (x, y) batches or one tensor of inputs. Weights are int8 per channel,
    activations uint8 per tensor with ranges from the calibration batches. Returns a new model.
    """
    _check_model(model)
    if backend not in supported_engines():
        raise ValueError(f"backend must be one of this build's engines {supported_engines()}, got {backend!r}")
    _check_calibration(calibration_data, num_batches)
    with _quiet_deprecation():
        from torch.ao import quantization as tq

        wrapped = _prepare_eager(model, backend, qat=False)
        with torch.no_grad():
            for x in _calibration_batches(calibration_data, num_batches):
                wrapped(x)
        tq.convert(wrapped, inplace=True)
    return wrapped


def eager_dynamic_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 with torch.ao's eager flow: Linear weights stored int8, activations quantized per batch."""
    _check_model(model)
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer: dynamic int8 quantizes only Linear")
    with _quiet_deprecation():
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8)


# ---------------------------------------------------------------------------------------------------------
# torchao: PT2E static int8 and dynamic int8, fast after torch.compile


def has_torchao() -> bool:
    """True if torchao imports (its import logs a harmless torch _pytree Enum deprecation line: silenced)."""
    _filter_known_warnings()
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False
    return True


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _filter_known_warnings() -> None:
    """Silence the known harmless messages of the real int8 paths, in this one place (each named below).

    1. torch.utils._pytree (logged once when torchao is imported): "<enum 'KernelPreference'> is an Enum
       subclass ... register_constant() on Enum subclasses is deprecated" (torchao registers its enums).
    2. torch._inductor.mkldnn_lowerings (UserWarning, first compiled call of a PT2E int8 model): "To copy
       construct from a tensor, it is recommended to use sourceTensor.clone().detach()" (Inductor's own
       code builds the weight zero-point tensor that way).
    3. torch.utils.cpp_extension (logged when Inductor first compiles C++ on a CPU-only build): "No CUDA
       runtime is found, using CUDA_HOME=..." (a probe, not an error: nothing here needs CUDA).
    The deprecation warnings of torch.ao.quantization are filtered by `_quiet_deprecation` around each call.
    """
    for logger, text in (("torch.utils._pytree", "is an Enum subclass"),
                         ("torch.utils.cpp_extension", "No CUDA runtime is found")):
        log = logging.getLogger(logger)
        if not any(isinstance(f, _DropMessage) and f.text == text for f in log.filters):
            log.addFilter(_DropMessage(text))
    warnings.filterwarnings("ignore", message=r"To copy construct from a tensor", category=UserWarning,
                            module=r"torch\._inductor\.mkldnn_lowerings")


def _require_torchao() -> None:
    if not has_torchao():
        raise ImportError("torchao is not installed: pip install 'torchao>=0.18' (or use eager_static_int8)")


def pt2e_static_int8(model: nn.Module, example_input: torch.Tensor, calibration_data, *,
                     num_batches: int | None = 8) -> nn.Module:
    """Static int8 with torchao's PT2E flow and the x86 Inductor quantizer; call `compile_int8` to run fast.

    The model is exported with a dynamic batch size, so the uncompiled result evaluates on any batch
    (slowly: quantize/dequantize are separate ops until Inductor fuses them). `example_input` may be a
    single image (batch 1): torch.export specializes sizes 0 and 1 to constants ("0/1 specialization"),
    so a batch of one is traced as that image repeated twice, which keeps the batch dimension dynamic.
    """
    _check_model(model)
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a tensor, got {type(example_input).__name__}")
    if example_input.dim() == 0 or len(example_input) == 0 or not example_input.is_floating_point():
        raise ValueError(f"example_input must be a float batch of inputs (batch, ...) with batch >= 1, got shape "
                         f"{tuple(example_input.shape)} and dtype {example_input.dtype}")
    _check_calibration(calibration_data, num_batches)
    _require_torchao()
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    float_model = copy.deepcopy(model).cpu().eval()
    if len(example_input) == 1:  # batch 1 would be specialized to a constant: trace a batch of 2
        example_input = example_input.expand(2, *example_input.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1)
    with _quiet_deprecation():
        exported = torch.export.export(float_model, (example_input,), dynamic_shapes=({0: batch},)).module()
        quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for x in _calibration_batches(calibration_data, num_batches):
                prepared(x)
        converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)  # so .eval() (called by evaluate and measure) works
    return converted


def torchao_dynamic_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 (int8 weights, activations quantized per token at run time) with torchao's quantize_."""
    _check_model(model)
    _require_torchao()
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer: dynamic int8 quantizes only Linear")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantized = copy.deepcopy(model).cpu().eval()
    with _quiet_deprecation():
        quantize_(quantized, Int8DynamicActivationInt8WeightConfig())
    return quantized


def compile_int8(model: nn.Module) -> nn.Module:
    """`torch.compile` with Inductor freezing (constant weights), what turns PT2E/torchao int8 into fast
    fused kernels. Compiles for fixed shapes: the first call per batch size takes seconds."""
    _check_model(model)
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    _filter_known_warnings()
    inductor_config.freezing = True
    # one graph per batch size, and models that share a forward (an fp32 and a torchao copy of one class)
    # share dynamo's per-function budget: past it dynamo silently falls back to eager, mid-benchmark
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
    return torch.compile(model, dynamic=False)


# ---------------------------------------------------------------------------------------------------------
# bf16 and measured size


class Autocast(nn.Module):
    """Runs the wrapped model under CPU autocast (bf16 matmuls and convolutions, weights re-cast from fp32
    on every call), returns fp32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        _check_model(model)
        if dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be torch.bfloat16 or torch.float16, got {dtype!r}")
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            return self.model(x).float()


def bf16_supported() -> bool:
    """True where the CPU has native bf16 instructions (AVX512_BF16 or AMX); without them bf16 is slower."""
    from lwkit import measure

    flags = measure.cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def saved_size_bytes(model: nn.Module) -> int:
    """Bytes of `torch.save(model.state_dict())`: for int8 models, the packed int8 weights plus qparams."""
    _check_model(model)
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper saves its inner model
    state = model.state_dict()
    if isinstance(model, torch.fx.GraphModule):  # PT2E keeps the unused float weights around: skip them
        used = {node.target for node in model.graph.nodes if node.op == "get_attr"}
        state = {k: v for k, v in state.items() if k in used}
    buf = io.BytesIO()
    with _quiet_deprecation():
        torch.save(state, buf)
    return buf.tell()


def compare(models: dict, example_input: torch.Tensor, *, accuracy: dict | None = None,
            baseline: str | None = None, threads: int | None = None, warmup: int = 10,
            repeats: int = 50):
    """`lwkit.measure.compare` for int8/compiled models: latency, `saved_size_bytes`, accuracy and ratios.

    (measure.compare counts MACs and state_dict bytes, which compiled or PT2E models don't report
    faithfully; here the size is what `saved_size_bytes` writes.)
    """
    from lwkit import measure

    if not isinstance(models, dict) or not models:
        raise ValueError("models must be a non-empty dict of name -> model")
    for name, model in models.items():
        if not callable(model):
            raise TypeError(f"models[{name!r}] must be a model, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() == 0:
        raise TypeError(f"example_input must be a batch tensor (batch, ...), got {type(example_input).__name__}")
    baseline = next(iter(models)) if baseline is None else baseline
    if baseline not in models:
        raise ValueError(f"baseline must be one of {list(models)}, got {baseline!r}")
    accuracy = {} if accuracy is None else accuracy
    if not isinstance(accuracy, dict):
        raise TypeError(f"accuracy must be a dict of name -> accuracy, got {type(accuracy).__name__}")
    unknown = [k for k in accuracy if k not in models]
    if unknown:
        raise ValueError(f"accuracy names unknown models {unknown}; models: {list(models)}")
    for name, a in accuracy.items():
        if a is not None and (isinstance(a, bool) or not isinstance(a, numbers.Real)):
            raise TypeError(f"accuracy[{name!r}] must be None or a number in [0, 1], got {a!r}")
        if a is not None and not 0 <= a <= 1:
            raise ValueError(f"accuracy[{name!r}] must be None or a number in [0, 1], got {a!r}")
    _check_count("threads", threads, 1, allow_none=True)
    _check_count("warmup", warmup, 0)
    _check_count("repeats", repeats, 1)
    threads = measure.default_threads() if threads is None else threads
    rows = []
    for name, model in models.items():
        lat = measure.measure_latency(model, example_input, warmup=warmup, repeats=repeats, threads=threads)
        rows.append({"name": name, "size_bytes": saved_size_bytes(model), "latency_ms": lat.median_ms,
                     "latency_iqr_ms": lat.iqr_ms, "accuracy": accuracy.get(name)})
    base = next(r for r in rows if r["name"] == baseline)
    for r in rows:
        r["size_ratio"] = base["size_bytes"] / r["size_bytes"]
        r["speedup"] = base["latency_ms"] / r["latency_ms"]
        if r["accuracy"] is not None and base["accuracy"] is not None:
            r["acc_delta_pp"] = 100 * (r["accuracy"] - base["accuracy"])
    return measure.Comparison(rows=rows, baseline=baseline, threads=threads, batch_size=int(example_input.shape[0]))
