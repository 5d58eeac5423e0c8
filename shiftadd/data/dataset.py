"""In-memory image dataset: uint8 images (N, C, H, W), int64 labels, class names, mean/std."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from shiftadd.errors import DataError

ArrayLike = Union[np.ndarray, torch.Tensor]


def channel_stats(images: ArrayLike, chunk: int = 4096) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images (N, C, H, W), on the [0, 1] scale.

    Exact: counts a 256-bin histogram per channel (chunked, so memory stays small) and
    takes the moments of the histogram in float64.
    """
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"channel_stats expects a uint8 tensor (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("channel_stats needs at least one image")
    x = x.cpu()
    channels = x.shape[1]
    hist = torch.zeros(channels, 256, dtype=torch.float64)
    for start in range(0, x.shape[0], chunk):
        block = x[start:start + chunk]
        for c in range(channels):
            hist[c] += torch.bincount(block[:, c].reshape(-1), minlength=256).to(torch.float64)
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    total = hist.sum(1)
    mean = (hist * levels).sum(1) / total
    var = (hist * (levels - mean[:, None]) ** 2).sum(1) / total
    std = var.clamp_min(1e-12).sqrt()
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def balanced_subset_indices(labels: ArrayLike, n: int, seed: int = 0) -> torch.Tensor:
    """Indices (sorted, int64) of a fixed class-balanced subset of ``n`` samples.

    Every class contributes ``n // num_classes`` samples (one more for some classes when
    ``n`` is not a multiple); a class that has too few samples gives all it has and the
    others fill in. The choice depends only on ``labels``, ``n`` and ``seed`` (numpy's
    frozen ``RandomState`` stream, so it is the same across numpy versions).
    """
    y = np.asarray(torch.as_tensor(labels).cpu().numpy(), dtype=np.int64)
    total = y.shape[0]
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
        raise DataError(f"subset must be a positive number of training images, got {n!r}")
    if n > total:
        raise DataError(f"subset={n} is larger than the training set ({total} images)")
    perm = np.random.RandomState(seed).permutation(total)
    shuffled = y[perm]
    # rank of each shuffled sample within its own class: 0, 1, 2, ...
    order = np.argsort(shuffled, kind="stable")
    sorted_labels = shuffled[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(total, dtype=np.int64)
    rank[order] = np.arange(total) - starts
    # take rank 0 of every class, then rank 1 of every class, ... (round robin over classes)
    classes = np.unique(y)
    class_pos = np.searchsorted(classes, shuffled)
    key = rank * len(classes) + class_pos
    chosen = perm[np.argsort(key, kind="stable")[:n]]
    return torch.from_numpy(np.sort(chosen))


class ImageDataset:
    """A labelled image set held in memory.

    Attributes:
        images: uint8 tensor (N, C, H, W).
        labels: int64 tensor (N,).
        classes: class names; ``labels`` index into it.
        mean, std: per-channel normalisation constants on the [0, 1] scale (from the
            training split of the dataset, shared by its test split).
        name: dataset name ("cifar10", ...), informational.
    """

    def __init__(self, images: ArrayLike, labels: ArrayLike, classes: Sequence[str],
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 name: str = "") -> None:
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(f"{name or 'dataset'}: images must be uint8 (N, C, H, W), got "
                            f"{images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(f"{name or 'dataset'}: {images.shape[0]} images but labels of shape "
                            f"{tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise DataError(f"{name or 'dataset'}: labels must be integers, got {labels.dtype}")
        labels = labels.to(torch.int64)
        classes = [str(c) for c in classes]
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            raise DataError(f"{name or 'dataset'}: labels must lie in 0..{len(classes) - 1} "
                            f"({len(classes)} classes), found {int(labels.min())}..{int(labels.max())}")
        if mean is None or std is None:
            if images.shape[0] == 0:
                raise DataError(f"{name or 'dataset'}: no images")
            mean, std = channel_stats(images)
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise DataError(f"{name or 'dataset'}: mean/std need {images.shape[1]} values, got "
                            f"{len(mean)}/{len(std)}")
        self.images = images
        self.labels = labels
        self.classes: List[str] = classes
        self.mean: Tuple[float, ...] = mean
        self.std: Tuple[float, ...] = std
        self.name = name

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        """One (uint8 image (C, H, W), label) pair, so the set also works with torch's DataLoader."""
        return self.images[index], int(self.labels[index])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> Tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def class_counts(self) -> List[int]:
        """Number of samples of each class, in ``classes`` order."""
        return torch.bincount(self.labels.cpu(), minlength=self.num_classes).tolist()

    def subset(self, indices: ArrayLike) -> "ImageDataset":
        """The samples at ``indices``, keeping classes, mean and std."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return ImageDataset(self.images[idx.to(self.images.device)], self.labels[idx.to(self.labels.device)],
                            self.classes, self.mean, self.std, self.name)

    def balanced_subset(self, n: int, seed: int = 0) -> "ImageDataset":
        """A fixed class-balanced subset of ``n`` samples (see :func:`balanced_subset_indices`)."""
        return self.subset(balanced_subset_indices(self.labels, n, seed))

    def to(self, device: Union[str, torch.device]) -> "ImageDataset":
        """The same dataset with images and labels on ``device`` (the loader then works there)."""
        return ImageDataset(self.images.to(device), self.labels.to(device), self.classes,
                            self.mean, self.std, self.name)

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return (f"ImageDataset(name={self.name!r}, n={len(self)}, shape=({c}, {h}, {w}), "
                f"classes={self.num_classes}, device={self.images.device})")
