"""Property tests for lwkit.distill's additions: unlabeled rows (ignore_index), the high-temperature limit
(logit_matching_loss) and pooled hints (teacher_pool). Bad arguments raise naming the argument; good ones agree
with a reference (torch's mse_loss, kd_loss itself at large T)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lwkit import distill

COVERED = {"lwkit.distill.logit_matching_loss"}
EXEMPT: dict[str, str] = {}

FAST = settings(max_examples=25, deadline=None)
NOT_LOGITS = st.one_of(st.none(), st.integers(), st.text(max_size=3), st.just(torch.ones(3, 4).long()),
                       st.just(torch.tensor([[1.0, float("nan")]])), st.just(torch.ones(0, 3)))
BAD_IGNORE = st.one_of(st.integers(min_value=0), st.booleans(), st.floats(), st.text(max_size=2))


def raises_naming(fn, name):
    with pytest.raises((ValueError, TypeError)) as info:
        fn()
    assert name in str(info.value), f"{name!r} not named in: {info.value}"


@FAST
@given(bad=NOT_LOGITS)
def test_logit_matching_refuses_bad_logits(bad):
    raises_naming(lambda: distill.logit_matching_loss(bad, torch.randn(3, 4)), "student_logits")
    raises_naming(lambda: distill.logit_matching_loss(torch.randn(3, 4), bad), "teacher_logits")


def test_logit_matching_refuses_shape_mismatch():
    raises_naming(lambda: distill.logit_matching_loss(torch.randn(3, 4), torch.randn(3, 5)), "shape")


@FAST
@given(batch=st.integers(1, 5), classes=st.integers(2, 8), shift=st.floats(-50, 50), seed=st.integers(0, 99))
def test_logit_matching_agrees_with_mse_and_ignores_shifts(batch, classes, shift, seed):
    g = torch.Generator().manual_seed(seed)
    zs, zt = torch.randn(batch, classes, generator=g), torch.randn(batch, classes, generator=g)
    centred = F.mse_loss(zs - zs.mean(1, keepdim=True), zt - zt.mean(1, keepdim=True), reduction="sum")
    got = distill.logit_matching_loss(zs + shift, zt)
    assert got.item() == pytest.approx(0.5 * centred.item() / (batch * classes), rel=1e-4, abs=1e-5)


@FAST
@given(bad=BAD_IGNORE)
def test_bad_ignore_index_is_named(bad):
    s, t, y = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1])
    raises_naming(lambda: distill.kd_loss(s, t, y, ignore_index=bad), "ignore_index")
    raises_naming(lambda: distill.KDLoss(nn.Linear(2, 3), ignore_index=bad), "ignore_index")
    raises_naming(lambda: distill.distill(nn.Linear(2, 3), nn.Linear(2, 3), [], ignore_index=bad), "ignore_index")


@FAST
@given(bad=st.one_of(st.integers(max_value=0), st.booleans(), st.floats(), st.text(max_size=2)))
def test_bad_teacher_pool_is_named_and_leaves_no_hooks(bad):
    teacher = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(32, 2))
    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    raises_naming(lambda: distill.HintedStudent(student, teacher, torch.randn(2, 1, 4, 4), student_layer="1",
                                                teacher_layer="0", teacher_pool=bad), "teacher_pool")
    assert not teacher[0]._forward_hooks and not student[1]._forward_hooks


@FAST
@given(alpha=st.floats(0, 1), temperature=st.floats(0.5, 8), seed=st.integers(0, 99))
def test_unlabeled_rows_never_see_the_labels(alpha, temperature, seed):
    """Changing the label of an unlabeled row to any other unlabeled marker changes nothing; the loss is finite."""
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    y = torch.tensor([1, -1, -1, 4])
    loss = distill.kd_loss(s, t, y, temperature=temperature, alpha=alpha, ignore_index=-1)
    soft_only = distill.kd_loss(s[1:3], t[1:3], torch.zeros(2, dtype=torch.long), temperature=temperature, alpha=1.0)
    labeled = distill.kd_loss(s[[0, 3]], t[[0, 3]], y[[0, 3]], temperature=temperature, alpha=alpha)
    assert loss.item() == pytest.approx((soft_only.item() + labeled.item()) / 2, rel=1e-5, abs=1e-6)
