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
