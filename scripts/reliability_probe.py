"""Re-run the reliability review's method: bad arguments at every public entry point, scored.

    .venv/bin/python scripts/reliability_probe.py [--verbose]

For each public name in an lwkit module's ``__all__`` that has a known good call (GOOD below), every argument is
replaced in turn by values that make no sense for it (NaN, inf, a string for a number, None where None is not
allowed, an unknown option, a NaN tensor where the result needs finite numbers, an unknown layer name...).
Each call is scored as the review scored it:

* clear     — ValueError / TypeError / an lwkit error whose message names the argument;
* obscure   — any other exception, or one that does not name the argument;
* accepted  — the call returned. For NaN/inf/wrong-type values this is a silent wrong result; for the
              "lenient" cases (a str where a bool is expected) it is listed for a human to judge.

The review's lost-work checks (student copies, interrupted scans, the checkpoint cache under concurrency)
are unit tests (tests/test_course.py, test_prune.py, test_peft.py, test_cache.py) and are not repeated here.
Prints one line per accepted or obscure case with --verbose, then the counts.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import math
import pkgutil
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import lwkit  # noqa: E402
from lwkit import models  # noqa: E402

torch.set_num_threads(1)
NAN, INF = float("nan"), float("inf")
TMP = Path(tempfile.mkdtemp(prefix="lwkit-probe-"))


def mlp():
    torch.manual_seed(0)
    return models.LeNet300100()


def cnn():
    torch.manual_seed(0)
    return models.SmallCNN()


def x_img(n=4):
    return torch.randn(n, 1, 28, 28)


def loader(n=8, batches=2):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)) for _ in range(batches)]


def w():
    return torch.randn(6, 5, generator=torch.Generator().manual_seed(1))


def zero_eval(m):
    return 0.5


# name -> function returning (args, kwargs) of a call that succeeds. Only names that still exist are probed.
GOOD = {
    # prune
    "lwkit.prune.n_to_prune": lambda: ((100, 0.5), {}),
    "lwkit.prune.magnitude_mask": lambda: ((w(), 0.5), {}),
    "lwkit.prune.random_mask": lambda: ((w(), 0.5), {}),
    "lwkit.prune.global_threshold": lambda: (({"a": w(), "b": w()}, 0.5), {}),
    "lwkit.prune.global_magnitude_masks": lambda: (({"a": w(), "b": w()}, 0.5), {}),
    "lwkit.sparse.prunable_layers": lambda: ((mlp(),), {}),
    "lwkit.prune.layer_masks": lambda: ((mlp(), 0.5), {}),
    "lwkit.prune.apply_masks": lambda: ((mlp(), {"fc1": torch.ones(300, 784, dtype=torch.bool)}), {}),
    "lwkit.sparse.sparsity": lambda: ((w(),), {}),
    "lwkit.sparse.sparsity_report": lambda: ((mlp(),), {}),
    "lwkit.prune.cubic_sparsity": lambda: ((3, 10, 0.8), {"initial_sparsity": 0.0}),
    "lwkit.prune.iterative_levels": lambda: ((0.9, 3), {}),
    "lwkit.prune.sensitivity_scan": lambda: ((mlp(), zero_eval, [0.5, 0.9]), {}),
    "lwkit.prune.prune": lambda: ((mlp(),), {"method": "magnitude", "sparsity": 0.5}),
    "lwkit.sparse.to_sparse_csr": lambda: ((mlp(),), {}),
    "lwkit.channels.channel_scores": lambda: ((torch.randn(8, 4, 3, 3),), {"norm": "l1"}),
    "lwkit.channels.keep_channels": lambda: ((torch.rand(8), 0.5), {}),
    "lwkit.channels.prune_channels": lambda: ((cnn(), 0.5), {"norm": "l1"}),
    "lwkit.prune.channel_scores": lambda: ((torch.randn(8, 4, 3, 3),), {"norm": "l1"}),
    "lwkit.prune.keep_channels": lambda: ((torch.rand(8), 0.5), {}),
    "lwkit.prune.prune_channels": lambda: ((cnn(), 0.5), {"norm": "l1"}),
    # sparse
    "lwkit.sparse.encode_csr": lambda: ((w(),), {}),
    "lwkit.sparse.encode_bitmask": lambda: ((w(),), {}),
    "lwkit.sparse.encode_relative": lambda: ((w(),), {"index_bits": 5}),
    "lwkit.sparse.save_sparse": lambda: ((mlp(), TMP / f"s{id(object())}.pt"), {"fmt": "csr", "index_bits": 5}),
    "lwkit.sparse.file_sizes": lambda: ((mlp(), TMP / f"f{id(object())}"), {"index_bits": 5}),
    # quant
    "lwkit.quant.qrange": lambda: ((8,), {"symmetric": False}),
    "lwkit.quant.choose_qparams": lambda: ((w(),), {"bits": 8, "symmetric": False}),
    "lwkit.quant.quantize": lambda: ((w(), 0.1, 0, -128, 127), {}),
    "lwkit.quant.dequantize": lambda: ((torch.randint(-128, 127, (6, 5)), 0.1, 0), {}),
    "lwkit.quant.fake_quantize_with": lambda: ((w(), 0.1, 0, -128, 127), {}),
    "lwkit.quant.fake_quantize": lambda: ((w(),), {"bits": 4, "symmetric": True}),
    "lwkit.quant.sqnr_db": lambda: ((w(), w() + 0.01), {}),
    "lwkit.quant.kmeans_quantize": lambda: ((w(),), {"bits": 2, "iters": 5}),
    "lwkit.quant.kmeans_fake_quantize": lambda: ((w(),), {"bits": 2, "iters": 5}),
    "lwkit.mixed.quantizable_layers": lambda: ((mlp(),), {}),
    "lwkit.mixed.quantize_weights": lambda: ((mlp(),), {"bits": 4, "per_channel": True, "symmetric": True}),
    "lwkit.mixed.quantized_size_bytes": lambda: ((mlp(), 4), {"per_channel": True}),
    "lwkit.mixed.layer_sensitivity": lambda: ((mlp(), zero_eval), {"bits_options": (8, 4)}),
    "lwkit.mixed.allocate_bits": lambda: (({"fc1": {8: 0.0, 4: 0.1}, "fc2": {8: 0.0, 4: 0.2}},
                                           {"fc1": 1000, "fc2": 100}, 5000.0), {}),
    "lwkit.qat.prepare_qat": lambda: ((mlp(),), {"bits": 4}),
    "lwkit.qat.prepare_ptq": lambda: ((mlp(),), {"bits": 8, "act_bits": 8}),
    "lwkit.qat.Observer": lambda: ((), {"bits": 8, "symmetric": False}),
    "lwkit.qat.ActQuantizer": lambda: ((), {"bits": 8, "momentum": 0.1}),
    "lwkit.qat.QuantWrapper": lambda: ((nn.Linear(4, 3),), {"bits": 8}),
    # measure
    "lwkit.measure.count_params": lambda: ((mlp(),), {}),
    "lwkit.measure.count_macs": lambda: ((mlp(), torch.randn(2, 784)), {}),
    "lwkit.measure.model_size_bytes": lambda: ((mlp(),), {}),
    "lwkit.measure.measure_latency": lambda: ((mlp(), torch.randn(2, 784)), {"warmup": 1, "repeats": 3, "threads": 1}),
    "lwkit.measure.format_bytes": lambda: ((1234.0,), {}),
    "lwkit.measure.compare": lambda: (({"a": mlp()}, torch.randn(2, 784)),
                                      {"latency": True, "warmup": 1, "repeats": 3, "threads": 1}),
    # train / data
    "lwkit.train.seed_everything": lambda: ((0,), {}),
    "lwkit.train.evaluate": lambda: ((cnn(), loader()), {}),
    "lwkit.train.fit": lambda: ((cnn(), loader()), {"epochs": 1, "lr": 1e-3, "progress": False}),
    "lwkit.checkpoints.baseline_config": lambda: (("mlp",), {"epochs": 1}),
    "lwkit.checkpoints.save_checkpoint": lambda: ((mlp(), TMP / f"c{id(object())}.pt"), {"meta": {"a": 1}}),
    "lwkit.data.balanced_indices": lambda: ((__import__("numpy").arange(100) % 10, 3, 0), {}),
    "lwkit.data.BatchLoader": lambda: ((torch.randn(10, 1, 28, 28), torch.randint(0, 10, (10,))),
                                       {"batch_size": 4, "shuffle": True}),
    # distill
    "lwkit.distill.soft_targets": lambda: ((torch.randn(4, 10),), {"temperature": 2.0}),
    "lwkit.distill.kd_loss": lambda: ((torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))),
                                      {"temperature": 4.0, "alpha": 0.9}),
    "lwkit.distill.KDLoss": lambda: ((mlp(),), {"temperature": 4.0, "alpha": 0.9}),
    # peft
    "lwkit.peft.freeze": lambda: ((mlp(),), {}),
    "lwkit.peft.unfreeze": lambda: ((mlp(), ["fc3"]), {}),
    "lwkit.peft.layers": lambda: ((mlp(),), {}),
    "lwkit.peft.finetune_top_k": lambda: ((mlp(), 1), {}),
    "lwkit.peft.bitfit": lambda: ((mlp(),), {"keep_trainable": ["fc3"]}),
    "lwkit.peft.LoRALinear": lambda: ((nn.Linear(8, 6),), {"rank": 2, "alpha": 4.0}),
    "lwkit.peft.add_lora": lambda: ((mlp(), ["fc1", "fc2"]), {"rank": 4, "alpha": 8.0, "keep_trainable": ["fc3"]}),
    "lwkit.peft.add_adapters": lambda: ((mlp(), ["fc1"]), {"bottleneck": 4, "keep_trainable": ["fc3"]}),
    "lwkit.peft.Adapter": lambda: ((8,), {"bottleneck": 4}),
    "lwkit.peft.trainable_report": lambda: ((mlp(),), {}),
    # models
    "lwkit.models.LeNet300100": lambda: ((), {"hidden": (30, 10), "num_classes": 10}),
    "lwkit.models.SmallCNN": lambda: ((), {"channels": (4, 8, 8), "num_classes": 10}),
    "lwkit.models.build": lambda: (("mlp",), {}),
    # report
    "lwkit.report.record": lambda: (("probe.key", 0.5), {"expected": (0.0, 1.0), "quiet": True}),
}


# Dict arguments keyed by layer name: an unknown key must be refused. Other dicts (models, meta) take any key.
LAYER_DICTS = {"masks", "sizes", "sensitivity", "bits", "sparsity"}


def bad_values(name: str, good):
    """(label, value, strict) pairs; strict=False marks values some APIs may reasonably accept."""
    if isinstance(good, bool):
        return [("str-for-bool", "yes", False), ("None", None, True)]
    if isinstance(good, int):
        return [("nan", NAN, True), ("str", "3", True), ("None", None, True), ("inf", INF, True)]
    if isinstance(good, float):
        return [("nan", NAN, True), ("inf", INF, True), ("str", "0.5", True), ("None", None, True)]
    if isinstance(good, str):
        return [("unknown-option", "no-such-option", False), ("int-for-str", 3, True)]
    if isinstance(good, torch.Tensor):
        out = [("str-for-tensor", "tensor", True)]
        if good.is_floating_point() and good.numel():
            bad = good.clone()
            bad.view(-1)[0] = NAN
            out.append(("nan-tensor", bad, False))
        return out
    if isinstance(good, nn.Module):
        return [("str-for-model", "model", True), ("None", None, True)]
    if isinstance(good, dict):
        out = [("str-for-dict", "fc1", True)]
        if good and name in LAYER_DICTS:
            out.append(("unknown-key", {**good, "no_such_layer": next(iter(good.values()))}, True))
        return out
    if isinstance(good, (list, tuple)) and good and all(isinstance(v, str) for v in good):
        return [("unknown-name", ["no_such_layer"], True), ("bare-str", good[0], False)]
    if callable(good):
        return [("not-callable", 3, True)]
    return []


def resolve(qualname: str):
    mod, _, attr = qualname.rpartition(".")
    return getattr(importlib.import_module(mod), attr)


def names_arg(message: str, param: str) -> bool:
    return param in message


def lwkit_frame(exc: BaseException) -> bool:
    """True when the exception was raised by lwkit's own code (its last frame is in lwkit/)."""
    tb = traceback.extract_tb(exc.__traceback__)
    return bool(tb) and "lwkit" in Path(tb[-1].filename).parts


