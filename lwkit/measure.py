"""What compression changes, measured: parameters, multiply-accumulates, bytes on disk, wall-clock latency.

MACs are counted (lwkit.macs, re-exported here), latency is measured; a MAC ratio is never a speedup until
the clock agrees.
"""

from __future__ import annotations

import math
import numbers
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from lwkit.compare import COLUMNS as COLUMNS  # re-exported: lwkit.measure.Comparison keeps working
from lwkit.compare import Comparison as Comparison
from lwkit.compare import format_bytes as format_bytes
from lwkit.macs import MAC_RULES as MAC_RULES  # re-exported: lwkit.measure.count_macs keeps working
from lwkit.macs import MacCounter as MacCounter
from lwkit.macs import _call, _check_example_input, _input_values
from lwkit.macs import count_macs as count_macs

__all__ = ["Latency", "compare", "count_params", "cpu_flags", "default_threads", "environment",
           "measure_latency", "model_size_bytes"]


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def count_params(model: nn.Module, *, trainable_only: bool = False, nonzero_only: bool = False) -> int:
    """Number of parameters (each shared tensor counted once); optionally only trainable or nonzero ones."""
    _check_model(model)
    _check_bool("trainable_only", trainable_only)
    _check_bool("nonzero_only", nonzero_only)
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        if nonzero_only and p.is_meta:
            raise ValueError(f"nonzero_only=True needs real weights, but parameter {name!r} is on the meta device")
        if p.layout != torch.strided:  # sparse CSR/COO: only stored values can be nonzero
            values = p.values()
            total += int(torch.count_nonzero(values).item()) if nonzero_only else p.numel()
        else:
            total += int(torch.count_nonzero(p).item()) if nonzero_only else p.numel()
    return total


# ---------------------------------------------------------------------------------------------------------
# Bytes

_STATE_LEAVES = (torch.Tensor, int, float, bool, str, type(None), torch.dtype, torch.Size)


def _check_state(value, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"model (a state_dict) must have str keys, got {key!r} in {where}")
            _check_state(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_state(item, f"{where}[{i}]")
    elif not isinstance(value, _STATE_LEAVES):
        raise TypeError(f"model (a state_dict) must hold tensors, got a {type(value).__name__} at {where}; "
                        "pass the module itself or module.state_dict()")


def model_size_bytes(model: nn.Module | dict) -> int:
    """Bytes of the model's state_dict as `torch.save` writes it to a file named `model.pt`.

    (torch.save writes a zip whose entries are named after the file, so the name changes the size by a
    few bytes; `model.pt` is the name used throughout the course.)
    """
    if isinstance(model, nn.Module):
        state = model.state_dict()
    elif isinstance(model, dict):
        _check_state(model, "model")
        state = model
    else:
        raise TypeError(f"model must be an nn.Module or a state_dict, got {type(model).__name__}")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.pt")
        torch.save(state, path)
        return os.path.getsize(path)


# ---------------------------------------------------------------------------------------------------------
# Latency


def default_threads() -> int:
    """Threads used for timing unless told otherwise: $LWKIT_THREADS, else min(2, CPU count)."""
    if "LWKIT_THREADS" in os.environ:
        value = os.environ["LWKIT_THREADS"]
        if not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"the environment variable LWKIT_THREADS must be a positive int, got {value!r}")
        return int(value)
    return min(2, os.cpu_count() or 1)


@dataclass
class Latency:
    """Wall-clock of one forward pass, over `repeats` timed runs after `warmup` untimed ones."""

    median_ms: float
    q25_ms: float  # 25th percentile
    q75_ms: float  # 75th percentile
    min_ms: float
    threads: int
    batch_size: int
    repeats: int
    warmup: int
    device: str
    samples_ms: list[float] = field(repr=False, default_factory=list)

    def __post_init__(self):
        for name in ("median_ms", "q25_ms", "q75_ms", "min_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
                raise ValueError(f"{name} must be a time in ms >= 0, got {value!r}")
        for name, minimum in (("threads", 1), ("batch_size", 1), ("repeats", 1), ("warmup", 0)):
            _check_int(name, getattr(self, name), minimum)

    @property
    def iqr_ms(self) -> float:
        return self.q75_ms - self.q25_ms

    def __str__(self) -> str:
        return (f"{self.median_ms:.3f} ms median (IQR {self.q25_ms:.3f}-{self.q75_ms:.3f}) "
                f"batch {self.batch_size}, {self.threads} threads, {self.device}, {self.repeats} runs")


def _batch_size(example_input) -> int:
    """Length of the first dimension of the first input: the batch that is timed or counted."""
    first = _input_values(example_input)[0]
    if first.dim() == 0 or first.shape[0] == 0:
        raise ValueError(f"example_input must be a batch with at least one example along dim 0, "
                         f"got a tensor of shape {tuple(first.shape)}")
    return int(first.shape[0])


def _check_timing(warmup, repeats, threads) -> int:
    _check_int("warmup", warmup, 0)
    _check_int("repeats", repeats, 1)
    threads = default_threads() if threads is None else threads
    _check_int("threads", threads, 1)
    return int(threads)


def measure_latency(model: nn.Module, example_input, *, warmup: int = 10, repeats: int = 50,
                    threads: int | None = None) -> Latency:
    """Time `model(example_input)` under inference mode with a fixed thread count.

    The thread count and the model's train/eval mode are restored afterwards, even on an error.
    """
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module or compiled model), got {type(model).__name__}")
    _check_example_input(example_input)
    batch_size = _batch_size(example_input)
    threads = _check_timing(warmup, repeats, threads)
    device = _input_values(example_input)[0].device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    was_training = model.training if isinstance(model, nn.Module) else None
    previous = torch.get_num_threads()
    samples = []
    try:
        if isinstance(model, nn.Module):
            model.eval()
        torch.set_num_threads(threads)
        with torch.inference_mode():
            for _ in range(warmup):
                _call(model, example_input)
            sync()
            for _ in range(repeats):
                start = time.perf_counter()
                _call(model, example_input)
                sync()
                samples.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(previous)
        if was_training is not None:
            model.train(was_training)
    # "inclusive": percentiles within the samples (numpy's default); "exclusive" extrapolates below the minimum
    q = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else [samples[0]] * 3
    return Latency(median_ms=statistics.median(samples), q25_ms=q[0], q75_ms=q[2], min_ms=min(samples),
                   threads=threads, batch_size=batch_size, repeats=repeats, warmup=warmup,
                   device=str(device), samples_ms=samples)


