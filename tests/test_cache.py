"""lwkit.checkpoints: checkpoint files, the overwrite rule, bad sidecars, and several processes on one entry."""

import hashlib
import json
import multiprocessing
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from lwkit import checkpoints, data, models, train


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_roundtrip_and_sidecar(tmp_path):
    model = models.build("mlp")
    path = checkpoints.save_checkpoint(model, tmp_path / "sub" / "m.pt", meta={"note": "hi", "acc": 0.5})
    assert same_state(checkpoints.load_checkpoint(path), model.state_dict())
    sidecar = json.loads(checkpoints.sidecar_path(path).read_text())
    assert sidecar == {"format": checkpoints.FORMAT, "file": "m.pt", "sha256": data.sha256(path),
                       "meta": {"note": "hi", "acc": 0.5}}
    assert checkpoints.is_checkpoint(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.json", "m.pt", "m.pt.lock"], "no temporary files left"


@pytest.mark.parametrize("name", ["x.json", "x.lock", "x.tmp", "X.JSON"])
def test_review_checkpoint_sidecar_collision(tmp_path, name):
    with pytest.raises(ValueError, match="collide"):
        checkpoints.save_checkpoint(models.build("mlp"), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", ['[1, 2]', '"abc"', '3', 'null', '{}', '{"sha256": 5}', '{"sha256": "abc"}',
                                     'not json', '\udcff'])
def test_review_checkpoint_sidecar_wrong_json_type(tmp_path, content):
    path = checkpoints.save_checkpoint(models.build("mlp"), tmp_path / "m.pt")
    path.with_suffix(".json").write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(data.DataFileError) as info:
        checkpoints.load_checkpoint(path)
    assert "m.json" in str(info.value) and "delete" in str(info.value)


@pytest.mark.parametrize("meta, exc", [
    ({"f": object()}, TypeError), ({"t": torch.zeros(1)}, TypeError), ({"x": float("nan")}, TypeError),
    ({1: {2: set()}}, TypeError), ([1, 2], TypeError), ("meta", TypeError),
])
def test_review_checkpoint_meta_not_serialisable(tmp_path, meta, exc):
    with pytest.raises(exc, match="meta"):
        checkpoints.save_checkpoint(models.build("mlp"), tmp_path / "m.pt", meta=meta)
    assert list(tmp_path.iterdir()) == [], "nothing written: no orphan .pt to block the next run"


def test_review_checkpoint_meta_orphan_does_not_block_baseline(tmp_cache, monkeypatch):
    """The review's sequence: a failed save must not leave a file that breaks `baseline()` afterwards."""
    real_save = checkpoints.save_checkpoint
    monkeypatch.setattr(checkpoints, "save_checkpoint",
                        lambda model, path, **kw: real_save(model, path, **{**kw, "meta": {"bad": object()}}))
    monkeypatch.setattr(train, "fit", lambda *a, **k: train.History(loss=[1.0]))
    with pytest.raises(TypeError, match="meta"):
        train.baseline("mlp", epochs=1, progress=False)
    monkeypatch.setattr(checkpoints, "save_checkpoint", real_save)
    assert isinstance(train.baseline("mlp", epochs=1, progress=False), nn.Module)


def test_never_overwrites_a_file_that_is_not_ours(tmp_path):
    user_file = tmp_path / "notes.pt"
    user_file.write_text("my notes")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        checkpoints.save_checkpoint(models.build("mlp"), user_file)
    assert user_file.read_text() == "my notes" and not (tmp_path / "notes.json").exists()
    user_sidecar = tmp_path / "other.json"  # a user's JSON file where our sidecar would go
    user_sidecar.write_text('{"mine": true}')
    with pytest.raises(FileExistsError):
        checkpoints.save_checkpoint(models.build("mlp"), tmp_path / "other.pt")
    assert user_sidecar.read_text() == '{"mine": true}' and not (tmp_path / "other.pt").exists()
    model = models.build("mlp")
    checkpoints.save_checkpoint(model, user_file, overwrite=True)
    assert same_state(checkpoints.load_checkpoint(user_file), model.state_dict())


def test_two_checkpoints_never_share_a_sidecar(tmp_path):
    first = checkpoints.save_checkpoint(models.build("mlp"), tmp_path / "m.pt")
    with pytest.raises(FileExistsError, match="m.json"):
        checkpoints.save_checkpoint(models.build("mlp"), tmp_path / "m.pth")  # its sidecar would be m.json too
    checkpoints.load_checkpoint(first)
    (tmp_path / "m.pth").write_bytes(first.read_bytes())
    with pytest.raises(data.DataFileError, match="belongs to 'm.pt'"):
        checkpoints.load_checkpoint(tmp_path / "m.pth")


def test_overwrites_its_own_checkpoint(tmp_path):
    first, second = models.build("mlp"), models.build("mlp")
    path = checkpoints.save_checkpoint(first, tmp_path / "m.pt")
    checkpoints.save_checkpoint(second, path)
    assert same_state(checkpoints.load_checkpoint(path), second.state_dict())


