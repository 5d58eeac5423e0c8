"""Spatial shift operators: feature maps are moved in memory instead of being convolved.

* Grouped shift (Wu et al., "Shift: A Zero FLOP, Zero Parameter Alternative to Spatial
  Convolutions", CVPR 2018), Eq. 2: ``G[n, c, p] = F[n, c, p*s + d_c]`` with a fixed integer
  offset ``d_c`` per channel and zero fill outside the map. The adjoint (the gradient) moves
  the data back by ``-d_c``. Implemented by slice copies (after gathering the channels into
  offset order when their offsets are scattered): memory movement only, no multiplication,
  no im2col.
* Active shift (Jeon & Kim, "Constructing Fast Network through Deconstruction of
  Convolution", NeurIPS 2018): real-valued per-channel shifts applied by bilinear
  (n-linear) interpolation, with exact gradients w.r.t. input and shift, and the per-channel
  shift-gradient normalisation ``g_c <- g_c / ||g_c||_2`` of the reference implementation.
* Sparse shift (Chen et al., "All You Need is a Few Shifts", CVPR 2019): quantization-aware
  shift, integer shifts ``round(theta)`` in the forward pass (pure memory movement) and the
  active-shift interpolation gradient w.r.t. the real-valued ``theta`` in the backward pass.
* AddressNet primitives (Zhong et al., "Shift-based Primitives for Efficient Convolutional
  Neural Networks", WACV 2019): channel shift, address shift (offset views of a padded
  buffer), shortcut shift (concatenation into one preallocated buffer).

Conventions. Offsets/shifts are a ``(C, dim)`` tensor, column ``k`` along spatial axis ``k``
(for 2-D: ``[:, 0]`` rows/"dy", ``[:, 1]`` columns/"dx"); output position ``p`` *reads* input
position ``p*stride + d`` (so ``d = (0, +1)`` moves the picture one pixel to the left). Tensors
are ``(N, C, *spatial)``, or ``(N, *spatial, C)`` with ``channels_last=True``; any memory
format is accepted and kept (a ``torch.channels_last`` input gives a ``channels_last`` output).
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from shiftadd.utils import IntOrTuple, as_tuple

Offsets = Union[torch.Tensor, Sequence[Sequence[int]]]

#: Largest number of runs of consecutive channels with one offset moved by direct slice copies; above it the
#: channels are first gathered into offset order (one slice copy per distinct offset).
MAX_SLICE_RUNS = 24

ADDRESS_DIRECTIONS = ("left", "right", "up", "down")


# ---------------------------------------------------------------------------------------------
# argument handling
# ---------------------------------------------------------------------------------------------
def _layout(x: torch.Tensor, dim: int, channels_last: bool) -> Tuple[int, Tuple[int, ...]]:
    """(channel axis, spatial axes) of ``x``, after checking its rank."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a tensor, got {type(x).__name__}")
    if x.dim() != dim + 2:
        want = "(N, *spatial, C)" if channels_last else "(N, C, *spatial)"
        raise ValueError(f"expected a {dim + 2}-D input {want} for a {dim}-D shift, got shape {tuple(x.shape)}")
    if channels_last:
        return x.dim() - 1, tuple(range(1, dim + 1))
    return 1, tuple(range(2, dim + 2))


def _offsets_list(offsets: Offsets, channels: int, dim: int) -> List[Tuple[int, ...]]:
    if isinstance(offsets, torch.Tensor):
        if offsets.is_floating_point() and not torch.equal(offsets, offsets.round()):
            raise ValueError("integer shift offsets expected; use active_shift/sparse_shift for real-valued shifts")
        rows = offsets.detach().to("cpu", torch.long).tolist()
    else:
        rows = [list(r) for r in offsets]
    if len(rows) != channels or any(len(r) != dim for r in rows):
        raise ValueError(f"offsets must have shape ({channels}, {dim}) for {channels} channels, "
                         f"got {tuple(offsets.shape) if isinstance(offsets, torch.Tensor) else (len(rows), '?')}")
    return [tuple(int(a) for a in r) for r in rows]


def _runs(offs: List[Tuple[int, ...]]) -> List[Tuple[int, int, Tuple[int, ...]]]:
    """Maximal runs [c0, c1) of consecutive channels sharing one offset."""
    runs: List[Tuple[int, int, Tuple[int, ...]]] = []
    start = 0
    for c in range(1, len(offs) + 1):
        if c == len(offs) or offs[c] != offs[start]:
            runs.append((start, c, offs[start]))
            start = c
    return runs


def _out_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


