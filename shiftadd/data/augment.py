"""Batched augmentation and normalisation on tensors (no torchvision).

Everything works on a whole batch (N, C, H, W) at once, on CPU or CUDA tensors, with any
dtype (the loader applies it to uint8 images before normalising, as torchvision's
``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` + ``Normalize`` would). Random
draws come from a CPU ``torch.Generator`` so a seed gives the same result on every device.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def _draw_offsets(n: int, high: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=generator, dtype=torch.int64)


def random_crop(images: torch.Tensor, padding: int = 4, generator: Optional[torch.Generator] = None,
                offsets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Pad each image with ``padding`` zeros on every side and crop back to (H, W) at a random place.

    ``offsets`` (N, 2) of (top, left) in ``[0, 2 * padding]`` may be given instead of drawing them.
    """
    if images.dim() != 4:
        raise ValueError(f"random_crop expects (N, C, H, W), got shape {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, c, h, w = images.shape
    if padding == 0 or n == 0:
        return images.clone()
    if offsets is None:
        top = _draw_offsets(n, 2 * padding + 1, generator)
        left = _draw_offsets(n, 2 * padding + 1, generator)
    else:
        top, left = offsets[:, 0].to(torch.int64).cpu(), offsets[:, 1].to(torch.int64).cpu()
        if len(top) != n or int(torch.cat([top, left]).min()) < 0 or int(torch.cat([top, left]).max()) > 2 * padding:
            raise ValueError(f"offsets must be (N, 2) with values in [0, {2 * padding}]")
    dev = images.device
    pw = w + 2 * padding
    padded = images.new_zeros((n, c, h + 2 * padding, pw))
    padded[:, :, padding:padding + h, padding:padding + w] = images
    # flat position of every output pixel inside its padded image, then one gather
    window = (torch.arange(h)[:, None] * pw + torch.arange(w)[None, :]).reshape(-1)   # (H*W,)
    index = ((top * pw + left)[:, None] + window[None, :]).to(dev)                      # (N, H*W)
    out = torch.gather(padded.view(n, c, -1), 2, index[:, None, :].expand(n, c, h * w))
    return out.view(n, c, h, w)


def random_hflip(images: torch.Tensor, p: float = 0.5, generator: Optional[torch.Generator] = None,
                 mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mirror each image left-right with probability ``p`` (or where the bool ``mask`` (N,) is True)."""
    if images.dim() != 4:
        raise ValueError(f"random_hflip expects (N, C, H, W), got shape {tuple(images.shape)}")
    if mask is None:
        mask = torch.rand(images.shape[0], generator=generator) < p
    mask = mask.to(device=images.device, dtype=torch.bool)
    return torch.where(mask[:, None, None, None], images.flip(3), images)


def augment_batch(images: torch.Tensor, padding: int = 4, flip: bool = True,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The standard CIFAR augmentation: random crop with zero padding, then random horizontal flip."""
    out = random_crop(images, padding, generator) if padding else images
    return random_hflip(out, 0.5, generator) if flip else out


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> float ``(x / 255 - mean) / std`` per channel."""
    c = images.shape[1]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std need {c} values, got {len(mean)}/{len(std)}")
    std_t = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std_t)).to(dtype=dtype, device=images.device).view(1, c, 1, 1)
    shift = (-torch.tensor(mean, dtype=torch.float64) / std_t).to(dtype=dtype, device=images.device).view(1, c, 1, 1)
    return torch.addcmul(shift, images.to(dtype), scale)


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Inverse of :func:`normalize`, back to uint8 (rounded, clamped)."""
    c = images.shape[1]
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    return ((images * s + m) * 255.0).round().clamp(0, 255).to(torch.uint8)
