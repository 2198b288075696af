"""What compression changes, measured: parameters, multiply-accumulates, bytes on disk, wall-clock latency.

MACs are counted, latency is measured; a MAC ratio is never a speedup until the clock agrees.
"""

from __future__ import annotations

import html
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def count_params(model: nn.Module, *, trainable_only: bool = False, nonzero_only: bool = False) -> int:
    """Number of parameters (each shared tensor counted once); optionally only trainable or nonzero ones."""
    _check_model(model)
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        if p.layout != torch.strided:  # sparse CSR/COO: only stored values can be nonzero
            values = p.values()
            total += int(torch.count_nonzero(values).item()) if nonzero_only else p.numel()
        else:
            total += int(torch.count_nonzero(p).item()) if nonzero_only else p.numel()
    return total


# ---------------------------------------------------------------------------------------------------------
# MACs: one multiply-accumulate = one multiply and one add. FLOPs ~ 2 x MACs.

aten = torch.ops.aten


def _numel(shape) -> int:
    return math.prod(int(s) for s in shape)


def _mm_macs(args, out) -> int:  # (m, k) @ (k, n)
    return _numel(args[0].shape) * args[1].shape[-1]


def _addmm_macs(args, out) -> int:  # bias + (m, k) @ (k, n)
    return _numel(args[1].shape) * args[2].shape[-1]


def _bmm_macs(args, out) -> int:  # (b, m, k) @ (b, k, n)
    return _numel(args[0].shape) * args[1].shape[-1]


def _baddbmm_macs(args, out) -> int:
    return _numel(args[1].shape) * args[2].shape[-1]


def _conv_macs(args, out) -> int:
    # Each output (or, transposed, each input) element needs (in_channels / groups) * kh * kw MACs
    # per output channel it feeds. weight: (out, in/groups, kh, kw), transposed: (in, out/groups, kh, kw).
    x, weight, transposed = args[0], args[1], args[6]
    if transposed:
        return _numel(x.shape) * _numel(weight.shape[1:])
    return _numel(out.shape) * _numel(weight.shape[1:])


def _sdpa_macs(args, out) -> int:
    # softmax(q k^T) v: (b, h, s, d) x (b, h, t, d) -> s*t*d for the scores and s*t*d_v for the mix.
    q, k, v = args[0], args[1], args[2]
    b_h_s = _numel(q.shape[:-1])
    return b_h_s * k.shape[-2] * q.shape[-1] + b_h_s * k.shape[-2] * v.shape[-1]


MAC_RULES = {
    aten.mm: _mm_macs,
    aten.addmm: _addmm_macs,
    aten.bmm: _bmm_macs,
    aten.baddbmm: _baddbmm_macs,
    aten.convolution: _conv_macs,
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_macs,
    aten._scaled_dot_product_efficient_attention: _sdpa_macs,
    aten._scaled_dot_product_flash_attention: _sdpa_macs,
}


class MacCounter(TorchDispatchMode):
    """Counts MACs of every matmul and convolution that runs inside it, whatever module issued it."""

    def __init__(self):
        super().__init__()
        self.macs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        rule = MAC_RULES.get(func.overloadpacket)
        if rule is not None:
            self.macs += int(rule(args, out if isinstance(out, torch.Tensor) else out[0]))
        return out


def count_macs(model: nn.Module, example_input) -> int:
    """Multiply-accumulates of one forward pass on `example_input` (a tensor, or a tuple of inputs).

    Counts conv (any groups, transposed too), linear/matmul/bmm and scaled-dot-product attention at the
    ATen level, so functional calls inside `forward` count as well. Element-wise ops, norms and pooling
    are not counted (they are memory-bound, not MAC-bound); quantized kernels are not counted.
    """
    _check_model(model)
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    if not all(isinstance(x, torch.Tensor) for x in inputs):
        raise TypeError(f"example_input must be a tensor or a tuple of tensors, got {type(example_input).__name__}")
    was_training = model.training
    model.eval()
    counter = MacCounter()
    with torch.no_grad(), counter:
        model(*inputs)
    model.train(was_training)
    return counter.macs


# ---------------------------------------------------------------------------------------------------------
# Bytes


