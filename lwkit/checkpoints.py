"""Checkpoint files (a state_dict plus a JSON sidecar with its SHA-256) and the cache of trained baselines.

A checkpoint `x.pt` comes with `x.json` (`{"format": ..., "sha256": ..., "meta": {...}}`) and a lock file
`x.pt.lock`. Writers take the lock exclusively, write each file to a unique temporary file in the same
folder and `os.replace` it into place (weights first, then the sidecar that vouches for them); readers take
the lock shared, so a reader never sees weights and a sidecar from two different saves. Where file locks are
not available (no `fcntl`, a read-only folder) a reader that finds a mismatch waits and retries once.
`save_checkpoint` only ever overwrites files it wrote itself, unless `overwrite=True`.

`baseline("mlp", epochs=..., ...)` returns the course's trained baselines from a cache keyed by the whole
configuration; these names are also importable from `lwkit.train`, where they used to live.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from lwkit import data, models, train

try:  # POSIX only; elsewhere the cache falls back to a retry on mismatch
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = [
    "BASELINE_DEFAULTS", "CACHE_VERSION", "FORMAT", "BaselineConfig", "baseline", "baseline_config",
    "checkpoint_lock", "checkpoint_path", "is_checkpoint", "load_checkpoint", "save_checkpoint", "sidecar_path",
    "train_baseline",
]

FORMAT = "lwkit-checkpoint-1"  # written into every sidecar
_RESERVED_SUFFIXES = (".json", ".lock", ".tmp")  # a checkpoint with one of these would collide with our own files


def _check_path(path, name: str = "path") -> Path:
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or pathlib.Path, got {type(path).__name__}")
    path = Path(path)
    if not path.name or str(path) in (".", ".."):
        raise ValueError(f"{name} must name a file, got {str(path)!r}")
    if path.suffix.lower() in _RESERVED_SUFFIXES:
        raise ValueError(f"{name} must not end in {path.suffix!r}: a checkpoint's sidecar is <name>.json and its "
                         f"lock <name>.lock, so {str(path)!r} would collide with them; use e.g. "
                         f"{str(path.with_suffix('.pt'))!r}")
    return path


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar that holds the checksum and metadata of checkpoint `path` (`x.pt` -> `x.json`)."""
    return _check_path(path).with_suffix(".json")


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def checkpoint_lock(path: str | os.PathLike, *, exclusive: bool = True) -> Iterator[bool]:
    """Hold the lock of checkpoint `path` (exclusive to write, shared to read); yields False if unavailable.

    The lock is `fcntl.flock` on `<path>.lock`, released when the block ends (or the process dies). A lock
    is per open file, so do not take it again inside the block: pass `lock=False` to the save/load calls.
    """
    path = _check_path(path)
    if not isinstance(exclusive, bool):
        raise TypeError(f"exclusive must be True or False, got {exclusive!r}")
    fd = None
    if fcntl is not None:
        try:
            if exclusive:
                path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(_lock_path(path), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:  # read-only folder: readers go on without the lock (and retry on mismatch)
            fd = None
    if fd is None:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield True
    finally:
        os.close(fd)  # closing the file releases the lock


def _read_sidecar(sidecar: Path, hint: str, weights: Path | None = None) -> dict:
    """The parsed sidecar, or DataFileError naming it when it is not one of ours (or vouches for another file)."""
    try:
        content = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise data.DataFileError(f"checksum file {sidecar} is unreadable ({exc}): {hint}") from exc
    digest = content.get("sha256") if isinstance(content, dict) else None
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise data.DataFileError(
            f"checksum file {sidecar} is not an lwkit checkpoint sidecar (expected a JSON object with a "
            f"64-hex-digit 'sha256', got {type(content).__name__} {str(content)[:60]!r}): {hint}")
    owner = content.get("file")  # absent in sidecars written before lwkit-checkpoint-1
    if weights is not None and owner is not None and owner != weights.name:
        raise data.DataFileError(f"checksum file {sidecar} belongs to {owner!r}, not {weights.name!r} (two "
                                 f"checkpoints that differ only in their suffix share one sidecar): {hint}")
    return content


def is_checkpoint(path: str | os.PathLike) -> bool:
    """True if `path` has a sidecar written for it by `save_checkpoint` (the file itself may still be damaged)."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return False
    try:
        _read_sidecar(sidecar, "", Path(path))
    except data.DataFileError:
        return False
    return True


def _nonfinite(state: Mapping) -> list[str]:
    return [k for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _write_atomic(target: Path, write) -> None:
    """write(file) into a unique temporary file next to `target`, then os.replace it into place."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_checkpoint(model: nn.Module, path: str | os.PathLike, *, meta: dict | None = None,
                    overwrite: bool = False, lock: bool = True) -> Path:
    """Save `model.state_dict()` to `path` plus a JSON sidecar with its SHA-256 (checked by `load_checkpoint`).

    Everything is checked before anything is written: `meta` must be JSON-serialisable (finite numbers),
    every floating tensor finite, and an existing `path` (or sidecar) must be a checkpoint written by this
    function unless `overwrite=True`. Pass `lock=False` only inside `checkpoint_lock(path)`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    path = _check_path(path)
    sidecar = path.with_suffix(".json")
    for flag, value in (("overwrite", overwrite), ("lock", lock)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be True or False, got {value!r}")
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict (JSON-serialisable) or None, got {type(meta).__name__}")
    try:
        text = json.dumps({"format": FORMAT, "file": path.name, "sha256": "0" * 64, "meta": meta or {}}, indent=1,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"meta must be JSON-serialisable (str keys; str, finite numbers, bool, None, lists, "
                        f"dicts), got {meta!r:.80}: {exc}") from exc
    state = model.state_dict()
    bad = _nonfinite(state)
    if bad:
        raise ValueError(f"model has non-finite (nan/inf) values in {bad}: refusing to save a diverged model "
                         f"to {path} (lower the learning rate and train again)")
    with checkpoint_lock(path) if lock else contextlib.nullcontext():
        for target in (path, sidecar):
            if target.is_dir():
                raise IsADirectoryError(f"cannot save checkpoint: {target} is a directory")
        if not overwrite and (path.exists() or sidecar.exists()) and not is_checkpoint(path):
            raise FileExistsError(f"{path if path.exists() else sidecar} exists and is not an lwkit checkpoint "
                                  f"of {path.name} (no valid sidecar {sidecar.name} for it): refusing to overwrite "
                                  "it; choose another path or pass overwrite=True")
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, lambda f: torch.save(state, f))  # 1) weights
        text = text.replace("0" * 64, data.sha256(path), 1)
        _write_atomic(sidecar, lambda f: f.write(text.encode()))  # 2) the sidecar that vouches for them
    return path


def _read_verified(path: Path, hint: str) -> bytes:
    """The checkpoint's bytes, read once and checked against its sidecar (so what is loaded is what was checked)."""
    expected = _read_sidecar(path.with_suffix(".json"), hint, path)["sha256"]
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise data.DataFileError(f"checkpoint {path} cannot be read ({exc}): {hint}") from exc
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected:
        raise data.DataFileError(f"checkpoint {path} is corrupted or truncated (SHA-256 {actual[:12]}..., its "
                                 f"sidecar says {expected[:12]}...): {hint}")
    return raw


