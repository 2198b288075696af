"""Train the course MobileNets of notebook 07 and write them to data/mobilenet_<variant>.pt.

    python scripts/train_mobilenet.py                 # every variant on the embedded subset (what ships)
    python scripts/train_mobilenet.py --full          # on the full 60k Fashion-MNIST (apt: dataset-fashion-mnist)
    python scripts/train_mobilenet.py mobilenet twin  # some variants only
    python scripts/train_mobilenet.py pruned50        # the shipped base, 50 % hidden channels pruned, fine-tuned
    python scripts/train_mobilenet.py pruned70        # the same with 70 % pruned

Each checkpoint is a state_dict stored in float16 (half the bytes: all seven files together stay under 4 MB;
`lwkit.models.pretrained` loads them back into float32 weights-only) with a JSON sidecar holding its
SHA-256, the recipe and the float32 test accuracy measured before the cast. The SHA-256 of the shipped files is also pinned in `lwkit.models.PRETRAINED`, which the notebook
checks. An existing file is never overwritten unless --overwrite is given.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from lwkit import data, models, train

ROOT = Path(__file__).resolve().parent.parent


def save_half(net: torch.nn.Module, path: Path, meta: dict) -> Path:
    """Save `net`'s state_dict with every float tensor cast to float16 (integer buffers unchanged)."""
    return train.save_checkpoint(copy.deepcopy(net).half(), path, meta={**meta, "stored_dtype": "float16"})


def prune_and_fine_tune(variant: str, splits, recipe):
    """The shipped base MobileNet, its hidden channels pruned (`prune_hidden`), fine-tuned (cosine schedule)."""
    base, sparsity, ft = models.PRUNED_VARIANTS[variant]
    net = models.prune_hidden(models.pretrained(base), sparsity)
    train_loader, val_loader, _ = splits.loaders(recipe.batch_size, seed=ft["seed"])
    train.seed_everything(ft["seed"])
    history = train.fit(net, train_loader, epochs=ft["epochs"], lr=ft["lr"], val_loader=val_loader,
                        desc=f"{variant} fine-tune ({ft['epochs']} epochs)")
    kwargs = {"base": base, "base_sha256": models.PRETRAINED[base], "hidden_sparsity": sparsity}
    return net.eval(), history, kwargs, {**ft, "batch_size": recipe.batch_size, "schedule": "cosine"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    choices = list(models.COURSE_VARIANTS) + list(models.PRUNED_VARIANTS)
    parser.add_argument("variants", nargs="*", default=choices,
                        help=f"which to train, of {choices} (pruned ones start from the shipped base)")
    parser.add_argument("--full", action="store_true", help="train on the full 60k set instead of the subset")
    parser.add_argument("--out", type=Path, default=ROOT / "data", help="folder for the checkpoints")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--overwrite", action="store_true", help="replace existing checkpoints")
    args = parser.parse_args(argv)
    unknown = set(args.variants) - set(choices)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {choices}")
    torch.set_num_threads(args.threads)
    recipe = models.CourseRecipe()
    splits = data.fashion_mnist(full=args.full, seed=recipe.seed)
    for variant in args.variants:
        path = args.out / f"mobilenet_{variant}.pt"
        if path.exists() and not args.overwrite:
            print(f"{path} exists: skipped (pass --overwrite to retrain it)")
            continue
        start = time.perf_counter()
        if variant in models.PRUNED_VARIANTS:
            net, history, kwargs, used = prune_and_fine_tune(variant, splits, recipe)
        else:
            net, history = models.train_course_mobilenet(variant, splits, recipe=recipe)
            kwargs, used = models.COURSE_VARIANTS[variant], asdict(recipe)
        test_loader = splits.loaders(recipe.batch_size, seed=recipe.seed)[2]
        acc = train.evaluate(net, test_loader)
        meta = {"variant": variant, "kwargs": kwargs, "recipe": used,
                "full": args.full, "test_accuracy": acc, "val_acc": history.val_acc,
                "seconds": time.perf_counter() - start, "threads": args.threads, "torch": torch.__version__,
                "data_sha256": data.SUBSET_SHA256 if not args.full else "full"}
        save_half(net, path, meta)
        print(f"{variant}: test accuracy {acc:.2%}, {meta['seconds']:.0f} s, {path.stat().st_size / 1024:.0f} KB, "
              f"sha256 {data.sha256(path)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
