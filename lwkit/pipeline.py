"""Compression recipes: an ordered list of steps applied to a model, measured after every step.

The survey's six steps (prepare data -> choose a method -> compress -> parameter-efficient fine-tuning ->
evaluate -> deploy) as a small API. The steps (Prune, FineTune, Distill, LoRA, Quantize, Export) are plain
dataclasses, each built on one course module; `lwkit.steps` lists what each does.

    recipe = Recipe([Prune(sparsity=0.9, epochs=2), Quantize(bits=5, method="kmeans")])
    recipe = Recipe.from_text("- prune: sparsity=0.9, epochs=2\\n- quantize: bits=5, method='kmeans'")
    model, rep = recipe.run(model, train_loader, test_loader, example_input=x[:64])
    print(rep)      # accuracy, size on disk, MACs, measured latency after every step

Everything is checked before anything runs: an unknown step, a bad argument, an impossible order (training
after quantization) or a layer the model does not have raises ValueError naming the step.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lwkit import huffman, measure, sparse, train
from lwkit.steps import STEPS, Distill, Export, FineTune, LoRA, Prune, Quantize, _fail  # noqa: F401

__all__ = ["Recipe", "PipelineReport", "file_size"]



def file_size(model: nn.Module, folder: str | Path) -> tuple[int, str]:
    """Bytes of the smallest real file lwkit writes for `model` now: fp32 torch.save, or the Huffman-coded
    file (sparse positions and shared values coded); returns (bytes, which)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(folder, (str, os.PathLike)) or not Path(folder).is_dir():
        raise ValueError(f"folder must be an existing folder, got {folder!r}")
    dense = measure.model_size_bytes(model)
    coded = huffman.save_compressed(model, Path(folder) / "size-probe.dc", overwrite=True).size_bytes
    return (coded, "Huffman .dc") if coded < dense else (dense, "fp32 .pt")


@dataclass
class PipelineReport:
    """One row per step (the first is the model as given): accuracy, size on disk, MACs, measured latency."""

    rows: list  # dicts: step, accuracy, size_bytes, file, macs, latency_ms, sparsity, seconds
    batch: int  # batch size of the latency measurement
    threads: int  # CPU threads of the latency measurement

    def __str__(self) -> str:
        head = (f"{'step':<44}{'accuracy':>9}{'size':>11}{'file':>13}{'MACs':>12}{'latency':>10}{'sparsity':>9}"
                f"{'s':>6}")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r['step'][:43]:<44}{r['accuracy']:>9.2%}{measure.format_bytes(r['size_bytes']):>11}"
                         f"{r['file']:>13}{r['macs']:>12,}{r['latency_ms']:>8.3f}ms{r['sparsity']:>9.1%}"
                         f"{r['seconds']:>6.1f}")
        lines.append(f"latency: median of timed runs at batch {self.batch}, {self.threads} threads; MACs per input")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return f"<pre>{str(self)}</pre>"


def _step_text(step) -> str:
    args = ", ".join(f"{f.name}={getattr(step, f.name)!r}" for f in dataclasses.fields(step)
                     if getattr(step, f.name) != f.default)
    return f"{step.name}: {args}" if args else step.name