def test_refuses_to_save_or_load_nonfinite(tmp_path):
    model = models.build("mlp")
    with torch.no_grad():
        model.fc1.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="fc1.weight"):
        checkpoints.save_checkpoint(model, tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []
    path = tmp_path / "n.pt"
    torch.save(model.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps({"sha256": data.sha256(path)}))  # an older sidecar: no format
    with pytest.raises(data.DataFileError, match="non-finite") as info:
        checkpoints.load_checkpoint(path)
    assert str(path) in str(info.value) and "delete" in str(info.value)


def test_unloadable_and_foreign_payloads(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"not a torch file")
    path.with_suffix(".json").write_text(json.dumps({"sha256": data.sha256(path)}))
    with pytest.raises(data.DataFileError, match="cannot be loaded"):
        checkpoints.load_checkpoint(path)
    torch.save([1, 2, 3], path)
    path.with_suffix(".json").write_text(json.dumps({"sha256": data.sha256(path)}))
    with pytest.raises(data.DataFileError, match="state_dict"):
        checkpoints.load_checkpoint(path)
    with pytest.raises(data.DataFileError, match="missing"):
        checkpoints.load_checkpoint(tmp_path / "absent.pt")


@pytest.mark.parametrize("call, word", [
    (lambda p: checkpoints.save_checkpoint("model", p), "model"),
    (lambda p: checkpoints.save_checkpoint(models.build("mlp"), 3), "path"),
    (lambda p: checkpoints.save_checkpoint(models.build("mlp"), p, overwrite="yes"), "overwrite"),
    (lambda p: checkpoints.load_checkpoint(p, lock=1), "lock"),
    (lambda p: checkpoints.checkpoint_path("mlp"), "config"),
])
def test_bad_arguments(tmp_path, call, word):
    with pytest.raises((TypeError, ValueError), match=word):
        call(tmp_path / "m.pt")


def _hammer(path: str, seed: int, rounds: int, queue, barrier=None) -> None:
    """Save and load one entry over and over; report every exception."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    problems = []
    if barrier is not None:
        barrier.wait(timeout=240)  # start together, so the saves and loads really overlap
    for i in range(rounds):
        model = nn.Linear(64, 32)
        try:
            if (i + seed) % 2:
                checkpoints.save_checkpoint(model, path)
            else:
                state = checkpoints.load_checkpoint(path)
                assert state["weight"].shape == (32, 64)
        except Exception as exc:  # noqa: BLE001 - collected and reported by the parent
            problems.append(f"{type(exc).__name__}: {exc}")
    queue.put(problems)


def test_review_checkpoint_cache_concurrent(tmp_path):
    path = tmp_path / "shared.pt"
    checkpoints.save_checkpoint(nn.Linear(64, 32), path)
    ctx = multiprocessing.get_context("spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(4)
    procs = [ctx.Process(target=_hammer, args=(str(path), seed, 60, queue, barrier)) for seed in range(4)]
    for p in procs:
        p.start()
    problems = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert problems == [[]] * len(procs), "no crash and no false 'corrupted' report"
    assert all(p.exitcode == 0 for p in procs)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["shared.json", "shared.pt", "shared.pt.lock"]
    checkpoints.load_checkpoint(path)


def _train_once(cache: str, log: str, queue) -> None:
    os.environ["LWKIT_CACHE_DIR"] = cache
    torch.set_num_threads(1)
    real_fit = train.fit

    def logged_fit(*args, **kwargs):
        with open(log, "a") as f:
            f.write("trained\n")
        return real_fit(*args, **kwargs)

    train.fit = logged_fit
    try:
        net = train.baseline("mlp", epochs=1, batch_size=512, progress=False)
        digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in net.state_dict().values())).hexdigest()
        queue.put(("ok", digest))  # a digest, not tensors: tensors travel through shared memory
    except Exception as exc:  # noqa: BLE001 - reported by the parent
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def test_two_processes_train_a_baseline_once(tmp_path):
    log = tmp_path / "fit.log"
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_train_once, args=(str(tmp_path / "cache"), str(log), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [r[0] for r in results] == ["ok", "ok"], results
    assert log.read_text() == "trained\n", "the second process waited and loaded the first one's result"
    assert results[0][1] == results[1][1]


def test_lock_is_exclusive_between_processes(tmp_path):
    """While one process holds the lock, a second one's save waits for it."""
    path = tmp_path / "m.pt"
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    with checkpoints.checkpoint_lock(path):
        proc = ctx.Process(target=_hammer, args=(str(path), 1, 1, queue))  # seed 1, round 0: a save
        proc.start()
        proc.join(timeout=5)
        assert proc.is_alive(), "the save waits for the lock"
        assert not Path(path).exists()
    assert queue.get(timeout=120) == []
    proc.join(timeout=60)
    assert checkpoints.is_checkpoint(path)


def test_without_file_locks_a_reader_retries_once(tmp_path, monkeypatch):
    """No fcntl (Windows): loading still works, a mismatch seen mid-save is retried, real damage still raises."""
    monkeypatch.setattr(checkpoints, "fcntl", None)
    model = models.build("mlp")
    path = checkpoints.save_checkpoint(model, tmp_path / "m.pt")
    assert same_state(checkpoints.load_checkpoint(path), model.state_dict())
    newer = models.build("mlp")
    checkpoints.save_checkpoint(newer, tmp_path / "staged.pt")
    good_sidecar = (tmp_path / "staged.json").read_text().replace("staged.pt", "m.pt")
    os.replace(tmp_path / "staged.pt", path)  # a writer between its two replaces: new weights, old sidecar
    real_sleep = checkpoints.time.sleep
    monkeypatch.setattr(checkpoints.time, "sleep", lambda s: path.with_suffix(".json").write_text(good_sidecar))
    assert same_state(checkpoints.load_checkpoint(path), newer.state_dict())
    monkeypatch.setattr(checkpoints.time, "sleep", real_sleep)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(data.DataFileError, match="corrupted"):
        checkpoints.load_checkpoint(path)
