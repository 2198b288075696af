"""Build data/fashion_mnist_subset.npz, the course's embedded default data, from the full Fashion-MNIST.

Deterministic: the same full dataset and arguments give a byte-identical file (fixed seed, fixed zip
timestamps). Prints the SHA-256 to put in lwkit/data.py (SUBSET_SHA256) and data/README.md.

    python scripts/make_subset.py                 # from Debian's dataset-fashion-mnist or a torchvision download
    python scripts/make_subset.py --root DIR      # from a folder with the four *-ubyte.gz files
"""

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np

from lwkit.data import SUBSET_FILE, balanced_indices, data_dir, load_full_arrays, sha256

TRAIN_PER_CLASS = 1200  # 12,000 training images (validation is carved from these at load time)
TEST_PER_CLASS = 300  # 3,000 test images
SEED = 2015  # Fashion-MNIST's 2017 release minus two; any fixed value would do


def write_npz(path: Path, arrays: dict) -> None:
    """Like np.savez_compressed, but with fixed timestamps so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="folder with the four IDX .gz files (default: Debian's, else download)")
    parser.add_argument("--out", default=str(data_dir() / SUBSET_FILE))
    parser.add_argument("--train-per-class", type=int, default=TRAIN_PER_CLASS)
    parser.add_argument("--test-per-class", type=int, default=TEST_PER_CLASS)
    args = parser.parse_args()

    full = load_full_arrays(args.root)
    train_idx = balanced_indices(full["train_labels"], args.train_per_class, seed=SEED)
    test_idx = balanced_indices(full["test_labels"], args.test_per_class, seed=SEED + 1)
    arrays = {
        "train_images": full["train_images"][train_idx],
        "train_labels": full["train_labels"][train_idx].astype(np.uint8),
        "test_images": full["test_images"][test_idx],
        "test_labels": full["test_labels"][test_idx].astype(np.uint8),
    }
    out = Path(args.out)
    write_npz(out, arrays)
    print(f"wrote {out}: {len(train_idx)} train + {len(test_idx)} test images, "
          f"{out.stat().st_size} bytes, sha256 {sha256(out)}")


if __name__ == "__main__":
    main()
