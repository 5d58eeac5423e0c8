"""Just-in-time build of the C++ CPU extension (``torch.utils.cpp_extension.load``).

The extension is compiled once per (source, torch, Python) combination into
``$SHIFTADD_CACHE`` (default ``~/.cache/shiftadd``) and loaded from there afterwards.
No ``-march=native``: the AVX2 and AVX-512 kernels are compiled with ``#pragma GCC target``
in their own files and picked at run time from what the CPU reports, so a cached build
stays valid on another machine.  If the build fails (no compiler, no ninja, ...) callers
get ``None`` and ONE warning; nothing crashes.
"""
from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

_SRC_DIR = Path(__file__).resolve().parent / "cpu"
_SOURCES = ["adder.cpp", "isa_scalar.cpp", "isa_avx2.cpp", "isa_avx512.cpp"]
_DEPENDS = ["isa.h", "kernels.inc"]

_lock = threading.Lock()
_state: Dict[str, Any] = {"tried": False, "module": None, "error": None, "build_seconds": None, "path": None}


def cache_dir() -> Path:
    """Where JIT builds go: $SHIFTADD_CACHE, else ~/.cache/shiftadd."""
    root = os.environ.get("SHIFTADD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "shiftadd")
    return Path(root)


def _build_dir() -> Path:
    import torch

    digest = hashlib.sha1()
    for name in _SOURCES + _DEPENDS:
        digest.update((_SRC_DIR / name).read_bytes())
    tag = f"torch{torch.__version__.split('+')[0]}-py{sys.version_info[0]}{sys.version_info[1]}-{digest.hexdigest()[:12]}"
    return cache_dir() / tag


def _compile(build_dir: Path) -> Any:
    from torch.utils import cpp_extension

    build_dir.mkdir(parents=True, exist_ok=True)
    cflags = ["-O3", "-fno-math-errno"]
    ldflags = []
    if sys.platform.startswith("linux"):
        cflags.append("-fopenmp")  # at::parallel_for's OpenMP path (shares torch's libgomp)
        ldflags.append("-fopenmp")
    cpp_extension.load(
        name="shiftadd_cpu",
        sources=[str(_SRC_DIR / s) for s in _SOURCES],
        extra_cflags=cflags,
        extra_ldflags=ldflags,
        extra_include_paths=[str(_SRC_DIR)],
        build_directory=str(build_dir),
        verbose=os.environ.get("SHIFTADD_VERBOSE_BUILD") == "1",
        is_python_module=False,  # registers torch.ops.shiftadd_cpu.* (see TORCH_LIBRARY in adder.cpp)
    )
    import torch

    from shiftadd.kernels.traceable import traceable_ops

    return traceable_ops(torch.ops.shiftadd_cpu)  # the same kernels, traceable by torch.compile/export


def load_extension(warn: bool = True) -> Optional[Any]:
    """The compiled extension module, building it on first call; None if it cannot be built.

    $SHIFTADD_NO_EXTENSION=1 disables it (for testing the fallback).
    """
    if _state["tried"]:  # without the lock: torch.compile(fullgraph=True) cannot trace a lock
        return _state["module"]
    with _lock:
        if _state["tried"]:
            return _state["module"]
        _state["tried"] = True
        if os.environ.get("SHIFTADD_NO_EXTENSION") == "1":
            _state["error"] = "disabled by SHIFTADD_NO_EXTENSION=1"
            return None
        start = time.perf_counter()
        try:
            build_dir = _build_dir()
            _state["path"] = str(build_dir)
            _state["module"] = _compile(build_dir)
        except Exception as exc:  # no compiler, no ninja, compile error, read-only cache...
            msg = str(exc).strip().splitlines()
            _state["error"] = f"{type(exc).__name__}: {msg[-1] if msg else ''}"[:500]
            if warn:
                warnings.warn(
                    "shiftadd: the C++ CPU kernels could not be built, falling back to pure PyTorch "
                    "(torch.cdist forward, chunked reference gradients; much slower). "
                    f"Reason: {_state['error'].rstrip('.')}. Set SHIFTADD_VERBOSE_BUILD=1 to see the compiler output.",
                    RuntimeWarning,
                    stacklevel=3,
                )
        _state["build_seconds"] = time.perf_counter() - start
        return _state["module"]


def build_info() -> Dict[str, Any]:
    """What happened when loading the extension (module loaded?, error, seconds, cache path)."""
    return {
        "tried": _state["tried"],
        "loaded": _state["module"] is not None,
        "error": _state["error"],
        "load_seconds": _state["build_seconds"],
        "cache_dir": _state["path"],
    }
