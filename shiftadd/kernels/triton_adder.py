"""Triton (CUDA) backend for the adder primitive. UNTESTED: written without access to a GPU.

Imported by :mod:`shiftadd.kernels` only when ``torch.cuda.is_available()``; importing it without
Triton raises ImportError, which the caller treats as "backend not available". Tiles of
BLOCK_P x BLOCK_O outputs accumulate over K in registers (never the P x O x K difference tensor):

  forward      Y[g,p,o]  = -sum_k |X[g,p,k] - W[g,o,k]|
  grad_input   dX[g,p,k] = sum_o f(W[g,o,k] - X[g,p,k]) dY[g,p,o],  f = clamp(., -1, 1) or sign
  grad_weight  full: dY^T X - W * sum_p dY (torch.bmm); sign: sum_p sign(X - W) dY (Triton)

Tensors are made contiguous float32 (half/bfloat16 inputs are computed in float32 and cast back).
"""
from __future__ import annotations

import torch
import triton  # noqa: F401  (ImportError here = backend unavailable)
import triton.language as tl


@triton.jit
def _fwd_kernel(X, W, Y, P, O, K, BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr):
    g = tl.program_id(2)
    rp = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    ro = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
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
    g = tl.program_id(2)
    rp = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    x = tl.load(X + g * P * K + rp[:, None] * K + rk[None, :], mask=(rp[:, None] < P) & (rk[None, :] < K), other=0.0)
    acc = tl.zeros((BLOCK_P, BLOCK_K), dtype=tl.float32)
    for o0 in range(0, O, BLOCK_O):
        ro = o0 + tl.arange(0, BLOCK_O)
        w = tl.load(W + g * O * K + ro[:, None] * K + rk[None, :], mask=(ro[:, None] < O) & (rk[None, :] < K), other=0.0)
        dy = tl.load(DY + g * P * O + rp[:, None] * O + ro[None, :], mask=(rp[:, None] < P) & (ro[None, :] < O), other=0.0)
        d = w[None, :, :] - x[:, None, :]  # (P, O, K)
        if SIGN:
            f = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))
        else:
            f = tl.minimum(tl.maximum(d, -1.0), 1.0)
        acc += tl.sum(f * dy[:, :, None], axis=1)  # padded o: dy = 0
    tl.store(DX + g * P * K + rp[:, None] * K + rk[None, :], acc, mask=(rp[:, None] < P) & (rk[None, :] < K))


@triton.jit
def _gws_kernel(X, W, DY, DW, P, O, K, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    g = tl.program_id(2)
    ro = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    w = tl.load(W + g * O * K + ro[:, None] * K + rk[None, :], mask=(ro[:, None] < O) & (rk[None, :] < K), other=0.0)
    acc = tl.zeros((BLOCK_O, BLOCK_K), dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        rp = p0 + tl.arange(0, BLOCK_P)
        x = tl.load(X + g * P * K + rp[:, None] * K + rk[None, :], mask=(rp[:, None] < P) & (rk[None, :] < K), other=0.0)
        dy = tl.load(DY + g * P * O + rp[:, None] * O + ro[None, :], mask=(rp[:, None] < P) & (ro[None, :] < O), other=0.0)
        d = x[:, None, :] - w[None, :, :]  # (P, O, K)
        s = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))
        acc += tl.sum(s * dy[:, :, None], axis=0)  # padded p: dy = 0
    tl.store(DW + g * O * K + ro[:, None] * K + rk[None, :], acc, mask=(ro[:, None] < O) & (rk[None, :] < K))


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().float()


class TritonBackend:
    """Adder backend for CUDA tensors (untested, see the module docstring)."""

    name = "triton"

    def available(self) -> bool:
        return torch.cuda.is_available()

    def supports(self, x: torch.Tensor) -> bool:
        return x.is_cuda and x.dtype in (torch.float32, torch.float16, torch.bfloat16)

    def detail(self) -> str:
        return "Triton kernels for CUDA (untested: written without a GPU)"

    def forward(self, X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        G, P, K = X.shape
        O = W.shape[1]
        Y = torch.empty((G, P, O), device=X.device, dtype=torch.float32)
        grid = (triton.cdiv(P, 32), triton.cdiv(O, 32), G)
        _fwd_kernel[grid](_f32(X), _f32(W), Y, P, O, K, BLOCK_P=32, BLOCK_O=32, BLOCK_K=8)
        return Y.to(X.dtype)

    def grad_input(self, X, W, dY, mode: str) -> torch.Tensor:
        G, P, K = X.shape
        O = W.shape[1]
        dX = torch.empty((G, P, K), device=X.device, dtype=torch.float32)
        grid = (triton.cdiv(P, 32), triton.cdiv(K, 32), G)
        _gin_kernel[grid](_f32(X), _f32(W), _f32(dY), dX, P, O, K, SIGN=(mode == "sign"), BLOCK_P=32, BLOCK_K=32,
                          BLOCK_O=8)
        return dX.to(X.dtype)

    def grad_weight(self, X, W, dY, mode: str) -> torch.Tensor:
        if mode == "full":  # dY^T X - W * sum_p dY
            Xf, Wf, dYf = _f32(X), _f32(W), _f32(dY)
            return torch.baddbmm(Wf * (-dYf.sum(1).unsqueeze(-1)), dYf.transpose(1, 2), Xf).to(W.dtype)
        G, P, K = X.shape
        O = W.shape[1]
        dW = torch.empty((G, O, K), device=X.device, dtype=torch.float32)
        grid = (triton.cdiv(O, 32), triton.cdiv(K, 32), G)
        _gws_kernel[grid](_f32(X), _f32(W), _f32(dY), dW, P, O, K, BLOCK_O=32, BLOCK_K=32, BLOCK_P=8)
        return dW.to(W.dtype)


triton_backend = TritonBackend()
