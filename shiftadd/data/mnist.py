"""MNIST from IDX files or from an ``.npz``.

IDX: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte`` (each optionally ``.gz``; the ``train-images.idx3-ubyte``
spelling and torchvision's ``MNIST/raw/`` sub-folder are found too).

npz: either ``x_train``, ``y_train``, ``x_test``, ``y_test`` (the Keras file), or
``images`` (N, H, W) uint8 and ``labels`` (N,) with no split. The latter is split with a
fixed seed that does not depend on any argument: a permutation from
``numpy.random.RandomState(0)``; its first ``N // 5`` samples are the test set and the rest
the training set (for the 10,000-digit file: 8,000 train / 2,000 test).
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from shiftadd.errors import DataError

MNIST_URL = "http://yann.lecun.com/exdb/mnist/"
NPZ_SPLIT_SEED = 0
NPZ_TEST_FRACTION_DIVISOR = 5  # test set = first N // 5 of the fixed permutation (20 %)
IDX_FILES = {
    "train_images": ("train-images", "idx3-ubyte"),
    "train_labels": ("train-labels", "idx1-ubyte"),
    "test_images": ("t10k-images", "idx3-ubyte"),
    "test_labels": ("t10k-labels", "idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not) into a numpy array, checking its header and size."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'}; expected "
                        f"00 00 08 <ndim> as in {MNIST_URL})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: its header is cut short")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path} is truncated or padded: its header says shape {shape} ({expected} bytes of data) "
                        f"but it holds {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header).reshape(shape).copy()


def find_idx_files(root: Path) -> Optional[Dict[str, Path]]:
    """Paths of the four IDX files under ``root`` (or ``root/MNIST/raw``, ``root/raw``); None if any is missing."""
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        found = {}
        for key, (stem, kind) in IDX_FILES.items():
            for name in (f"{stem}-{kind}", f"{stem}.{kind}"):
                for candidate in (folder / name, folder / f"{name}.gz"):
                    if candidate.is_file():
                        found[key] = candidate
                        break
                if key in found:
                    break
        if len(found) == len(IDX_FILES):
            return found
    return None


def _images(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise DataError(f"{where}: images must have shape (N, 28, 28), got {arr.shape}")
    if arr.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8 grey levels 0..255, got {arr.dtype}")
    return arr[:, None]  # (N, 1, H, W)


def _labels(arr: np.ndarray, n: int, where: str) -> np.ndarray:
    if arr.ndim != 1 or arr.shape[0] != n or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{where}: labels must be {n} integers (shape ({n},)), got {arr.dtype} {arr.shape}")
    if n and (arr.min() < 0 or arr.max() > 9):
        raise DataError(f"{where}: MNIST labels must lie in 0..9, found {arr.min()}..{arr.max()}")
    return arr.astype(np.int64)


def load_mnist_idx(files: Dict[str, Path]) -> Dict[str, object]:
    """Train/test arrays from the four IDX files."""
    out: Dict[str, object] = {}
    for split in ("train", "test"):
        images = _images(read_idx(files[f"{split}_images"]), str(files[f"{split}_images"]))
        out[f"{split}_images"] = images
        out[f"{split}_labels"] = _labels(read_idx(files[f"{split}_labels"]), len(images), str(files[f"{split}_labels"]))
    out["classes"] = [str(d) for d in range(10)]
    return out


def npz_split(n: int) -> tuple:
    """(train indices, test indices) of the fixed split used for an npz without one."""
    perm = np.random.RandomState(NPZ_SPLIT_SEED).permutation(n)
    n_test = n // NPZ_TEST_FRACTION_DIVISOR
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def load_mnist_npz(path: Path) -> Dict[str, object]:
    """Train/test arrays from an npz (Keras keys, or ``images``/``labels`` split with a fixed seed)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # zipfile.BadZipFile, pickled object arrays (refused), truncated data, ...
        raise DataError(f"{path} is not a readable .npz file ({type(exc).__name__}: {exc})") from None
    keys = sorted(arrays)
    if {"x_train", "y_train", "x_test", "y_test"} <= set(arrays):
        out: Dict[str, object] = {}
        for split in ("train", "test"):
            images = _images(arrays[f"x_{split}"], f"{path} x_{split}")
            out[f"{split}_images"] = images
            out[f"{split}_labels"] = _labels(arrays[f"y_{split}"], len(images), f"{path} y_{split}")
    elif {"images", "labels"} <= set(arrays):
        images = _images(arrays["images"], f"{path} images")
        labels = _labels(arrays["labels"], len(images), f"{path} labels")
        if len(images) < NPZ_TEST_FRACTION_DIVISOR:
            raise DataError(f"{path}: only {len(images)} images, too few to split into train and test")
        train_idx, test_idx = npz_split(len(images))
        out = {"train_images": images[train_idx], "train_labels": labels[train_idx],
               "test_images": images[test_idx], "test_labels": labels[test_idx]}
    else:
        raise DataError(f"{path}: expected arrays 'images' (N, 28, 28) uint8 and 'labels' (N,), or x_train, "
                        f"y_train, x_test, y_test; found {', '.join(keys) or 'none'}")
    out["classes"] = [str(d) for d in range(10)]
    return out


def find_npz(root: Path) -> List[Path]:
    """The .npz files directly inside ``root``."""
    return sorted(p for p in root.glob("*.npz") if p.is_file())
