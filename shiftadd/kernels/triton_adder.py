"""Triton backend for the adder primitive (CUDA tensors; CPU tensors under Triton's interpreter).

:mod:`shiftadd.kernels` registers it when CUDA is available (or ``TRITON_INTERPRET=1`` is set) and
Triton is importable; importing it without Triton raises ImportError ("backend not available").
Tiles of up to 1024 outputs (:func:`tile_shape`) accumulate over the third axis in registers, 8 values
at a time (never the P x O x K difference tensor):

  forward      Y[g,p,o]  = -sum_k |X[g,p,k] - W[g,o,k]|                        (AdderNet Eq. 2)
  grad_input   dX[g,p,k] = sum_o f(W[g,o,k] - X[g,p,k]) dY[g,p,o],  f = HardTanh or sign  (Eq. 6)
  grad_weight  full: dY^T X - W * sum_p dY (one torch.baddbmm, Eq. 5); sign: sum_p sign(X - W) dY (Triton)

Tensors are made contiguous float32: half/bfloat16 inputs are computed (and accumulated) in float32
and the result is cast back. Offsets are 64-bit, so tensors over 2^31 elements are addressed correctly.

Testing without a GPU: with ``TRITON_INTERPRET=1`` set *before this module is imported*, the kernels
run in Triton's CPU interpreter on CPU tensors (slow; tests/test_triton.py does this). The backend
is only *auto-selected* for CUDA tensors; on CPU it runs when asked for by name
(``SHIFTADD_BACKEND=triton`` or ``adder_matmul(..., backend="triton")``).
"""
from __future__ import annotations

import os
from typing import Tuple

import torch
import triton  # noqa: F401  (ImportError here = backend unavailable)
import triton.language as tl

