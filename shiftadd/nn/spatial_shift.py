"""Spatial shift layers: grouped shift, active shift, sparse shift and AddressNet primitives.

The math lives in :mod:`shiftadd.ops.spatial_shift`; these modules hold the offsets/shift
parameters and the model-level helpers of the sparse shift layer (L1 penalty, per-layer
sparsity report, removal of layers whose shifts are all zero).

Every module has ``op_counts(input_shape)`` giving what one forward pass costs: elements
moved in memory (``moves``), multiplications (``mults``) and additions (``adds``); an integer
shift costs data movement only.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from shiftadd.nn.base import LayerModule
from shiftadd.ops import spatial_shift as S
from shiftadd.ops.spatial_shift import IntOrTuple
from shiftadd.utils import as_tuple, replace_module


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(int(v) for v in shape))


def _out_shape(shape: Sequence[int], stride: Tuple[int, ...], channels_last: bool) -> List[int]:
    shape = list(shape)
    dim = len(stride)
    axes = range(1, dim + 1) if channels_last else range(2, dim + 2)
    for a, s in zip(axes, stride):
        shape[a] = (shape[a] - 1) // s + 1
    return shape


class SpatialShift(LayerModule):
    """Grouped shift of Wu et al. (CVPR 2018): zero FLOPs, zero parameters.

    Channels are split into ``prod(kernel_size)`` groups, one direction of the k x k neighbourhood
    each (offsets times ``dilation``); the remaining ``C mod k^dim`` channels are not shifted.
    ``offsets`` (a ``(C, dim)`` integer tensor) overrides the grouped assignment. ``stride``
    subsamples the output. Input ``(N, C, *spatial)``, or ``(N, *spatial, C)`` with
    ``channels_last=True``; channels_last memory format is kept.
    """

    def __init__(self, channels: int, kernel_size: IntOrTuple = 3, dilation: IntOrTuple = 1, stride: IntOrTuple = 1,
                 dim: int = 2, channels_last: bool = False, offsets: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        if dim not in (1, 2, 3):
            raise ValueError(f"dim must be 1, 2 or 3, got {dim!r}")
        self.channels, self.dim, self.channels_last = channels, dim, channels_last
        self.kernel_size = as_tuple(kernel_size, dim, "kernel_size")
        self.dilation = as_tuple(dilation, dim, "dilation")
        self.stride = as_tuple(stride, dim, "stride")
        if any(s < 1 for s in self.stride):
            raise ValueError(f"stride must be positive, got {stride!r}")
        if offsets is None:
            offsets = S.grouped_shift_offsets(channels, self.kernel_size, self.dilation, dim)
        else:
            offsets = torch.as_tensor(offsets)
            S._offsets_list(offsets, channels, dim)  # validates shape and integrality
            offsets = offsets.detach().to(torch.long).clone()
        self.register_buffer("offsets", offsets)
        self._offs = S._offsets_list(offsets, channels, dim)

    def _load_from_state_dict(self, *args, **kwargs):  # keep the cached python offsets in sync
        super()._load_from_state_dict(*args, **kwargs)
        self._offs = S._offsets_list(self.offsets, self.channels, self.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cdim, sdims = S._layout(x, self.dim, self.channels_last)
        if x.shape[cdim] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {x.shape[cdim]} (input shape {tuple(x.shape)})")
        return S._ShiftFn.apply(x, self._offs, self.stride, cdim, sdims)

    def num_shifted(self) -> int:
        """Number of channels with a non-zero offset."""
        return sum(1 for o in self._offs if any(o))

    def op_counts(self, input_shape: Sequence[int]) -> Dict[str, int]:
        """One forward pass: every output element is written once (a copy or a zero), no arithmetic."""
        return {"moves": _numel(_out_shape(input_shape, self.stride, self.channels_last)), "mults": 0, "adds": 0}

    def extra_repr(self) -> str:
        return (f"{self.channels}, kernel_size={self.kernel_size}, dilation={self.dilation}, stride={self.stride}"
                + (", channels_last=True" if self.channels_last else ""))


class SpatialShift1d(SpatialShift):
    """:class:`SpatialShift` for (N, C, L) sequences."""

    def __init__(self, channels: int, kernel_size: IntOrTuple = 3, dilation: IntOrTuple = 1, stride: IntOrTuple = 1,
                 channels_last: bool = False, offsets: Optional[torch.Tensor] = None) -> None:
        super().__init__(channels, kernel_size, dilation, stride, 1, channels_last, offsets)


class SpatialShift2d(SpatialShift):
    """:class:`SpatialShift` for (N, C, H, W) maps."""

    def __init__(self, channels: int, kernel_size: IntOrTuple = 3, dilation: IntOrTuple = 1, stride: IntOrTuple = 1,
                 channels_last: bool = False, offsets: Optional[torch.Tensor] = None) -> None:
        super().__init__(channels, kernel_size, dilation, stride, 2, channels_last, offsets)


class _LearnableShift(LayerModule):
    def __init__(self, channels: int, dim: int, stride: IntOrTuple, channels_last: bool, normalize_grad: bool,
                 init_range: float) -> None:
        super().__init__()
        if dim not in (1, 2, 3):
            raise ValueError(f"dim must be 1, 2 or 3, got {dim!r}")
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        if init_range < 0:
            raise ValueError(f"init_range must be >= 0, got {init_range}")
        self.channels, self.dim, self.channels_last = channels, dim, channels_last
        self.stride = as_tuple(stride, dim, "stride")
        if any(s < 1 for s in self.stride):
            raise ValueError(f"stride must be positive, got {stride!r}")
        self.normalize_grad = normalize_grad
        self.init_range = init_range
        self.shift = nn.Parameter(torch.empty(channels, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Shifts drawn uniformly from [-init_range, init_range]."""
        nn.init.uniform_(self.shift, -self.init_range, self.init_range)

    def _check(self, x: torch.Tensor) -> None:
        cdim, _ = S._layout(x, self.dim, self.channels_last)
        if x.shape[cdim] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {x.shape[cdim]} (input shape {tuple(x.shape)})")

    def integer_offsets(self) -> torch.Tensor:
        """The shifts rounded to integers (what a sparse shift applies in the forward pass)."""
        return torch.round(self.shift.detach()).to(torch.long)

    def extra_repr(self) -> str:
        return (f"{self.channels}, dim={self.dim}, stride={self.stride}, normalize_grad={self.normalize_grad}"
                + (", channels_last=True" if self.channels_last else ""))


