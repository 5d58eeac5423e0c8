"""Operation counting for any ``nn.Module``, for inference and for training: :func:`count_ops`.

One forward pass of a batch of one sample is run with hooks:

* module hooks count the layers that have a cost rule (:mod:`shiftadd.energy.rules`: registered
  per module type, or the module's own ``op_counts``); calls made inside such a layer (its own
  torch functions and child modules, the quantizers and pruning masks attached by
  shiftadd.quant / shiftadd.prune) are part of its count, never counted again;
* a ``TorchFunctionMode`` counts the functional calls made *outside* those layers (the
  residual ``out + shortcut``, ``F.relu``, ``F.adaptive_avg_pool2d``, ``F.conv2d`` /
  ``F.linear`` / ``matmul`` in user modules, ...) with the function rules; calls it cannot
  price are listed in :attr:`OpCounts.uncounted`, and so are leaf modules with parameters but
  no rule (only their functional calls are counted).

The counting semantics are documented in :mod:`shiftadd.energy.rules` and docs/energy.md.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from shiftadd.energy.records import WEIGHT_KINDS, LayerOps, OpCounts
from shiftadd.energy.rules import (
    _numel,
    FUNCTION_RULES, LAYOUT_FNS, OPTIMIZER_OPS, CostRule, FunctionCall, LayerCall, count_quantizers,
    find_cost_rule, quantized_weight_bits,
)
from shiftadd.errors import UserError
from shiftadd.nn import ADDER_TYPES


def _first_tensor(args: Sequence[Any]) -> Optional[torch.Tensor]:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    return None


def _output_tensor(out: Any) -> Optional[torch.Tensor]:
    return out if isinstance(out, torch.Tensor) else _first_tensor(out if isinstance(out, (tuple, list)) else ())


class _Recorder(TorchFunctionMode):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.names = {m: n for n, m in model.named_modules()}
        self.layers: List[LayerOps] = []
        self.uncounted: Dict[str, int] = defaultdict(int)
        self.stack: List[nn.Module] = []
        self.depth = 0  # > 0 while inside a layer that is counted as a whole
        self.busy = False
        self.seen_params: set = set()
        self.name_uses: Dict[str, int] = defaultdict(int)
        self.rules: Dict[nn.Module, Optional[CostRule]] = {}

    # ---- naming
    def _unique(self, name: str) -> str:
        self.name_uses[name] += 1
        n = self.name_uses[name]
        return name if n == 1 else f"{name}#{n}"

    def module_name(self, m: nn.Module) -> str:
        return self.names.get(m, type(m).__name__) or "(model)"

    def new_record(self, name: str, kind: str, module_type: str) -> LayerOps:
        rec = LayerOps(self._unique(name), kind, module_type)
        self.layers.append(rec)
        return rec

    def claim_params(self, rec: LayerOps, params: Iterable[torch.Tensor]) -> None:
        """Attribute the parameters not yet attributed to ``rec`` (each parameter counts once)."""
        for p in params:
            if id(p) in self.seen_params:
                continue
            self.seen_params.add(id(p))
            rec.params += p.numel()
            if p.requires_grad:
                rec.trainable_params += p.numel()

    def _counted(self, m: nn.Module) -> bool:
        rule = self.rules.get(m)
        return rule is not None and rule.kind != "container"

    # ---- module hooks
    def pre_hook(self, m: nn.Module, args: Any) -> None:
        self.stack.append(m)
        if self._counted(m):
            self.depth += 1

    def post_hook(self, m: nn.Module, args: Any, out: Any) -> None:
        try:
            if self._counted(m):
                if self.depth == 1:  # the outermost counted layer
                    self.busy = True
                    try:
                        self.count_module(m, self.rules[m], args, out)
                    finally:
                        self.busy = False
                self.depth -= 1
        finally:
            if self.stack and self.stack[-1] is m:
                self.stack.pop()

    def count_module(self, m: nn.Module, rule: CostRule, args: Any, out: Any) -> None:
        if rule.count is None:  # a free layer
            return
        args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
        x, y = _first_tensor(args), _output_tensor(out)
        call = LayerCall(m, args, out, x, y, _numel(x), _numel(y), isinstance(x, torch.Tensor) and x.requires_grad)
        rec = self.new_record(self.module_name(m), rule.kind, type(m).__name__)
        rec.input_numel, rec.output_numel = call.in_numel, call.out_numel
        self.claim_params(rec, m.parameters(recurse=rule.all_params))
        weight_layer = rule.kind in WEIGHT_KINDS
        if weight_layer and rec.params:  # first call of this layer: its stored weights
            with torch.no_grad():
                rec.weight_elems = int(m.weight.numel())
            rec.bias_elems = _numel(getattr(m, "bias", None))
        rule.count(rec, call)
        if weight_layer:
            rec.weight_bits = rec.weight_bits or quantized_weight_bits(m)
            count_quantizers(rec, m, call.in_numel, call.out_numel, call.input_grad,
                             isinstance(y, torch.Tensor) and y.requires_grad)

    # ---- functional calls outside counted layers
    def __torch_function__(self, func: Callable, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.busy or self.depth > 0:
            return out
        self.busy = True
        try:
            self.count_function(func, args, kwargs, out)
        finally:
            self.busy = False
        return out

    def count_function(self, func: Callable, args: Sequence[Any], kwargs: Dict[str, Any], out: Any) -> None:
        fname = getattr(func, "__name__", None) or str(func)
        if fname in LAYOUT_FNS:
            return
        y = _output_tensor(out)
        if y is None or not y.is_floating_point():
            return
        rule = FUNCTION_RULES.get(fname)
        if rule is None:
            self.uncounted[fname] += 1
            return
        tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
        owner = self.module_name(self.stack[-1]) if self.stack else "(model)"

        def record(kind: str) -> LayerOps:
            return self.new_record(f"{owner}:{fname}", kind, fname)

        call = FunctionCall(fname, args, kwargs, tensors, tensors[0] if tensors else None, y.numel(),
                            any(t.requires_grad for t in tensors), record, self.claim_params)
        if not rule(call):
            self.uncounted[fname] += 1


def _surrogate(m: nn.Module) -> Optional[Callable[..., torch.Tensor]]:
    """A cheap stand-in for an adder layer's forward with the same output shape.

    The values do not matter for counting; a convolution with the same geometry is 10-100x
    faster than the L1-distance reference kernel.
    """
    if not isinstance(m, ADDER_TYPES):
        return None
    if hasattr(m, "in_features"):
        return lambda x: F.linear(x, m.weight, m.bias)
    conv = F.conv1d if m.weight.dim() == 3 else F.conv2d
    return lambda x: conv(x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DataParallel / DistributedDataParallel / torch.compile wrappers
    (counting runs one local forward pass; a DDP forward would start collective operations)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if isinstance(model, (DataParallel, DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def count_ops(model: nn.Module, input_shape: Sequence[int], optimizer: Optional[str] = "sgd",
              example_input: Optional[torch.Tensor] = None) -> OpCounts:
    """Count the operations of ``model`` on inputs of ``input_shape`` = (batch, ...).

    One sample is run (in eval mode, the model's mode is restored afterwards); per-sample
    counts are stored and scaled by the batch size when asked for a batch. ``optimizer``
    ("sgd", "adam" or None) sets the per-parameter work of a training step's update.
    ``example_input`` (a batch of one) replaces the zeros used by default, for models whose
    forward needs particular values or dtypes.
    """
    if not isinstance(model, nn.Module):
        raise UserError(f"count_ops needs an nn.Module, got {type(model).__name__}")
    model = unwrap(model)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise UserError(f"input_shape must be (batch, ...) with positive sizes, got {tuple(input_shape)}")
    if optimizer is not None and optimizer not in OPTIMIZER_OPS:
        raise UserError(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZER_OPS)} or None")
    batch = shape[0]
    ref = next(iter(model.parameters()), None)
    if example_input is None:
        device = ref.device if ref is not None else torch.device("cpu")
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
        example_input = torch.zeros((1,) + shape[1:], device=device, dtype=dtype)
    rec = _Recorder(model)
    handles = []
    patched: List[nn.Module] = []
    was_training = model.training
    try:
        for m in model.modules():
            rec.rules[m] = find_cost_rule(m)
            # first of the pre-hooks: the transforms of shiftadd.quant (quantizers, pruning masks) run
            # inside the layer's count, not as functional calls of their own
            handles.append(m.register_forward_pre_hook(rec.pre_hook, prepend=True))
            handles.append(m.register_forward_hook(rec.post_hook, always_call=True))
            stand_in = _surrogate(m)
            if stand_in is not None and "forward" not in m.__dict__:
                m.forward = stand_in  # type: ignore[method-assign]
                patched.append(m)
        model.eval()
        with torch.enable_grad(), rec:
            model(example_input)
    finally:
        for h in handles:
            h.remove()
        for m in patched:
            del m.forward
        model.train(was_training)
    # parameters never touched by a counted layer (e.g. used only in uncounted functions)
    rest = LayerOps("(other parameters)", "other", "-")
    rec.claim_params(rest, model.parameters())
    if rest.params:
        rec.layers.append(rest)
    if optimizer is not None:
        trainable = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values() if p.requires_grad)
        opt = LayerOps("(optimizer)", "optimizer", optimizer)
        per = OPTIMIZER_OPS[optimizer]
        opt.add("update", "optimizer", **{op: n * trainable for op, n in per.items()})
        if opt.items:
            rec.layers.append(opt)
    uncounted = [f"{k} (x{v})" for k, v in sorted(rec.uncounted.items())]
    for m in model.modules():
        if rec.rules.get(m) is None and list(m.parameters(recurse=False)) and not any(True for _ in m.children()):
            uncounted.append(f"module {rec.module_name(m)} ({type(m).__name__}): only its functional calls are counted")
    return OpCounts(rec.layers, shape, batch, optimizer, uncounted)
