"""Property tests for training, data, distillation, PEFT and the checkpoint cache.

Bad arguments: for every public function of lwkit.train, lwkit.data, lwkit.distill, lwkit.peft and
lwkit.checkpoints, a generated bad value of one argument (all others good) must raise ValueError/TypeError whose
message names that argument, and nothing may be changed or written. Good arguments: results agree with a
reference (numpy accuracy, the KD formula via F.kl_div and T**2, softmax, the LoRA formula, hashlib, ...).
"""

import copy
import gzip
import hashlib
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from lwkit import checkpoints, data, distill, models, peft, train

COVERED = {
    "lwkit.train.seed_everything", "lwkit.train.progress_bar", "lwkit.train.evaluate", "lwkit.train.fit",
    "lwkit.checkpoints.BaselineConfig", "lwkit.checkpoints.baseline_config", "lwkit.checkpoints.baseline",
    "lwkit.checkpoints.train_baseline", "lwkit.checkpoints.checkpoint_path", "lwkit.checkpoints.checkpoint_lock",
    "lwkit.checkpoints.is_checkpoint", "lwkit.checkpoints.sidecar_path", "lwkit.checkpoints.save_checkpoint",
    "lwkit.checkpoints.load_checkpoint",
    "lwkit.data.sha256", "lwkit.data.verify_file", "lwkit.data.read_idx", "lwkit.data.load_full_arrays",
    "lwkit.data.load_subset_arrays", "lwkit.data.load_arrays", "lwkit.data.balanced_indices", "lwkit.data.to_tensor",
    "lwkit.data.denormalize", "lwkit.data.augment_batch", "lwkit.data.BatchLoader", "lwkit.data.Splits",
    "lwkit.data.fashion_mnist",
    "lwkit.distill.soft_targets", "lwkit.distill.kd_loss", "lwkit.distill.KDLoss", "lwkit.distill.CachedTeacher",
    "lwkit.distill.distill", "lwkit.distill.HintedStudent", "lwkit.distill.HintLoss",
    "lwkit.peft.freeze", "lwkit.peft.unfreeze", "lwkit.peft.layers", "lwkit.peft.finetune_top_k",
    "lwkit.peft.bitfit", "lwkit.peft.LoRALinear", "lwkit.peft.add_lora", "lwkit.peft.merge_lora",
    "lwkit.peft.Adapter", "lwkit.peft.WithAdapter", "lwkit.peft.add_adapters", "lwkit.peft.trainable_report",
}
EXEMPT = {
    "lwkit.train.History": "plain dataclass returned by fit",
    "lwkit.train.default_device": "takes no argument",
    "lwkit.checkpoints.BASELINE_DEFAULTS": "constant (per-model defaults)",
    "lwkit.checkpoints.CACHE_VERSION": "constant (cache key version)",
    "lwkit.checkpoints.FORMAT": "constant (sidecar format tag)",
    "lwkit.data.CLASSES": "constant (class names)",
    "lwkit.data.DEBIAN_DIR": "constant (a folder)",
    "lwkit.data.IDX_FILES": "constant (file names)",
    "lwkit.data.MEAN": "constant (pixel mean)",
    "lwkit.data.STD": "constant (pixel std)",
    "lwkit.data.SUBSET_FILE": "constant (file name)",
    "lwkit.data.SUBSET_SHA256": "constant (checksum)",
    "lwkit.data.DataFileError": "exception class; raised and checked by the file tests",
    "lwkit.data.cache_dir": "takes no argument (reads $LWKIT_CACHE_DIR)",
    "lwkit.data.data_dir": "takes no argument (reads $LWKIT_DATA_DIR)",
    "lwkit.peft.TrainableReport": "plain dataclass returned by trainable_report",
}

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
NAN, INF = float("nan"), float("inf")

# --- bad values ------------------------------------------------------------------------------------------------

junk = st.one_of(st.none(), st.text(max_size=3), st.lists(st.integers(), max_size=2), st.just(object()))
not_bool = st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=3), st.none())
not_pos_int = st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), st.booleans(), junk)
not_pos_real = st.one_of(st.floats(max_value=0), st.sampled_from([NAN, INF, -INF]), st.booleans(), junk)
not_nonneg_real = st.one_of(st.floats(max_value=-1e-9), st.sampled_from([NAN, INF, -INF]), st.booleans(), junk)
not_seed = st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32), st.floats(), st.booleans(), junk)
not_fraction = st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-9), st.sampled_from([NAN, INF]),
                         st.booleans(), junk)
