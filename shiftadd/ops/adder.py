"""AdderNet operator (Chen et al., "AdderNet: Do we really need multiplications in deep
learning?", CVPR 2020), written from the paper's equations.

Every form of the layer (conv 1-D/2-D with stride, padding, dilation, groups; linear) is
reduced to one grouped matrix primitive on im2col patches:

    X: (G, P, K) patches, W: (G, O, K) filters  ->  Y[g, p, o] = -sum_k |X[g,p,k] - W[g,o,k]|

Gradients (paper Eq. 5 and 6):

    full-precision weight gradient   dW[g,o,k] = sum_p (X[g,p,k] - W[g,o,k]) * dY[g,p,o]
    HardTanh-clipped input gradient  dX[g,p,k] = sum_o HT(W[g,o,k] - X[g,p,k]) * dY[g,p,o]

``grad_mode="sign"`` gives the exact derivative of the L1 distance instead (for ablations).
The arithmetic itself lives in backends (see :func:`register_backend`); the reference
backend here is plain PyTorch that works in chunks, so the (G x P x O x K) difference
tensor never exists whole.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from typing import Dict, Optional, Protocol, Tuple

import torch
from torch.autograd.function import once_differentiable

from shiftadd.ops.im2col import col2im_grouped, im2col_grouped
from shiftadd.utils import IntOrTuple, pair

GRAD_MODES = ("full", "sign")

# Largest number of elements of one chunk of the difference tensor (64 MiB in float32).
CHUNK_ELEMENTS = 1 << 24

IntOrPair = IntOrTuple


class AdderBackend(Protocol):
    """What a backend provides; all tensors are contiguous (G, P, K), (G, O, K), (G, P, O)."""

    name: str

    def available(self) -> bool: ...

    def supports(self, x: torch.Tensor) -> bool: ...

    def forward(self, X: torch.Tensor, W: torch.Tensor) -> torch.Tensor: ...

    def grad_input(self, X: torch.Tensor, W: torch.Tensor, dY: torch.Tensor, mode: str) -> torch.Tensor: ...

    def grad_weight(self, X: torch.Tensor, W: torch.Tensor, dY: torch.Tensor, mode: str) -> torch.Tensor: ...


class ReferenceBackend:
    """Plain PyTorch, chunked over P so that memory stays bounded."""

    name = "reference"

    def available(self) -> bool:
        return True

    def supports(self, x: torch.Tensor) -> bool:
        return True

    @staticmethod
    def _step(X: torch.Tensor, W: torch.Tensor) -> int:
        G, _, K = X.shape
        O = W.shape[1]
        return max(1, CHUNK_ELEMENTS // max(1, G * O * K))

    def forward(self, X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        G, P, _ = X.shape
        Y = X.new_empty((G, P, W.shape[1]))
        step = self._step(X, W)
        for s in range(0, P, step):
            xs = X[:, s : s + step]
            # Eq. (2): Y = -sum |X - F|
            Y[:, s : s + step] = -(xs.unsqueeze(2) - W.unsqueeze(1)).abs_().sum(-1)
        return Y

    def grad_input(self, X: torch.Tensor, W: torch.Tensor, dY: torch.Tensor, mode: str) -> torch.Tensor:
        dX = torch.empty_like(X)
        step = self._step(X, W)
        for s in range(0, X.shape[1], step):
            d = W.unsqueeze(1) - X[:, s : s + step].unsqueeze(2)  # (G, p, O, K): F - X
            # Eq. (6): dY/dX = HT(F - X); sign mode: the exact derivative sign(F - X)
            d = d.clamp_(-1, 1) if mode == "full" else d.sign_()
            dX[:, s : s + step] = torch.einsum("gpok,gpo->gpk", d, dY[:, s : s + step])
        return dX

    def grad_weight(self, X: torch.Tensor, W: torch.Tensor, dY: torch.Tensor, mode: str) -> torch.Tensor:
        dW = torch.zeros_like(W)
        step = self._step(X, W)
        for s in range(0, X.shape[1], step):
            d = X[:, s : s + step].unsqueeze(2) - W.unsqueeze(1)  # (G, p, O, K): X - F
            # Eq. (5): dY/dF = X - F (full precision); sign mode: sign(X - F)
            if mode == "sign":
                d = d.sign_()
            dW += torch.einsum("gpok,gpo->gok", d, dY[:, s : s + step])
        return dW


_BACKENDS: Dict[str, Tuple[int, AdderBackend]] = {}


def register_backend(name: str, backend: AdderBackend, priority: int = 0) -> None:
    """Make ``backend`` selectable; the available backend with the highest priority wins."""
    _BACKENDS[name] = (priority, backend)


def registered_backends() -> Dict[str, AdderBackend]:
    """All registered backends, highest priority first."""
    return {n: b for n, (_, b) in sorted(_BACKENDS.items(), key=lambda kv: -kv[1][0])}


# The backend that is fast for tensors of each device type; choosing any other one for such a
# tensor is a fallback: warned about once per reason and counted (see :func:`fallbacks`).
FAST_BACKENDS = {"cpu": "cpu", "cuda": "triton"}
_MISSING_FIX = {
    "cpu": "the C++ kernels package did not import; `import shiftadd.kernels` shows the error",
    "triton": "install Triton (pip install 'shiftadd[triton]')",
}
_FALLBACKS: "Counter[str]" = Counter()


class AdderFallbackWarning(RuntimeWarning):
    """An adder call runs on a backend much slower than its device's fast kernel."""


