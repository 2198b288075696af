import json

import pytest
import torch
from torch import nn

from lwkit import data, models, train


def tiny_loader(n=256, seed=0):
    s = data.fashion_mnist()
    return data.BatchLoader(s.x_train[:n], s.y_train[:n], batch_size=64, shuffle=True, seed=seed)


def test_fit_lowers_loss_and_evaluate_counts():
    train.seed_everything(0)
    model = models.build("mlp")
    loader = tiny_loader()
    before = train.evaluate(model, loader)
    history = train.fit(model, loader, epochs=3, lr=3e-3, val_loader=loader, progress=False)
    assert history.loss[-1] < history.loss[0]
    assert len(history.val_acc) == 3 and history.val_acc[-1] > before
    assert 0.0 <= train.evaluate(model, loader) <= 1.0


def test_evaluate_matches_hand_count():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1])  # the third is wrong
    assert train.evaluate(model, [(x, y)]) == 0.75


def test_training_is_deterministic():
    runs = []
    for _ in range(2):
        train.seed_everything(1)
        model = models.build("mlp")
        train.fit(model, tiny_loader(seed=1), epochs=1, progress=False)
        runs.append(model.fc1.weight.detach().clone())
    assert torch.equal(runs[0], runs[1])


def test_after_step_hook_runs_each_step():
    calls = []
    model = models.build("mlp")
    train.fit(model, tiny_loader(), epochs=1, progress=False, after_step=lambda m: calls.append(1))
    assert len(calls) == 4  # 256 examples / 64


def test_baseline_cache_roundtrip(tmp_cache, monkeypatch):
    trained = []
    real_fit = train.fit
    monkeypatch.setattr(train, "fit", lambda *a, **k: trained.append(1) or real_fit(*a, **k))
    first = train.baseline("mlp", epochs=1, progress=False)
    second = train.baseline("mlp", epochs=1, progress=False)
    assert len(trained) == 1, "the second call loads from the cache"
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    paths = list((tmp_cache / "checkpoints").glob("mlp-*.pt"))
    assert len(paths) == 1
    meta = json.loads(paths[0].with_suffix(".json").read_text())
    assert meta["meta"]["config"]["epochs"] == 1
    train.baseline("mlp", epochs=1, seed=1, progress=False)
    assert len(list((tmp_cache / "checkpoints").glob("mlp-*.pt"))) == 2, "another config, another entry"


def test_corrupt_checkpoint_names_file_and_fix(tmp_cache):
    train.baseline("mlp", epochs=1, progress=False)
    path = next((tmp_cache / "checkpoints").glob("mlp-*.pt"))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(data.DataFileError) as info:
        train.baseline("mlp", epochs=1, progress=False)
    assert str(path) in str(info.value) and "delete" in str(info.value)


