"""Datasets held in memory as uint8 tensors, a batch loader with DDP sharding, and augmentation.

    train, test = shiftadd.data.load_dataset("cifar10", "path/to/data")   # or "embedded"
    loader = shiftadd.data.BatchLoader(train, 128, shuffle=True, augment=True, seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader: ...

Supported: CIFAR-10/100 (python pickles, read with a restricted unpickler that allows only
numpy arrays; see :mod:`shiftadd.data.cifar`), image folders ``train/<class>/*`` +
``test/<class>/*`` (also as a ``.tar.gz``), MNIST (IDX files or an npz) and an embedded
2,000 + 1,000 image CIFAR-10 subset that needs no download. Decoded image folders and
archives are cached in ``$SHIFTADD_CACHE`` (default ``~/.cache/shiftadd``).
Parallel text for translation (Multi30k, subword vocabulary, token batches): :mod:`shiftadd.data.text`.
"""
from shiftadd.data.augment import augment_batch, denormalize, normalize, random_crop, random_hflip
from shiftadd.data.cache import cache_dir, clear_cache
from shiftadd.data.dataset import ImageDataset, balanced_subset_indices, channel_stats
from shiftadd.data.loader import BatchLoader
from shiftadd.data.registry import DATASETS, list_datasets, load_dataset
from shiftadd.data.text import (
    ParallelText, SubwordTokenizer, TokenBatchLoader, TranslationBatch, TranslationData, joint_tokenizer, load_parallel,
)

__all__ = [
    "load_dataset", "list_datasets", "DATASETS", "ImageDataset", "BatchLoader",
    "augment_batch", "random_crop", "random_hflip", "normalize", "denormalize",
    "channel_stats", "balanced_subset_indices", "cache_dir", "clear_cache",
    "ParallelText", "SubwordTokenizer", "TokenBatchLoader", "TranslationBatch", "TranslationData",
    "joint_tokenizer", "load_parallel",
]
