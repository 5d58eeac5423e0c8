"""Fast kernels for the adder primitive and integer inference (modules built on them: shiftadd.export).

Importing this package registers its backends with :mod:`shiftadd.ops.adder`:

=========  ========  ==========================================================================
name       priority  what
=========  ========  ==========================================================================
triton        200    CUDA tensors, Triton kernels (registered when Triton is installed and CUDA
                     exists or TRITON_INTERPRET=1; tested on CPU in Triton's interpreter)
cpu           100    C++ extension, float32 CPU tensors (JIT-built on first use, cached)
cdist          10    ``-torch.cdist(p=1)`` forward + reference gradients (pure PyTorch)
reference       0    chunked PyTorch (registered by shiftadd.ops.adder)
=========  ========  ==========================================================================

The highest-priority backend that is available and supports the tensor wins;
``$SHIFTADD_BACKEND=<name>`` forces one. :func:`backends` reports what is available and in use,
and which tensors fell back from their device's fast kernel (see ``shiftadd.ops.adder.fallbacks``).
"""
from __future__ import annotations

import os
from typing import Any, Dict

import torch

from shiftadd.kernels._build import build_info, cache_dir, load_extension
from shiftadd.kernels.cpu_backend import CdistBackend, CpuBackend, cdist_backend, cpu_backend
from shiftadd.kernels.integer import decompose_pow2, int_adder_conv2d, int_adder_matmul, int_shift_conv2d, quantize_symmetric

CPU_PRIORITY = 100
CDIST_PRIORITY = 10
TRITON_PRIORITY = 200


def _register() -> None:
    from shiftadd.ops.adder import register_backend

    register_backend("cpu", cpu_backend, priority=CPU_PRIORITY)
    register_backend("cdist", cdist_backend, priority=CDIST_PRIORITY)
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        try:
            from shiftadd.kernels.triton_adder import triton_backend
        except ImportError:  # no triton installed: CUDA tensors fall back (with a warning)
            return
        register_backend("triton", triton_backend, priority=TRITON_PRIORITY)


_register()


def backends() -> Dict[str, Any]:
    """What adder backends exist, which are available, and which one layers use.

    Returns ``{"in_use": {"cpu/float32": name, ...}, "forced": $SHIFTADD_BACKEND or None,
    "backends": {name: {"priority", "available", "detail"}}, "fallbacks": {reason: calls},
    "extension": build info}``; ``fallbacks`` lists the adder calls of this process that could not
    use their device's fast kernel, and why. Checking availability builds the C++ extension if it
    has not been built yet.
    """
    from shiftadd.ops.adder import _BACKENDS, fallbacks, select_backend

    table: Dict[str, Dict[str, Any]] = {}
    for name, (priority, backend) in sorted(_BACKENDS.items(), key=lambda kv: -kv[1][0]):
        try:
            ok = bool(backend.available())
        except Exception as exc:  # a broken backend must not break the report
            ok, detail = False, f"error: {exc}"
        else:
            detail = backend.detail() if hasattr(backend, "detail") else ""
        table[name] = {"priority": priority, "available": ok, "detail": detail}
    in_use = {"cpu/float32": select_backend(torch.zeros(1), record=False).name}
    if torch.cuda.is_available():
        in_use["cuda/float32"] = select_backend(torch.zeros(1, device="cuda"), record=False).name
    return {
        "in_use": in_use,
        "forced": os.environ.get("SHIFTADD_BACKEND") or None,
        "backends": table,
        "fallbacks": fallbacks(),
        "extension": build_info(),
    }


def backends_report() -> str:
    """:func:`backends` as a few human-readable lines."""
    info = backends()
    lines = [f"in use: {', '.join(f'{k} -> {v}' for k, v in info['in_use'].items())}"
             + (f" (forced by SHIFTADD_BACKEND={info['forced']})" if info["forced"] else "")]
    for name, b in info["backends"].items():
        flag = "yes" if b["available"] else "no "
        lines.append(f"  {name:<10} priority {b['priority']:>3}  available {flag}  {b['detail']}")
    if info["fallbacks"]:
        lines.append("fallbacks from the fast kernel (calls: reason):")
        lines.extend(f"  {n:>6}: {reason}" for reason, n in info["fallbacks"].items())
    return "\n".join(lines)


__all__ = [
    "backends", "backends_report", "load_extension", "build_info", "cache_dir",
    "CpuBackend", "CdistBackend", "cpu_backend", "cdist_backend",
    "int_adder_conv2d", "int_adder_matmul", "int_shift_conv2d", "quantize_symmetric", "decompose_pow2",
]
