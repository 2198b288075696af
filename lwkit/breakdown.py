"""Where the time goes: `torch.profiler` run over a model, its time split by groups of submodules.

    groups = {"attention": [l.attention for l in layers], "feed-forward": [l.intermediate for l in layers]}
    ms = time_by_group(model, example, groups)   # {"attention": ..., "feed-forward": ..., "other": ...}

Each listed submodule's forward is wrapped in a `torch.profiler.record_function` range named after its group
(forward hooks, removed afterwards); the profiler's CPU totals for those ranges, divided by `repeats`, are the
milliseconds per call. "other" is what the whole call took outside every group (embeddings, pooling, Python).
The profiler adds overhead to every op, so read the *shares*, and time the model with `lwkit.measure` for its
latency.
"""

from __future__ import annotations

import re
import sys

import torch
from torch import nn

from lwkit._runtime import _captured_fd2
from lwkit.macs import _call  # a tensor, a tuple of positional inputs, or a dict of keyword inputs

__all__ = ["time_by_group"]

_PREFIX = "lwkit::"
# What the profiler's C++ side (Kineto) writes straight to file descriptor 2 on every run: trace markers and,
# on a machine without a GPU, a failed GPU probe. Dropped; anything else it writes is passed on to sys.stderr.
_KINETO_NOISE = re.compile(r"^(USDT:.*profiler_(start|stop)|ERROR:.*gpuGetDeviceCount failed.*|\s*)$")


def _check_groups(model: nn.Module, groups) -> dict[str, list[nn.Module]]:
    if not isinstance(groups, dict) or not groups:
        raise TypeError(f"groups must be a non-empty dict of label -> list of submodules, got {groups!r:.80}")
    inside = {id(m) for m in model.modules()}
    seen: dict[int, str] = {}
    out = {}
    for label, mods in groups.items():
        if not isinstance(label, str) or not label or label == "other":
            raise ValueError(f"groups' labels must be non-empty strings other than 'other', got {label!r}")
        if isinstance(mods, nn.Module):
            mods = [mods]
        if not isinstance(mods, (list, tuple)) or not mods or not all(isinstance(m, nn.Module) for m in mods):
            raise TypeError(f"groups[{label!r}] must be a non-empty list of nn.Modules, got {mods!r:.80}")
        for m in mods:
            if id(m) not in inside:
                raise ValueError(f"groups[{label!r}] holds a {type(m).__name__} that is not a submodule of model")
            if id(m) in seen:
                raise ValueError(f"a {type(m).__name__} is listed twice (in {seen[id(m)]!r} and {label!r})")
            seen[id(m)] = label
        out[label] = list(mods)
    # a module inside another listed module would be counted twice
    for label, mods in out.items():
        for m in mods:
            for sub in m.modules():
                if sub is not m and id(sub) in seen:
                    raise ValueError(f"groups overlap: a {type(sub).__name__} in {seen[id(sub)]!r} is inside a "
                                     f"{type(m).__name__} in {label!r}; list disjoint submodules")
    return out


def time_by_group(model: nn.Module, example_input, groups: dict, *, warmup: int = 2,
                  repeats: int = 10) -> dict[str, float]:
    """Milliseconds per call spent in each group of submodules, and in everything else ("other").

    `example_input`: a tensor, a tuple of positional inputs, or a dict of keyword inputs. No gradients are
    kept; the model's hooks are restored even if the call fails.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, (torch.Tensor, tuple, dict)):
        raise TypeError(f"example_input must be a tensor, a tuple or a dict of inputs, got {type(example_input).__name__}")
    for name, value, low in (("warmup", warmup, 0), ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    groups = _check_groups(model, groups)
    stack: list = []
    handles = []

    def enter(label):
        def pre(module, args):
            ctx = torch.profiler.record_function(_PREFIX + label)
            ctx.__enter__()
            stack.append(ctx)
        return pre

    def leave(module, args, output):
        stack.pop().__exit__(None, None, None)

    try:
        for label, mods in groups.items():
            for m in mods:
                handles.append(m.register_forward_pre_hook(enter(label)))
                handles.append(m.register_forward_hook(leave))
        with torch.no_grad():
            for _ in range(warmup):
                _call(model, example_input)
            with _captured_fd2() as native:
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    with torch.profiler.record_function(_PREFIX + "total"):
                        for _ in range(repeats):
                            _call(model, example_input)
            other = [line for line in "".join(native).splitlines() if not _KINETO_NOISE.match(line)]
            if other:
                print("\n".join(other), file=sys.stderr)
    finally:
        for h in handles:
            h.remove()
        while stack:  # a forward that failed between its hooks
            stack.pop().__exit__(None, None, None)
    totals = {e.key: e.cpu_time_total for e in prof.key_averages()}
    ms = {label: totals.get(_PREFIX + label, 0.0) / repeats / 1000 for label in groups}
    total = totals.get(_PREFIX + "total", 0.0) / repeats / 1000
    ms["other"] = max(0.0, total - sum(ms.values()))
    return ms