def load_checkpoint(path: str | os.PathLike, *, lock: bool = True) -> dict:
    """A state_dict saved by `save_checkpoint`: checksum-verified, loaded with `weights_only=True`, finite.

    Any problem (missing or foreign sidecar, checksum mismatch, unreadable or non-finite weights) raises
    `lwkit.data.DataFileError` naming the file and the fix. Pass `lock=False` only inside `checkpoint_lock`.
    """
    path = _check_path(path)
    if not isinstance(lock, bool):
        raise TypeError(f"lock must be True or False, got {lock!r}")
    sidecar = path.with_suffix(".json")
    hint = f"delete {path} and {sidecar.name}; the next run retrains it"
    with checkpoint_lock(path, exclusive=False) if lock else contextlib.nullcontext(True) as locked:
        if not path.is_file():
            raise data.DataFileError(f"checkpoint {path} is missing or not a file: {hint}")
        if not sidecar.is_file():
            raise data.DataFileError(f"checkpoint {path} has no checksum file {sidecar.name}: {hint}")
        try:
            raw = _read_verified(path, hint)
        except data.DataFileError:
            if locked:
                raise
            time.sleep(0.2)  # no lock: a writer may be between its two replaces; look once more
            raw = _read_verified(path, hint)
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise data.DataFileError(f"checkpoint {path} cannot be loaded ({type(exc).__name__}: {exc}): {hint}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise data.DataFileError(f"checkpoint {path} does not hold a state_dict of tensors: {hint}")
    bad = _nonfinite(state)
    if bad:
        raise data.DataFileError(f"checkpoint {path} holds non-finite (nan/inf) weights in {bad[:5]}: {hint}")
    return state


# ---------------------------------------------------------------------------------------------------------
# Trained course baselines, cached by configuration

CACHE_VERSION = 1  # bump when training code changes in a way that changes the weights


@dataclass(frozen=True)
class BaselineConfig:
    """Everything that determines a trained baseline's weights (and so its cache key)."""

    model: str = "mlp"  # 'mlp' or 'cnn'
    epochs: int = 10  # passes over the training split (the CNN's default is 6, see BASELINE_DEFAULTS)
    lr: float = 2e-3  # AdamW peak learning rate, cosine-decayed (the CNN's default is 3e-3)
    batch_size: int = 128
    weight_decay: float = 1e-4
    augment: bool = False  # random flips and shifts
    full: bool = False  # embedded subset (False) or the full 60k/10k set (True)
    seed: int = 0  # seeds initialisation, shuffling and the validation split

    def __post_init__(self):
        if not isinstance(self.model, str) or self.model not in models.MODELS:
            raise ValueError(f"model must be one of {sorted(models.MODELS)}, got {self.model!r}")
        train._check_positive_int(self.epochs, "epochs")
        train._check_real(self.lr, "lr", positive=True)
        train._check_positive_int(self.batch_size, "batch_size")
        train._check_real(self.weight_decay, "weight_decay", positive=False)
        train._check_bool(self.augment, "augment")
        train._check_bool(self.full, "full")
        train._check_seed(self.seed)

    def key(self) -> str:
        payload = dict(asdict(self), cache_version=CACHE_VERSION, data=data.SUBSET_SHA256 if not self.full else "full",
                       torch=torch.__version__.split("+")[0])
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# Per-model defaults, chosen so both baselines train in about 20 s on 2 cores on the embedded subset.
BASELINE_DEFAULTS = {"mlp": {"epochs": 10, "lr": 2e-3}, "cnn": {"epochs": 6, "lr": 3e-3}}


def baseline_config(model: str = "mlp", **overrides) -> BaselineConfig:
    """The BaselineConfig for `model` with its defaults, then `overrides` (BaselineConfig fields)."""
    if not isinstance(model, str) or model not in models.MODELS:
        raise ValueError(f"model must be one of {sorted(models.MODELS)}, got {model!r}")
    allowed = set(BaselineConfig.__dataclass_fields__) - {"model"}
    unknown = set(overrides) - allowed
    if unknown:
        raise TypeError(f"unknown baseline option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return BaselineConfig(model=model, **{**BASELINE_DEFAULTS[model], **overrides})


def checkpoint_path(config: BaselineConfig) -> Path:
    """Where the cache keeps the baseline trained with `config`."""
    if not isinstance(config, BaselineConfig):
        raise TypeError(f"config must be a BaselineConfig (see baseline_config), got {type(config).__name__}")
    return data.cache_dir() / "checkpoints" / f"{config.model}-{config.key()}.pt"


def _train_and_cache(config: BaselineConfig, path: Path, progress: bool) -> tuple[nn.Module, train.History]:
    """Train the baseline of `config` and save it to `path`; the caller holds the checkpoint lock."""
    train.seed_everything(config.seed)
    splits = data.fashion_mnist(full=config.full, seed=config.seed)
    train_loader, val_loader, _ = splits.loaders(config.batch_size, augment=config.augment, seed=config.seed)
    net = models.build(config.model)
    history = train.fit(net, train_loader, epochs=config.epochs, lr=config.lr, weight_decay=config.weight_decay,
                        val_loader=val_loader, progress=progress, desc=f"{config.model} ({config.epochs} epochs)")
    net = net.cpu().eval()
    bad = train._first_nonfinite(net)
    if bad is not None:  # fit checks too; never put a diverged model in the cache
        raise FloatingPointError(f"training diverged: parameter {bad!r} is not finite; not cached (lower lr)")
    save_checkpoint(net, path, meta={"config": asdict(config), "history": asdict(history)}, overwrite=True,
                    lock=False)
    return net, history


def train_baseline(model: str = "mlp", *, progress: bool = True, **overrides) -> tuple[nn.Module, train.History]:
    """Train a baseline from scratch (deterministic for a given config and thread count) and cache it.

    Another process training or loading the same configuration waits for this one (a file lock). A run
    whose loss or weights stop being finite raises and caches nothing.
    """
    config = baseline_config(model, **overrides)
    train._check_bool(progress, "progress")
    path = checkpoint_path(config)
    with checkpoint_lock(path):
        return _train_and_cache(config, path, progress)


def baseline(model: str = "mlp", *, progress: bool = True, **overrides) -> nn.Module:
    """A trained course baseline, loaded from the cache if this exact configuration was trained before.

    `overrides` are BaselineConfig fields (epochs, lr, full, seed, ...). The cache lives in
    `lwkit.data.cache_dir() / 'checkpoints'`, keyed by the whole configuration, the data checksum and
    the torch version; checkpoints are checksum-verified, finite, and load with `weights_only=True`.
    Two processes asking for the same missing baseline train it once: the second waits, then loads it.
    """
    config = baseline_config(model, **overrides)
    train._check_bool(progress, "progress")
    path = checkpoint_path(config)
    with checkpoint_lock(path):
        if path.exists():
            state = load_checkpoint(path, lock=False)
            net = models.build(model)
            try:
                net.load_state_dict(state)
            except RuntimeError as exc:
                raise data.DataFileError(f"checkpoint {path} does not fit a {model!r} model ({exc}): delete {path} "
                                         f"and {path.with_suffix('.json').name}; the next run retrains it") from exc
            return net.eval()
        net, _ = _train_and_cache(config, path, progress)
    return net