not_alpha = st.one_of(st.floats(min_value=1.0001), st.floats(max_value=-1e-9), st.sampled_from([NAN, INF]),
                      st.booleans(), junk)
not_module = st.one_of(junk, st.integers(), st.just(torch.zeros(2)))
not_path = st.one_of(st.integers(), st.floats(allow_nan=False), st.none(), st.booleans(), st.lists(st.text(), max_size=1))
not_device = st.one_of(st.integers(), st.sampled_from(["gpu", "cuda:x", "tpu9", "", "cpu:-3"]), st.floats(allow_nan=False))
not_loader = st.one_of(st.integers(), st.none(), st.text(max_size=3), st.just(torch.zeros(4, 3)), st.floats())
bad_name = st.text(alphabet="abcxyz_.", min_size=1, max_size=6).filter(lambda s: s not in {"fc1", "fc2", "fc3", "relu"})
not_names = st.one_of(st.text(min_size=1, max_size=4), st.integers(), st.lists(bad_name, min_size=1, max_size=3),
                      st.lists(st.integers(), min_size=1, max_size=2))
not_callable = st.one_of(st.integers(), st.text(max_size=3), st.floats())


def tiny_batches(n=8):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))]


def lenet():
    torch.manual_seed(0)
    return models.LeNet300100(hidden=(8, 6))