def _fallback_reason(x: torch.Tensor, chosen: AdderBackend) -> Optional[str]:
    """Why ``chosen`` is not the fast backend of ``x``'s device, or None if it is (or there is none)."""
    fast_name = FAST_BACKENDS.get(x.device.type)
    if fast_name is None or chosen.name == fast_name:
        return None
    dtype = str(x.dtype).replace("torch.", "")
    if fast_name not in _BACKENDS:
        why, fix = f"no '{fast_name}' backend is registered", _MISSING_FIX[fast_name]
    else:
        fast = _BACKENDS[fast_name][1]
        if not fast.available():
            detail = fast.detail() if hasattr(fast, "detail") else ""
            why = f"the '{fast_name}' backend is unavailable" + (f" ({detail})" if detail else "")
            fix = "see shiftadd.backends() / `shiftadd backends`"
        elif x.layout != torch.strided:
            why, fix = f"the '{fast_name}' kernel does not take {x.layout} tensors", "pass a dense tensor (x.to_dense())"
        else:
            why = f"the '{fast_name}' kernel does not take {dtype} tensors"
            fix = "use float32 (model.float(), x.float()) or torch.autocast, under which adder layers run in float32"
    return f"adder on {x.device.type} {dtype} tensors: {why}; using the much slower '{chosen.name}' backend. Fix: {fix}"


def fallbacks() -> Dict[str, int]:
    """Fallbacks from a device's fast adder kernel in this process: reason -> number of calls."""
    return dict(_FALLBACKS)


def clear_fallbacks() -> None:
    """Forget the recorded fallbacks (each reason then warns again the next time it happens)."""
    _FALLBACKS.clear()


def select_backend(x: torch.Tensor, record: bool = True) -> AdderBackend:
    """The backend used for tensors like ``x`` ($SHIFTADD_BACKEND forces one by name).

    If it is not the fast backend of ``x``'s device (:data:`FAST_BACKENDS`), the reason is counted
    and, the first time, warned about (:class:`AdderFallbackWarning`); ``record=False`` only looks.
    """
    _load_kernels()
    forced = os.environ.get("SHIFTADD_BACKEND")
    if forced:
        if forced not in _BACKENDS:
            raise ValueError(
                f"SHIFTADD_BACKEND={forced!r} is not a known backend; choose one of: {', '.join(_BACKENDS)}"
            )
        return _BACKENDS[forced][1]
    chosen = _BACKENDS["reference"][1]
    for backend in registered_backends().values():
        if backend.available() and backend.supports(x):
            chosen = backend
            break
    reason = _fallback_reason(x, chosen) if record else None
    if reason is not None:
        if reason not in _FALLBACKS:
            warnings.warn(reason, AdderFallbackWarning, stacklevel=3)
        _FALLBACKS[reason] += 1
    return chosen


_kernels_loaded = False


def _load_kernels() -> None:
    """Import the fast kernels package once; it registers its backends (optional)."""
    global _kernels_loaded
    if not _kernels_loaded:
        _kernels_loaded = True
        try:
            import shiftadd.kernels  # noqa: F401
        except ImportError:
            pass


register_backend("reference", ReferenceBackend(), priority=0)


class AdderFunction(torch.autograd.Function):
    """Y = -sum|X - W| on (G, P, K) x (G, O, K) with AdderNet's gradients."""

    generate_vmap_rule = True  # torch.func.vmap runs forward/backward per sample on the backend's ops

    @staticmethod
    def forward(X: torch.Tensor, W: torch.Tensor, mode: str, backend: AdderBackend) -> torch.Tensor:  # type: ignore[override]
        return backend.forward(X.contiguous(), W.contiguous())

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        X, W, mode, backend = inputs
        ctx.save_for_backward(X.contiguous(), W.contiguous())
        ctx.mode, ctx.backend = mode, backend

    @staticmethod
    @once_differentiable
    def backward(ctx, dY: torch.Tensor):  # type: ignore[override]
        X, W = ctx.saved_tensors
        dY = dY.contiguous()
        dX = ctx.backend.grad_input(X, W, dY, ctx.mode) if ctx.needs_input_grad[0] else None
        dW = ctx.backend.grad_weight(X, W, dY, ctx.mode) if ctx.needs_input_grad[1] else None
        return dX, dW, None, None


