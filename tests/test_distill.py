"""lwkit.distill: the KD loss against its formula, the teacher cache, the training loop, bad inputs."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lwkit import data, distill, train


def hand_kd(student, teacher, labels, T, alpha):
    """The Hinton loss written out element by element, in float64."""
    total = 0.0
    for s_row, t_row, y in zip(student.tolist(), teacher.tolist(), labels.tolist()):
        zs = [v / T for v in s_row]
        zt = [v / T for v in t_row]
        ls = math.log(sum(math.exp(v) for v in zs))
        lt = math.log(sum(math.exp(v) for v in zt))
        p_t = [math.exp(v - lt) for v in zt]
        kl = sum(p * ((v - lt) - (u - ls)) for p, v, u in zip(p_t, zt, zs))  # sum p_t log(p_t / p_s)
        ce = -(s_row[y] - math.log(sum(math.exp(v) for v in s_row)))
        total += alpha * T * T * kl + (1 - alpha) * ce
    return total / len(labels)


def test_kd_loss_matches_hand_formula():
    student = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    teacher = torch.tensor([[3.0, 1.0, -2.0], [-1.0, 2.0, 0.0]])
    labels = torch.tensor([0, 2])
    for T, alpha in [(1.0, 0.5), (4.0, 0.9), (2.5, 1.0), (0.5, 0.3)]:
        got = distill.kd_loss(student, teacher, labels, temperature=T, alpha=alpha).item()
        assert got == pytest.approx(hand_kd(student, teacher, labels, T, alpha), rel=1e-5)


def test_kd_loss_alpha_zero_is_cross_entropy():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    assert torch.allclose(distill.kd_loss(s, t, y, temperature=3.0, alpha=0.0), F.cross_entropy(s, y))


def test_kd_loss_soft_term_is_zero_when_student_equals_teacher():
    torch.manual_seed(0)
    t = torch.randn(4, 5)
    loss = distill.kd_loss(t.clone(), t, torch.zeros(4, dtype=torch.long), temperature=2.0, alpha=1.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_gradient_only_reaches_the_student():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    distill.kd_loss(s, t, torch.tensor([0, 1, 2, 0])).backward()
    assert s.grad is not None and t.grad is None


def test_soft_targets_flatten_with_temperature():
    logits = torch.tensor([[4.0, 1.0, 0.0]])
    p1, p10 = distill.soft_targets(logits, 1.0), distill.soft_targets(logits, 10.0)
    assert torch.allclose(p1, torch.softmax(logits, 1))
    assert p10.max() < p1.max() and p10.min() > p1.min()


def test_kd_module_runs_the_teacher():
    torch.manual_seed(0)
    teacher, x, y = nn.Linear(6, 3), torch.randn(5, 6), torch.tensor([0, 1, 2, 1, 0])
    logits = torch.randn(5, 3)
    loss = distill.KDLoss(teacher, temperature=2.0, alpha=0.7)(logits, y, x)
    expected = distill.kd_loss(logits, teacher(x), y, temperature=2.0, alpha=0.7)
    assert torch.allclose(loss, expected)


def test_cached_teacher_equals_teacher_on_seen_and_new_rows():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    inputs = torch.randn(50, 3, 4)
    cached = distill.CachedTeacher(teacher, inputs, batch_size=16, on_miss="teacher")
    batch = torch.cat([inputs[[7, 3, 49]], torch.randn(2, 3, 4), inputs[:1]])  # seen, new, seen
    with torch.no_grad():
        assert torch.allclose(cached(batch), teacher(batch), atol=1e-6)


def test_review_cached_teacher_miss_is_an_error_by_default():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    inputs = torch.randn(50, 3, 4)
    cached = distill.CachedTeacher(teacher, inputs, batch_size=16)
    with torch.no_grad():
        assert torch.allclose(cached(inputs[[5, 0, 49]]), teacher(inputs[[5, 0, 49]]), atol=1e-6)
        with pytest.raises(ValueError, match="2 of 3 inputs are not in the CachedTeacher") as info:
            cached(torch.cat([inputs[:1], torch.randn(2, 3, 4)]))
        assert "on_miss='teacher'" in str(info.value)
        for bad in (torch.randn(2, 12), torch.randn(2, 3, 5), "x"):
            with pytest.raises(ValueError, match="like the cached inputs"):
                cached(bad)
    with pytest.raises(ValueError, match="on_miss"):
        distill.CachedTeacher(teacher, inputs, on_miss="skip")
    with pytest.raises(ValueError, match="batch_size"):
        distill.CachedTeacher(teacher, inputs, batch_size=0)


def test_distill_trains_a_student_with_fit():
    train.seed_everything(0)
    x = torch.randn(64, 1, 4, 4)
    y = (x.flatten(1).sum(1) > 0).long()
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    loader = data.BatchLoader(x, y, batch_size=16, shuffle=True)
    history = distill.distill(student, distill.CachedTeacher(teacher, x), loader, temperature=2.0, alpha=0.5,
                              epochs=2, lr=1e-2, progress=False, device="cpu")
    assert len(history.loss) == 2 and all(math.isfinite(v) for v in history.loss)
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_hint_loss_trains_student_and_regressor():
    train.seed_everything(0)
    x = torch.randn(32, 1, 4, 4)
    y = torch.randint(0, 3, (32,))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 2), nn.ReLU(), nn.Linear(2, 3))
    hinted = distill.HintedStudent(student, teacher, x, student_layer="1", teacher_layer="1")
    assert hinted.regressor.in_features == 2 and hinted.regressor.out_features == 8
    before = hinted.regressor.weight.detach().clone()
    loader = data.BatchLoader(x, y, batch_size=8, shuffle=True)
    train.fit(hinted, loader, epochs=1, lr=1e-2, loss_fn=distill.HintLoss(hinted, beta=0.5), progress=False,
              device="cpu")
    assert not torch.equal(before, hinted.regressor.weight)
    assert hinted(x).shape == (32, 3)
    plain = hinted.remove_hooks()
    assert plain is student and not student[1]._forward_hooks and not teacher[1]._forward_hooks


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": 0}, "temperature"), ({"temperature": -1.0}, "temperature"),
    ({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha"), ({"alpha": True}, "alpha"),
])
def test_bad_inputs(kwargs, match):
    s, t, y = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=match):
        distill.kd_loss(s, t, y, **kwargs)
    with pytest.raises(ValueError, match=match):
        distill.KDLoss(nn.Linear(3, 3), **kwargs)


def test_bad_shapes_and_layer_names():
    with pytest.raises(ValueError, match="same shape"):
        distill.kd_loss(torch.randn(2, 3), torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="teacher"):
        distill.KDLoss("not a model")
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="valid names"):
        distill.HintedStudent(model, model, torch.randn(2, 4), student_layer="fc9", teacher_layer="1")
    with pytest.raises(TypeError, match="loss_fn"):
        distill.distill(model, model, [(torch.randn(2, 4), torch.tensor([0, 1]))], loss_fn=None)


# ---------------------------------------------------------------------------------------------------------
# Reliability review (issue #8)


@pytest.mark.parametrize("temperature", [float("inf"), float("nan"), 0.0, -2.0, True, "4", None])
def test_review_kd_loss_temperature(temperature):
    s, t, y = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="temperature"):
        distill.kd_loss(s, t, y, temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        distill.KDLoss(nn.Linear(3, 3), temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        distill.soft_targets(s, temperature)
    with pytest.raises(ValueError, match="temperature"):
        distill.distill(nn.Linear(3, 3), nn.Linear(3, 3), [(s, y)], temperature=temperature)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -0.01, 1.01, "0.5"])
def test_review_kd_loss_alpha(alpha):
    s, t, y = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="alpha"):
        distill.kd_loss(s, t, y, alpha=alpha)


def test_review_kd_loss_unbatched_logits():
    s, t = torch.randn(10), torch.randn(10)
    with pytest.raises(ValueError, match=r"\(batch, classes\)") as info:
        distill.kd_loss(s, t, torch.tensor(3))
    assert "unsqueeze(0)" in str(info.value)
    batched = distill.kd_loss(s[None], t[None], torch.tensor([3]), temperature=4.0, alpha=1.0)
    assert batched.item() == pytest.approx(hand_kd(s[None], t[None], torch.tensor([3]), 4.0, 1.0), rel=1e-5)


@pytest.mark.parametrize("which", ["student_logits", "teacher_logits"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_review_kd_loss_nonfinite_logits(which, value):
    s, t = torch.randn(2, 3), torch.randn(2, 3)
    (s if which == "student_logits" else t)[1, 2] = value
    with pytest.raises(ValueError, match=f"{which} must be finite"):
        distill.kd_loss(s, t, torch.tensor([0, 1]))


@pytest.mark.parametrize("labels, words", [
    (torch.tensor([0.0, 1.0]), "labels"), (torch.tensor([[0], [1]]), "labels"), (torch.tensor([0, 1, 2]), "labels"),
    (torch.tensor([0, 3]), r"\[0, 3\)"), (torch.tensor([-1, 0]), r"\[0, 3\)"), ([0, 1], "labels"),
])
def test_kd_loss_bad_labels(labels, words):
    with pytest.raises(ValueError, match=words):
        distill.kd_loss(torch.randn(2, 3), torch.randn(2, 3), labels)


@pytest.mark.parametrize("student, teacher, words", [
    (torch.randn(0, 3), torch.randn(0, 3), "batch >= 1"),
    (torch.randn(2, 3, 1), torch.randn(2, 3, 1), r"\(batch, classes\)"),
    (torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long), "floating"),
])
def test_kd_loss_bad_logit_shapes(student, teacher, words):
    with pytest.raises((ValueError, TypeError), match=words):
        distill.kd_loss(student, teacher, torch.zeros(len(student), dtype=torch.long))


def test_hint_loss_and_student_checks():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    hinted = distill.HintedStudent(model, nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), torch.randn(2, 4),
                                   student_layer="1", teacher_layer="1")
    for beta in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ValueError, match="beta"):
            distill.HintLoss(hinted, beta=beta)
    with pytest.raises(ValueError, match="temperature"):
        distill.HintLoss(hinted, temperature=float("inf"))
    with pytest.raises(TypeError, match="hinted"):
        distill.HintLoss(model)
    with pytest.raises(RuntimeError, match="train mode"):
        distill.HintLoss(hinted)(torch.randn(2, 2), torch.tensor([0, 1]), torch.randn(2, 4))
    with pytest.raises(TypeError, match="student_layer"):
        distill.HintedStudent(model, model, torch.randn(2, 4), student_layer=1, teacher_layer="1")

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.extra = nn.Linear(4, 2), nn.Linear(2, 2)  # extra: registered, never called

        def forward(self, x):
            return self.fc(x)

    unused, teacher = Unused(), nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="not run"):
        distill.HintedStudent(unused, teacher, torch.randn(2, 4), student_layer="extra", teacher_layer="1")
    assert not unused.extra._forward_hooks and not teacher[1]._forward_hooks, "hooks removed after the error"


def test_unlabeled_rows_take_the_soft_term_only():
    """ignore_index: labeled rows get alpha, unlabeled rows alpha = 1; the mean is over all rows."""
    torch.manual_seed(0)
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    y = torch.tensor([0, -1, 3, -1, 2])
    T, alpha = 2.0, 0.6
    rows = []
    for i in range(5):
        a = alpha if y[i] >= 0 else 1.0
        yi = y[i:i + 1].clamp(min=0)
        rows.append(hand_kd(s[i:i + 1], t[i:i + 1], yi, T, a))
    got = distill.kd_loss(s, t, y, temperature=T, alpha=alpha, ignore_index=-1)
    assert got.item() == pytest.approx(sum(rows) / 5, rel=1e-5)
    y_all = torch.tensor([0, 1, 3, 2, 2])  # no unlabeled rows: the same as without ignore_index
    assert torch.allclose(distill.kd_loss(s, t, y_all, temperature=T, alpha=alpha, ignore_index=-1),
                          distill.kd_loss(s, t, y_all, temperature=T, alpha=alpha), atol=1e-6)
    only_unlabeled = distill.kd_loss(s, t, torch.full((5,), -7), temperature=T, alpha=0.0, ignore_index=-7)
    assert torch.allclose(only_unlabeled, distill.kd_loss(s, t, y_all, temperature=T, alpha=1.0), atol=1e-6)
    with pytest.raises(ValueError, match="or -1 for unlabeled"):
        distill.kd_loss(s, t, torch.tensor([0, -2, 1, 1, 1]), ignore_index=-1)


def test_distill_with_unlabeled_rows_trains():
    train.seed_everything(0)
    x = torch.randn(32, 1, 4, 4)
    y = torch.randint(0, 2, (32,))
    y[8:] = -1
    teacher, student = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    loader = data.BatchLoader(x, y, batch_size=8, shuffle=True)
    history = distill.distill(student, distill.CachedTeacher(teacher, x), loader, alpha=0.5, ignore_index=-1,
                              epochs=1, lr=1e-2, progress=False, device="cpu")
    assert all(math.isfinite(v) for v in history.loss)


def test_logit_matching_is_the_high_temperature_limit():
    """Hinton 2015, section 2.1: T**2 * KL -> 0.5 * sum(centred z_s - centred z_t)**2 / classes, value and gradient."""
    torch.manual_seed(0)
    zs, zt = torch.randn(6, 10, dtype=torch.float64), 3 * torch.randn(6, 10, dtype=torch.float64)
    zs.requires_grad_(True)
    reference = 0.5 * F.mse_loss(zs - zs.mean(1, keepdim=True), zt - zt.mean(1, keepdim=True), reduction="sum") / 60
    match = distill.logit_matching_loss(zs, zt)
    assert match.item() == pytest.approx(reference.item(), rel=1e-12)
    (g_match,) = torch.autograd.grad(match, zs)
    errors = []
    for T in (10.0, 100.0, 1000.0):
        kd = distill.kd_loss(zs, zt, torch.zeros(6, dtype=torch.long), temperature=T, alpha=1.0)  # holds T**2
        (g_kd,) = torch.autograd.grad(kd, zs)
        errors.append(((g_kd - g_match).norm() / g_match.norm()).item())
        assert kd.item() == pytest.approx(match.item(), rel=5 / T)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-2, errors
    assert distill.logit_matching_loss(zt + 5.0, zt).item() == pytest.approx(0.0, abs=1e-12)  # shift-invariant


def test_hint_teacher_pool_matches_adaptive_avg_pool():
    train.seed_everything(0)
    x = torch.randn(4, 1, 8, 8)
    teacher = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(192, 2))
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 2))
    hinted = distill.HintedStudent(student, teacher, x, student_layer="1", teacher_layer="1", teacher_pool=2)
    assert (hinted.regressor.in_features, hinted.regressor.out_features) == (5, 3 * 2 * 2)
    hinted.train()
    hinted(x)
    _, feature, _ = hinted.hint_terms()
    assert torch.allclose(feature, F.adaptive_avg_pool2d(teacher[1](teacher[0](x)), 2).flatten(1))
    with pytest.raises(ValueError, match="teacher_pool needs a"):
        distill.HintedStudent(student, teacher, x, student_layer="1", teacher_layer="3", teacher_pool=1)
    assert not teacher[3]._forward_hooks  # hooks removed after the refusal