class ActiveShift(_LearnableShift):
    """Active shift layer (Jeon & Kim, 2018): a learnable real shift per channel, bilinear interpolation.

    ``normalize_grad=True`` rescales each channel's shift gradient to unit norm (the ASL option).
    Costs 2^dim multiplications per output element; :meth:`to_fixed` rounds the shifts into an
    integer :class:`SpatialShift` (a different function unless the shifts are integers).
    """

    def __init__(self, channels: int, dim: int = 2, stride: IntOrTuple = 1, channels_last: bool = False,
                 normalize_grad: bool = False, init_range: float = 1.0) -> None:
        super().__init__(channels, dim, stride, channels_last, normalize_grad, init_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return S.active_shift(x, self.shift, self.stride, self.channels_last, self.normalize_grad)

    def to_fixed(self) -> SpatialShift:
        """An integer :class:`SpatialShift` with the rounded shifts."""
        return SpatialShift(self.channels, stride=self.stride, dim=self.dim, channels_last=self.channels_last,
                            offsets=self.integer_offsets())

    def op_counts(self, input_shape: Sequence[int]) -> Dict[str, int]:
        """Interpolation: 2^dim products and 2^dim - 1 sums per output element, 2^dim reads."""
        n = _numel(_out_shape(input_shape, self.stride, self.channels_last))
        k = 2 ** self.dim
        return {"moves": k * n, "mults": k * n, "adds": (k - 1) * n}


class ActiveShift1d(ActiveShift):
    """:class:`ActiveShift` for (N, C, L) sequences."""

    def __init__(self, channels: int, stride: IntOrTuple = 1, channels_last: bool = False,
                 normalize_grad: bool = False, init_range: float = 1.0) -> None:
        super().__init__(channels, 1, stride, channels_last, normalize_grad, init_range)


class ActiveShift2d(ActiveShift):
    """:class:`ActiveShift` for (N, C, H, W) maps."""

    def __init__(self, channels: int, stride: IntOrTuple = 1, channels_last: bool = False,
                 normalize_grad: bool = False, init_range: float = 1.0) -> None:
        super().__init__(channels, 2, stride, channels_last, normalize_grad, init_range)


class SparseShift(_LearnableShift):
    """Sparse shift layer (Chen et al., CVPR 2019): integer shifts forward, interpolation gradient backward.

    ``l1`` is the weight lambda of this layer's penalty ``lambda * sum_c (|a_c| + |b_c|)``
    (:meth:`penalty`, summed over a model by :func:`sparse_shift_penalty`); the paper's CIFAR
    setting is 5e-4. A channel whose rounded shift is zero costs nothing at inference.
    """

    def __init__(self, channels: int, dim: int = 2, stride: IntOrTuple = 1, channels_last: bool = False,
                 l1: float = 5e-4, normalize_grad: bool = False, init_range: float = 1.0) -> None:
        if l1 < 0:
            raise ValueError(f"l1 must be >= 0, got {l1}")
        super().__init__(channels, dim, stride, channels_last, normalize_grad, init_range)
        self.l1 = float(l1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return S.sparse_shift(x, self.shift, self.stride, self.channels_last, self.normalize_grad)

    def penalty(self) -> torch.Tensor:
        """``l1 * sum |shift|`` for this layer (differentiable)."""
        return self.l1 * S.shift_l1(self.shift)

    def num_unshifted(self) -> int:
        """Channels whose rounded shift is zero in every direction."""
        return int((self.integer_offsets() == 0).all(dim=1).sum())

    def sparsity(self) -> float:
        """Fraction of unshifted channels."""
        return self.num_unshifted() / self.channels

    def is_identity(self) -> bool:
        """True when every rounded shift is zero and the stride is one: the layer does nothing."""
        return self.num_unshifted() == self.channels and all(s == 1 for s in self.stride)

    def to_fixed(self) -> SpatialShift:
        """An integer :class:`SpatialShift` with the rounded shifts (same forward output)."""
        return SpatialShift(self.channels, stride=self.stride, dim=self.dim, channels_last=self.channels_last,
                            offsets=self.integer_offsets())

    def op_counts(self, input_shape: Sequence[int]) -> Dict[str, int]:
        """Inference cost: only the shifted channels are moved (an unshifted channel stays in place)."""
        out = _out_shape(input_shape, self.stride, self.channels_last)
        per_channel = _numel(out) // self.channels
        moved = self.channels - self.num_unshifted() if all(s == 1 for s in self.stride) else self.channels
        return {"moves": moved * per_channel, "mults": 0, "adds": 0}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", l1={self.l1:g}"


class SparseShift1d(SparseShift):
    """:class:`SparseShift` for (N, C, L) sequences."""

    def __init__(self, channels: int, stride: IntOrTuple = 1, channels_last: bool = False, l1: float = 5e-4,
                 normalize_grad: bool = False, init_range: float = 1.0) -> None:
        super().__init__(channels, 1, stride, channels_last, l1, normalize_grad, init_range)


class SparseShift2d(SparseShift):
    """:class:`SparseShift` for (N, C, H, W) maps."""

    def __init__(self, channels: int, stride: IntOrTuple = 1, channels_last: bool = False, l1: float = 5e-4,
                 normalize_grad: bool = False, init_range: float = 1.0) -> None:
        super().__init__(channels, 2, stride, channels_last, l1, normalize_grad, init_range)


# ---------------------------------------------------------------------------------------------
# sparse-shift model helpers
# ---------------------------------------------------------------------------------------------
def sparse_shift_penalty(model: nn.Module, l1: Optional[float] = None) -> torch.Tensor:
    """Sum of the sparse-shift penalties of ``model``: ``lambda * sum(|a| + |b|)`` over all layers.

    ``l1`` overrides every layer's own ``l1``. Add it to the task loss before ``backward()``.
    """
    total: Optional[torch.Tensor] = None
    for m in model.modules():
        if isinstance(m, SparseShift):
            p = m.penalty() if l1 is None else l1 * S.shift_l1(m.shift)
            total = p if total is None else total + p
    if total is None:
        p0 = next(model.parameters(), None)
        return torch.zeros((), device=p0.device if p0 is not None else None)
    return total


def shift_sparsity_report(model: nn.Module) -> List[Dict[str, object]]:
    """Per sparse-shift layer: name, channels, unshifted channels, sparsity (unshifted / channels)."""
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, SparseShift):
            u = m.num_unshifted()
            rows.append({"layer": name, "channels": m.channels, "unshifted": u, "sparsity": u / m.channels})
    return rows


def total_shift_sparsity(model: nn.Module) -> float:
    """Unshifted channels over all sparse-shift channels of ``model`` (0.0 when there are none)."""
    rows = shift_sparsity_report(model)
    total = sum(r["channels"] for r in rows)  # type: ignore[misc]
    return sum(r["unshifted"] for r in rows) / total if total else 0.0  # type: ignore[misc]


def remove_zero_shift_layers(model: nn.Module) -> List[str]:
    """Replace every sparse-shift layer whose rounded shifts are all zero (stride 1) by ``nn.Identity``.

    Returns the names of the removed layers. The forward output of the model is unchanged.
    """
    removed = []
    for name, m in list(model.named_modules()):
        if isinstance(m, SparseShift) and m.is_identity():
            replace_module(model, name, nn.Identity())
            removed.append(name)
    return removed


def freeze_sparse_shifts(model: nn.Module) -> List[str]:
    """Replace every sparse-shift layer by the equivalent integer :class:`SpatialShift` (for inference)."""
    done = []
    for name, m in list(model.named_modules()):
        if isinstance(m, SparseShift):
            replace_module(model, name, m.to_fixed().to(m.shift.device))
            done.append(name)
    return done


# ---------------------------------------------------------------------------------------------
# AddressNet primitives
# ---------------------------------------------------------------------------------------------
class ChannelShift(LayerModule):
    """Cyclic channel shift (AddressNet), a cheap replacement for channel shuffle: ``y[:, c] = x[:, (c+s) mod C]``."""

    def __init__(self, shift: int, channel_dim: int = 1) -> None:
        super().__init__()
        self.shift, self.channel_dim = int(shift), channel_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return S.channel_shift(x, self.shift, self.channel_dim)

    def op_counts(self, input_shape: Sequence[int]) -> Dict[str, int]:
        """Every element copied once (two block copies)."""
        return {"moves": _numel(input_shape), "mults": 0, "adds": 0}

    def extra_repr(self) -> str:
        return f"shift={self.shift}"


class AddressShift(LayerModule):
    """Address shift (AddressNet): channel groups moved one pixel left/right/up/down as offset views.

    ``directions`` gives one direction (or ``None`` for unshifted) per group of consecutive
    channels. The input is copied once into an :class:`~shiftadd.ops.spatial_shift.AddressBuffer`
    (skipped when the input already is one); the groups are then views of that buffer. With
    ``return_groups=True`` the list of views is returned (for a grouped 1x1 layer that reads
    each group separately: no further copy); otherwise they are concatenated (one more copy).
    Border behaviour: see :class:`~shiftadd.ops.spatial_shift.AddressBuffer`.
    """

    def __init__(self, directions: Sequence[Optional[str]] = ("left", "up", "right", "down"),
                 channels_last: bool = False, return_groups: bool = False) -> None:
        super().__init__()
        for d in directions:
            if d is not None and d not in S.ADDRESS_DIRECTIONS:
                raise ValueError(f"unknown direction {d!r}; choose from {S.ADDRESS_DIRECTIONS} or None")
        if not directions:
            raise ValueError("directions must not be empty")
        self.directions = tuple(directions)
        self.channels_last, self.return_groups = channels_last, return_groups

    def forward(self, x):
        views = S.address_shift_groups(x, self.directions, self.channels_last)
        if self.return_groups:
            return views
        return torch.cat(views, dim=-1 if self.channels_last else 1)

    def op_counts(self, input_shape: Sequence[int]) -> Dict[str, int]:
        """One copy into the padded buffer (+ one for the concatenation unless groups are returned)."""
        n = _numel(input_shape)
        return {"moves": n if self.return_groups else 2 * n, "mults": 0, "adds": 0}

    def extra_repr(self) -> str:
        return f"directions={self.directions}, return_groups={self.return_groups}"


class ShortcutShift(LayerModule):
    """Shortcut shift (AddressNet): ``[shortcut, branch]`` concatenated into one preallocated buffer.

    ``reuse_buffer=True`` keeps the buffer between calls when no gradient is recorded (inference);
    the returned tensor is then overwritten by the next call.
    """

    def __init__(self, dim: int = 1, reuse_buffer: bool = False) -> None:
        super().__init__()
        self.dim, self.reuse_buffer = dim, reuse_buffer
        self._buffer: Optional[torch.Tensor] = None

    def forward(self, *parts: torch.Tensor) -> torch.Tensor:
        out = None
        if self.reuse_buffer and not torch.is_grad_enabled():
            shape = list(parts[0].shape)
            shape[self.dim] = sum(p.shape[self.dim] for p in parts)
            b = self._buffer
            if b is None or list(b.shape) != shape or b.dtype != parts[0].dtype or b.device != parts[0].device:
                b = self._buffer = parts[0].new_empty(shape)
            out = b
        return S.shortcut_shift(parts, out=out, dim=self.dim)

    def op_counts(self, input_shapes: Sequence[Sequence[int]]) -> Dict[str, int]:
        """Every part written once into the buffer."""
        return {"moves": sum(_numel(s) for s in input_shapes), "mults": 0, "adds": 0}


#: Spatial-shift module classes, for isinstance checks (e.g. by the energy model).
SPATIAL_SHIFT_TYPES = (SpatialShift, ActiveShift, SparseShift, ChannelShift, AddressShift, ShortcutShift)

__all__ = [
    "SpatialShift", "SpatialShift1d", "SpatialShift2d",
    "ActiveShift", "ActiveShift1d", "ActiveShift2d",
    "SparseShift", "SparseShift1d", "SparseShift2d",
    "ChannelShift", "AddressShift", "ShortcutShift", "SPATIAL_SHIFT_TYPES",
    "sparse_shift_penalty", "shift_sparsity_report", "total_shift_sparsity",
    "remove_zero_shift_layers", "freeze_sparse_shifts",
]