def model_size_bytes(model: nn.Module | dict) -> int:
    """Bytes of the model's state_dict as `torch.save` writes it to a file named `model.pt`.

    (torch.save writes a zip whose entries are named after the file, so the name changes the size by a
    few bytes; `model.pt` is the name used throughout the course.)
    """
    if isinstance(model, nn.Module):
        state = model.state_dict()
    elif isinstance(model, dict):
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
        return int(os.environ["LWKIT_THREADS"])
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

    @property
    def iqr_ms(self) -> float:
        return self.q75_ms - self.q25_ms

    def __str__(self) -> str:
        return (f"{self.median_ms:.3f} ms median (IQR {self.q25_ms:.3f}-{self.q75_ms:.3f}) "
                f"batch {self.batch_size}, {self.threads} threads, {self.device}, {self.repeats} runs")


def measure_latency(model: nn.Module, example_input, *, warmup: int = 10, repeats: int = 50,
                    threads: int | None = None) -> Latency:
    """Time `model(example_input)` under inference mode with a fixed thread count (restored afterwards)."""
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module or compiled model), got {type(model).__name__}")
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    if not all(isinstance(x, torch.Tensor) for x in inputs):
        raise TypeError(f"example_input must be a tensor or a tuple of tensors, got {type(example_input).__name__}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    threads = default_threads() if threads is None else threads
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    device = inputs[0].device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if isinstance(model, nn.Module):
        model.eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    samples = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(*inputs)
            sync()
            for _ in range(repeats):
                start = time.perf_counter()
                model(*inputs)
                sync()
                samples.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(previous)
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return Latency(median_ms=statistics.median(samples), q25_ms=q[0], q75_ms=q[2], min_ms=min(samples),
                   threads=threads, batch_size=int(inputs[0].shape[0]), repeats=repeats, warmup=warmup,
                   device=str(device), samples_ms=samples)


# ---------------------------------------------------------------------------------------------------------
# Side-by-side comparison

COLUMNS = [  # (key, header, format)
    ("params", "params", "{:,}"),
    ("nonzero", "nonzero params", "{:,}"),
    ("macs", "MACs", "{:,}"),
    ("size_bytes", "size on disk", None),
    ("latency_ms", "latency ms (IQR)", None),
    ("accuracy", "accuracy", "{:.2%}"),
    ("macs_ratio", "MACs ratio", "{:.2f}x"),
    ("size_ratio", "size ratio", "{:.2f}x"),
    ("speedup", "measured speedup", "{:.2f}x"),
    ("acc_delta_pp", "Δ acc (pts)", "{:+.2f}"),
]


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@dataclass
class Comparison:
    """Rows of measurements, one per model, with ratios to a baseline row. Renders as a table."""

    rows: list[dict]
    baseline: str
    threads: int | None = None
    batch_size: int | None = None

    def row(self, name: str) -> dict:
        for r in self.rows:
            if r["name"] == name:
                return r
        raise KeyError(f"no row named {name!r}; rows: {[r['name'] for r in self.rows]}")

    def _cell(self, r: dict, key: str, fmt: str | None) -> str:
        value = r.get(key)
        if value is None:
            return "–"
        if key == "size_bytes":
            return format_bytes(value)
        if key == "latency_ms":
            return f"{value:.3f} ({r.get('latency_iqr_ms', 0):.3f})"
        return fmt.format(value)

    def _columns(self):
        return [c for c in COLUMNS if any(r.get(c[0]) is not None for r in self.rows)]

    def caption(self) -> str:
        parts = [f"ratios are baseline / model (higher = smaller or faster), baseline: {self.baseline}"]
        if self.threads:
            parts.append(f"latency: median of timed runs, batch {self.batch_size}, {self.threads} threads")
        return "; ".join(parts)

    def __str__(self) -> str:
        cols = self._columns()
        table = [["model"] + [c[1] for c in cols]]
        table += [[r["name"]] + [self._cell(r, k, f) for k, _, f in cols] for r in self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                 for row in table]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines + [self.caption()])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        cols = self._columns()
        head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in cols)
        body = "".join(
            "<tr><td style='text-align:left'><b>" + html.escape(r["name"]) + "</b></td>"
            + "".join(f"<td>{html.escape(self._cell(r, k, f))}</td>" for k, _, f in cols) + "</tr>"
            for r in self.rows
        )
        return (f"<table><thead><tr><th>model</th>{head}</tr></thead><tbody>{body}</tbody></table>"
                f"<p><small>{html.escape(self.caption())}</small></p>")

    def plot(self, keys=("size_bytes", "latency_ms", "accuracy")):
        """Bar charts of the chosen columns, one panel each."""
        import matplotlib.pyplot as plt

        labels = {"size_bytes": "size on disk (KB)", "latency_ms": "latency (ms)", "accuracy": "test accuracy (%)",
                  "params": "parameters", "macs": "MACs (millions)"}
        scale = {"size_bytes": 1 / 1024, "accuracy": 100, "macs": 1e-6}
        keys = [k for k in keys if any(r.get(k) is not None for r in self.rows)]
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
        names = [r["name"] for r in self.rows]
        for ax, key in zip(axes[0], keys):
            values = [(r.get(key) or 0) * scale.get(key, 1) for r in self.rows]
            bars = ax.bar(names, values, color=[f"C{i}" for i in range(len(names))])
            if key == "latency_ms":
                errs = [r.get("latency_iqr_ms", 0) / 2 for r in self.rows]
                ax.errorbar(names, values, yerr=errs, fmt="none", color="black", capsize=3, label="IQR")
                ax.legend()
            ax.bar_label(bars, fmt="%.4g", fontsize=8)
            ax.set_title(labels.get(key, key))
            ax.set_ylabel(labels.get(key, key))
            ax.tick_params(axis="x", rotation=30)
            plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
        fig.suptitle(f"Model comparison (baseline: {self.baseline})")
        fig.tight_layout()
        return fig