# the interpreter decides at decoration time, so this is fixed when the module is imported
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Tiles: up to TILE outputs per program (powers of two), no axis longer than it needs (ResNet-20's
# 16 channels would leave half of a 32-wide tile idle); STEP values of the reduced axis per
# iteration: at most TILE x STEP = 8192 live float32 values per program and step.
TILE, STEP, MAX_SIDE = 1024, 8, 32


def tile_shape(rows: int, cols: int, tile: int = TILE, max_side: int = MAX_SIDE) -> Tuple[int, int]:
    """Power-of-two block sizes (rows, cols) for a rows x cols output: the shorter axis gets at most
    ``max_side``, the other the rest of ``tile``; neither is longer than its axis needs."""
    def fit(n: int) -> int:
        return triton.next_power_of_2(max(1, n))

    if rows <= cols:
        br = min(max_side, fit(rows))
        return br, min(tile // br, fit(cols))
    bc = min(max_side, fit(cols))
    return min(tile // bc, fit(rows)), bc


@triton.jit
def _fwd_kernel(X, W, Y, P, O, K, BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr):
    g = tl.program_id(2).to(tl.int64)
    rp = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    ro = tl.program_id(1).to(tl.int64) * BLOCK_O + tl.arange(0, BLOCK_O)
    acc = tl.zeros((BLOCK_P, BLOCK_O), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(X + g * P * K + rp[:, None] * K + rk[None, :], mask=(rp[:, None] < P) & (rk[None, :] < K), other=0.0)
        w = tl.load(W + g * O * K + ro[:, None] * K + rk[None, :], mask=(ro[:, None] < O) & (rk[None, :] < K), other=0.0)
        acc += tl.sum(tl.abs(x[:, None, :] - w[None, :, :]), axis=2)  # padded k: |0 - 0| = 0
    tl.store(Y + g * P * O + rp[:, None] * O + ro[None, :], -acc, mask=(rp[:, None] < P) & (ro[None, :] < O))


@triton.jit
def _gin_kernel(X, W, DY, DX, P, O, K, SIGN: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
                BLOCK_O: tl.constexpr):
    g = tl.program_id(2).to(tl.int64)
    rp = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    rk = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    x = tl.load(X + g * P * K + rp[:, None] * K + rk[None, :], mask=(rp[:, None] < P) & (rk[None, :] < K), other=0.0)
    acc = tl.zeros((BLOCK_P, BLOCK_K), dtype=tl.float32)
    for o0 in range(0, O, BLOCK_O):
        ro = o0 + tl.arange(0, BLOCK_O)
        w = tl.load(W + g * O * K + ro[:, None] * K + rk[None, :], mask=(ro[:, None] < O) & (rk[None, :] < K), other=0.0)
        dy = tl.load(DY + g * P * O + rp[:, None] * O + ro[None, :], mask=(rp[:, None] < P) & (ro[None, :] < O), other=0.0)
        d = w[None, :, :] - x[:, None, :]  # (P, O, K): W - X
        if SIGN:
            f = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))
        else:
            f = tl.minimum(tl.maximum(d, -1.0), 1.0)  # HardTanh
        acc += tl.sum(f * dy[:, :, None], axis=1)  # padded o: dy = 0
    tl.store(DX + g * P * K + rp[:, None] * K + rk[None, :], acc, mask=(rp[:, None] < P) & (rk[None, :] < K))


@triton.jit
def _gws_kernel(X, W, DY, DW, P, O, K, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    g = tl.program_id(2).to(tl.int64)
    ro = tl.program_id(0).to(tl.int64) * BLOCK_O + tl.arange(0, BLOCK_O)
    rk = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    w = tl.load(W + g * O * K + ro[:, None] * K + rk[None, :], mask=(ro[:, None] < O) & (rk[None, :] < K), other=0.0)
    acc = tl.zeros((BLOCK_O, BLOCK_K), dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        rp = p0 + tl.arange(0, BLOCK_P)
        x = tl.load(X + g * P * K + rp[:, None] * K + rk[None, :], mask=(rp[:, None] < P) & (rk[None, :] < K), other=0.0)
        dy = tl.load(DY + g * P * O + rp[:, None] * O + ro[None, :], mask=(rp[:, None] < P) & (ro[None, :] < O), other=0.0)
        d = x[:, None, :] - w[None, :, :]  # (P, O, K): X - W
        s = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))
        acc += tl.sum(s * dy[:, :, None], axis=0)  # padded p: dy = 0
    tl.store(DW + g * O * K + ro[:, None] * K + rk[None, :], acc, mask=(ro[:, None] < O) & (rk[None, :] < K))


SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().float()


def _check(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.device.type == "cuda" or (INTERPRETED and t.device.type == "cpu"):
            continue
        raise RuntimeError(
            f"the Triton adder kernels need CUDA tensors, got a {t.device.type} tensor "
            "(CPU tensors run only under Triton's interpreter: set TRITON_INTERPRET=1 before importing shiftadd)"
        )


class TritonBackend:
    """Adder backend for CUDA float32/float16/bfloat16 tensors (float32 accumulation)."""

    name = "triton"

    def available(self) -> bool:
        return torch.cuda.is_available() or INTERPRETED

    def supports(self, x: torch.Tensor) -> bool:
        """Whether the backend is chosen automatically for ``x`` (CUDA only, even when interpreted)."""
        return x.is_cuda and x.dtype in SUPPORTED_DTYPES and x.layout == torch.strided

    def detail(self) -> str:
        mode = "Triton interpreter on CPU tensors (TRITON_INTERPRET=1)" if INTERPRETED else "CUDA tensors"
        return f"Triton {triton.__version__} kernels, {mode}, float32 accumulation"

    def forward(self, X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        _check(X, W)
        G, P, K = X.shape
        O = W.shape[1]
        Y = torch.zeros((G, P, O), device=X.device, dtype=torch.float32)
        if Y.numel():
            bp, bo = tile_shape(P, O)
            grid = (triton.cdiv(P, bp), triton.cdiv(O, bo), G)
            _fwd_kernel[grid](_f32(X), _f32(W), Y, P, O, K, BLOCK_P=bp, BLOCK_O=bo, BLOCK_K=STEP)
        return Y.to(X.dtype)

    def grad_input(self, X: torch.Tensor, W: torch.Tensor, dY: torch.Tensor, mode: str) -> torch.Tensor:
        _check(X, W, dY)
        G, P, K = X.shape
        O = W.shape[1]
        dX = torch.zeros((G, P, K), device=X.device, dtype=torch.float32)
        if dX.numel():
            bp, bk = tile_shape(P, K)
            grid = (triton.cdiv(P, bp), triton.cdiv(K, bk), G)
            _gin_kernel[grid](_f32(X), _f32(W), _f32(dY), dX, P, O, K, SIGN=(mode == "sign"), BLOCK_P=bp,
                              BLOCK_K=bk, BLOCK_O=STEP)
        return dX.to(X.dtype)

    def grad_weight(self, X: torch.Tensor, W: torch.Tensor, dY: torch.Tensor, mode: str) -> torch.Tensor:
        _check(X, W, dY)
        if mode == "full":  # Eq. 5 as one batched GEMM: dY^T X - W * sum_p dY
            Xf, Wf, dYf = _f32(X), _f32(W), _f32(dY)
            return torch.baddbmm(Wf * (-dYf.sum(1).unsqueeze(-1)), dYf.transpose(1, 2), Xf).to(W.dtype)
        G, P, K = X.shape
        O = W.shape[1]
        dW = torch.zeros((G, O, K), device=X.device, dtype=torch.float32)
        if dW.numel():
            bo, bk = tile_shape(O, K)
            grid = (triton.cdiv(O, bo), triton.cdiv(K, bk), G)
            _gws_kernel[grid](_f32(X), _f32(W), _f32(dY), dW, P, O, K, BLOCK_O=bo, BLOCK_K=bk, BLOCK_P=STEP)
        return dW.to(W.dtype)


triton_backend = TritonBackend()
