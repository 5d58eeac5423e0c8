"""Image-folder datasets: ``ROOT/train/<class>/*.{jpg,jpeg,png}`` and ``ROOT/test/<class>/*``.

Classes are the sorted sub-folder names of ``train``; ``test`` may hold the same classes
or fewer. Images are decoded with Pillow: grey-level images give 1 channel, anything
else is converted to RGB (a set mixing both is made RGB). All images must have the same
size unless ``image_size`` is given, which resizes them (bilinear) to a square.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from shiftadd.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def find_folder_root(path: Path) -> Optional[Path]:
    """``path`` if it holds ``train/`` and ``test/`` folders, else its only sub-folder that does."""
    if (path / "train").is_dir() and (path / "test").is_dir():
        return path
    subdirs = [d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")] if path.is_dir() else []
    if len(subdirs) == 1 and (subdirs[0] / "train").is_dir() and (subdirs[0] / "test").is_dir():
        return subdirs[0]
    return None


def class_dirs(split_dir: Path) -> List[Path]:
    """The class sub-folders of a split folder, sorted by name (hidden ones skipped)."""
    return sorted((d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: d.name)


def scan_split(split_dir: Path, classes: Optional[Sequence[str]] = None) -> Tuple[List[Path], List[int], List[str]]:
    """(image files, labels, class names) of one split folder.

    With ``classes`` given (the training classes), every class folder of this split must be
    one of them; otherwise the classes are the sorted folder names found here.
    """
    dirs = class_dirs(split_dir)
    if not dirs:
        raise DataError(f"no class folders in {split_dir}: expected {split_dir}/<class>/*.png (or .jpg)")
    names = [d.name for d in dirs]
    if classes is None:
        classes = names
    else:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise DataError(f"{split_dir} has class folders that train/ lacks: {', '.join(unknown[:5])}")
    index = {c: i for i, c in enumerate(classes)}
    files: List[Path] = []
    labels: List[int] = []
    for d in dirs:
        found = sorted(e.name for e in os.scandir(d)
                       if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS))
        if not found:
            raise DataError(f"class folder {d} has no images: expected {d}/*.jpg, *.jpeg or *.png")
        files.extend(d / f for f in found)
        labels.extend([index[d.name]] * len(found))
    return files, labels, list(classes)


def decode_images(files: Sequence[Path], image_size: Optional[int] = None) -> np.ndarray:
    """Decode ``files`` with Pillow into one uint8 array (N, C, H, W)."""
    from PIL import Image, UnidentifiedImageError

    arrays: List[np.ndarray] = []
    size = None
    for path in files:
        try:
            with Image.open(path) as im:
                im = im.convert("L" if im.mode in _GREY_MODES else "RGB")
                if image_size is not None and im.size != (image_size, image_size):
                    im = im.resize((image_size, image_size), Image.BILINEAR)
                arr = np.asarray(im)
        except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot decode image {path}: {exc}") from None
        if size is None:
            size = arr.shape[:2]
        elif arr.shape[:2] != size:
            raise DataError(f"images differ in size: {files[0]} is {size[1]}x{size[0]} but {path} is "
                            f"{arr.shape[1]}x{arr.shape[0]} (pass image_size= to resize them)")
        arrays.append(arr)
    if not arrays:
        raise DataError("no images to decode")
    if all(a.ndim == 2 for a in arrays):
        return np.stack(arrays)[:, None]
    out = np.empty((len(arrays), 3) + tuple(size), dtype=np.uint8)
    for i, a in enumerate(arrays):
        out[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return out


def folder_signature_dirs(root: Path) -> List[Path]:
    """The folders whose mtimes key the decoded cache of a folder dataset."""
    dirs = [root, root / "train", root / "test"]
    for split in ("train", "test"):
        dirs.extend(class_dirs(root / split))
    return dirs


def load_image_folder(root: Path, image_size: Optional[int] = None) -> Dict[str, object]:
    """Train/test arrays and class names of a folder dataset rooted at ``root``."""
    train_files, train_labels, classes = scan_split(root / "train")
    test_files, test_labels, _ = scan_split(root / "test", classes)
    train_images = decode_images(train_files, image_size)
    test_images = decode_images(test_files, image_size)
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(f"train and test images of {root} differ in shape: {train_images.shape[1:]} vs "
                        f"{test_images.shape[1:]} (C, H, W); pass image_size= to resize them")
    return {"train_images": train_images, "train_labels": np.asarray(train_labels, dtype=np.int64),
            "test_images": test_images, "test_labels": np.asarray(test_labels, dtype=np.int64),
            "classes": classes}