def compare(models: dict, example_input=None, *, accuracy: dict | None = None, baseline: str | None = None,
            macs: dict | None = None, latency: bool = True, threads: int | None = None,
            warmup: int = 10, repeats: int = 50) -> Comparison:
    """Measure each model (params, MACs, bytes, latency) and lay them side by side.

    Args:
        models: name -> nn.Module (or any callable; then pass its MACs in `macs` if you have them).
        example_input: the batch used for MACs and latency.
        accuracy: name -> accuracy in [0, 1], measured by you (e.g. with lwkit.train.evaluate).
        baseline: the row others are compared with (default: the first).
        macs: name -> MACs, overriding the count (e.g. for int8 kernels the counter does not see).
    """
    if not isinstance(models, dict) or not models:
        raise ValueError("models must be a non-empty dict of name -> model")
    baseline = next(iter(models)) if baseline is None else baseline
    if baseline not in models:
        raise ValueError(f"baseline must be one of {list(models)}, got {baseline!r}")
    accuracy, macs = accuracy or {}, macs or {}
    for name, d in (("accuracy", accuracy), ("macs", macs)):
        extra = set(d) - set(models)
        if extra:
            raise ValueError(f"{name} has names that are not in models: {sorted(extra)}; models: {list(models)}")
    threads = default_threads() if threads is None else threads
    rows = []
    for name, model in models.items():
        row = {"name": name, "accuracy": accuracy.get(name)}
        if isinstance(model, nn.Module):
            row["params"] = count_params(model)
            nonzero = count_params(model, nonzero_only=True)
            row["nonzero"] = nonzero if nonzero != row["params"] else None
            row["size_bytes"] = model_size_bytes(model)
        if name in macs:
            row["macs"] = macs[name]
        elif isinstance(model, nn.Module) and example_input is not None:
            row["macs"] = count_macs(model, example_input)
        if latency and example_input is not None:
            lat = measure_latency(model, example_input, warmup=warmup, repeats=repeats, threads=threads)
            row["latency_ms"], row["latency_iqr_ms"] = lat.median_ms, lat.iqr_ms
        rows.append(row)
    base = next(r for r in rows if r["name"] == baseline)
    for r in rows:
        for key, ratio in (("macs", "macs_ratio"), ("size_bytes", "size_ratio"), ("latency_ms", "speedup")):
            if r.get(key) and base.get(key):
                r[ratio] = base[key] / r[key]
        if r.get("accuracy") is not None and base.get("accuracy") is not None:
            r["acc_delta_pp"] = 100 * (r["accuracy"] - base["accuracy"])
    batch = int(example_input.shape[0]) if isinstance(example_input, torch.Tensor) else None
    return Comparison(rows=rows, baseline=baseline, threads=threads if latency else None, batch_size=batch)


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
