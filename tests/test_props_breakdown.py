"""lwkit.breakdown: profiler time by groups of submodules."""

import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lwkit import breakdown

COVERED = {"lwkit.breakdown.time_by_group"}
EXEMPT: dict[str, str] = {}


def two_layers():
    return nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 4)).eval()


class Sleepy(nn.Module):
    """Takes at least `seconds` per call: a lower bound on its time that holds on any machine, under any load."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return x


def test_each_group_gets_the_time_spent_inside_it_and_hooks_are_removed():
    net = nn.Sequential(Sleepy(0.05), nn.Linear(4, 4), Sleepy(0.0)).eval()
    ms = breakdown.time_by_group(net, torch.randn(2, 4), {"slow": [net[0]], "fast": net[2]}, warmup=0, repeats=3)
    assert set(ms) == {"slow", "fast", "other"} and all(v >= 0 for v in ms.values())
    assert ms["slow"] >= 50 * 0.95, ms  # the 50 ms sleep is inside the "slow" range (ms per call)
    assert ms["fast"] < ms["slow"], ms
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_keyword_inputs_and_a_failing_forward_leave_no_hooks():
    class KW(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x=None, fail=False):
            y = self.lin(x)
            if fail:
                raise RuntimeError("planted")
            return y

    net = KW()
    assert set(breakdown.time_by_group(net, {"x": torch.randn(2, 3)}, {"lin": [net.lin]}, repeats=1)) == {"lin", "other"}
    with pytest.raises(RuntimeError, match="planted"):
        breakdown.time_by_group(net, {"x": torch.randn(2, 3), "fail": True}, {"lin": [net.lin]})
    assert not net.lin._forward_hooks and not net.lin._forward_pre_hooks


def test_bad_groups_are_refused_naming_the_problem():
    net, other = two_layers(), nn.Linear(2, 2)
    x = torch.randn(1, 512)
    for groups, match in (({}, "groups"), ({"a": [other]}, "not a submodule"), ({"other": [net[0]]}, "labels"),
                          ({"a": [net[0]], "b": [net[0]]}, "listed twice"), ({"a": [net], "b": [net[0]]}, "overlap"),
                          ({"a": []}, r"groups\['a'\]"), ({"a": ["x"]}, r"groups\['a'\]")):
        with pytest.raises((ValueError, TypeError), match=match):
            breakdown.time_by_group(net, x, groups)


@settings(max_examples=20, deadline=None)
@given(bad=st.one_of(st.integers(max_value=0), st.booleans(), st.floats(), st.text(max_size=2), st.none()))
def test_bad_repeats_and_inputs(bad):
    net = two_layers()
    with pytest.raises(ValueError, match="repeats"):
        breakdown.time_by_group(net, torch.randn(1, 512), {"a": [net[0]]}, repeats=bad)
    with pytest.raises(TypeError, match="example_input"):
        breakdown.time_by_group(net, [1, 2], {"a": [net[0]]})
    with pytest.raises(TypeError, match="model"):
        breakdown.time_by_group("net", torch.randn(1, 512), {"a": [net[0]]})
