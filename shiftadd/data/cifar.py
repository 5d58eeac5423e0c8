"""CIFAR-10 / CIFAR-100 in the "python version" format (``cifar-10-batches-py``, ``cifar-100-python``).

Those files are Python pickles. Unpickling can run arbitrary code, so they are read with
:class:`RestrictedUnpickler`, which refuses every global except the three numpy needs to
rebuild an array (``numpy.core.multiarray._reconstruct`` (or ``numpy._core...``),
``numpy.ndarray``, ``numpy.dtype``). The official files (pickled by Python 2, protocol 2)
contain only dicts, lists, byte strings, ints and numpy arrays, so they load; a file
that names any other global (e.g. ``os.system``) is rejected with a DataError before
anything is called. Files re-pickled with protocol 5 (which uses
``numpy._core.numeric._frombuffer``) are rejected too: use the original download.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from shiftadd.errors import DataError

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves no global except those numpy needs to rebuild an ndarray."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a dataset file")
        return factory()


def restricted_load(path: Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (Python 2 byte strings stay bytes)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path} is not a CIFAR python batch file: {exc}") from None
    except Exception as exc:  # truncated or garbage data raises many kinds of errors
        raise DataError(f"{path} is not a readable CIFAR python batch file "
                        f"({type(exc).__name__}: {exc})") from None


def _str_keys(obj: Any, path: Path) -> Dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR python batch file: expected a dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _names(values: Any) -> List[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def read_batch(path: Path, label_key: str, num_classes: int) -> tuple:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) from one batch file."""
    if not path.is_file():
        raise DataError(f"missing CIFAR batch file {path}")
    batch = _str_keys(restricted_load(path), path)
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{path} is not a CIFAR python batch file: expected keys 'data' and '{label_key}', "
                        f"found {sorted(batch)}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array (N, 3072), got {desc}")
    labels = np.asarray(batch[label_key])
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: '{label_key}' must list {data.shape[0]} integer labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")
    # rows hold 1024 red, then 1024 green, then 1024 blue values, each image row-major
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def find_cifar_dir(root: Path, folder: str, marker: str) -> Optional[Path]:
    """``root/folder`` or ``root`` itself, whichever contains ``marker``."""
    for candidate in (root / folder, root):
        if (candidate / marker).is_file():
            return candidate
    return None


def load_cifar10_batches(folder: Path) -> Dict[str, Any]:
    """Train/test arrays and class names from a ``cifar-10-batches-py`` folder."""
    meta_path = folder / "batches.meta"
    classes = list(CIFAR10_CLASSES)
    if meta_path.is_file():
        meta = _str_keys(restricted_load(meta_path), meta_path)
        if "label_names" in meta:
            classes = _names(meta["label_names"])
    parts = [read_batch(folder / f"data_batch_{i}", "labels", len(classes)) for i in range(1, 6)]
    test_images, test_labels = read_batch(folder / "test_batch", "labels", len(classes))
    return {
        "train_images": np.concatenate([p[0] for p in parts]),
        "train_labels": np.concatenate([p[1] for p in parts]),
        "test_images": test_images, "test_labels": test_labels, "classes": classes,
    }


def load_cifar100_batches(folder: Path) -> Dict[str, Any]:
    """Train/test arrays and the 100 fine class names from a ``cifar-100-python`` folder."""
    meta_path = folder / "meta"
    if not meta_path.is_file():
        raise DataError(f"missing {meta_path} (the CIFAR-100 class names); expected {folder}/train, test and "
                        f"meta from the python version at {CIFAR_URL}")
    meta = _str_keys(restricted_load(meta_path), meta_path)
    if "fine_label_names" not in meta:
        raise DataError(f"{meta_path}: expected the key 'fine_label_names', found {sorted(meta)}")
    classes = _names(meta["fine_label_names"])
    train_images, train_labels = read_batch(folder / "train", "fine_labels", len(classes))
    test_images, test_labels = read_batch(folder / "test", "fine_labels", len(classes))
    return {"train_images": train_images, "train_labels": train_labels,
            "test_images": test_images, "test_labels": test_labels, "classes": classes}