def _valid(size_in: int, size_out: int, d: int, s: int) -> Tuple[int, int]:
    """Output index range [lo, hi) whose source ``i*s + d`` lies inside [0, size_in)."""
    lo = max(0, -(d // s))  # smallest i >= 0 with i*s + d >= 0, i.e. ceil(-d / s)
    hi = min(size_out, (size_in - 1 - d) // s + 1)  # one past the largest i with i*s + d <= size_in - 1
    return lo, max(lo, hi)


def _empty_like_layout(x: torch.Tensor, shape: Sequence[int], zero: bool = False) -> torch.Tensor:
    """New tensor of ``shape`` with the memory format of ``x`` (channels_last kept when present)."""
    fmt = torch.contiguous_format
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        fmt = torch.channels_last
    elif x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        fmt = torch.channels_last_3d
    out = torch.empty(tuple(shape), dtype=x.dtype, device=x.device, memory_format=fmt)
    return out.zero_() if zero else out


# ---------------------------------------------------------------------------------------------
# integer shift: gather (forward) and its adjoint scatter (backward), both pure data movement
# ---------------------------------------------------------------------------------------------
def _gather_slices(x: torch.Tensor, runs, stride, cdim: int, sdims: Tuple[int, ...]) -> torch.Tensor:
    in_sizes = [x.shape[a] for a in sdims]
    out_sizes = [_out_size(n, s) for n, s in zip(in_sizes, stride)]
    shape = list(x.shape)
    for a, n in zip(sdims, out_sizes):
        shape[a] = n
    out = _empty_like_layout(x, shape)
    full = [slice(None)] * x.dim()
    for c0, c1, d in runs:
        o_idx, i_idx = list(full), list(full)
        o_idx[cdim] = i_idx[cdim] = slice(c0, c1)
        box = []
        for a, n_in, n_out, dk, s in zip(sdims, in_sizes, out_sizes, d, stride):
            lo, hi = _valid(n_in, n_out, dk, s)
            box.append((lo, hi))
            o_idx[a] = slice(lo, hi)
            i_idx[a] = slice(lo * s + dk, (hi - 1) * s + dk + 1, s) if hi > lo else slice(0, 0)
        if all(hi > lo for lo, hi in box):
            out[tuple(o_idx)].copy_(x[tuple(i_idx)])
        # zero fill the uncovered border of this run: along each axis, the strips before/after the box
        z = list(full)
        z[cdim] = slice(c0, c1)
        for (a, n_out), (lo, hi) in zip(zip(sdims, out_sizes), box):
            if hi <= lo:
                z[a] = slice(None)
                out[tuple(z)].zero_()
                break
            if lo > 0:
                z[a] = slice(0, lo)
                out[tuple(z)].zero_()
            if hi < n_out:
                z[a] = slice(hi, n_out)
                out[tuple(z)].zero_()
            z[a] = slice(lo, hi)
    return out


def _scatter_slices(g: torch.Tensor, runs, stride, cdim: int, sdims: Tuple[int, ...],
                    in_sizes: Sequence[int]) -> torch.Tensor:
    out_sizes = [g.shape[a] for a in sdims]
    shape = list(g.shape)
    for a, n in zip(sdims, in_sizes):
        shape[a] = n
    out = _empty_like_layout(g, shape, zero=True)
    full = [slice(None)] * g.dim()
    for c0, c1, d in runs:
        o_idx, i_idx = list(full), list(full)
        o_idx[cdim] = i_idx[cdim] = slice(c0, c1)
        ok = True
        for a, n_in, n_out, dk, s in zip(sdims, in_sizes, out_sizes, d, stride):
            lo, hi = _valid(n_in, n_out, dk, s)
            ok = ok and hi > lo
            i_idx[a] = slice(lo, hi)
            o_idx[a] = slice(lo * s + dk, (hi - 1) * s + dk + 1, s) if hi > lo else slice(0, 0)
        if ok:
            out[tuple(o_idx)].copy_(g[tuple(i_idx)])
    return out


def _sorted_plan(offs):
    """Channel permutation grouping equal offsets together, and the runs of the permuted channels."""
    perm = sorted(range(len(offs)), key=lambda c: offs[c])
    return perm, _runs([offs[c] for c in perm])


def _move_sorted(x: torch.Tensor, offs, stride, cdim: int, sdims, adjoint: bool, in_sizes=None) -> torch.Tensor:
    """Any per-channel offsets: whole channel planes gathered into offset order, one slice copy per
    distinct offset, then written back to their channels (three passes of plane-sized copies)."""
    if cdim != 1 or not x.is_contiguous():
        # channels not outermost in memory: work on a contiguous (N, C, *spatial) copy (one bulk transpose),
        # where a channel is a whole plane, and give the result the layout of the input
        xc = x.movedim(cdim, 1).contiguous()
        sd = tuple(range(2, x.dim()))
        y = _move_sorted(xc, offs, stride, 1, sd, adjoint, in_sizes).movedim(1, cdim)
        fmt = torch.contiguous_format
        if x.dim() == 4 and cdim == 1 and x.is_contiguous(memory_format=torch.channels_last):
            fmt = torch.channels_last
        elif x.dim() == 5 and cdim == 1 and x.is_contiguous(memory_format=torch.channels_last_3d):
            fmt = torch.channels_last_3d
        return y.contiguous(memory_format=fmt)
    perm, runs = _sorted_plan(offs)
    idx = torch.tensor(perm, dtype=torch.long, device=x.device)
    N, C = x.shape[:2]
    xs = x.view(N, C, -1).index_select(1, idx).view(x.shape)  # whole planes: row copies
    if adjoint:
        ys = _scatter_slices(xs, runs, stride, cdim, sdims, in_sizes)
    else:
        ys = _gather_slices(xs, runs, stride, cdim, sdims)
    inv = torch.empty_like(idx)
    inv[idx] = torch.arange(C, device=idx.device)
    return ys.view(N, C, -1).index_select(1, inv).view(ys.shape)  # back to channel order (faster than index_copy_)


def _move(x: torch.Tensor, offs, stride, cdim, sdims, adjoint: bool, in_sizes=None) -> torch.Tensor:
    if adjoint and all(s == 1 for s in stride):  # with stride 1 the adjoint is the opposite shift
        offs, adjoint = [tuple(-v for v in o) for o in offs], False
    runs = _runs(offs)
    if len(runs) <= MAX_SLICE_RUNS:
        if adjoint:
            return _scatter_slices(x, runs, stride, cdim, sdims, in_sizes)
        return _gather_slices(x, runs, stride, cdim, sdims)
    return _move_sorted(x, offs, stride, cdim, sdims, adjoint, in_sizes)


def _batched_rule(fn: Callable[..., torch.Tensor], info: Any, in_dims: Sequence[Optional[int]],
                  args: Sequence[Any]) -> Tuple[torch.Tensor, int]:
    """``torch.func.vmap`` rule of the shift functions (whose first argument is an (N, ...) map).

    Only the map batched: the vmapped dimension is folded into N (one call). A batched shift
    parameter (e.g. ensembles through ``functional_call``): one call per sample.
    """
    dims = [d if isinstance(d, int) else None for d in in_dims]  # non-tensor arguments: None or a pytree of None
    if dims[0] is not None and all(d is None for d in dims[1:]):
        x = args[0].movedim(dims[0], 0)
        y = fn(x.flatten(0, 1), *args[1:])
        return y.unflatten(0, x.shape[:2]), 0
    outs = [fn(*[a if d is None else a.select(d, i) for a, d in zip(args, dims)]) for i in range(info.batch_size)]
    return torch.stack(outs), 0


class _ShiftFn(torch.autograd.Function):
    """Forward: gather by the offsets. Backward: the adjoint (the opposite shift)."""

    @staticmethod
    def forward(x, offs, stride, cdim, sdims):  # type: ignore[override]
        return _move(x, offs, stride, cdim, sdims, adjoint=False)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        x, offs, stride, cdim, sdims = inputs
        ctx.args = (offs, stride, cdim, sdims, [x.shape[a] for a in sdims])

    @staticmethod
    def vmap(info, in_dims, *args):  # type: ignore[override]
        return _batched_rule(_ShiftFn.apply, info, in_dims, args)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        offs, stride, cdim, sdims, in_sizes = ctx.args
        return _ShiftAdjointFn.apply(g, offs, stride, cdim, sdims, in_sizes), None, None, None, None


class _ShiftAdjointFn(torch.autograd.Function):
    """The adjoint shift (scatter back); its own gradient is the forward shift (double backward)."""

    @staticmethod
    def forward(g, offs, stride, cdim, sdims, in_sizes):  # type: ignore[override]
        return _move(g, offs, stride, cdim, sdims, adjoint=True, in_sizes=in_sizes)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.args = inputs[1:5]

    @staticmethod
    def vmap(info, in_dims, *args):  # type: ignore[override]
        return _batched_rule(_ShiftAdjointFn.apply, info, in_dims, args)

    @staticmethod
    def backward(ctx, gg):  # type: ignore[override]
        offs, stride, cdim, sdims = ctx.args
        return _ShiftFn.apply(gg, offs, stride, cdim, sdims), None, None, None, None, None


def grouped_shift_offsets(channels: int, kernel_size: IntOrTuple = 3, dilation: IntOrTuple = 1,
                          dim: int = 2) -> torch.Tensor:
    """Offsets of the grouped shift of Wu et al. (Sec. 3.1): a ``(C, dim)`` long tensor.

    The channels are split into ``prod(k)`` groups of ``C // prod(k)`` consecutive channels, group
    ``g`` taking the ``g``-th position of the k x k neighbourhood in raster order (offsets
    ``(i - k//2) * dilation``); the ``C mod prod(k)`` remaining channels stay unshifted.
    """
    k = as_tuple(kernel_size, dim, "kernel_size")
    dil = as_tuple(dilation, dim, "dilation")
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    if any(v < 1 or v % 2 == 0 for v in k):
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size!r}")
    if any(v < 1 for v in dil):
        raise ValueError(f"dilation must be positive, got {dilation!r}")
    positions = list(itertools.product(*[range(-(v // 2), v // 2 + 1) for v in k]))
    per_group = channels // len(positions)
    out = torch.zeros(channels, dim, dtype=torch.long)
    for g, pos in enumerate(positions):
        out[g * per_group:(g + 1) * per_group] = torch.tensor([p * dl for p, dl in zip(pos, dil)])
    return out


def spatial_shift(x: torch.Tensor, offsets: Offsets, stride: IntOrTuple = 1,
                  channels_last: bool = False) -> torch.Tensor:
    """Shift every channel of ``x`` by its integer offset: ``y[n, c, p] = x[n, c, p*stride + d_c]``, zero fill.

    ``offsets`` is ``(C, dim)`` with ``dim = x.dim() - 2`` (1-D, 2-D and 3-D maps). Only memory is
    moved; the gradient is the opposite shift (Wu et al.).
    """
    dim = x.dim() - 2
    if dim < 1:
        raise ValueError(f"expected a (N, C, *spatial) input with a spatial axis, got shape {tuple(x.shape)}")
    cdim, sdims = _layout(x, dim, channels_last)
    st = as_tuple(stride, dim, "stride")
    if any(s < 1 for s in st):
        raise ValueError(f"stride must be positive, got {stride!r}")
    offs = _offsets_list(offsets, x.shape[cdim], dim)
    return _ShiftFn.apply(x, offs, st, cdim, sdims)


# ---------------------------------------------------------------------------------------------
# active shift (bilinear) and sparse (quantization-aware) shift
# ---------------------------------------------------------------------------------------------
class _NormalizeShiftGrad(torch.autograd.Function):
    """Identity; the backward rescales each channel's shift gradient to unit L2 norm (ASL ``normalize``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(shift):  # type: ignore[override]
        return shift.view_as(shift)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        pass

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        norm = g.norm(dim=1, keepdim=True)
        return torch.where(norm > 0, g / norm.clamp_min(torch.finfo(g.dtype).tiny), g)


def normalize_shift_grad(shift: torch.Tensor) -> torch.Tensor:
    """``shift`` unchanged; its gradient ``g_c`` (one row per channel) becomes ``g_c / ||g_c||_2``."""
    return _NormalizeShiftGrad.apply(shift)


def _check_shift(x: torch.Tensor, shift: torch.Tensor, channels_last: bool) -> Tuple[int, Tuple[int, ...], int]:
    dim = x.dim() - 2
    if dim < 1:
        raise ValueError(f"expected a (N, C, *spatial) input, got shape {tuple(x.shape)}")
    cdim, sdims = _layout(x, dim, channels_last)
    if not isinstance(shift, torch.Tensor) or not shift.is_floating_point():
        raise TypeError("shift must be a floating-point tensor of shape (C, dim)")
    if tuple(shift.shape) != (x.shape[cdim], dim):
        raise ValueError(f"shift must have shape ({x.shape[cdim]}, {dim}), got {tuple(shift.shape)}")
    return cdim, sdims, dim


def _channel_view(w: torch.Tensor, x: torch.Tensor, cdim: int) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[cdim] = -1
    return w.view(shape)


def _corner_weights(shift: torch.Tensor, dtype: torch.dtype):
    """Corners b in {0,1}^dim, the per-channel n-linear weights prod_k w(b_k, t_k), and floor(shift) as ints."""
    dim = shift.shape[1]
    base = torch.floor(shift)
    frac = (shift - base).to(dtype)
    corners = list(itertools.product((0, 1), repeat=dim))
    weights = []
    for corner in corners:
        w = torch.ones_like(frac[:, 0])
        for k, ck in enumerate(corner):
            w = w * (frac[:, k] if ck else 1 - frac[:, k])
        weights.append(w)
    return corners, weights, base.to(torch.long).tolist()


def _high_pad(x: torch.Tensor, sdims) -> torch.Tensor:
    """``x`` with one zero appended along every spatial axis."""
    pad: List[int] = []
    for a in reversed(range(x.dim())):
        pad += [0, 1] if a in sdims else [0, 0]
    return F.pad(x, pad)


def _corner(t: torch.Tensor, corner, sizes, sdims) -> torch.Tensor:
    """The window ``t[..., b_k : b_k + size_k, ...]`` (a view)."""
    idx = [slice(None)] * t.dim()
    for a, b, n in zip(sdims, corner, sizes):
        idx[a] = slice(b, b + n)
    return t[tuple(idx)]


def _floor_moved(x: torch.Tensor, base, cdim: int, sdims) -> torch.Tensor:
    """For stride 1: ``M`` with ``M[q] = x[q + floor(shift)]`` on the map grown by one at the high side,
    so that the corner maps ``x`` moved by ``floor(shift) + b`` are the windows ``M[b : b + size]``."""
    return _move(_high_pad(x, sdims), base, (1,) * len(sdims), cdim, sdims, adjoint=False)


class _ActiveShiftFn(torch.autograd.Function):
    """Bilinear (n-linear) shift; backward: weighted opposite shifts for x, Eq. 4 of ASL for the shift."""

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        x, shift, stride, cdim, sdims = inputs
        ctx.save_for_backward(x, shift)
        ctx.args = (stride, cdim, sdims, [x.shape[a] for a in sdims])

    @staticmethod
    def vmap(info, in_dims, *args):  # type: ignore[override]
        return _batched_rule(_ActiveShiftFn.apply, info, in_dims, args)

    @staticmethod
    def forward(x, shift, stride, cdim, sdims):  # type: ignore[override]
        corners, weights, base = _corner_weights(shift.detach(), x.dtype)
        if all(s == 1 for s in stride):  # one move, then the corners are windows
            sizes = [x.shape[a] for a in sdims]
            M = _floor_moved(x, [tuple(r) for r in base], cdim, sdims)
            out = _corner(M, corners[0], sizes, sdims) * _channel_view(weights[0], x, cdim)
            for corner, w in zip(corners[1:], weights[1:]):
                out.addcmul_(_corner(M, corner, sizes, sdims), _channel_view(w, x, cdim))
            return out
        keep = [i for i, w in enumerate(weights) if bool((w != 0).any())]
        offs_list = [[tuple(b + c for b, c in zip(row, corners[i])) for row in base] for i in keep]
        out = None
        for i, moved in zip(keep, _gather_many(x, offs_list, stride, cdim, sdims)):
            moved.mul_(_channel_view(weights[i], moved, cdim))
            out = moved if out is None else out.add_(moved)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # type: ignore[override]
        x, shift = ctx.saved_tensors
        stride, cdim, sdims, in_sizes = ctx.args
        gx = gs = None
        if ctx.needs_input_grad[0] and all(s == 1 for s in stride):
            # gx[q] = sum_b w_b g[q - floor - b]: accumulate Z[r] = sum_b w_b g[r - b], then move Z by -floor
            corners, weights, base = _corner_weights(shift.detach(), g.dtype)
            Z = _high_pad(torch.zeros_like(g), sdims)
            for corner, w in zip(corners, weights):
                _corner(Z, corner, in_sizes, sdims).addcmul_(g, _channel_view(w, g, cdim))
            neg = [tuple(-v for v in r) for r in base]
            gx = _corner(_move(Z, neg, stride, cdim, sdims, adjoint=False), (0,) * len(sdims), in_sizes, sdims)
        elif ctx.needs_input_grad[0]:
            corners, weights, base = _corner_weights(shift.detach(), g.dtype)
            keep = [i for i, w in enumerate(weights) if bool((w != 0).any())]
            offs_list = [[tuple(b + c for b, c in zip(row, corners[i])) for row in base] for i in keep]
            if all(s == 1 for s in stride):  # adjoint of a stride-1 shift: the opposite shift
                moved_all = _gather_many(g, [[tuple(-v for v in o) for o in offs] for offs in offs_list],
                                         stride, cdim, sdims)
            else:
                moved_all = (_move(g, offs, stride, cdim, sdims, adjoint=True, in_sizes=in_sizes)
                             for offs in offs_list)
            for i, moved in zip(keep, moved_all):
                moved.mul_(_channel_view(weights[i], moved, cdim))
                gx = moved if gx is None else gx.add_(moved)
        if ctx.needs_input_grad[1]:
            gs = _interpolation_shift_grad(x, shift.detach(), g, stride, cdim, sdims)
        return gx, gs, None, None, None


def active_shift(x: torch.Tensor, shift: torch.Tensor, stride: IntOrTuple = 1, channels_last: bool = False,
                 normalize_grad: bool = False) -> torch.Tensor:
    """Active shift layer: ``y[n, c, p] = bilinear(x[n, c], p*stride + shift_c)``, zero outside the map.

    ``shift`` is a real ``(C, dim)`` tensor. ``y`` is the n-linear combination of the 2^dim integer
    shifts by ``floor(shift) + corner`` (ASL Eq. 3); the gradients are exact: w.r.t. ``x`` the
    weighted opposite shifts, w.r.t. ``shift`` the derivative of the weights (Eq. 4), one-sided
    (right) at integer shifts where the function has a kink. ``normalize_grad`` applies
    :func:`normalize_shift_grad`.
    """
    cdim, sdims, dim = _check_shift(x, shift, channels_last)
    st = as_tuple(stride, dim, "stride")
    if normalize_grad:
        shift = normalize_shift_grad(shift)
    return _ActiveShiftFn.apply(x, shift, st, cdim, sdims)


def _rounded_offsets(shift: torch.Tensor) -> List[Tuple[int, ...]]:
    return [tuple(int(v) for v in row) for row in torch.round(shift.detach()).to(torch.long).tolist()]


class _SparseShiftFn(torch.autograd.Function):
    """Quantization-aware shift: integer forward, active-shift (interpolation) gradient backward."""

    @staticmethod
    def forward(x, shift, stride, cdim, sdims, channels_last):  # type: ignore[override]
        return _move(x, _rounded_offsets(shift), stride, cdim, sdims, adjoint=False)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        x, shift, stride, cdim, sdims, channels_last = inputs
        ctx.save_for_backward(x, shift)
        ctx.args = (_rounded_offsets(shift), stride, cdim, sdims, channels_last, [x.shape[a] for a in sdims])

    @staticmethod
    def vmap(info, in_dims, *args):  # type: ignore[override]
        return _batched_rule(_SparseShiftFn.apply, info, in_dims, args)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, shift = ctx.saved_tensors
        offs, stride, cdim, sdims, channels_last, in_sizes = ctx.args
        gx = gs = None
        if ctx.needs_input_grad[0]:  # exact gradient of the forward (integer) shift: the opposite shift
            gx = _move(g, offs, stride, cdim, sdims, adjoint=True, in_sizes=in_sizes)
        if ctx.needs_input_grad[1]:  # Chen et al.: the interpolation (active-shift) gradient at the real shift
            gs = _interpolation_shift_grad(x, shift.detach(), g, stride, cdim, sdims)
        return gx, gs, None, None, None, None


def _gather_many(x: torch.Tensor, offs_list, stride, cdim: int, sdims):
    """``shift(x, offs)`` for each ``offs`` of ``offs_list``, lazily."""
    for offs in offs_list:
        yield _move(x, offs, stride, cdim, sdims, adjoint=False)


def _interpolation_shift_grad(x: torch.Tensor, shift: torch.Tensor, g: torch.Tensor, stride, cdim: int,
                              sdims) -> torch.Tensor:
    """d/dshift of sum(g * active_shift(x, shift)): the n-linear weights' derivatives times the corner maps.

    With frac t = shift - floor(shift) and corner maps M_b = x moved by floor(shift) + b (b in {0,1}^dim),
    d y / d t_k = sum_b (2 b_k - 1) prod_{j != k} w(b_j, t_j) M_b, w(1, t) = t, w(0, t) = 1 - t (ASL Eq. 4).
    """
    dim = shift.shape[1]
    base = torch.floor(shift)
    frac = (shift - base).to(g.dtype)
    base_l = base.to(torch.long).tolist()
    corners = list(itertools.product((0, 1), repeat=dim))
    offs_list = [[tuple(b + c for b, c in zip(row, corner)) for row in base_l] for corner in corners]
    red = [a for a in range(g.dim()) if a != cdim]
    if all(s == 1 for s in stride):
        sizes = [x.shape[a] for a in sdims]
        M = _floor_moved(x, [tuple(r) for r in base_l], cdim, sdims)
        prods = [(_corner(M, corner, sizes, sdims) * g).sum(dim=red) for corner in corners]
    else:
        prods = [(m * g).sum(dim=red) for m in _gather_many(x, offs_list, stride, cdim, sdims)]  # (C,) each
    cols = []  # out of place, so that the gradient also runs under torch.func.vmap (per-sample gradients)
    for k in range(dim):
        col = None
        for corner, p in zip(corners, prods):
            w = torch.full_like(p, 2.0 * corner[k] - 1.0)
            for j in range(dim):
                if j != k:
                    w = w * (frac[:, j] if corner[j] else 1 - frac[:, j])
            col = w * p if col is None else col + w * p
        cols.append(col)
    return torch.stack(cols, dim=1).to(shift.dtype)


def sparse_shift(x: torch.Tensor, shift: torch.Tensor, stride: IntOrTuple = 1, channels_last: bool = False,
                 normalize_grad: bool = False) -> torch.Tensor:
    """Sparse shift layer (Chen et al.): ``x`` moved by ``round(shift)`` (ties to even), zero fill.

    The gradient w.r.t. ``x`` is the opposite integer shift; the gradient w.r.t. ``shift`` is the
    active-shift (bilinear) gradient evaluated at the real-valued ``shift``.
    """
    cdim, sdims, dim = _check_shift(x, shift, channels_last)
    st = as_tuple(stride, dim, "stride")
    if normalize_grad:
        shift = normalize_shift_grad(shift)
    return _SparseShiftFn.apply(x, shift, st, cdim, sdims, channels_last)


def shift_l1(shift: torch.Tensor) -> torch.Tensor:
    """``sum_c sum_k |shift[c, k]|`` (for 2-D: sum |a| + |b|), the sparse-shift penalty before lambda."""
    return shift.abs().sum()


# ---------------------------------------------------------------------------------------------
# AddressNet primitives
# ---------------------------------------------------------------------------------------------
def channel_shift(x: torch.Tensor, shift: int, channel_dim: int = 1) -> torch.Tensor:
    """Cyclic channel shift (AddressNet): ``y[:, c] = x[:, (c + shift) mod C]``.

    Two block copies (``x[:, shift:]`` then ``x[:, :shift]``) into one new tensor, against the
    strided permutation copy of a channel shuffle. The gradient is the opposite channel shift.
    """
    if x.dim() < 2:
        raise ValueError(f"expected at least a 2-D tensor, got shape {tuple(x.shape)}")
    C = x.shape[channel_dim]
    s = int(shift) % C
    if s == 0:
        return x.clone()
    return torch.cat([x.narrow(channel_dim, s, C - s), x.narrow(channel_dim, 0, s)], dim=channel_dim)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle (N, g*m, ...) -> (N, m*g, ...), for comparison with :func:`channel_shift`."""
    N, C = x.shape[:2]
    if C % groups:
        raise ValueError(f"channels ({C}) must be divisible by groups ({groups})")
    rest = x.shape[2:]
    return x.reshape(N, groups, C // groups, *rest).transpose(1, 2).reshape(N, C, *rest)


def address_offset(direction: str, width: int, channels: int = 1, channels_last: bool = False) -> int:
    """Flat element offset read by an address shift in ``direction`` (positive: read further on).

    ``"right"`` moves the picture one pixel right (each output pixel reads the one before it),
    ``"down"`` one row down; in the channels-last layout a pixel is ``channels`` elements long.
    """
    if direction not in ADDRESS_DIRECTIONS:
        raise ValueError(f"unknown address-shift direction {direction!r}; choose one of {ADDRESS_DIRECTIONS}")
    pixel = channels if channels_last else 1
    row = width * pixel
    return {"left": pixel, "right": -pixel, "up": row, "down": -row}[direction]


class AddressBuffer:
    """Zero-margined storage in which address shifts are offset views (Zhong et al., Sec. 3.2).

    For a (N, C, H, W) map each channel plane is stored flat with ``W`` zero elements before and
    after it (channels-last: each sample's H*W*C block with ``W*C`` zeros around it), so a shift
    by one pixel or one row is the same memory read from a different start address: no copy.

    Border behaviour (documented deviation from a zero-fill shift): an up/down shift reads a zero
    row at the top/bottom border, exactly like :func:`spatial_shift`; a left/right shift walks the
    flat plane, so the pixel entering at the left edge of row ``i`` is the last pixel of row
    ``i - 1`` (wrap-around; zero for the very first/last pixel). Nothing leaks across channels or
    samples. The paper reports that this border difference does not change accuracy.
    """

    def __init__(self, storage: torch.Tensor, shape: Tuple[int, ...], margin: int, channels_last: bool) -> None:
        self.storage, self.shape, self.margin, self.channels_last = storage, tuple(shape), margin, channels_last

    @classmethod
    def empty(cls, shape: Sequence[int], dtype: torch.dtype = torch.float32, device=None,
              channels_last: bool = False) -> "AddressBuffer":
        """A zeroed buffer for a map of logical shape (N, C, H, W) (or (N, H, W, C) if ``channels_last``)."""
        if len(shape) != 4:
            raise ValueError(f"address shifts need a 4-D map, got shape {tuple(shape)}")
        if channels_last:
            N, H, W, C = shape
            margin = W * C
            storage = torch.zeros(N, H * W * C + 2 * margin, dtype=dtype, device=device)
        else:
            N, C, H, W = shape
            margin = W
            storage = torch.zeros(N, C, H * W + 2 * margin, dtype=dtype, device=device)
        return cls(storage, tuple(shape), margin, channels_last)

    @classmethod
    def from_tensor(cls, x: torch.Tensor, channels_last: bool = False) -> "AddressBuffer":
        """One copy of ``x`` into a new buffer (differentiable): the only copy an address shift needs."""
        if x.dim() != 4:
            raise ValueError(f"address shifts need a 4-D map, got shape {tuple(x.shape)}")
        if channels_last:
            N, H, W, C = x.shape
            storage = F.pad(x.reshape(N, H * W * C), (W * C, W * C))
            return cls(storage, tuple(x.shape), W * C, True)
        N, C, H, W = x.shape
        storage = F.pad(x.reshape(N, C, H * W), (W, W))
        return cls(storage, tuple(x.shape), W, False)

    def _window(self, offset: int) -> torch.Tensor:
        if abs(offset) > self.margin:
            raise ValueError(f"offset {offset} exceeds the buffer margin {self.margin}")
        start = self.margin + offset
        if self.channels_last:
            N, H, W, C = self.shape
            return self.storage[:, start:start + H * W * C].view(N, H, W, C)
        N, C, H, W = self.shape
        return self.storage[:, :, start:start + H * W].view(N, C, H, W)

    def interior(self) -> torch.Tensor:
        """The unshifted map (a view; write into it with ``copy_`` to fill the buffer)."""
        return self._window(0)

    def shifted(self, direction: str, channels: Optional[slice] = None) -> torch.Tensor:
        """A view of the map shifted one pixel in ``direction``, optionally for a channel slice only."""
        C = self.shape[-1] if self.channels_last else self.shape[1]
        W = self.shape[2] if self.channels_last else self.shape[3]
        v = self._window(address_offset(direction, W, C, self.channels_last))
        if channels is not None:
            v = v[..., channels] if self.channels_last else v[:, channels]
        return v


def address_shift(x: torch.Tensor, direction: str, channels_last: bool = False) -> torch.Tensor:
    """Address shift of the whole map by one pixel (see :class:`AddressBuffer` for the borders).

    A plain tensor is copied once into an :class:`AddressBuffer`; build the buffer yourself (or
    use :func:`address_shift_groups`) to take several shifted views of one copy.
    """
    return AddressBuffer.from_tensor(x, channels_last).shifted(direction)


def address_groups(channels: int, n: int) -> List[slice]:
    """Split ``channels`` into ``n`` consecutive groups (the first ``channels % n`` one larger)."""
    if n < 1 or channels < n:
        raise ValueError(f"cannot split {channels} channels into {n} groups")
    base, extra = divmod(channels, n)
    out, start = [], 0
    for i in range(n):
        size = base + (1 if i < extra else 0)
        out.append(slice(start, start + size))
        start += size
    return out


def address_shift_groups(x: torch.Tensor, directions: Sequence[Optional[str]],
                         channels_last: bool = False) -> List[torch.Tensor]:
    """Channel groups of ``x`` each shifted in its own direction (``None``: unshifted), as views of one buffer."""
    buf = x if isinstance(x, AddressBuffer) else AddressBuffer.from_tensor(x, channels_last)
    C = buf.shape[-1] if buf.channels_last else buf.shape[1]
    views = []
    for d, sl in zip(directions, address_groups(C, len(directions))):
        if d is None:
            v = buf.interior()
            views.append(v[..., sl] if buf.channels_last else v[:, sl])
        else:
            views.append(buf.shifted(d, sl))
    return views


class _ConcatIntoFn(torch.autograd.Function):
    """Copy the parts into channel slices of ``out``; the backward hands back slice views (no copy)."""

    @staticmethod
    def forward(ctx, out, dim, *parts):  # type: ignore[override]
        start = 0
        sizes = []
        for p in parts:
            out.narrow(dim, start, p.shape[dim]).copy_(p)
            sizes.append(p.shape[dim])
            start += p.shape[dim]
        ctx.dim, ctx.sizes = dim, sizes
        ctx.mark_dirty(out)
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        grads, start = [], 0
        for n in ctx.sizes:
            grads.append(g.narrow(ctx.dim, start, n))
            start += n
        return (None, None, *grads)


def shortcut_shift(parts: Iterable[torch.Tensor], out: Optional[torch.Tensor] = None, dim: int = 1) -> torch.Tensor:
    """Residual concatenation into one preallocated buffer (AddressNet's shortcut shift).

    Each part is written once into its channel slice of ``out`` (allocated here when not given;
    pass a reused buffer for inference). The gradients of the parts are views of the output
    gradient: nothing is copied backward.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("shortcut_shift needs at least one tensor")
    ref = parts[0]
    for p in parts[1:]:
        if p.dim() != ref.dim() or any(p.shape[a] != ref.shape[a] for a in range(ref.dim()) if a != dim):
            raise ValueError(f"shapes {tuple(ref.shape)} and {tuple(p.shape)} differ outside dim {dim}")
    shape = list(ref.shape)
    shape[dim] = sum(p.shape[dim] for p in parts)
    if out is None:
        out = _empty_like_layout(ref, shape)
    elif list(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {tuple(shape)}")
    return _ConcatIntoFn.apply(out, dim, *parts)
