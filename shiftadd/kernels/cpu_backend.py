"""CPU backends for the adder primitive.

* ``cpu``   - the C++ extension (``shiftadd/kernels/cpu/``): fused, cache-blocked, AVX-512 / AVX2 /
  scalar chosen at run time, multithreaded with ``at::parallel_for``. Besides the grouped matrix
  primitive it has a fused convolution (:meth:`CpuBackend.conv2d`) that never builds the im2col
  matrix. If the extension cannot be built, every call goes to the reference backend (one warning).
* ``cdist`` - ``-torch.cdist(X, W, p=1)`` for the forward pass, the reference for the gradients;
  a pure-PyTorch candidate that is faster than the chunked reference forward.

Formulas (AdderNet, Chen et al. CVPR 2020), X (G, P, K), W (G, O, K), dY (G, P, O):
  forward      Y = -sum_k |X - W|                                    (Eq. 2)
  grad_input   dX = sum_o HT(W - X) dY      (sign mode: sign(W - X))  (Eq. 6)
  grad_weight  dW = sum_p (X - W) dY = dY^T X - W * sum_p dY   (sign mode: sign(X - W))  (Eq. 5)
"""
from __future__ import annotations

import os
from typing import Any, Optional

import torch
from torch.autograd.function import once_differentiable

from shiftadd.kernels._build import build_info, load_extension
from shiftadd.ops.im2col import col2im_grouped, im2col_grouped
from shiftadd.utils import IntOrTuple as IntOrPair
from shiftadd.utils import pair

# Forward formula of the float kernels: exact |x - w| (3 vector ops per element), or
# 2*max(x, w) - x - w (2 ops; rounding differs from the reference by ~1 ulp of the row sums).
# Set by measurement, see docs/kernels.md; $SHIFTADD_ADDER_EXACT=0/1 overrides.
EXACT_FORWARD = False


def _exact_forward() -> bool:
    env = os.environ.get("SHIFTADD_ADDER_EXACT")
    if env in ("0", "1"):
        return env == "1"
    return EXACT_FORWARD


def _mode_code(mode: str) -> int:
    if mode == "full":
        return 0
    if mode == "sign":
        return 1
    raise ValueError(f"grad mode must be 'full' or 'sign', got {mode!r}")


def _reference():
    from shiftadd.ops.adder import ReferenceBackend

    return ReferenceBackend()


def grad_weight_full_mm(X: torch.Tensor, W: torch.Tensor, dY: torch.Tensor) -> torch.Tensor:
    """Eq. 5 via the matmul identity: dW = dY^T X - W * sum_p dY (one batched GEMM)."""
    return torch.baddbmm(W * (-dY.sum(1).unsqueeze(-1)), dY.transpose(1, 2), X)


def grad_weight_full_conv(x: torch.Tensor, w: torch.Tensor, dout: torch.Tensor, stride, padding, dilation,
                          groups: int) -> torch.Tensor:
    """Eq. 5 for a convolution: the ordinary conv weight gradient minus W * sum over (n, h, w) of dY.

    The fused kernel computes the same in its backward pass (``conv_backward``); this is the
    oneDNN-based form, kept as an independent check of it."""
    gw = torch.ops.aten.convolution_backward(
        dout, x, w, None, list(stride), list(padding), list(dilation), False, [0, 0], groups,
        [False, True, False],
    )[1]
    return gw - w * dout.sum((0, 2, 3)).view(-1, 1, 1, 1)