# ---------------------------------------------------------------------------------------------------------
# Side-by-side comparison (the table itself lives in lwkit.compare)


def _check_per_model(name: str, values, models: dict) -> dict:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise TypeError(f"{name} must be a dict of model name -> value, got {type(values).__name__}")
    extra = set(values) - set(models)
    if extra:
        raise ValueError(f"{name} has names that are not in models: {sorted(map(str, extra))}; models: {list(models)}")
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
            raise TypeError(f"{name}[{key!r}] must be a number, got {value!r}")
        if name == "accuracy" and not 0 <= value <= 1:
            raise ValueError(f"accuracy[{key!r}] must be a fraction in [0, 1], got {value!r}"
                             + (" (a percentage? divide by 100)" if 1 < value <= 100 else ""))
        if name == "macs" and (not isinstance(value, numbers.Integral) or value < 0):
            raise ValueError(f"macs[{key!r}] must be an int >= 0, got {value!r}")
    return values


def compare(models: dict, example_input=None, *, accuracy: dict | None = None, baseline: str | None = None,
            macs: dict | None = None, latency: bool = True, threads: int | None = None,
            warmup: int = 10, repeats: int = 50) -> Comparison:
    """Measure each model (params, MACs, bytes, latency) and lay them side by side.

    Args:
        models: name -> nn.Module (or any callable; then pass its MACs in `macs` if you have them).
        example_input: the batch used for MACs and latency (a tensor, a tuple or a dict of inputs).
        accuracy: name -> accuracy in [0, 1], measured by you (e.g. with lwkit.train.evaluate).
        baseline: the row others are compared with (default: the first).
        macs: name -> MACs, overriding the count (e.g. for int8 kernels the counter does not see).
        latency: time each model (needs example_input); threads, warmup, repeats: see measure_latency.
    """
    if not isinstance(models, dict) or not models:
        raise ValueError(f"models must be a non-empty dict of name -> model, got {models!r:.100}")
    for name, model in models.items():
        if not isinstance(name, str):
            raise TypeError(f"models must be keyed by str names, got {name!r}")
        if not callable(model):
            raise TypeError(f"models[{name!r}] must be an nn.Module or a callable, got {type(model).__name__}")
    baseline = next(iter(models)) if baseline is None else baseline
    if baseline not in models:
        raise ValueError(f"baseline must be one of {list(models)}, got {baseline!r}")
    accuracy, macs = _check_per_model("accuracy", accuracy, models), _check_per_model("macs", macs, models)
    _check_bool("latency", latency)
    threads = _check_timing(warmup, repeats, threads)
    batch = None
    if example_input is not None:
        _check_example_input(example_input)
        batch = _batch_size(example_input)
    rows = []
    for name, model in models.items():
        row = {"name": name, "accuracy": accuracy.get(name)}
        if isinstance(model, nn.Module):
            row["params"] = count_params(model)
            nonzero = count_params(model, nonzero_only=True)
            row["nonzero"] = nonzero if nonzero != row["params"] else None
            row["size_bytes"] = model_size_bytes(model)
        if name in macs:
            row["macs"] = int(macs[name])
        elif isinstance(model, nn.Module) and example_input is not None:
            row["macs"] = count_macs(model, example_input)
        if latency and example_input is not None:
            lat = measure_latency(model, example_input, warmup=warmup, repeats=repeats, threads=threads)
            row["latency_ms"], row["latency_iqr_ms"] = lat.median_ms, lat.iqr_ms
            row["latency_q25_ms"], row["latency_q75_ms"] = lat.q25_ms, lat.q75_ms
        rows.append(row)
    base = next(r for r in rows if r["name"] == baseline)
    for r in rows:
        for key, ratio in (("macs", "macs_ratio"), ("size_bytes", "size_ratio"), ("latency_ms", "speedup")):
            if r.get(key) and base.get(key):
                r[ratio] = base[key] / r[key]
        if r.get("accuracy") is not None and base.get("accuracy") is not None:
            r["acc_delta_pp"] = 100 * (r["accuracy"] - base["accuracy"])
    timed = latency and example_input is not None
    return Comparison(rows=rows, baseline=baseline, threads=threads if timed else None, batch_size=batch)


# ---------------------------------------------------------------------------------------------------------
# The machine the numbers were measured on


def cpu_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (empty set where that file doesn't exist, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def environment() -> dict:
    """Versions, threads and the CPU features that decide int8/bf16 speed later in the course."""
    import platform

    import torchvision

    flags = cpu_flags()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "timing_threads": default_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the SIMD level ATen kernels use
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "avx512_vnni (int8 dot products)": "avx512_vnni" in flags or "avx_vnni" in flags,
        "avx512_bf16 / amx (bf16 matmul)": "avx512_bf16" in flags or "amx_bf16" in flags,
        "quantized_engines": [e for e in torch.backends.quantized.supported_engines if e != "none"],
        "cuda": torch.cuda.is_available(),
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