class Recipe:
    """An ordered list of steps, checked when built (arguments, order) and against the model before running."""

    def __init__(self, steps: list):
        if not isinstance(steps, (list, tuple)) or not steps:
            raise ValueError(f"steps must be a non-empty list of steps ({', '.join(STEPS)}), got {steps!r:.100}")
        for i, s in enumerate(steps, 1):
            if type(s) not in STEPS.values():
                raise ValueError(f"step {i}: {s!r:.80} is not a step; steps are {', '.join(c.__name__ for c in STEPS.values())}")
        for i, s in enumerate(steps, 1):
            later = [t.name for t in steps[i:]]
            if isinstance(s, Export) and later:
                raise ValueError(f"step {i} (export) must be the last step; it is followed by {later}")
            if isinstance(s, Quantize) and set(later) - {"export"}:
                raise ValueError(f"step {i} (quantize) may only be followed by export: training steps {later} "
                                 "would move the weights off the quantized grid; put them before quantize")
        self.steps = list(steps)

    def __eq__(self, other):
        return isinstance(other, Recipe) and self.steps == other.steps

    def __repr__(self):
        return f"Recipe({self.steps!r})"

    # --- file forms -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"steps": [{s.name: {f.name: getattr(s, f.name) for f in dataclasses.fields(s)
                                    if getattr(s, f.name) != f.default}} for s in self.steps]}

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        """{'steps': [{'prune': {'sparsity': 0.9}}, {'quantize': {}}]} -> a checked Recipe."""
        if not isinstance(d, dict) or set(d) != {"steps"} or not isinstance(d["steps"], list):
            raise ValueError(f"a recipe dict must be {{'steps': [...]}}, got {d!r:.100}")
        steps = []
        for i, item in enumerate(d["steps"], 1):
            if not isinstance(item, dict) or len(item) != 1:
                raise ValueError(f"step {i}: must be a one-key dict {{step name: {{argument: value}}}}, got {item!r}")
            (name, kwargs), = item.items()
            steps.append(_make(i, name, kwargs))
        return cls(steps)

    def to_text(self) -> str:
        return "\n".join(f"- {_step_text(s)}" for s in self.steps) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Recipe:
        """One step per line, YAML-like: `- prune: sparsity=0.9, scope='layer'` (Python literals; # comments)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        steps = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
            if not line:
                continue
            if not line.startswith("- "):
                raise ValueError(f"line {n}: a step line starts with '- ', e.g. '- prune: sparsity=0.9'; got {line!r}")
            name, _, args = line[2:].partition(":")
            try:
                call = ast.parse(f"f({args})", mode="eval").body
                if call.args:
                    raise ValueError("arguments must be written name=value")
                kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
            except (SyntaxError, ValueError) as err:
                raise ValueError(f"line {n} ({name.strip()}): cannot read arguments {args.strip()!r}: {err}") from err
            steps.append(_make(len(steps) + 1, name.strip(), kwargs))
        return cls(steps)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        path.write_text(self.to_text(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
        return cls.from_text(Path(path).read_text(encoding="utf-8"))

    # --- running --------------------------------------------------------------------------------------------
    def check(self, model: nn.Module) -> None:
        """Layer names the steps mention must exist in `model` (checked before anything runs)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        layers = list(sparse.prunable_layers(model))
        for i, s in enumerate(self.steps, 1):
            unknown = [n for n in getattr(s, "layer_names", list)() if n not in layers]
            if unknown:
                raise ValueError(f"step {i} ({s.name}): unknown layer(s) {unknown}; the model's layers are {layers}")

    def run(self, model: nn.Module, train_loader, eval_loader, *, example_input: torch.Tensor,
            teacher: nn.Module | None = None, threads: int | None = None, repeats: int = 20,
            out_dir: str | Path | None = None) -> tuple[nn.Module, PipelineReport]:
        """Apply the steps to a copy of `model`; measure after each. -> (compressed model, report).

        Accuracy on `eval_loader`, latency of `example_input` (its batch), MACs per input, size of the smallest
        real file (see `file_size`; an export step reports its own file). `teacher` defaults to `model`.
        """
        self.check(model)
        if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
            raise TypeError("example_input must be a batch tensor, e.g. splits.x_test[:64]")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be a positive int, got {repeats!r}")
        threads = measure.default_threads() if threads is None else threads
        ctx = _Context(model=copy.deepcopy(model), teacher=copy.deepcopy(teacher if teacher is not None else model),
                       train_loader=train_loader, example_input=example_input, threads=threads)
        for p in ctx.teacher.parameters():
            p.requires_grad_(False)
        with tempfile.TemporaryDirectory() as tmp:
            ctx.out_dir = Path(out_dir) if out_dir is not None else Path(tmp)
            ctx.out_dir.mkdir(parents=True, exist_ok=True)
            rows = [self._measure(ctx, "input model", eval_loader, 0.0, repeats, tmp)]
            for i, s in enumerate(self.steps, 1):
                start = time.perf_counter()
                try:
                    s.apply(ctx)
                except (ValueError, TypeError) as err:
                    raise ValueError(f"step {i} ({s.name}) failed: {err}") from err
                rows.append(self._measure(ctx, _step_text(s), eval_loader, time.perf_counter() - start, repeats, tmp))
        return ctx.model, PipelineReport(rows=rows, batch=len(example_input), threads=threads)

    @staticmethod
    def _measure(ctx, label, eval_loader, seconds, repeats, tmp) -> dict:
        model = ctx.model.eval()
        runner = model
        if ctx.exported is not None:
            path, loaded = ctx.exported
            from lwkit import deploy

            size = os.path.getsize(path) if path.suffix == ".dc" else deploy.file_size_bytes(path)
            kind = path.suffix
            runner = loaded if loaded is not None else model
        else:
            size, kind = file_size(model, tmp)
        if runner is model:
            acc = train.evaluate(model, eval_loader)
        else:
            correct = total = 0
            for x, y in eval_loader:
                correct += int((runner(x).argmax(1) == y).sum())
                total += len(y)
            acc = correct / total
        lat = measure.measure_latency(runner, ctx.example_input, threads=ctx.threads, warmup=3, repeats=repeats)
        return {"step": label, "accuracy": acc, "size_bytes": int(size), "file": kind,
                "macs": measure.count_macs(model, ctx.example_input[:1]), "latency_ms": lat.median_ms,
                "sparsity": sparse.sparsity(model), "seconds": seconds}


@dataclass
class _Context:
    model: nn.Module
    teacher: nn.Module
    train_loader: object
    example_input: torch.Tensor
    threads: int
    masks: dict | None = None
    out_dir: Path | None = None
    exported: tuple | None = None


def _make(i: int, name, kwargs):
    if name not in STEPS:
        close = difflib.get_close_matches(str(name), list(STEPS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"step {i}: unknown step {name!r}; {hint}steps are {', '.join(STEPS)}")
    if not isinstance(kwargs, dict):
        raise ValueError(f"step {i} ({name}): arguments must be a dict, got {kwargs!r}")
    cls = STEPS[name]
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise ValueError(f"step {i} ({name}): unknown argument(s) {unknown}; {name} takes {', '.join(allowed)}")
    try:
        return cls(**kwargs)
    except ValueError as err:
        msg = str(err)[len(name) + 2:] if str(err).startswith(f"{name}: ") else str(err)
        raise ValueError(f"step {i} ({name}): {msg}") from err
