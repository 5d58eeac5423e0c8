"""Scoring candidates with inherited supernet weights, never on the test split.

CNN (:class:`SubnetScorer`): accuracy on a held-out split of the *training* set; before each
candidate is scored, its BatchNorm statistics are re-estimated on training images (standard for
single-path supernets: the running statistics were averaged over many paths).

Transformer (:class:`TranslationLossScorer`): minus the validation loss (cross-entropy per target
token under teacher forcing, no label smoothing) of the sub-Transformer on Multi30k's validation
split (LayerNorm only: nothing to recalibrate).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch

from shiftadd.errors import UserError
from shiftadd.nas.arch import Architecture


def validation_split(train, val_size: int, seed: int = 0) -> Tuple[object, object]:
    """``(train_part, val_part)`` of an :class:`~shiftadd.data.ImageDataset`: a class-balanced held-out
    slice of ``val_size`` images drawn with ``seed``, and the rest."""
    from shiftadd.data import balanced_subset_indices

    n = len(train.labels)
    if not 0 < val_size < n:
        raise UserError(f"validation size must be between 1 and {n - 1} (the training set has {n} images), "
                        f"got {val_size}")
    val_idx = balanced_subset_indices(train.labels, val_size, seed)
    keep = torch.ones(n, dtype=torch.bool)
    keep[val_idx] = False
    return train.subset(torch.nonzero(keep).flatten()), train.subset(val_idx)


class SubnetScorer:
    """Validation accuracy of paths of ``supernet`` (cached per architecture)."""

    def __init__(self, supernet, val_data, recal_data, recal_images: int = 1024, batch_size: int = 256,
                 device: str = "cpu", seed: int = 0) -> None:
        from shiftadd.data import BatchLoader

        self.supernet, self.device = supernet, torch.device(device)
        self.val_loader = BatchLoader(val_data, batch_size, shuffle=False, augment=False, seed=seed)
        self.recal_loader = BatchLoader(recal_data, batch_size, shuffle=True, augment=False, seed=seed + 7919)
        self.recal_images = int(recal_images)
        self.cache: Dict[str, float] = {}

    @torch.no_grad()
    def __call__(self, arch: Architecture) -> float:
        key = arch.key()
        if key not in self.cache:
            from shiftadd.train import evaluate, recalibrate_batchnorm

            net = self.supernet.set_active(arch)
            if self.recal_images:
                self.recal_loader.set_epoch(0)  # the same images for every candidate
                recalibrate_batchnorm(net, self.recal_loader, self.recal_images, self.device)
            net.eval()
            self.cache[key] = float(evaluate(net, self.val_loader, self.device)["acc"])
        return self.cache[key]


@torch.no_grad()
def translation_nll(model, batches, device: Union[str, torch.device] = "cpu") -> float:
    """Cross-entropy per target token (no label smoothing) of a translation model (a sub-network of a
    SuperTransformer or a stand-alone ``transformer-seq``) over token ``batches``, in eval mode."""
    from shiftadd.seq.loss import label_smoothed_cross_entropy

    net, device = model.eval(), torch.device(device)
    total, tokens = 0.0, 0
    for b in batches:
        logits = net(b.src.to(device), b.tgt_in.to(device))
        _, nll, n = label_smoothed_cross_entropy(logits, b.tgt_out.to(device), 0.0, net.cfg.pad_id)
        total, tokens = total + float(nll), tokens + int(n)
    return total / max(tokens, 1)


class TranslationLossScorer:
    """``-(validation loss per target token)`` of paths of a SuperTransformer (cached per architecture)."""

    def __init__(self, supernet, val_data, max_tokens: int = 4096, device: str = "cpu") -> None:
        from shiftadd.data.text import TokenBatchLoader

        self.supernet, self.device = supernet, torch.device(device)
        self.batches = list(TokenBatchLoader(val_data, max_tokens, shuffle=False, seed=0))
        self.cache: Dict[str, float] = {}

    def loss(self, arch) -> float:
        """Validation cross-entropy per target token of ``arch`` with the supernet's weights."""
        return translation_nll(self.supernet.set_active(arch), self.batches, self.device)

    @torch.no_grad()
    def __call__(self, arch) -> float:
        key = arch.key()
        if key not in self.cache:
            self.cache[key] = -self.loss(arch)
        return self.cache[key]


def load_supernet(run_dir: str, device: str = "cpu") -> Tuple[object, Dict, object]:
    """``(supernet, nas_settings, train_config)`` of a run written by ``shiftadd nas supernet``."""
    import json
    import os

    from shiftadd.nas.supernet import Supernet
    from shiftadd.nas.supertransformer import SuperTransformer
    from shiftadd.train import load_trained_model

    settings_path = os.path.join(run_dir, "nas.json")
    if not os.path.isfile(settings_path):
        raise UserError(f"{run_dir!r} is not a supernet run of `shiftadd nas supernet` (no nas.json)")
    with open(settings_path) as f:
        settings = json.load(f)
    model, config, _ = load_trained_model(run_dir, device)
    if not isinstance(model, (Supernet, SuperTransformer)):
        raise UserError(f"the run in {run_dir!r} did not train a supernet but {config.model!r}")
    return model, settings, config


def split_data(settings: Dict, config, data: Optional[Tuple] = None) -> Tuple[object, object, object]:
    """``(train_part, val_part, test)`` of a supernet run, the validation slice exactly as in training."""
    from shiftadd.data import load_dataset

    if data is None:
        data = load_dataset(config.dataset, data_dir=config.data_dir, subset=config.subset, seed=config.seed)
    train, test = data
    train_part, val_part = validation_split(train, int(settings["val_size"]), int(settings["split_seed"]))
    return train_part, val_part, test
