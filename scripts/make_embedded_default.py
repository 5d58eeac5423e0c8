#!/usr/bin/env python
"""Build shiftadd/data/assets/cifar10_embedded.npz, the dataset shipped inside the package.

Reads the CIFAR-10 JPEG archive (``train/<class>/NNNN.jpg``, ``test/<class>/NNNN.jpg``; by
default ``../shared/data/cifar10-jpeg.tar.gz`` from the repository root) and keeps, for
every class, ``--train-per-class`` training and ``--test-per-class`` test images: the file
names of a class are sorted and permuted with ``numpy.random.RandomState(seed)`` (a frozen
stream), and the first ones are taken. Images are stored as their original JPEG bytes.
The output is byte-for-byte deterministic (fixed zip timestamps).

    python scripts/make_embedded_default.py [--archive PATH] [--out PATH]
"""
from __future__ import annotations

import argparse
import io
import sys
import tarfile
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = REPO / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"
DEFAULT_OUT = REPO / "shiftadd" / "data" / "assets" / "cifar10_embedded.npz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def read_archive(archive: Path) -> Dict[str, bytes]:
    """All ``{train,test}/<class>/*.jpg`` members of the archive, by name."""
    files: Dict[str, bytes] = {}
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and parts[0] in ("train", "test") and parts[2].endswith(".jpg"):
                files[member.name] = tar.extractfile(member).read()  # type: ignore[union-attr]
    return files


def select(names: List[str], k: int, seed: int) -> List[str]:
    names = sorted(names)
    if len(names) < k:
        raise SystemExit(f"only {len(names)} images where {k} are needed")
    perm = np.random.RandomState(seed).permutation(len(names))
    return sorted(names[i] for i in perm[:k])


def build(archive: Path, train_per_class: int, test_per_class: int, seed: int) -> Dict[str, np.ndarray]:
    files = read_archive(archive)
    by_class: Dict[tuple, List[str]] = defaultdict(list)
    for name in files:
        split, cls, _ = name.split("/")
        by_class[(split, cls)].append(name)
    found = sorted({cls for _, cls in by_class})
    if found != sorted(CLASSES):
        raise SystemExit(f"{archive}: expected the 10 CIFAR-10 class folders, found {found}")
    arrays: Dict[str, np.ndarray] = {"classes": np.asarray(CLASSES)}
    for split, k in (("train", train_per_class), ("test", test_per_class)):
        chosen: List[str] = []
        labels: List[int] = []
        for label, cls in enumerate(CLASSES):
            # a different stream per split and class, all from the one seed
            picked = select(by_class[(split, cls)], k, seed * 1000 + label * 2 + (split == "test"))
            chosen += picked
            labels += [label] * len(picked)
        blobs = [files[n] for n in chosen]
        for n, b in zip(chosen, blobs):
            with Image.open(io.BytesIO(b)) as im:
                if im.size != (32, 32):
                    raise SystemExit(f"{n} is {im.size}, not 32x32")
        arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.uint8)
        arrays[f"{split}_files"] = np.asarray(chosen)
    arrays["source"] = np.asarray(
        f"CIFAR-10 (Krizhevsky, 2009, https://www.cs.toronto.edu/~kriz/cifar.html), JPEG redistribution "
        f"{archive.name}: {train_per_class} train + {test_per_class} test images per class, original JPEG bytes, "
        f"chosen with numpy RandomState(seed={seed}) by scripts/make_embedded_default.py")
    return arrays


def write_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    """Like ``np.savez`` but with fixed zip timestamps, so the same input gives the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue())


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.archive.is_file():
        print(f"error: no archive at {args.archive}", file=sys.stderr)
        return 2
    arrays = build(args.archive, args.train_per_class, args.test_per_class, args.seed)
    write_npz(args.out, arrays)
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size / 1e6:.2f} MB): {len(arrays['train_labels'])} train + "
          f"{len(arrays['test_labels'])} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