def probe(qualname: str, make_good, results: list):
    fn = resolve(qualname)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    args, kwargs = make_good()
    bound = sig.bind_partial(*args, **kwargs)
    for param, good in list(bound.arguments.items()):
        p = sig.parameters[param]
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        for label, value, strict in bad_values(param, good):
            if value is None and (p.default is None or "None" in str(p.annotation)):
                continue  # None is an allowed value here
            a, k = make_good()
            b = sig.bind_partial(*a, **k)
            b.arguments[param] = copy.copy(value) if not isinstance(value, torch.Tensor) else value
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    fn(*b.args, **b.kwargs)
                except (ValueError, TypeError, LookupError, RuntimeError) as e:
                    ok_type = isinstance(e, (ValueError, TypeError)) or type(e).__module__.startswith("lwkit")
                    if ok_type and names_arg(str(e), param):
                        results.append(("clear", qualname, param, label, str(e)[:100]))
                    else:
                        where = "lwkit" if lwkit_frame(e) else "library"
                        results.append(("obscure", qualname, param, label, f"[{where}] {type(e).__name__}: "
                                                                            f"{str(e)[:100]}"))
                except Exception as e:  # noqa: BLE001 - scoring every exception is the point
                    results.append(("obscure", qualname, param, label, f"{type(e).__name__}: {str(e)[:100]}"))
                else:
                    results.append(("accepted" if strict else "lenient", qualname, param, label, ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verbose", action="store_true")
    opts = ap.parse_args(argv)
    public = []
    for m in pkgutil.iter_modules(lwkit.__path__):
        mod = importlib.import_module(f"lwkit.{m.name}")
        public += [f"lwkit.{m.name}.{n}" for n in getattr(mod, "__all__", [])]
    results, untested = [], []
    for qualname in sorted(public):
        if qualname in GOOD:
            probe(qualname, GOOD[qualname], results)
        else:
            untested.append(qualname)
    counts = {k: sum(r[0] == k for r in results) for k in ("clear", "obscure", "accepted", "lenient")}
    if opts.verbose:
        for r in results:
            if r[0] != "clear":
                print(f"{r[0]:9s} {r[1]}({r[2]}={r[3]}) {r[4]}")
    probed = len({r[1] for r in results})
    print(f"entry points probed: {probed} of {len(public)} public names ({len(untested)} without a good call: "
          f"classes of results, constants, or functions needing files/notebooks)")
    print(f"calls: {len(results)}  clear: {counts['clear']}  obscure: {counts['obscure']}  "
          f"silent accept (strict bad values): {counts['accepted']}  lenient accept (judge by hand): "
          f"{counts['lenient']}")
    return 0 if math.isfinite(len(results)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
