"""A fast in-memory batch loader with DDP sharding and batched augmentation."""
from __future__ import annotations

import math
from typing import Iterator, Optional, Tuple, Union

import numpy as np
import torch

from shiftadd.data.augment import augment_batch, normalize
from shiftadd.data.dataset import ImageDataset


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence, stable across versions)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class BatchLoader:
    """Yields ``(images, labels)`` batches: float32 images (N, C, H, W) normalised with the
    dataset's mean/std, and int64 labels.

    Args:
        dataset: an :class:`ImageDataset` (its tensors may live on CPU or CUDA).
        batch_size: samples per batch (per rank).
        shuffle: a new order every epoch, from ``seed`` and the epoch (see :meth:`set_epoch`).
        augment: random crop with zero padding ``padding`` and random horizontal flip
            (``flip``), applied to the uint8 batch before normalising.
        seed: base seed of the order and of the augmentation.
        drop_last: drop this rank's last batch if it is smaller than ``batch_size``.
        rank, world_size: DDP sharding like ``DistributedSampler``: the epoch's order (the same
            on every rank) is cut to a multiple of ``world_size`` and rank ``r`` takes positions
            ``r, r + world_size, ...``, so the ranks get disjoint parts of equal size (at most
            ``world_size - 1`` samples per epoch are left out; with ``shuffle`` they differ
            each epoch). With ``even_shards=False`` nothing is left out and the parts differ
            in size by at most one (for evaluation: sum the metrics over ranks).
        device: where batches are produced (default: the dataset's device). uint8 images
            are moved first, so a CUDA device also does the augmentation.
        padding, flip: augmentation settings (used when ``augment`` is True).

    The order and augmentation of an epoch depend only on (seed, epoch) and, for the
    augmentation, the rank; iterating twice without :meth:`set_epoch` repeats the epoch.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, shuffle: bool = False, augment: bool = False,
                 seed: int = 0, drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 device: Optional[Union[str, torch.device]] = None, even_shards: bool = True,
                 padding: int = 4, flip: bool = True) -> None:
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if even_shards and len(dataset) < world_size:
            raise ValueError(f"{len(dataset)} samples cannot be split into {world_size} equal non-empty shards")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = int(seed)
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device) if device is not None else dataset.images.device
        self.even_shards = even_shards
        self.padding = padding
        self.flip = flip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration produces."""
        self.epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (before ``drop_last``)."""
        n = len(self.dataset)
        if self.even_shards:
            return n // self.world_size
        return n // self.world_size + (1 if self.rank < n % self.world_size else 0)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in batch order (int64, CPU)."""
        n = len(self.dataset)
        if self.shuffle:
            gen = torch.Generator().manual_seed(_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        if self.even_shards:
            order = order[: (n // self.world_size) * self.world_size]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        idx = self.indices()
        ds = self.dataset
        images, labels = ds.images, ds.labels
        gen = torch.Generator().manual_seed(_seed(self.seed, self.epoch, self.rank, 1)) if self.augment else None
        for b in range(len(self)):
            sel = idx[b * self.batch_size:(b + 1) * self.batch_size]
            x = images[sel.to(images.device)].to(self.device, non_blocking=True)
            y = labels[sel.to(labels.device)].to(self.device, non_blocking=True)
            if self.augment:
                x = augment_batch(x, self.padding, self.flip, gen)
            yield normalize(x, ds.mean, ds.std), y