class Lookup(nn.Module):
    """Returns stored logits for integer row indices: a model whose outputs a test chooses."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits, requires_grad=False)

    def forward(self, idx):
        return self.logits[idx]


def hinted_student():
    student, teacher = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    return distill.HintedStudent(student, teacher, torch.randn(2, 4), student_layer="1", teacher_layer="1")


def tiny_splits():
    x, y = torch.zeros(4, 1, 28, 28), torch.arange(4)
    return data.Splits(x, y, x, y, x, y, full=False)


SHA = "0" * 64

# (function name, argument name, bad-value strategy, call with the bad value)
CASES = [
    ("train.seed_everything", "seed", not_seed, lambda v: train.seed_everything(v)),
    ("train.progress_bar", "total", st.one_of(st.integers(max_value=-1), st.floats(), st.booleans(), junk),
     lambda v: train.progress_bar(v, "x")),
    ("train.progress_bar", "desc", st.one_of(st.integers(), st.none()), lambda v: train.progress_bar(1, v)),
    ("train.progress_bar", "enabled", not_bool, lambda v: train.progress_bar(1, "x", v)),
    ("train.evaluate", "model", not_module, lambda v: train.evaluate(v, tiny_batches())),
    ("train.evaluate", "loader", not_loader, lambda v: train.evaluate(lenet(), v)),
    ("train.evaluate", "device", not_device, lambda v: train.evaluate(lenet(), tiny_batches(), device=v)),
    ("train.fit", "model", not_module, lambda v: train.fit(v, tiny_batches(), progress=False)),
    ("train.fit", "train_loader", st.one_of(not_loader, st.just(iter(tiny_batches()))),
     lambda v: train.fit(lenet(), v, progress=False)),
    ("train.fit", "epochs", not_pos_int, lambda v: train.fit(lenet(), tiny_batches(), epochs=v, progress=False)),
    ("train.fit", "lr", not_pos_real, lambda v: train.fit(lenet(), tiny_batches(), lr=v, progress=False)),
    ("train.fit", "weight_decay", not_nonneg_real,
     lambda v: train.fit(lenet(), tiny_batches(), weight_decay=v, progress=False)),
    ("train.fit", "optimizer", st.text(max_size=5).filter(lambda s: s not in ("adam", "sgd")),
     lambda v: train.fit(lenet(), tiny_batches(), optimizer=v, progress=False)),
    ("train.fit", "schedule", st.text(max_size=5), lambda v: train.fit(lenet(), tiny_batches(), schedule=v,
                                                                     progress=False)),
    ("train.fit", "val_loader", st.one_of(st.integers(), st.just(iter(tiny_batches())), st.text(min_size=1)),
     lambda v: train.fit(lenet(), tiny_batches(), val_loader=v, progress=False)),
    ("train.fit", "loss_fn", not_callable, lambda v: train.fit(lenet(), tiny_batches(), loss_fn=v, progress=False)),
    ("train.fit", "after_step", not_callable,
     lambda v: train.fit(lenet(), tiny_batches(), after_step=v, progress=False)),
    ("train.fit", "device", not_device, lambda v: train.fit(lenet(), tiny_batches(), device=v, progress=False)),
    ("train.fit", "progress", not_bool, lambda v: train.fit(lenet(), tiny_batches(), progress=v)),
    ("train.fit", "desc", st.one_of(st.integers(), st.none()),
     lambda v: train.fit(lenet(), tiny_batches(), desc=v, progress=False)),
    # checkpoints: the baseline cache validates everything before training or touching a file
    ("checkpoints.BaselineConfig", "model", st.one_of(st.text(max_size=4), st.integers(), st.none()),
     lambda v: checkpoints.BaselineConfig(model=v)),
    ("checkpoints.BaselineConfig", "epochs", not_pos_int, lambda v: checkpoints.BaselineConfig(epochs=v)),
    ("checkpoints.BaselineConfig", "lr", not_pos_real, lambda v: checkpoints.BaselineConfig(lr=v)),
    ("checkpoints.BaselineConfig", "batch_size", not_pos_int, lambda v: checkpoints.BaselineConfig(batch_size=v)),
    ("checkpoints.BaselineConfig", "weight_decay", not_nonneg_real,
     lambda v: checkpoints.BaselineConfig(weight_decay=v)),
    ("checkpoints.BaselineConfig", "augment", not_bool, lambda v: checkpoints.BaselineConfig(augment=v)),
    ("checkpoints.BaselineConfig", "full", not_bool, lambda v: checkpoints.BaselineConfig(full=v)),
    ("checkpoints.BaselineConfig", "seed", not_seed, lambda v: checkpoints.BaselineConfig(seed=v)),
    ("checkpoints.baseline_config", "model", st.one_of(st.text(max_size=4), st.integers(), st.none()),
     lambda v: checkpoints.baseline_config(v)),
    ("checkpoints.baseline_config", "lr", not_pos_real, lambda v: checkpoints.baseline_config("mlp", lr=v)),
    ("checkpoints.baseline", "epochs", not_pos_int, lambda v: checkpoints.baseline("mlp", epochs=v)),
    ("checkpoints.baseline", "lr", not_pos_real, lambda v: checkpoints.baseline("cnn", lr=v)),
    ("checkpoints.baseline", "progress", not_bool, lambda v: checkpoints.baseline("mlp", progress=v)),
    ("checkpoints.train_baseline", "seed", not_seed, lambda v: checkpoints.train_baseline("mlp", seed=v)),
    ("checkpoints.train_baseline", "progress", not_bool, lambda v: checkpoints.train_baseline("mlp", progress=v)),
    ("checkpoints.checkpoint_path", "config", st.one_of(junk, st.integers()), lambda v: checkpoints.checkpoint_path(v)),
    ("checkpoints.checkpoint_lock", "path", not_path, lambda v: checkpoints.checkpoint_lock(v).__enter__()),
    ("checkpoints.checkpoint_lock", "exclusive", not_bool,
     lambda v: checkpoints.checkpoint_lock(Path(tempfile.gettempdir()) / "lwkit-props.pt", exclusive=v).__enter__()),
    ("checkpoints.is_checkpoint", "path", not_path, lambda v: checkpoints.is_checkpoint(v)),
    ("checkpoints.sidecar_path", "path", st.one_of(not_path, st.sampled_from(["a.json", "b.lock", "c.tmp", "", "."])),
     lambda v: checkpoints.sidecar_path(v)),
    ("checkpoints.save_checkpoint", "model", not_module, lambda v: checkpoints.save_checkpoint(v, "/nonexistent/x.pt")),
    ("checkpoints.save_checkpoint", "path", st.one_of(not_path, st.sampled_from(["x.json", "y.JSON", "z.lock"])),
     lambda v: checkpoints.save_checkpoint(lenet(), v)),
    ("checkpoints.save_checkpoint", "meta",
     st.one_of(st.integers(), st.text(max_size=2), st.lists(st.integers(), max_size=2),
               st.dictionaries(st.text(max_size=2), st.sampled_from([NAN, INF, object(), {1, 2}, b"x"]), min_size=1)),
     lambda v: checkpoints.save_checkpoint(lenet(), "/nonexistent/x.pt", meta=v)),
    ("checkpoints.save_checkpoint", "overwrite", not_bool,
     lambda v: checkpoints.save_checkpoint(lenet(), "/nonexistent/x.pt", overwrite=v)),
    ("checkpoints.save_checkpoint", "lock", not_bool,
     lambda v: checkpoints.save_checkpoint(lenet(), "/nonexistent/x.pt", lock=v)),
    ("checkpoints.load_checkpoint", "path", st.one_of(not_path, st.sampled_from(["x.json", "y.lock"])),
     lambda v: checkpoints.load_checkpoint(v)),
    ("checkpoints.load_checkpoint", "lock", not_bool, lambda v: checkpoints.load_checkpoint("/nonexistent/x.pt", lock=v)),
    # data
    ("data.sha256", "path", not_path, lambda v: data.sha256(v)),
    ("data.verify_file", "path", not_path, lambda v: data.verify_file(v, SHA)),
    ("data.verify_file", "expected_sha256", st.one_of(st.text(max_size=63), st.integers(), st.none()),
     lambda v: data.verify_file("/nonexistent", v)),
    ("data.verify_file", "hint", st.one_of(st.integers(), st.none()), lambda v: data.verify_file("/x", SHA, hint=v)),
    ("data.read_idx", "path", not_path, lambda v: data.read_idx(v)),
    ("data.load_full_arrays", "root", not_path.filter(lambda v: v is not None), lambda v: data.load_full_arrays(v)),
    ("data.load_full_arrays", "download", not_bool, lambda v: data.load_full_arrays("/nonexistent", download=v)),
    ("data.load_subset_arrays", "path", not_path.filter(lambda v: v is not None), lambda v: data.load_subset_arrays(v)),
    ("data.load_arrays", "full", not_bool, lambda v: data.load_arrays(full=v)),
    ("data.balanced_indices", "labels", st.one_of(junk, st.just(np.zeros(3)), st.just(np.zeros((2, 2), int))),
     lambda v: data.balanced_indices(v, 1, 0)),
    ("data.balanced_indices", "per_class", not_pos_int, lambda v: data.balanced_indices(np.arange(4), v, 0)),
    ("data.balanced_indices", "seed", not_seed, lambda v: data.balanced_indices(np.arange(4), 1, v)),
    ("data.to_tensor", "images", st.one_of(junk, st.just(np.zeros((2, 28, 28))), st.just(np.zeros((28, 28), np.uint8))),
     lambda v: data.to_tensor(v)),
    ("data.denormalize", "x", junk, lambda v: data.denormalize(v)),
    ("data.augment_batch", "x", st.one_of(junk, st.just(torch.zeros(2, 784)), st.just(torch.zeros(2, 1, 5, 5).long())),
     lambda v: data.augment_batch(v, torch.Generator())),
    ("data.augment_batch", "generator", junk, lambda v: data.augment_batch(torch.zeros(2, 1, 8, 8), v)),
    ("data.augment_batch", "max_shift", st.one_of(st.integers(max_value=-1), st.integers(min_value=8), st.booleans()),
     lambda v: data.augment_batch(torch.zeros(2, 1, 8, 8), torch.Generator(), v)),
    ("data.BatchLoader", "x", junk, lambda v: data.BatchLoader(v, torch.zeros(2))),
    ("data.BatchLoader", "y", junk, lambda v: data.BatchLoader(torch.zeros(2, 3), v)),
    ("data.BatchLoader", "batch_size", not_pos_int, lambda v: data.BatchLoader(torch.zeros(2, 3), torch.zeros(2),
                                                                                batch_size=v)),
    ("data.BatchLoader", "shuffle", not_bool, lambda v: data.BatchLoader(torch.zeros(2, 3), torch.zeros(2), shuffle=v)),
    ("data.BatchLoader", "augment", st.one_of(not_bool, st.just(True)),
     lambda v: data.BatchLoader(torch.zeros(2, 3), torch.zeros(2), augment=v)),
    ("data.BatchLoader", "seed", not_seed, lambda v: data.BatchLoader(torch.zeros(2, 3), torch.zeros(2), seed=v)),
    ("data.Splits", "batch_size", not_pos_int, lambda v: tiny_splits().loaders(v)),
    ("data.Splits", "eval_batch_size", not_pos_int, lambda v: tiny_splits().loaders(eval_batch_size=v)),
    ("data.fashion_mnist", "full", not_bool, lambda v: data.fashion_mnist(full=v)),
    ("data.fashion_mnist", "val_fraction", not_fraction, lambda v: data.fashion_mnist(val_fraction=v)),
    ("data.fashion_mnist", "seed", not_seed, lambda v: data.fashion_mnist(seed=v)),
    ("data.fashion_mnist", "classes", st.one_of(
        st.lists(st.integers().filter(lambda c: not 0 <= c <= 9), min_size=1, max_size=3).map(tuple),
        st.text(min_size=1, max_size=3), st.integers(), st.just(()), st.just((1, 1)), st.just((0.5,))),
     lambda v: data.fashion_mnist(classes=v)),
    # distill
    ("distill.soft_targets", "logits", st.one_of(junk, st.just(torch.tensor([1.0, NAN])), st.just(torch.ones(3).long())),
     lambda v: distill.soft_targets(v)),
    ("distill.soft_targets", "temperature", not_pos_real, lambda v: distill.soft_targets(torch.zeros(3), v)),
    ("distill.kd_loss", "student_logits",
     st.one_of(junk, st.sampled_from([torch.zeros(3), torch.zeros(2, 3, 1), torch.full((2, 3), NAN), torch.zeros(0, 3)])),
     lambda v: distill.kd_loss(v, torch.zeros(2, 3), torch.tensor([0, 1]))),
    ("distill.kd_loss", "teacher_logits",
     st.one_of(junk, st.sampled_from([torch.zeros(3), torch.full((2, 3), INF), torch.zeros(2, 3).long()])),
     lambda v: distill.kd_loss(torch.zeros(2, 3), v, torch.tensor([0, 1]))),
    ("distill.kd_loss", "labels", st.one_of(junk, st.sampled_from(
        [torch.tensor([0.0, 1.0]), torch.tensor([[0], [1]]), torch.tensor([0, 1, 2]), torch.tensor([0, 3]),
         torch.eye(3)[:2], torch.tensor([True, False])])),
     lambda v: distill.kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), v)),
    ("distill.kd_loss", "temperature", not_pos_real,
     lambda v: distill.kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]), temperature=v)),
    ("distill.kd_loss", "alpha", not_alpha,
     lambda v: distill.kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]), alpha=v)),
    ("distill.KDLoss", "teacher", not_module, lambda v: distill.KDLoss(v)),
    ("distill.KDLoss", "temperature", not_pos_real, lambda v: distill.KDLoss(nn.Linear(2, 2), temperature=v)),
    ("distill.KDLoss", "alpha", not_alpha, lambda v: distill.KDLoss(nn.Linear(2, 2), alpha=v)),
    ("distill.CachedTeacher", "teacher", not_module, lambda v: distill.CachedTeacher(v, torch.zeros(2, 2))),
    ("distill.CachedTeacher", "inputs", st.one_of(junk, st.sampled_from([torch.zeros(2), torch.zeros(0, 2),
                                                                         torch.zeros(2, 2).double()])),
     lambda v: distill.CachedTeacher(nn.Linear(2, 2), v)),
    ("distill.CachedTeacher", "batch_size", not_pos_int,
     lambda v: distill.CachedTeacher(nn.Linear(2, 2), torch.zeros(2, 2), batch_size=v)),
    ("distill.CachedTeacher", "on_miss", st.text(max_size=4),
     lambda v: distill.CachedTeacher(nn.Linear(2, 2), torch.zeros(2, 2), on_miss=v)),
    ("distill.distill", "student", not_module, lambda v: distill.distill(v, nn.Linear(2, 2), tiny_batches())),
    ("distill.distill", "teacher", not_module, lambda v: distill.distill(nn.Linear(2, 2), v, tiny_batches())),
    ("distill.distill", "temperature", not_pos_real,
     lambda v: distill.distill(nn.Linear(2, 2), nn.Linear(2, 2), tiny_batches(), temperature=v)),
    ("distill.distill", "alpha", not_alpha,
     lambda v: distill.distill(nn.Linear(2, 2), nn.Linear(2, 2), tiny_batches(), alpha=v)),
    ("distill.HintedStudent", "student", not_module,
     lambda v: distill.HintedStudent(v, nn.Linear(4, 2), torch.zeros(2, 4), student_layer="a", teacher_layer="b")),
    ("distill.HintedStudent", "teacher", not_module,
     lambda v: distill.HintedStudent(nn.Linear(4, 2), v, torch.zeros(2, 4), student_layer="a", teacher_layer="b")),
    ("distill.HintedStudent", "example_input", st.one_of(junk, st.just(torch.zeros(0, 4)), st.just(torch.tensor(1.0))),
     lambda v: distill.HintedStudent(nn.Linear(4, 2), nn.Linear(4, 2), v, student_layer="a", teacher_layer="b")),
    ("distill.HintedStudent", "student_layer", st.one_of(bad_name, st.integers(), st.none()),
     lambda v: distill.HintedStudent(nn.Sequential(nn.Linear(4, 2)), nn.Sequential(nn.Linear(4, 2)),
                                     torch.zeros(2, 4), student_layer=v, teacher_layer="0")),
    ("distill.HintedStudent", "teacher_layer", st.one_of(bad_name, st.integers(), st.none()),
     lambda v: distill.HintedStudent(nn.Sequential(nn.Linear(4, 2)), nn.Sequential(nn.Linear(4, 2)),
                                     torch.zeros(2, 4), student_layer="0", teacher_layer=v)),
    ("distill.HintLoss", "hinted", not_module, lambda v: distill.HintLoss(v)),
    ("distill.HintLoss", "temperature", not_pos_real, lambda v: distill.HintLoss(hinted_student(), temperature=v)),
    ("distill.HintLoss", "alpha", not_alpha, lambda v: distill.HintLoss(hinted_student(), alpha=v)),
    ("distill.HintLoss", "beta", not_nonneg_real, lambda v: distill.HintLoss(hinted_student(), beta=v)),
    # peft
    ("peft.freeze", "model", not_module, lambda v: peft.freeze(v)),
    ("peft.unfreeze", "model", not_module, lambda v: peft.unfreeze(v, ["fc1"])),
    ("peft.unfreeze", "names", not_names, lambda v: peft.unfreeze(lenet(), v)),
    ("peft.layers", "model", not_module, lambda v: peft.layers(v)),
    ("peft.finetune_top_k", "model", not_module, lambda v: peft.finetune_top_k(v, 1)),
    ("peft.finetune_top_k", "k", st.one_of(not_pos_int, st.integers(min_value=4)), lambda v: peft.finetune_top_k(lenet(), v)),
    ("peft.bitfit", "model", not_module, lambda v: peft.bitfit(v)),
    ("peft.bitfit", "keep_trainable", not_names, lambda v: peft.bitfit(lenet(), keep_trainable=v)),
    ("peft.LoRALinear", "base", not_module, lambda v: peft.LoRALinear(v)),
    ("peft.LoRALinear", "rank", st.one_of(not_pos_int, st.integers(min_value=7)),
     lambda v: peft.LoRALinear(nn.Linear(8, 6), rank=v)),
    ("peft.LoRALinear", "alpha", not_pos_real, lambda v: peft.LoRALinear(nn.Linear(8, 6), alpha=v)),
    ("peft.add_lora", "model", not_module, lambda v: peft.add_lora(v, ["fc1"])),
    ("peft.add_lora", "targets", st.one_of(not_names, st.just([]), st.just(["relu"])), lambda v: peft.add_lora(lenet(), v)),
    ("peft.add_lora", "rank", st.one_of(not_pos_int, st.integers(min_value=7)),
     lambda v: peft.add_lora(lenet(), ["fc1", "fc2"], rank=v)),
    ("peft.add_lora", "alpha", not_pos_real, lambda v: peft.add_lora(lenet(), ["fc1"], rank=2, alpha=v)),
    ("peft.add_lora", "keep_trainable", st.one_of(not_names, st.just(["fc1"])),
     lambda v: peft.add_lora(lenet(), ["fc1"], rank=2, keep_trainable=v)),
    ("peft.merge_lora", "model", not_module, lambda v: peft.merge_lora(v)),
    ("peft.Adapter", "features", not_pos_int, lambda v: peft.Adapter(v, 1)),
    ("peft.Adapter", "bottleneck", st.one_of(not_pos_int, st.integers(min_value=17)), lambda v: peft.Adapter(16, v)),
    ("peft.WithAdapter", "base", not_module, lambda v: peft.WithAdapter(v)),
    ("peft.WithAdapter", "bottleneck", st.one_of(not_pos_int, st.integers(min_value=7)),
     lambda v: peft.WithAdapter(nn.Linear(8, 6), v)),
    ("peft.add_adapters", "model", not_module, lambda v: peft.add_adapters(v, ["fc1"])),
    ("peft.add_adapters", "targets", st.one_of(not_names, st.just([])), lambda v: peft.add_adapters(lenet(), v)),
    ("peft.add_adapters", "bottleneck", st.one_of(not_pos_int, st.integers(min_value=7)),
     lambda v: peft.add_adapters(lenet(), ["fc1", "fc2"], bottleneck=v)),
    ("peft.add_adapters", "keep_trainable", not_names,
     lambda v: peft.add_adapters(lenet(), ["fc1"], bottleneck=2, keep_trainable=v)),
    ("peft.trainable_report", "model", not_module, lambda v: peft.trainable_report(v)),
]


def test_cases_cover_every_covered_name():
    assert {f"lwkit.{name}" for name, *_ in CASES} == COVERED


@pytest.mark.parametrize("name, arg, strategy, call", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_bad_argument_raises_naming_it(tmp_cache, name, arg, strategy, call):
    @FAST
    @given(strategy)
    def check(value):
        with pytest.raises((ValueError, TypeError)) as info:
            call(value)
        assert arg in str(info.value), f"{name}({arg}={value!r}) raised {info.value!r}"

    check()
    assert not tmp_cache.exists() or not list(tmp_cache.rglob("*.pt")), "a bad argument wrote nothing"


# --- good arguments agree with a reference -----------------------------------------------------------------

logits_and_labels = st.integers(1, 12).flatmap(lambda n: st.tuples(
    st.lists(st.lists(st.floats(-5, 5), min_size=4, max_size=4), min_size=n, max_size=n),
    st.lists(st.integers(0, 3), min_size=n, max_size=n)))


@FAST
@given(logits_and_labels, st.integers(1, 5))
def test_evaluate_is_hand_accuracy(pair, batch_size):
    logits, labels = np.array(pair[0], dtype=np.float32), np.array(pair[1])
    model = Lookup(torch.from_numpy(logits))
    idx = torch.arange(len(labels))
    batches = [(idx[i: i + batch_size], torch.from_numpy(labels[i: i + batch_size]))
               for i in range(0, len(labels), batch_size)]
    expected = float(np.mean(logits.argmax(1) == labels))  # numpy: first maximum, as torch
    assert train.evaluate(model, batches) == pytest.approx(expected, abs=1e-12)


@FAST
@given(logits_and_labels, st.lists(st.floats(-5, 5), min_size=4, max_size=4), st.floats(0.05, 20),
       st.floats(0, 1))
def test_kd_loss_is_the_formula(pair, shift, temperature, alpha):
    student = torch.tensor(pair[0], dtype=torch.float64)
    teacher = student.flip(0) + torch.tensor(shift, dtype=torch.float64)
    labels = torch.tensor(pair[1])
    n = len(labels)
    log_p_s = F.log_softmax(student / temperature, dim=1)
    p_t = F.softmax(teacher / temperature, dim=1)
    soft = F.kl_div(log_p_s, p_t, reduction="sum") / n  # KL(p_t || p_s), mean over the batch
    hard = -F.log_softmax(student, 1).gather(1, labels[:, None]).mean()  # cross-entropy by hand
    expected = alpha * temperature**2 * soft + (1 - alpha) * hard
    got = distill.kd_loss(student, teacher, labels, temperature=temperature, alpha=alpha)
    assert got.item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-9)
    kd = distill.KDLoss(Lookup(teacher), temperature=temperature, alpha=alpha)
    assert kd(student, labels, torch.arange(n)).item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-9)


@FAST
@given(st.lists(st.floats(-30, 30), min_size=1, max_size=6), st.floats(0.05, 50))
def test_soft_targets_is_softmax(values, temperature):
    x = torch.tensor(values, dtype=torch.float64)
    assert torch.allclose(distill.soft_targets(x, temperature), torch.softmax(x / temperature, 0))


@FAST
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9), st.floats(0.1, 64), st.booleans())
def test_lora_is_its_formula_and_merges(fan_in, fan_out, rank, alpha, bias):
    rank = min(rank, fan_in, fan_out)
    torch.manual_seed(0)
    base = nn.Linear(fan_in, fan_out, bias=bias).double()
    lora = peft.LoRALinear(base, rank=rank, alpha=alpha)
    with torch.no_grad():
        lora.lora_B.normal_()
    x = torch.randn(3, fan_in, dtype=torch.float64)
    w = base.weight + (alpha / rank) * lora.lora_B @ lora.lora_A
    expected = x @ w.T + (base.bias if bias else 0)
    assert torch.allclose(lora(x), expected) and torch.allclose(lora.merge()(x), expected)


@FAST
@given(st.lists(st.sampled_from(["fc1", "fc2", "fc3", "relu", "fc9", "fc1.weight", ""]), min_size=1, max_size=4,
                unique=True), st.integers(1, 12), st.sampled_from([(), ("fc3",), ("head",)]))
def test_add_lora_changes_all_or_nothing(targets, rank, keep):
    model = lenet()
    model.fc2.requires_grad_(False)
    before = copy.deepcopy(model)
    flags = [p.requires_grad for p in model.parameters()]
    try:
        peft.add_lora(model, targets, rank=rank, keep_trainable=list(keep))
    except (ValueError, TypeError):
        assert [type(m) for m in model.modules()] == [type(m) for m in before.modules()]
        assert [p.requires_grad for p in model.parameters()] == flags
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before.state_dict().values()))
    else:
        assert all(isinstance(model.get_submodule(t), peft.LoRALinear) for t in targets)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        expected = {f"{t}.lora_{ab}" for t in targets for ab in "AB"} | {f"{k}.{w}" for k in keep for w in
                                                                         ("weight", "bias")}
        assert trainable == expected


@FAST
@given(st.integers(1, 40), st.integers(1, 9), st.booleans(), st.integers(0, 2**32 - 1))
def test_batchloader_covers_every_example_once(n, batch_size, shuffle, seed):
    x, y = torch.arange(n).float()[:, None], torch.arange(n)
    loader = data.BatchLoader(x, y, batch_size=batch_size, shuffle=shuffle, seed=seed)
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == len(loader) == math.ceil(n / batch_size)
        seen = torch.cat([yb for _, yb in batches])
        assert sorted(seen.tolist()) == list(range(n))
        assert all(torch.equal(xb[:, 0].long(), yb) for xb, yb in batches)


@FAST
@given(st.lists(st.integers(0, 4), min_size=1, max_size=40), st.integers(1, 3), st.integers(0, 1000))
def test_balanced_indices_counts(labels, per_class, seed):
    labels = np.array(labels)
    counts = np.bincount(labels)
    if per_class > counts[counts > 0].min():
        with pytest.raises(ValueError, match="per_class"):
            data.balanced_indices(labels, per_class, seed)
        return
    idx = data.balanced_indices(labels, per_class, seed)
    assert len(set(idx.tolist())) == len(idx) and list(idx) == sorted(idx)
    assert np.bincount(labels[idx], minlength=len(counts))[counts > 0].tolist() == [per_class] * int((counts > 0).sum())


@FAST
@given(st.lists(st.integers(1, 5), min_size=1, max_size=3), st.booleans(), st.integers(0, 1000))
def test_read_idx_roundtrip(shape, gz, seed):
    array = np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)
    raw = bytes([0, 0, 8, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape) + array.tobytes()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("a.gz" if gz else "a")
        path.write_bytes(gzip.compress(raw) if gz else raw)
        assert np.array_equal(data.read_idx(path), array)
        assert data.sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
        path.write_bytes(gzip.compress(raw[:-1]) if gz else raw[:-1])
        with pytest.raises(data.DataFileError, match=str(path)):
            data.read_idx(path)


@FAST
@given(st.integers(1, 4), st.integers(0, 1000))
def test_to_tensor_denormalize_and_augment(n, seed):
    images = np.random.default_rng(seed).integers(0, 256, (n, 28, 28)).astype(np.uint8)
    x = data.to_tensor(images)
    assert x.shape == (n, 1, 28, 28)
    assert torch.allclose(x, (torch.from_numpy(images).float()[:, None] / 255 - data.MEAN) / data.STD, atol=1e-6)
    assert torch.allclose(data.denormalize(x), torch.from_numpy(images).float()[:, None] / 255, atol=1e-6)
    out = data.augment_batch(x, torch.Generator().manual_seed(seed), max_shift=0)  # no shift: flip or not
    assert all(torch.equal(o, i) or torch.equal(o, i.flip(-1)) for o, i in zip(out, x))


@FAST
@given(st.integers(1, 6), st.integers(1, 6), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
def test_checkpoint_roundtrip(fan_in, fan_out, meta):
    model = nn.Linear(fan_in, fan_out)
    with tempfile.TemporaryDirectory() as folder:
        path = checkpoints.save_checkpoint(model, Path(folder) / "m.pt", meta=meta)
        state = checkpoints.load_checkpoint(path)
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        assert checkpoints.is_checkpoint(path) and checkpoints.sidecar_path(path) == Path(folder) / "m.json"


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4))
def test_fit_runs_every_step_and_reports(epochs, n_batches):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    batches = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(n_batches)]
    steps = []
    history = train.fit(model, batches, epochs=epochs, lr=1e-2, progress=False, device="cpu",
                        after_step=lambda m: steps.append(1))
    assert len(steps) == epochs * n_batches and len(history.loss) == epochs
    assert all(math.isfinite(v) for v in history.loss) and not model.training


@FAST
@given(st.sampled_from(["mlp", "cnn"]))
def test_trainable_report_and_layers_are_hand_counts(name):
    model = models.build(name)
    report = peft.trainable_report(model)
    assert report.total == sum(p.numel() for p in model.parameters()) == report.trainable
    peft.finetune_top_k(model, 1)
    head = model.get_submodule(peft.layers(model)[-1])
    assert peft.trainable_report(model).trainable == sum(p.numel() for p in head.parameters())
