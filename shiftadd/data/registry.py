"""``load_dataset``: one entry point for every supported dataset."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from shiftadd.data import cache
from shiftadd.data.cifar import (CIFAR10_DIR, CIFAR100_DIR, CIFAR_URL, find_cifar_dir, load_cifar10_batches,
                                 load_cifar100_batches)
from shiftadd.data.dataset import ImageDataset, channel_stats
from shiftadd.data.embedded import load_embedded_arrays
from shiftadd.data.folder import find_folder_root, folder_signature_dirs, load_image_folder
from shiftadd.data.mnist import MNIST_URL, find_idx_files, find_npz, load_mnist_idx, load_mnist_npz
from shiftadd.errors import DataError

PathLike = Union[str, "os.PathLike[str]"]
Arrays = Dict[str, object]

DATASETS: Dict[str, str] = {
    "embedded": "the default: 2,000 train + 1,000 test CIFAR-10 images shipped in the package (no path needed)",
    "cifar10": "CIFAR-10: cifar-10-batches-py (python pickles), an image folder train/<class>/ + test/<class>/, "
               "or a .tar.gz of either",
    "cifar100": "CIFAR-100 (fine labels): cifar-100-python, an image folder, or a .tar.gz of either",
    "mnist": "MNIST: the four IDX files (optionally .gz) or an .npz (images/labels, split 80/20 with a fixed seed)",
    "folder": "any image folder ROOT/train/<class>/*.{jpg,jpeg,png} + ROOT/test/<class>/*, or a .tar.gz of it",
}

# (what, where it should be) for the one-line error of a missing or malformed path
_EXPECTED = {
    "cifar10": ("CIFAR-10", "expected {p}/" + CIFAR10_DIR + "/data_batch_1..5 + test_batch (python version from "
                + CIFAR_URL + "), a folder {p}/train/<class>/*.png + {p}/test/<class>/*, or the cifar10 .tar.gz"),
    "cifar100": ("CIFAR-100", "expected {p}/" + CIFAR100_DIR + "/train + test + meta (python version from "
                 + CIFAR_URL + "), a folder {p}/train/<class>/*.png + {p}/test/<class>/*, or a .tar.gz of either"),
    "mnist": ("MNIST", "expected {p}/train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
              "t10k-labels-idx1-ubyte (optionally .gz; from " + MNIST_URL + "), or an .npz with 'images' "
              "(N, 28, 28) uint8 and 'labels' (N,)"),
    "folder": ("image-folder dataset", "expected {p}/train/<class>/*.jpg|*.jpeg|*.png and {p}/test/<class>/*, "
               "or a .tar.gz holding that layout"),
}
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def list_datasets() -> List[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(DATASETS)


def _expected(name: str, path: object) -> str:
    what, where = _EXPECTED[name]
    return f"no {what} found at {path}: " + where.format(p=path)


def _with_stats(arrays: Arrays) -> Arrays:
    mean, std = channel_stats(arrays["train_images"])  # type: ignore[arg-type]
    arrays["mean"], arrays["std"] = np.asarray(mean), np.asarray(std)
    arrays["classes"] = np.asarray(arrays["classes"], dtype=str)
    return arrays


def _folder_arrays(root: Path, name: str, image_size: Optional[int]) -> Arrays:
    arrays = load_image_folder(root, image_size)
    want = _NUM_CLASSES.get(name)
    if want is not None and len(arrays["classes"]) != want:  # type: ignore[arg-type]
        raise DataError(f"{root} is an image folder with {len(arrays['classes'])} classes but {name} has "  # type: ignore[arg-type]
                        f"{want}; load it as dataset 'folder'")
    return _with_stats(arrays)


def _folder_cached(root: Path, name: str, image_size: Optional[int]) -> Arrays:
    key = cache.key_of(name, "folder", cache.tree_signature(root, folder_signature_dirs(root)), image_size)
    return cache.cached_decode(name, key, lambda: _folder_arrays(root, name, image_size))


def _from_directory(path: Path, name: str, image_size: Optional[int], use_cache: bool, shown: Path) -> Arrays:
    """Arrays of dataset ``name`` found in the directory ``path`` (``shown`` is the path named in errors)."""
    if name == "mnist":
        files = find_idx_files(path)
        if files is not None:
            return load_mnist_idx(files)
        npz = find_npz(path)
        if len(npz) == 1:
            return load_mnist_npz(npz[0])
        if len(npz) > 1:
            raise DataError(f"{shown} holds several .npz files ({', '.join(p.name for p in npz[:4])}); "
                            f"pass the one with MNIST as the data path")
        raise DataError(_expected(name, shown))
    if name in ("cifar10", "cifar100"):
        folder, marker, loader = ((CIFAR10_DIR, "data_batch_1", load_cifar10_batches) if name == "cifar10"
                                  else (CIFAR100_DIR, "train", load_cifar100_batches))
        found = find_cifar_dir(path, folder, marker)
        if found is not None:
            return loader(found)
    root = find_folder_root(path)
    if root is None:
        raise DataError(_expected(name, shown))
    return _folder_cached(root, name, image_size) if use_cache else _folder_arrays(root, name, image_size)


def _from_path(path: Path, name: str, image_size: Optional[int]) -> Arrays:
    if not path.exists():
        raise DataError(_expected(name, path))
    if cache.is_archive(path):
        key = cache.key_of(name, "archive", cache.file_signature(path), image_size)

        def build() -> Arrays:
            arrays = _from_directory(cache.extract_archive(path), name, image_size, use_cache=False, shown=path)
            return arrays if "mean" in arrays else _with_stats(arrays)

        return cache.cached_decode(name, key, build)
    if path.is_dir():
        return _from_directory(path, name, image_size, use_cache=True, shown=path)
    if name == "mnist" and path.suffix.lower() == ".npz":
        return load_mnist_npz(path)
    raise DataError(_expected(name, path))


def load_dataset(name: str, data_dir: Optional[PathLike] = None, subset: Optional[int] = None, seed: int = 0,
                 image_size: Optional[int] = None) -> Tuple[ImageDataset, ImageDataset]:
    """Load a dataset's training and test splits as in-memory uint8 tensors.

    Args:
        name: one of :func:`list_datasets` ("embedded", "cifar10", "cifar100", "mnist", "folder").
        data_dir: where the data lies: a folder or a ``.tar.gz`` (unpacked once into the
            cache folder, see :mod:`shiftadd.data.cache`); for "mnist" also an ``.npz`` file.
            Ignored for "embedded".
        subset: keep a fixed class-balanced subset of this many training images (the test
            split is kept whole).
        seed: chooses the subset; nothing else depends on it.
        image_size: "folder" (and CIFAR as an image folder) only: resize every image to this
            square size; needed when the images differ in size.

    Returns:
        (train, test) :class:`ImageDataset` with mean/std computed on the full training split.

    Raises:
        DataError: unknown name, or a path that is missing or does not hold the expected files.
    """
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if key == "embedded":
        arrays: Arrays = dict(load_embedded_arrays())
        arrays = {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in arrays.items()}
    else:
        if data_dir is None or str(data_dir) == "":
            raise DataError(f"dataset '{key}' needs a data path (--data-dir DATA_DIR): "
                            + _EXPECTED[key][1].format(p="DATA_DIR"))
        if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
            raise DataError(f"image_size must be a positive integer, got {image_size!r}")
        arrays = _from_path(Path(data_dir).expanduser(), key, image_size)
    if "mean" in arrays:
        mean, std = tuple(np.asarray(arrays["mean"]).tolist()), tuple(np.asarray(arrays["std"]).tolist())
    else:
        mean, std = channel_stats(arrays["train_images"])  # type: ignore[arg-type]
    classes = [str(c) for c in arrays["classes"]]  # type: ignore[union-attr]
    train = ImageDataset(torch.from_numpy(np.ascontiguousarray(arrays["train_images"])),
                         torch.from_numpy(np.asarray(arrays["train_labels"], dtype=np.int64)), classes, mean, std, key)
    test = ImageDataset(torch.from_numpy(np.ascontiguousarray(arrays["test_images"])),
                        torch.from_numpy(np.asarray(arrays["test_labels"], dtype=np.int64)), classes, mean, std, key)
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"dataset '{key}' at {data_dir}: the {'training' if len(train) == 0 else 'test'} split is empty")
    if subset is not None:
        train = train.balanced_subset(subset, seed)
    return train, test


__all__ = ["DATASETS", "list_datasets", "load_dataset"]