def _autocast_enabled(x: torch.Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except (TypeError, RuntimeError):  # torch < 2.4, or a device type autocast does not know
        return x.device.type == "cpu" and torch.is_autocast_cpu_enabled() or x.is_cuda and torch.is_autocast_enabled()


def _half_to_float(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return t.float() if t is not None and t.dtype in (torch.float16, torch.bfloat16) else t


def _check_dtypes(op: str, x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dtype != weight.dtype:
        raise TypeError(
            f"{op}: input dtype {x.dtype} and weight dtype {weight.dtype} differ; convert one of them "
            "(model.to(dtype) or x.to(dtype)), or run under torch.autocast (adder layers then compute in float32)"
        )


def _check_grad_mode(grad_mode: str) -> None:
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")


def adder_matmul(X: torch.Tensor, W: torch.Tensor, grad_mode: str = "full", backend: Optional[str] = None) -> torch.Tensor:
    """The grouped primitive: X (G, P, K), W (G, O, K) -> (G, P, O), -L1 distances.

    Under ``torch.autocast`` it runs (and returns) float32, like autocast's float32 ops: a sum of K
    absolute differences in bfloat16/float16 would keep only 2-3 significant digits.
    """
    _check_grad_mode(grad_mode)
    if _autocast_enabled(X):
        with torch.autocast(X.device.type, enabled=False):
            return adder_matmul(_half_to_float(X), _half_to_float(W), grad_mode, backend)
    _check_dtypes("adder", X, W)
    impl = _BACKENDS[backend][1] if backend else select_backend(X)
    return AdderFunction.apply(X, W, grad_mode, impl)


def adder_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    grad_mode: str = "full",
) -> torch.Tensor:
    """Adder convolution: out[n,o,i,j] = -sum_{c,u,v} |x[n,c,i*s+u*d-p, j*s+v*d-p] - w[o,c,u,v]|.

    Zero padding: a padded position holds x = 0 and so contributes -|w|.
    x: (N, C, H, W), weight: (O, C/groups, kh, kw). Under ``torch.autocast`` it computes in float32.
    """
    _check_grad_mode(grad_mode)
    if _autocast_enabled(x):
        with torch.autocast(x.device.type, enabled=False):
            return adder_conv2d(_half_to_float(x), _half_to_float(weight), _half_to_float(bias), stride, padding,
                                dilation, groups, grad_mode)
    _check_dtypes("adder_conv2d", x, weight)
    N, C = x.shape[:2]
    O, Cg, kh, kw = weight.shape
    G = groups
    if x.dim() != 4 or C != Cg * G or O % G:
        raise ValueError(
            f"adder_conv2d: input {tuple(x.shape)} and weight {tuple(weight.shape)} do not fit groups={groups}: "
            "expected input (N, C, H, W) and weight (O, C/groups, kh, kw) with O divisible by groups"
        )
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    backend = select_backend(x)
    fused = getattr(backend, "conv2d", None)  # a backend may fuse im2col into its kernel
    if fused is not None and backend.available() and backend.supports(x) and backend.supports(weight):
        out = fused(x, weight, stride, padding, dilation, groups, grad_mode)
        return out if bias is None else out + bias.view(1, -1, 1, 1)
    X, out_size = im2col_grouped(x, (kh, kw), stride, padding, dilation, G)
    Y = AdderFunction.apply(X, weight.reshape(G, O // G, Cg * kh * kw), grad_mode, backend)  # (G, N*L, O/G)
    out = col2im_grouped(Y, N, out_size)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def adder_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
    grad_mode: str = "full",
) -> torch.Tensor:
    """1-D adder convolution; x: (N, C, L), weight: (O, C/groups, k)."""
    out = adder_conv2d(
        x.unsqueeze(2), weight.unsqueeze(2), bias, (1, stride), (0, padding), (1, dilation), groups, grad_mode
    )
    return out.squeeze(2)


def adder_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, grad_mode: str = "full") -> torch.Tensor:
    """Adder fully-connected layer: out[..., o] = -sum_i |x[..., i] - w[o, i]|."""
    lead = x.shape[:-1]
    Y = adder_matmul(x.reshape(1, -1, x.shape[-1]), weight.unsqueeze(0), grad_mode)
    out = Y.reshape(*lead, weight.shape[0])
    if bias is not None:
        out = out + bias
    return out
