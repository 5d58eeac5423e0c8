"""The default dataset shipped inside the package: a fixed class-balanced CIFAR-10 subset.

``assets/cifar10_embedded.npz`` holds 2,000 training images (200 per class) and 1,000 test
images (100 per class) of CIFAR-10 (Krizhevsky, 2009), 32x32 RGB, chosen with a fixed seed
by ``scripts/make_embedded_default.py`` from the JPEG redistribution of CIFAR-10. The
images are stored as their original JPEG bytes (about 1 KB each; raw pixels would take
three times the space), concatenated in ``{split}_jpeg`` with boundaries in
``{split}_offsets``; they are decoded with Pillow on first use, giving the same pixels as
the image-folder loader gives for those files. ``{split}_files`` name the source files.
"""
from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import Dict

import numpy as np

from shiftadd.errors import DataError

ASSET = Path(__file__).with_name("assets") / "cifar10_embedded.npz"
ASSET_KEYS = ("train_jpeg", "train_offsets", "train_labels", "train_files",
              "test_jpeg", "test_offsets", "test_labels", "test_files", "classes", "source")


def decode_jpeg_blob(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Decode the concatenated images ``blob[offsets[i]:offsets[i+1]]`` into uint8 (N, 3, H, W)."""
    from PIL import Image

    n = len(offsets) - 1
    out = None
    for i in range(n):
        with Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())) as im:
            arr = np.asarray(im.convert("RGB"))
        if out is None:
            out = np.empty((n, 3) + arr.shape[:2], dtype=np.uint8)
        out[i] = arr.transpose(2, 0, 1)
    if out is None:
        raise DataError("embedded dataset holds no images")
    return out


@lru_cache(maxsize=1)
def _load_embedded_arrays() -> Dict[str, object]:
    if not ASSET.is_file():
        raise DataError(f"the embedded dataset {ASSET} is missing from this installation; regenerate it with "
                        f"scripts/make_embedded_default.py or reinstall shiftadd")
    with np.load(ASSET, allow_pickle=False) as data:
        missing = [k for k in ASSET_KEYS if k not in data.files]
        if missing:
            raise DataError(f"{ASSET} is damaged: missing {', '.join(missing)}")
        arrays = {k: data[k] for k in ASSET_KEYS}
    out: Dict[str, object] = {"classes": [str(c) for c in arrays["classes"]], "source": str(arrays["source"])}
    for split in ("train", "test"):
        out[f"{split}_images"] = decode_jpeg_blob(arrays[f"{split}_jpeg"], arrays[f"{split}_offsets"])
        out[f"{split}_labels"] = arrays[f"{split}_labels"].astype(np.int64)
        out[f"{split}_files"] = [str(f) for f in arrays[f"{split}_files"]]
    from shiftadd.data.dataset import channel_stats

    mean, std = channel_stats(out["train_images"])  # type: ignore[arg-type]
    out["mean"], out["std"] = np.asarray(mean), np.asarray(std)
    for key in ("train_images", "test_images", "train_labels", "test_labels"):
        out[key].setflags(write=False)
    return out


def load_embedded_arrays() -> Dict[str, object]:
    """Decoded arrays of the embedded dataset (decoded once per process; read-only arrays)."""
    return _load_embedded_arrays()