def unfold_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: IntOrPair = 1, padding: IntOrPair = 0,
                  dilation: IntOrPair = 1, groups: int = 1, grad_mode: str = "full",
                  backend: Optional[str] = "reference") -> torch.Tensor:
    """Adder conv2d (no bias) as im2col (F.unfold) + the grouped primitive of ``backend``."""
    from shiftadd.ops.adder import adder_matmul

    O, Cg, kh, kw = weight.shape
    G = int(groups)
    X, out_size = im2col_grouped(x, (kh, kw), stride, padding, dilation, G)
    Y = adder_matmul(X, weight.reshape(G, O // G, Cg * kh * kw), grad_mode, backend=backend)
    return col2im_grouped(Y, x.shape[0], out_size)


class _AdderConv2dFn(torch.autograd.Function):
    """Fused adder conv2d on the C++ extension (no im2col matrix in memory)."""

    generate_vmap_rule = True  # torch.func.vmap: the ops have no batching rule, PyTorch loops over samples

    @staticmethod
    def forward(x, w, stride, padding, dilation, groups, mode, ext):  # type: ignore[override]
        return ext.conv_forward(x.contiguous(), w.contiguous(), stride, padding, dilation, groups, _exact_forward())

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        x, w, stride, padding, dilation, groups, mode, ext = inputs
        ctx.save_for_backward(x.contiguous(), w.contiguous())
        ctx.conf = (stride, padding, dilation, groups, mode, ext)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):  # type: ignore[override]
        x, w = ctx.saved_tensors
        stride, padding, dilation, groups, mode, ext = ctx.conf
        dout = dout.contiguous()
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dx = dw = None
        if mode == "full":  # one pass: HardTanh input gradient and Eq. 5 weight gradient from the same blocks
            gx, gw = ext.conv_backward(x, w, dout, stride, padding, dilation, groups, 0, want_x, want_w)
            dx, dw = (gx if want_x else None), (gw if want_w else None)
        else:
            if want_x:
                dx = ext.conv_grad_input(x, w, dout, stride, padding, dilation, groups, _mode_code(mode))
            if want_w:
                dw = ext.conv_grad_weight_sign(x, w, dout, stride, padding, dilation, groups)
        return dx, dw, None, None, None, None, None, None


class CpuBackend:
    """The C++ extension as an adder backend (float32 CPU tensors)."""

    name = "cpu"

    def __init__(self) -> None:
        self._ref = None

    # -- availability ------------------------------------------------------------------------
    def extension(self) -> Optional[Any]:
        """The loaded extension module (built on first call) or None."""
        return load_extension()

    def available(self) -> bool:
        return self.extension() is not None

    def supports(self, x: torch.Tensor) -> bool:
        return x.device.type == "cpu" and x.dtype == torch.float32 and not x.is_sparse

    def detail(self) -> str:
        info = build_info()
        if not info["tried"]:
            return "not built yet (built on first use)"
        ext = self.extension()
        if ext is None:
            return f"unavailable: {info['error']}"
        return (f"C++ extension, {ext.isa()} kernels (CPU supports {', '.join(ext.supported_isas())}), "
                f"{torch.get_num_threads()} threads, cache {info['cache_dir']}")

    def _fallback(self):
        if self._ref is None:
            self._ref = _reference()
        return self._ref

    def _ext_for(self, *tensors: torch.Tensor) -> Optional[Any]:
        ext = self.extension()
        if ext is None or not all(self.supports(t) for t in tensors):
            return None
        return ext

    # -- grouped matrix primitive --------------------------------------------------------------
    def forward(self, X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        ext = self._ext_for(X, W)
        if ext is None:
            return self._fallback().forward(X, W)
        return ext.mm_forward(X, W, _exact_forward())

    def grad_input(self, X: torch.Tensor, W: torch.Tensor, dY: torch.Tensor, mode: str) -> torch.Tensor:
        ext = self._ext_for(X, W, dY)
        if ext is None:
            return self._fallback().grad_input(X, W, dY, mode)
        return ext.mm_grad_input(X, W, dY, _mode_code(mode))

    def grad_weight(self, X: torch.Tensor, W: torch.Tensor, dY: torch.Tensor, mode: str) -> torch.Tensor:
        code = _mode_code(mode)
        if code == 0:
            return grad_weight_full_mm(X, W, dY)
        ext = self._ext_for(X, W, dY)
        if ext is None:
            return self._fallback().grad_weight(X, W, dY, mode)
        return ext.mm_grad_weight_sign(X, W, dY)

    # -- fused convolution ---------------------------------------------------------------------
    def conv2d(self, x: torch.Tensor, weight: torch.Tensor, stride: IntOrPair = 1, padding: IntOrPair = 0,
               dilation: IntOrPair = 1, groups: int = 1, grad_mode: str = "full") -> torch.Tensor:
        """Adder conv2d (no bias) with autograd: out[n,o,i,j] = -sum_{c,u,v} |x[...] - w[o,c,u,v]|.

        Zero padding (padded inputs are 0). Falls back to the unfold + reference path when the
        extension is unavailable or the tensors are not float32 CPU tensors.
        """
        _mode_code(grad_mode)
        ext = self._ext_for(x, weight)
        if ext is None:  # not via ops.adder.adder_conv2d: that may dispatch back here
            return unfold_conv2d(x, weight, stride, padding, dilation, groups, grad_mode, "reference")
        return _AdderConv2dFn.apply(x, weight, pair(stride, "stride"), pair(padding, "padding"),
                                    pair(dilation, "dilation"), int(groups), grad_mode, ext)


class CdistBackend:
    """``-torch.cdist(X, W, p=1)`` forward, reference gradients (pure PyTorch, any device)."""

    name = "cdist"

    def __init__(self) -> None:
        self._ref = None

    def available(self) -> bool:
        return True

    def supports(self, x: torch.Tensor) -> bool:
        return x.dtype in (torch.float32, torch.float64)

    def detail(self) -> str:
        return "torch.cdist(p=1) forward + chunked reference backward"

    def _fallback(self):
        if self._ref is None:
            self._ref = _reference()
        return self._ref

    def forward(self, X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        if X.shape[1] == 0 or W.shape[1] == 0:
            return X.new_zeros((X.shape[0], X.shape[1], W.shape[1]))
        return torch.cdist(X, W, p=1).neg_()

    def grad_input(self, X, W, dY, mode):
        return self._fallback().grad_input(X, W, dY, mode)

    def grad_weight(self, X, W, dY, mode):
        if mode == "full":
            return grad_weight_full_mm(X, W, dY)
        return self._fallback().grad_weight(X, W, dY, mode)


cpu_backend = CpuBackend()
cdist_backend = CdistBackend()
