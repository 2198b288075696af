"""Knowledge distillation (知识蒸馏): train a small student on a large teacher's softened outputs.

The loss of Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network":

    loss = alpha * T**2 * KL(p_teacher_T || p_student_T) + (1 - alpha) * CE(student logits, labels)

where p_T = softmax(logits / T). The gradient of the soft term scales like 1 / T**2, so multiplying by
T**2 keeps its weight against the hard term the same whatever the temperature.
Training reuses `lwkit.train.fit`: `KDLoss` is a `loss_fn(logits, y, x)` that runs the teacher on `x`.
Rows whose label is `ignore_index` are unlabeled: they take the soft term only (alpha = 1), which is Hinton's
unlabeled transfer set. At high temperature the soft term tends to `logit_matching_loss` (their section 2.1).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from lwkit import train

__all__ = ["CachedTeacher", "HintLoss", "HintedStudent", "KDLoss", "distill", "kd_loss", "logit_matching_loss",
           "soft_targets"]


def _check_temperature(temperature) -> None:
    if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
            or not math.isfinite(temperature) or not temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def _check_alpha(alpha) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")


def _check_module(value, name: str) -> None:
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")


def _check_logits(logits, name: str, *, batched: bool = True) -> None:
    """Finite float logits; (batch, classes) with batch >= 1 when `batched`."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        got = logits.dtype if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise TypeError(f"{name} must be a floating-point tensor, got {got}")
    if batched and (logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0):
        raise ValueError(f"{name} must be (batch, classes) with batch >= 1, got shape {tuple(logits.shape)}; "
                         "for one example use logits.unsqueeze(0)")
    if not batched and (logits.ndim == 0 or logits.shape[-1] == 0):
        raise ValueError(f"{name} must have a classes dimension (the last), got shape {tuple(logits.shape)}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(f"{name} must be finite, got nan or inf (a diverged model, or inputs with nan?)")


def soft_targets(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / T) over the last dimension: T = 1 is the usual softmax, larger T spreads the mass."""
    _check_logits(logits, "logits", batched=False)
    _check_temperature(temperature)
    return torch.softmax(logits / temperature, dim=-1)  # (batch, classes)


def _check_ignore_index(ignore_index) -> None:
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)
                                     or ignore_index >= 0):
        raise ValueError(f"ignore_index must be None or a negative int (the label of unlabeled rows, e.g. -1), "
                         f"got {ignore_index!r}")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
            temperature: float = 4.0, alpha: float = 0.9, ignore_index: int | None = None) -> torch.Tensor:
    """Hinton et al.'s distillation loss, averaged over the batch.

    Args:
        student_logits: (batch, classes), with gradient.
        teacher_logits: (batch, classes); treated as constants (detached).
        labels: (batch,) true class indices (integers in [0, classes)), or `ignore_index` for an unlabeled row.
        temperature: finite T > 0 that softens both distributions in the soft term.
        alpha: weight in [0, 1] of the soft term; alpha = 0 is plain cross-entropy, 1 is pure imitation.
        ignore_index: None (every row labeled) or a negative int; rows with that label get the soft term only.

    Unbatched (classes,) logits are refused: 'batchmean' would divide the soft term by the classes.
    """
    _check_temperature(temperature)
    _check_alpha(alpha)
    _check_ignore_index(ignore_index)
    _check_logits(student_logits, "student_logits")
    _check_logits(teacher_logits, "teacher_logits")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits must have the same shape, got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")
    n, classes = student_logits.shape
    if (not isinstance(labels, torch.Tensor) or labels.dtype == torch.bool or labels.is_floating_point()
            or labels.is_complex() or labels.shape != (n,)):
        got = f"{labels.dtype} of shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a 1-D integer tensor of class indices shaped ({n},), got {got}")
    labeled = labels != ignore_index if ignore_index is not None else torch.ones_like(labels, dtype=torch.bool)
    if labeled.any() and (int(labels[labeled].min()) < 0 or int(labels[labeled].max()) >= classes):
        unlabeled = "" if ignore_index is None else f" (or {ignore_index} for unlabeled rows)"
        raise ValueError(f"labels must be class indices in [0, {classes}){unlabeled}, got values from "
                         f"{int(labels[labeled].min())} to {int(labels[labeled].max())}")
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)  # (batch, classes)
    p_teacher = F.softmax(teacher_logits.detach() / temperature, dim=-1)  # (batch, classes)
    if ignore_index is None:
        # KL(p_teacher || p_student) = sum p_teacher * (log p_teacher - log p_student), mean over the batch
        soft = F.kl_div(log_p_student, p_teacher, reduction="batchmean")
        hard = F.cross_entropy(student_logits, labels)
        return alpha * temperature**2 * soft + (1 - alpha) * hard
    soft_rows = F.kl_div(log_p_student, p_teacher, reduction="none").sum(-1)  # (batch,)
    hard_rows = F.cross_entropy(student_logits, labels.clamp(min=0), reduction="none")  # (batch,), used where labeled
    weight = torch.where(labeled, torch.tensor(float(alpha)), torch.tensor(1.0)).to(soft_rows)  # (batch,) alpha or 1
    hard_rows = torch.where(labeled, hard_rows, torch.zeros_like(hard_rows))
    return (weight * temperature**2 * soft_rows + (1 - weight) * hard_rows).mean()


def logit_matching_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Hinton's high-temperature limit of T**2 * KL: 0.5 * sum((z_s - mean z_s) - (z_t - mean z_t))**2 / classes.

    Averaged over the batch. Logits are centred per row because softmax ignores a constant shift.
    """
    _check_logits(student_logits, "student_logits")
    _check_logits(teacher_logits, "teacher_logits")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits must have the same shape, got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")
    zs = student_logits - student_logits.mean(-1, keepdim=True)  # (batch, classes), zero mean per row
    zt = (teacher_logits - teacher_logits.mean(-1, keepdim=True)).detach()  # (batch, classes)
    return 0.5 * ((zs - zt) ** 2).sum(-1).mean() / student_logits.shape[-1]


class KDLoss(nn.Module):
    """`kd_loss` with its teacher inside: a `loss_fn(logits, y, x)` for `lwkit.train.fit`.

    The teacher runs in eval mode without gradient on each batch `x` the student sees.
    """

    def __init__(self, teacher: nn.Module, *, temperature: float = 4.0, alpha: float = 0.9,
                 ignore_index: int | None = None):
        super().__init__()
        _check_module(teacher, "teacher")
        _check_temperature(temperature)
        _check_alpha(alpha)
        _check_ignore_index(ignore_index)
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature, self.alpha, self.ignore_index = temperature, alpha, ignore_index
        self.labeled: torch.Tensor | None = None  # set per batch by distill's loader when labels were replaced

    def forward(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be the batch of inputs (a tensor), got {type(x).__name__}")
        self.teacher.eval()
        with torch.no_grad():
            teacher_logits = self.teacher(x)  # (batch, classes)
        if self.labeled is not None and self.ignore_index is not None:  # restore the unlabeled marker
            y = torch.where(self.labeled.to(y.device), y, torch.full_like(y, self.ignore_index))
            self.labeled = None
        return kd_loss(logits, teacher_logits, y, temperature=self.temperature, alpha=self.alpha,
                       ignore_index=self.ignore_index)


class CachedTeacher(nn.Module):
    """A teacher whose logits on a fixed set of inputs are computed once, then looked up.

    Distillation without augmentation shows the teacher the same training images every epoch; running it
    again each time costs more than training a small student. Each input row is found by a hash of its
    bytes and checked for exact equality. A row not in the table (an augmented or new image) raises a
    ValueError by default (`on_miss='error'`: a cache that silently runs the teacher hides the cost it was
    meant to save); with `on_miss='teacher'` such rows go through the teacher, so the outputs always equal
    `teacher(x)` (up to float rounding of batched evaluation).
    """

    def __init__(self, teacher: nn.Module, inputs: torch.Tensor, *, batch_size: int = 1000,
                 on_miss: str = "error"):
        super().__init__()
        _check_module(teacher, "teacher")
        if not isinstance(inputs, torch.Tensor) or inputs.dtype != torch.float32 or inputs.ndim < 2 or not len(inputs):
            raise ValueError(f"inputs must be a non-empty float32 (n, ...) tensor, got {inputs!r:.60}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if on_miss not in ("error", "teacher"):
            raise ValueError(f"on_miss must be 'error' or 'teacher', got {on_miss!r}")
        self.on_miss = on_miss
        self.teacher = teacher.eval().requires_grad_(False)
        self.inputs = inputs.detach().cpu().contiguous()  # (n, ...) kept to verify each hit exactly
        self._weights = torch.randint(-2**31, 2**31, (self.inputs[0].numel(),),
                                      generator=torch.Generator().manual_seed(0))  # (features,) int64
        device = next(teacher.parameters(), torch.empty(0)).device
        with torch.no_grad():
            self.logits = torch.cat([teacher(self.inputs[i: i + batch_size].to(device)).float().cpu()
                                     for i in range(0, len(self.inputs), batch_size)])  # (n, classes)
        hashes = torch.cat([self._hash(self.inputs[i: i + batch_size])
                            for i in range(0, len(self.inputs), batch_size)])  # (n,), in chunks to bound memory
        self.keys, self.order = torch.sort(hashes)  # (n,) sorted hashes and the rows they belong to

    def _hash(self, x: torch.Tensor) -> torch.Tensor:
        """An exact integer hash of each row's float bits (int64 arithmetic wraps, so batching can't change it)."""
        bits = x.reshape(len(x), -1).view(torch.int32).long()  # (batch, features)
        return (bits * self._weights).sum(1)  # (batch,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim < 1 or tuple(x.shape[1:]) != tuple(self.inputs.shape[1:]):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a batch shaped (batch, {', '.join(map(str, self.inputs.shape[1:]))}) like "
                             f"the cached inputs, got {got}")
        x_cpu = x.detach().float().cpu().contiguous()
        keys = self._hash(x_cpu)
        pos = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
        rows = self.order[pos]  # (batch,) candidate rows of the table
        hit = (self.keys[pos] == keys) & (self.inputs[rows] == x_cpu).reshape(len(x), -1).all(1)
        out = self.logits[rows].clone()  # (batch, classes)
        if not hit.all() and self.on_miss == "error":
            raise ValueError(f"{int((~hit).sum())} of {len(x)} inputs are not in the CachedTeacher's cache "
                             "(augmented, or not the images it was built on): build it on the inputs the student "
                             "sees, or pass on_miss='teacher' to run the teacher on them")
        if not hit.all():
            with torch.no_grad():
                out[~hit] = self.teacher(x[~hit.to(x.device)]).float().cpu()
        return out.to(x.device)


class _MarkedBatches:
    """Re-iterable view of a loader that hands `train.fit` valid labels and tells the loss which rows are unlabeled.

    `train.fit` checks that labels are class indices, so an unlabeled row's marker (`ignore_index`) is replaced
    by 0 on the way in, and `loss.labeled` records the true mask of the batch about to be trained on.
    """

    def __init__(self, loader, loss: KDLoss):
        self.loader, self.loss = loader, loss

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            labeled = y != self.loss.ignore_index  # (batch,)
            self.loss.labeled = labeled
            yield x, torch.where(labeled, y, torch.zeros_like(y))


def distill(student: nn.Module, teacher: nn.Module, train_loader, *, temperature: float = 4.0,
            alpha: float = 0.9, ignore_index: int | None = None, **fit_kwargs) -> train.History:
    """Train `student` in place on `teacher`'s soft targets plus the labels; `fit_kwargs` go to `train.fit`.

    With `ignore_index` (e.g. -1), batches may hold unlabeled rows with that label: soft term only for them.
    """
    _check_module(student, "student")
    _check_module(teacher, "teacher")
    if "loss_fn" in fit_kwargs:
        raise TypeError("distill sets loss_fn itself; call lwkit.train.fit for a custom loss")
    _check_temperature(temperature)
    _check_alpha(alpha)
    _check_ignore_index(ignore_index)
    if not isinstance(teacher, CachedTeacher):
        device = train._as_device(fit_kwargs.get("device")) or train.default_device()
        teacher = teacher.to(device)
    loss = KDLoss(teacher, temperature=temperature, alpha=alpha, ignore_index=ignore_index)
    fit_kwargs.setdefault("desc", f"distill (T={temperature:g}, alpha={alpha:g})")
    if ignore_index is not None:
        train_loader = _MarkedBatches(train_loader, loss)
    return train.fit(student, train_loader, loss_fn=loss, **fit_kwargs)


# ---------------------------------------------------------------------------------------------------------
# Hints (FitNets, Romero et al. 2015): the student also matches an intermediate feature map of the teacher.


def _module(model: nn.Module, name: str, arg: str) -> nn.Module:
    if not isinstance(name, str):
        raise TypeError(f"{arg} must be a layer name (str), got {name!r}")
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        valid = [n for n in modules if n]
        raise ValueError(f"{arg}: no layer named {name!r}; valid names: {valid}")
    return modules[name]


class HintedStudent(nn.Module):
    """A student plus a linear regressor from one of its layers to one of the teacher's (discarded after training).

    `forward` returns the student's logits and keeps the regressed student feature and the teacher feature
    of the same batch, so `HintLoss` can add `beta * MSE(regressor(student_feature), teacher_feature)`.
    `teacher_pool=k` average-pools a (batch, channels, h, w) teacher feature to k x k first, so the regressor
    (student features x channels*k*k weights) can stay far smaller than the student.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, example_input: torch.Tensor, *,
                 student_layer: str, teacher_layer: str, teacher_pool: int | None = None):
        super().__init__()
        _check_module(student, "student")
        _check_module(teacher, "teacher")
        if teacher_pool is not None and (isinstance(teacher_pool, bool) or not isinstance(teacher_pool, int)
                                         or teacher_pool <= 0):
            raise ValueError(f"teacher_pool must be None or a positive int (pooled size k of a k x k map), "
                             f"got {teacher_pool!r}")
        self.teacher_pool, self._teacher_ndim = teacher_pool, 0
        if not isinstance(example_input, torch.Tensor) or example_input.ndim == 0 or not len(example_input):
            raise ValueError(f"example_input must be a non-empty batch tensor, got {example_input!r:.60}")
        self.student = student
        self.teacher = [teacher.eval().requires_grad_(False)]  # a list: not a submodule, so not trained or saved
        self._features: dict[str, torch.Tensor] = {}
        student_module = _module(student, student_layer, "student_layer")
        teacher_module = _module(teacher, teacher_layer, "teacher_layer")
        self._handles = [student_module.register_forward_hook(self._keep("student")),
                         teacher_module.register_forward_hook(self._keep("teacher"))]
        was_training = student.training
        try:  # one forward pass to size the regressor; the user's models get their hooks removed on failure
            with torch.no_grad():
                student.eval()
                student(example_input[:2])
                teacher(example_input[:2])
            for who, layer in (("student", student_layer), ("teacher", teacher_layer)):
                if who not in self._features:
                    raise ValueError(f"{who}_layer {layer!r} is not run by the {who}'s forward pass (or returns "
                                     "no tensor)")
        except BaseException:
            self.remove_hooks()
            raise
        finally:
            student.train(was_training)
        if teacher_pool is not None and self._teacher_ndim != 4:
            self.remove_hooks()
            raise ValueError(f"teacher_pool needs a (batch, channels, h, w) teacher feature; teacher_layer "
                             f"{teacher_layer!r} gives a {self._teacher_ndim}-D output")
        s_dim = self._features["student"][0].numel()
        t_dim = self._features["teacher"][0].numel()
        self.regressor = nn.Linear(s_dim, t_dim)
        self._features.clear()

    def _keep(self, name: str):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                if name == "teacher" and self.teacher_pool is not None and output.ndim == 4:
                    output = F.adaptive_avg_pool2d(output, self.teacher_pool)  # (batch, channels, k, k)
                if name == "teacher":
                    self._teacher_ndim = output.ndim
                self._features[name] = output.flatten(1)  # (batch, features)
        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.student(x)
        if self.training:
            with torch.no_grad():
                self.teacher[0].to(x.device).eval()
                self._features["teacher_logits"] = self.teacher[0](x)
        return logits

    def remove_hooks(self) -> nn.Module:
        """Detach the feature hooks from student and teacher after training; returns the plain student."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._features.clear()
        return self.student

    def hint_terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(regressed student feature, teacher feature, teacher logits) of the last training batch."""
        f = self._features
        if not {"student", "teacher", "teacher_logits"} <= set(f):
            raise RuntimeError("no hint features from a training batch: call the HintedStudent in train mode (fit does "
                               "this) before HintLoss, and not after remove_hooks()")
        return self.regressor(f["student"]), f["teacher"].detach(), f["teacher_logits"]


class HintLoss(nn.Module):
    """KD loss plus `beta` times the mean squared error between regressed student and teacher features."""

    def __init__(self, hinted: HintedStudent, *, temperature: float = 4.0, alpha: float = 0.9, beta: float = 1.0):
        super().__init__()
        if not isinstance(hinted, HintedStudent):
            raise TypeError(f"hinted must be a HintedStudent, got {type(hinted).__name__}")
        _check_temperature(temperature)
        _check_alpha(alpha)
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta) or beta < 0:
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
        self.hinted = [hinted]
        self.temperature, self.alpha, self.beta = temperature, alpha, beta

    def forward(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        student_feature, teacher_feature, teacher_logits = self.hinted[0].hint_terms()
        kd = kd_loss(logits, teacher_logits, y, temperature=self.temperature, alpha=self.alpha)
        return kd + self.beta * F.mse_loss(student_feature, teacher_feature)