def test_config_key_depends_on_every_field():
    base = train.baseline_config("cnn")
    assert base.epochs == train.BASELINE_DEFAULTS["cnn"]["epochs"]
    keys = {base.key(), train.baseline_config("cnn", seed=1).key(), train.baseline_config("cnn", lr=1e-2).key(),
            train.baseline_config("mlp").key()}
    assert len(keys) == 4


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"epochs": 0}, ValueError, "epochs"),
    ({"lr": -1.0}, ValueError, "lr"),
    ({"optimizer": "lion"}, ValueError, "optimizer"),
    ({"schedule": "step"}, ValueError, "schedule"),
])
def test_fit_bad_arguments(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        train.fit(models.build("mlp"), tiny_loader(), progress=False, **kwargs)


def test_bad_inputs_elsewhere():
    with pytest.raises(TypeError, match="model"):
        train.fit("not a model", tiny_loader())
    with pytest.raises(ValueError, match="empty"):
        train.fit(models.build("mlp"), [], progress=False)
    with pytest.raises(TypeError, match="loader"):
        train.evaluate(models.build("mlp"), 42)
    with pytest.raises(ValueError, match="empty"):
        train.evaluate(models.build("mlp"), [])
    with pytest.raises(ValueError, match="seed"):
        train.seed_everything(-1)
    with pytest.raises(TypeError, match="unknown baseline option"):
        train.baseline("mlp", epoch=3)
    with pytest.raises(ValueError, match="model must be one of"):
        train.baseline("vgg")
    frozen = models.build("mlp").requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train.fit(frozen, tiny_loader(), progress=False)


# ---------------------------------------------------------------------------------------------------------
# Reliability review (issue #8): regressions named after the defect


class Always0(nn.Module):
    """Predicts class 0 for every input (the review's model)."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(len(x), 10)
        out[:, 0] = 1
        return out + 0 * self.p


@pytest.mark.parametrize("labels", [
    torch.eye(10)[torch.arange(10)],  # one-hot (n, 10)
    torch.arange(10)[:, None],  # (n, 1)
    torch.arange(10).float(),  # float labels
    torch.arange(5),  # too few
    torch.arange(10) > 4,  # bool
])
def test_review_evaluate_label_shapes(labels):
    x = torch.randn(10, 1, 28, 28)
    assert train.evaluate(Always0(), [(x, torch.arange(10))]) == 0.1  # the reference
    with pytest.raises(ValueError, match="labels") as info:
        train.evaluate(Always0(), [(x, labels)])
    assert str(tuple(labels.shape)) in str(info.value)
    with pytest.raises(ValueError, match="labels"):
        train.fit(Always0(), [(x, labels)], progress=False, device="cpu")


def test_evaluate_rejects_out_of_range_labels_and_nonfinite_logits():
    x = torch.randn(4, 1, 28, 28)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        train.evaluate(Always0(), [(x, torch.tensor([0, 1, 2, 10]))])
    nan_model = models.build("mlp")
    with torch.no_grad():
        nan_model.fc3.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        train.evaluate(nan_model, [(x, torch.tensor([0, 1, 2, 3]))])


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), -float("inf"), True, "0.1", 0, None])
def test_review_lr_inf(lr):
    with pytest.raises((ValueError, TypeError), match="lr"):
        train.fit(models.build("mlp"), tiny_loader(), lr=lr, progress=False)
    with pytest.raises((ValueError, TypeError), match="lr"):
        train.baseline("mlp", epochs=1, lr=lr, progress=False)


@pytest.mark.parametrize("kwargs, word", [
    ({"epochs": True}, "epochs"), ({"epochs": 1.5}, "epochs"), ({"epochs": -1}, "epochs"),
    ({"weight_decay": -0.1}, "weight_decay"), ({"weight_decay": float("nan")}, "weight_decay"),
    ({"device": "gpu9"}, "device"), ({"device": 3}, "device"), ({"progress": "no"}, "progress"),
    ({"loss_fn": 3}, "loss_fn"), ({"after_step": "x"}, "after_step"), ({"val_loader": 5}, "val_loader"),
    ({"desc": 3}, "desc"),
])
def test_fit_more_bad_arguments(kwargs, word):
    with pytest.raises((ValueError, TypeError), match=word):
        train.fit(models.build("mlp"), tiny_loader(), **kwargs)


def test_review_nonfinite_loss_stops_at_first_step():
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    x_nan = x.clone()
    x_nan[0, 0, 0, 0] = float("nan")
    model = models.build("mlp")
    before = copy_state(model)
    batches = [(x, y), (x_nan, y), (x, y)]
    with pytest.raises(FloatingPointError, match=r"nan at epoch 1, step 2") as info:
        train.fit(model, batches, epochs=2, progress=False, device="cpu")
    assert "lr" in str(info.value)
    assert not model.training, "fit leaves the model in eval mode, also on an error"
    assert all(torch.isfinite(v).all() for v in model.state_dict().values()), "stopped before the bad step"
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items()), "step 1 did run"


def test_nonfinite_weights_after_last_step_are_caught():
    def poison(m):
        with torch.no_grad():
            m.fc1.weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"fc1.weight.*epoch 1"):
        train.fit(models.build("mlp"), tiny_loader(), progress=False, after_step=poison, device="cpu")


def copy_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_review_baseline_never_caches_nonfinite(tmp_cache, monkeypatch):
    def diverging_fit(model, *args, **kwargs):  # a divergence that no loss check saw
        with torch.no_grad():
            model.fc1.weight.fill_(float("nan"))
        return train.History(loss=[1.0], train_acc=[0.1], val_acc=[0.1], seconds=[0.0])

    monkeypatch.setattr(train, "fit", diverging_fit)
    with pytest.raises(FloatingPointError, match="not cached"):
        train.baseline("mlp", epochs=1, progress=False)
    assert not list((tmp_cache / "checkpoints").glob("*.pt")) and not list((tmp_cache / "checkpoints").glob("*.json"))


def test_review_baseline_refuses_cached_nonfinite(tmp_cache):
    from lwkit import checkpoints

    path = checkpoints.checkpoint_path(checkpoints.baseline_config("mlp", epochs=1))
    path.parent.mkdir(parents=True)
    state = models.build("mlp").state_dict()
    state["fc2.bias"][3] = float("nan")
    torch.save(state, path)  # written behind save_checkpoint's back, with a matching sidecar
    path.with_suffix(".json").write_text(json.dumps({"sha256": data.sha256(path), "meta": {}}))
    with pytest.raises(data.DataFileError) as info:
        train.baseline("mlp", epochs=1, progress=False)
    message = str(info.value)
    assert str(path) in message and "non-finite" in message and "delete" in message and "retrains" in message


def test_baseline_refuses_checkpoint_of_another_model(tmp_cache):
    from lwkit import checkpoints

    path = checkpoints.checkpoint_path(checkpoints.baseline_config("mlp", epochs=1))
    checkpoints.save_checkpoint(models.build("cnn"), path)
    with pytest.raises(data.DataFileError, match="does not fit"):
        train.baseline("mlp", epochs=1, progress=False)


def test_review_fit_generator():
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    gen = ((x, y) for _ in range(2))
    with pytest.raises(TypeError, match="one-shot iterator") as info:
        train.fit(models.build("mlp"), gen, epochs=2, progress=False, device="cpu")
    assert "list(train_loader)" in str(info.value)
    with pytest.raises(TypeError, match="val_loader"):
        train.fit(models.build("mlp"), [(x, y)], val_loader=iter([(x, y)]), progress=False, device="cpu")
    assert train.evaluate(Always0(), iter([(x, y)])) == pytest.approx((y == 0).float().mean().item())


def test_fit_accepts_a_reiterable_loader_without_len():
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))

    class NoLen:
        def __iter__(self):
            yield x[:4], y[:4]
            yield x[4:], y[4:]

    steps = []
    history = train.fit(models.build("mlp"), NoLen(), epochs=2, progress=False, device="cpu",
                        after_step=lambda m: steps.append(1))
    assert len(steps) == 4 and len(history.loss) == 2


@pytest.mark.parametrize("batches, exc, words", [
    ([(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long))], ValueError, "empty batch"),
    ([(torch.randn(2, 1, 28, 28),)], TypeError, r"\(inputs, labels\) pair"),
    ([(torch.randn(2, 1, 28, 28), [0, 1])], TypeError, "two tensors"),
])
def test_review_fit_empty_batch(batches, exc, words):
    with pytest.raises(exc, match=words):
        train.fit(models.build("mlp"), batches, progress=False, device="cpu")
    with pytest.raises(exc, match=words):
        train.evaluate(models.build("mlp"), batches)


def test_fit_epoch_with_no_batches():
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))

    class Once:  # has a len, yields only the first time
        def __init__(self):
            self.used = False

        def __len__(self):
            return 1

        def __iter__(self):
            if not self.used:
                self.used = True
                yield x, y

    with pytest.raises(ValueError, match="no batches in epoch 2"):
        train.fit(models.build("mlp"), Once(), epochs=2, progress=False, device="cpu")


def test_modes_restored_on_error():
    model = models.build("mlp").train()
    x = torch.randn(4, 1, 28, 28)
    with pytest.raises(ValueError):
        train.evaluate(model, [(x, torch.zeros(4, 1, dtype=torch.long))])
    assert model.training, "evaluate restores train mode even when it raises"

    def boom(logits, y, x):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.fit(model, [(x, torch.zeros(4, dtype=torch.long))], loss_fn=boom, progress=False, device="cpu")
    assert not model.training


def test_review_moved_names_still_reachable():
    from lwkit import checkpoints

    for name in ("baseline", "train_baseline", "baseline_config", "BaselineConfig", "checkpoint_path",
                 "save_checkpoint", "load_checkpoint", "BASELINE_DEFAULTS", "CACHE_VERSION"):
        assert getattr(train, name) is getattr(checkpoints, name)
    with pytest.raises(AttributeError):
        train.no_such_name  # noqa: B018


def test_headless_progress_bar_prints_only_its_final_line(monkeypatch, capsys):
    from lwkit import train as train_mod

    monkeypatch.setenv("LWKIT_HEADLESS", "1")
    bar = train_mod.progress_bar(5, "demo")
    for _ in range(5):
        bar.update(1)
    assert capsys.readouterr().out == ""  # nothing while it runs
    bar.set_postfix({"loss": "0.123"})
    bar.close()
    bar.close()  # a second close prints nothing more
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "\r" not in out, repr(out)
    assert out.startswith("demo: 5/5 steps in ") and "loss=0.123" in out, out
    quiet = train_mod.progress_bar(3, "off", enabled=False)
    quiet.update(3)
    quiet.close()
    assert capsys.readouterr().out == ""
