"""Trace a model into a flat list of layer nodes (the input of the integer lowering).

``torch.fx.symbolic_trace`` with the shiftadd operator layers (adder, shift), the option-A
shortcut and torch's own layers as leaf modules; shift-add layers are traced through (they are a
shift layer then an adder layer). Works for the zoo's ResNet, VGG and MNIST models and for any
2-D model written with ``nn.Module`` layers, ``F.relu``, ``+`` and ``torch.flatten``; anything else
raises :class:`UnsupportedModelError` naming the node.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from shiftadd.errors import UserError


class UnsupportedModelError(UserError, ValueError):
    """The model contains a layer or operation the C exporter does not handle."""


#: Node kinds of the float graph.
KINDS = ("input", "conv", "adder", "shift", "bn", "relu", "add", "avgpool", "maxpool", "flatten",
         "identity", "pad_shortcut", "output")


@dataclass
class Node:
    """One layer of the traced model: ``kind`` (see :data:`KINDS`), its fx name, input node names and
    the module (or options) that defines it."""

    name: str
    kind: str
    inputs: List[str]
    module: Optional[nn.Module] = None
    options: Dict[str, Any] = field(default_factory=dict)


def _leaf_types() -> Tuple[type, ...]:
    from shiftadd.models.resnet import _PadShortcut
    from shiftadd.nn import AdderConv2d, AdderLinear, ShiftConv2d, ShiftLinear

    return (AdderConv2d, AdderLinear, ShiftConv2d, ShiftLinear, _PadShortcut)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _leaf_types()) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> Tuple[List[Node], fx.GraphModule]:
    """The model as a topologically ordered list of :class:`Node` (and the fx module, for calibration)."""
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises many types; say which model and why
        raise UnsupportedModelError(f"cannot trace {type(model).__name__} with torch.fx: {exc}") from None
    gm = fx.GraphModule(model, graph)
    nodes: List[Node] = []
    for n in graph.nodes:
        nodes.append(_classify(n, gm))
    return nodes, gm


def _args(n: fx.Node) -> List[str]:
    return [a.name for a in n.args if isinstance(a, fx.Node)]


def _unsupported(n: fx.Node, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"the C exporter does not support {what} (node {n.name!r}); supported: conv, "
                                 "adder, shift, shift-add layers, BatchNorm, ReLU, residual add, avg/max pooling, "
                                 "flatten, linear")


def _classify(n: fx.Node, gm: fx.GraphModule) -> Node:
    from shiftadd.models.resnet import _PadShortcut
    from shiftadd.nn import AdderConv2d, AdderLinear, ShiftConv2d, ShiftLinear

    if n.op == "placeholder":
        return Node(n.name, "input", [])
    if n.op == "output":
        return Node(n.name, "output", _args(n))
    if n.op == "call_module":
        m = gm.get_submodule(str(n.target))
        ins = _args(n)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return Node(n.name, "conv", ins, m)
        if isinstance(m, (AdderConv2d, AdderLinear)):
            return Node(n.name, "adder", ins, m)
        if isinstance(m, (ShiftConv2d, ShiftLinear)):
            return Node(n.name, "shift", ins, m)
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            return Node(n.name, "bn", ins, m)
        if isinstance(m, nn.ReLU):
            return Node(n.name, "relu", ins)
        if isinstance(m, (nn.Dropout, nn.Identity)):
            return Node(n.name, "identity", ins)
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise _unsupported(n, f"Flatten(start_dim={m.start_dim}, end_dim={m.end_dim})")
            return Node(n.name, "flatten", ins)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,) * 2
            if tuple(size) != (1, 1):
                raise _unsupported(n, f"AdaptiveAvgPool2d({m.output_size}) (only output size 1)")
            return Node(n.name, "avgpool", ins, options={"global": True})
        if isinstance(m, nn.AvgPool2d):
            if m.ceil_mode or _pair(m.padding) != (0, 0):
                raise _unsupported(n, "AvgPool2d with padding or ceil_mode")
            return Node(n.name, "avgpool", ins, options={"kernel": _pair(m.kernel_size),
                                                        "stride": _pair(m.stride or m.kernel_size)})
        if isinstance(m, nn.MaxPool2d):
            if m.ceil_mode or _pair(m.dilation) != (1, 1):
                raise _unsupported(n, "MaxPool2d with dilation or ceil_mode")
            return Node(n.name, "maxpool", ins, options={"kernel": _pair(m.kernel_size),
                                                        "stride": _pair(m.stride or m.kernel_size),
                                                        "padding": _pair(m.padding)})
        if isinstance(m, _PadShortcut):
            return Node(n.name, "pad_shortcut", ins, m)
        raise _unsupported(n, f"module {type(m).__name__}")
    if n.op == "call_function":
        fn = n.target
        if fn in (F.relu, torch.relu):
            return Node(n.name, "relu", _args(n))
        if fn in (operator.add, torch.add, operator.iadd):
            ins = _args(n)
            if len(ins) != 2 or len(n.args) != 2:
                raise _unsupported(n, "addition of a constant")
            return Node(n.name, "add", ins)
        if fn is torch.flatten:
            start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
            if start != 1:
                raise _unsupported(n, f"torch.flatten(start_dim={start})")
            return Node(n.name, "flatten", _args(n))
        raise _unsupported(n, f"function {getattr(fn, '__name__', fn)}")
    if n.op == "call_method":
        if n.target == "relu":
            return Node(n.name, "relu", _args(n))
        if n.target == "flatten" and (n.args[1:2] == (1,) or n.kwargs.get("start_dim") == 1):
            return Node(n.name, "flatten", _args(n))
        raise _unsupported(n, f"method .{n.target}()")
    raise _unsupported(n, f"fx op {n.op}")


def _pair(v: Any) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class ActivationRange:
    """Calibration statistics of one node's output: max |x|, and the squared error of quantizing it to
    codes in [-qmax, qmax] at each candidate frac (``sse[f]``, f from the max-abs frac up)."""

    max_abs: float
    sse: Dict[int, float] = field(default_factory=dict)


def max_abs_frac(max_abs: float, limit: float) -> int:
    """The largest f with max_abs * 2^f <= limit (0 for an all-zero or non-finite range)."""
    if not max_abs > 0 or not math.isfinite(max_abs):
        return 0
    return int(math.floor(math.log2(limit / max_abs)))


@torch.no_grad()
def record_ranges(gm: fx.GraphModule, x: torch.Tensor, qmax: int = 127,
                  candidates: int = 3) -> Dict[str, ActivationRange]:
    """:class:`ActivationRange` of every node over the batch ``x`` (taken as each node runs, so an in-place
    ReLU after it does not change it), keyed by node name; squared errors at ``candidates`` fracs (the
    max-abs one and those above it; 0: max only)."""
    out: Dict[str, ActivationRange] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            r = super().run_node(n)
            if isinstance(r, torch.Tensor):
                m = float(r.detach().abs().max()) if r.numel() else 0.0
                sse: Dict[int, float] = {}
                if m > 0 and candidates > 0:
                    v, f0 = r.detach().double(), max_abs_frac(m, qmax)
                    sse = {f: float((v - (v * 2.0 ** f).round().clamp(-qmax, qmax) * 2.0 ** -f).square().sum())
                           for f in range(f0, f0 + candidates)}
                out[n.name] = ActivationRange(m, sse)
            return r

    _Recorder(gm).run(x)
    return out
