"""Deployment (部署): export a model to a real runtime file, load it back, and measure it against PyTorch.

Two runtimes, used as they are (nothing re-implemented here):

* **ONNX + ONNX Runtime**: `export_onnx` (torch.onnx's torch.export-based exporter), then int8 with
  `quantize_onnx_dynamic` (int8 weights, activation ranges measured per batch at run time: for
  Linear-heavy models) or `quantize_onnx_static` (QDQ format, activation ranges calibrated in advance:
  for CNNs). ONNX Runtime fuses QuantizeLinear -> Conv -> DequantizeLinear into one int8 kernel. For
  BERT-style transformers, `optimize_onnx_transformer` first fuses attention, embeddings + LayerNorm and
  bias + GELU into ONNX Runtime's contrib ops (from a graph exported with `exporter="torchscript"`).
* **ExecuTorch + XNNPACK**: `export_pte` writes a `.pte` program whose layers are delegated to XNNPACK;
  int8 goes through PT2E with the `XNNPACKQuantizer` (per-channel symmetric weights).

`load(path)` gives a `Runner` (torch tensors in, a torch tensor out) for either file, and `measure`
lays eager models, runners and files side by side: bytes on disk, latency, agreement with the eager
model and accuracy. Files are never overwritten unless `overwrite=True`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lwkit import measure as _measure
from lwkit._runtime import (
    MAX_BATCH,  # noqa: F401  (re-exported: deploy.MAX_BATCH)
    RUNTIMES,
    DeployError,
    _check_in_path,
    _check_inputs,
    _check_model,
    _native_stderr,
    _quiet,
    _require,
)
from lwkit.export import (  # noqa: F401
    export_onnx,
    export_pte,
    optimize_onnx_transformer,
    quantize_onnx_dynamic,
    quantize_onnx_static,
)

__all__ = ["RUNTIMES", "DeployError", "Runner", "DeployTable", "load", "measure", "versions",
           "file_size_bytes", "executorch_threads"]


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
        # ORT's idle workers spin for a while after each op; in interleaved timings they would steal the
        # CPU from whichever model is timed next (measured: int8 MiniLM 11 -> 15 ms, IQR 1 -> 8 ms, next to
        # eager torch and a spinning fp32 session), so they sleep instead (costs ORT a few µs per op).
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

    def plot_batch_sweep(self, **kwargs) -> None:
        """Latency, throughput and speedup against batch size (`lwkit.sweep.plot_batch_sweep`)."""
        from lwkit.sweep import plot_batch_sweep

        plot_batch_sweep(self, **kwargs)

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
                r[f"latency_q25_ms_b{b}"], r[f"latency_q75_ms_b{b}"] = q[0], q[2]
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
        r["latency_q25_ms"], r["latency_q75_ms"] = r.get(f"latency_q25_ms_b{first}"), r.get(f"latency_q75_ms_b{first}")
        if r.get("accuracy") is not None and base.get("accuracy") is not None:
            r["acc_delta_pp"] = 100 * (r["accuracy"] - base["accuracy"])
    return DeployTable(rows=rows, baseline=baseline, threads=threads, batch_size=batch_sizes[0])
