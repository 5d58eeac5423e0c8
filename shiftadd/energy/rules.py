"""Cost rules: what one call of a layer (or of a torch function) costs, per phase and role.

Rules are registered per module type and found along the module's MRO, so a layer type brings
its own cost instead of another branch in the recorder (:mod:`shiftadd.energy.recorder`)::

    @cost_rule(MyNorm, kind="norm")
    def _my_norm(rec: LayerOps, call: LayerCall) -> None:
        rec.add("forward", "main", mult=call.out_numel, add=call.out_numel)

A rule's function gets the layer's record (:class:`~shiftadd.energy.records.LayerOps`, its
parameters already claimed) and the call (:class:`LayerCall`) and adds counts with
``rec.add(phase, role, op=count)``. ``kind="container"`` means "count the children instead",
``kind="free"`` a layer that costs nothing (both without a function).

How a layer brings its own cost (no registration needed)
--------------------------------------------------------
A module class that defines ``op_counts`` itself (and has no registered rule earlier in its MRO)
is counted by that method::

    def op_counts(self, input_shapes: Sequence[Tuple[int, ...]]) -> Dict[str, Dict[str, int]]:

* ``input_shapes``: the shapes of the tensor positional arguments of one call, in order, for a
  batch of ONE sample (counting runs one sample and scales by the batch size);
* returns ``{phase: {op: count}}`` with phases of :data:`~shiftadd.energy.records.PHASES`
  (``forward`` = inference; ``train_forward`` only where training's forward differs, it falls
  back to ``forward``; ``grad_input``; ``grad_weight``; ``update`` = once per optimisation step)
  and ops ``mult``, ``add``, ``shift``, ``abs``, ``cmp`` (priced by the energy table) or ``move``
  (one element read or written, priced as data movement). Missing phases cost nothing;
* the counter keeps ``grad_input`` only when a tensor input requires a gradient and
  ``grad_weight``/``update`` only when one of the module's parameters (its children's included)
  does; everything the call does inside (child modules, torch functions) is covered by these
  counts and not counted again. All the module's parameters are attributed to its record. The
  record's kind is the class attribute ``energy_kind`` (default ``"custom"``).

The spatial-shift modules (:data:`shiftadd.nn.SPATIAL_SHIFT_TYPES`) keep their own forward-only
form, ``op_counts(input_shape) -> {"moves", "mults", "adds"}`` (``ShortcutShift``: the list of
its parts' shapes), through a registered rule that derives their backward (below).

Counting semantics (per sample; T = output elements x weights per output element):

=============  =============================  =====================================  ========================
layer          forward                        input gradient                         weight gradient
=============  =============================  =====================================  ========================
conv / linear  T mult + T add                 T mult + T add                         T mult + T add
adder          2T add (x - w, accumulate)     T mult (HT(w - x) * g), 2T add,        T mult ((x - w) * g),
               + T abs                        2T cmp (HardTanh clamp)                2T add
shift          S shift + S add                S shift + S add (transposed conv by    T mult + T add (x * g is
               (S = nonzero weights x         the same power-of-two weights)         a dense product)
               output positions)
shift-add      its shift layer + its adder layer
=============  =============================  =====================================  ========================

With ``grad_mode="sign"`` the adder's gradient products become sign tests (2T add + T cmp
per gradient). Full rules: docs/energy.md.

Spatial shifts (kind "spatial_shift") cost what their ``op_counts`` say: "moves" become the op
``move`` (one element read or written, priced as data movement at the memory level, see
:data:`~shiftadd.energy.records.MEMORY_OPS`), plus the interpolation mults/adds of active shift.
Input gradient: the opposite shift, the same counts. Shift gradient of active and sparse shifts
(ASL Eq. 4): 2^dim corner maps read, multiplied by g and summed, i.e. 2^dim (move + mult + add)
per output element. Per-channel work (rounding the shifts, interpolation weights, gradient
normalisation, the L1 penalty) is not counted.

Quantizers of shiftadd.quant (roles :data:`QUANT_ROLES`): quantizing n elements costs n
(shift for a power-of-two scale, else mult) + n add (round) + 2n cmp (clamp), plus n abs + n cmp
when the range max|x| is found at run time. The input is quantized every pass (forward; 1 cmp per
element for the straight-through backward), the output error per sample (grad_input phase), the
weight and the weight gradient once per training step ("update"); a quantized weight is stored at
the quantizer's bits. A pruning mask costs nothing (it selects stored zeros).

A pruned (zero) adder weight still costs |x - 0|; a zero (or masked) shift weight costs nothing. Bias:
one add per output element. The sign of a shift weight and the minus of the adder output
are folded into the accumulation (an add becomes a subtract) and cost nothing extra.

Training only, once per step ("update" phase): weight quantizers of shift layers, the
chain rule of DeepShift-PS (dL/dp = dL/dw * w * ln2, dL/ds = dL/dw * 2^p), AdderNet's
adaptive learning rate (a norm and a rescale of each adder layer's gradient) and the
optimizer's update (:data:`OPTIMIZER_OPS`). BatchNorm, activations, pooling and residual adds
have their own kinds.

Functional calls made outside counted layers are priced by the function rules of
:data:`FUNCTION_RULES` (by the function's name); calls without a rule are reported as uncounted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn

from shiftadd.energy.costs import OPS
from shiftadd.energy.records import MEMORY_OPS, PHASES, Counts, LayerOps
from shiftadd.errors import UserError
from shiftadd.nn import ADDER_TYPES, SHIFT_TYPES, SHIFTADD_TYPES, SPATIAL_SHIFT_TYPES

#: Role of each quantized tensor of a layer (see :func:`count_quantizers`).
QUANT_ROLES = {"activation": "quant_act", "weight": "quant_weight", "grad_output": "quant_grad_output",
               "weight_grad": "quant_weight_grad"}

#: Per-parameter work of one optimizer step (mult, add): SGD with momentum and weight
#: decay (g += wd*w; v = m*v + g; w -= lr*v) and Adam (two moment updates, bias-corrected step).
OPTIMIZER_OPS = {"sgd": {"mult": 3, "add": 3}, "adam": {"mult": 7, "add": 4}}

#: Ops a rule or an ``op_counts`` method may count.
COUNTED_OPS = OPS + MEMORY_OPS


# --------------------------------------------------------------------------- helpers

def _out_channels(m: nn.Module) -> int:
    return int(getattr(m, "out_channels", None) or getattr(m, "out_features"))


def _own_params(m: nn.Module) -> List[nn.Parameter]:
    return list(m.parameters(recurse=False))


def _needs_grad(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.requires_grad


def _numel(t: Any) -> int:
    if isinstance(t, torch.Tensor):
        return int(t.numel())
    if isinstance(t, (tuple, list)):
        return sum(_numel(x) for x in t)
    return 0


def _window(kernel: Any, dims: int) -> int:
    if kernel is None:
        return 0
    if isinstance(kernel, int):
        return kernel ** dims
    return int(math.prod(int(k) for k in kernel))


# --------------------------------------------------------------------------- registry of module rules

@dataclass(frozen=True)
class LayerCall:
    """One call of a counted module as a cost rule sees it (a batch of one sample)."""

    module: nn.Module
    inputs: Tuple[Any, ...]       # the positional arguments
    output: Any
    x: Optional[torch.Tensor]     # the first tensor argument
    y: Optional[torch.Tensor]     # the output tensor (the first one of a tuple output)
    in_numel: int                 # elements of x
    out_numel: int                # elements of y
    input_grad: bool              # x requires a gradient


RuleFn = Callable[[LayerOps, LayerCall], None]


@dataclass(frozen=True)
class CostRule:
    """How a module type is counted: the record ``kind`` and the function adding its counts.

    ``count=None``: the module costs nothing itself (``kind="free"``: counted as a whole, nothing
    inside is counted; ``kind="container"``: its children and functional calls are counted).
    ``all_params``: attribute the children's parameters to this record too (else its own only).
    """

    kind: str
    count: Optional[RuleFn] = None
    all_params: bool = False


_RULES: Dict[type, CostRule] = {}

ModuleTypes = Union[Type[nn.Module], Sequence[Type[nn.Module]]]


def register_cost_rule(types: ModuleTypes, kind: str, count: Optional[RuleFn] = None) -> None:
    """Count modules of ``types`` (and their subclasses) with ``count(rec, call)`` as records of ``kind``."""
    for t in (types,) if isinstance(types, type) else tuple(types):
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise UserError(f"register_cost_rule needs nn.Module subclasses, got {t!r}")
        _RULES[t] = CostRule(kind, count)


def cost_rule(*types: Type[nn.Module], kind: str) -> Callable[[RuleFn], RuleFn]:
    """Decorator form of :func:`register_cost_rule`: ``@cost_rule(nn.Conv2d, kind="conv")``."""
    def deco(fn: RuleFn) -> RuleFn:
        register_cost_rule(types, kind, fn)
        return fn
    return deco


def find_cost_rule(m: nn.Module) -> Optional[CostRule]:
    """The rule of the first class in ``type(m).__mro__`` that has one registered or defines
    ``op_counts`` (a registered rule wins in the same class); None: the module is not counted
    as a whole, its functional calls are."""
    for cls in type(m).__mro__:
        rule = _RULES.get(cls)
        if rule is not None:
            return rule
        if "op_counts" in cls.__dict__:
            return CostRule(str(getattr(m, "energy_kind", "custom")), count_own_op_counts, all_params=True)
    return None


def count_own_op_counts(rec: LayerOps, call: LayerCall) -> None:
    """A module that brings its own cost: ``op_counts(input_shapes) -> {phase: {op: count}}``."""
    m = call.module
    inputs = [a for a in call.inputs if isinstance(a, torch.Tensor)]
    rec.input_numel, rec.output_numel = _numel(inputs), _numel(call.output)
    counts = m.op_counts([tuple(t.shape) for t in inputs])
    where = f"{type(m).__name__}.op_counts"
    if not isinstance(counts, Mapping):
        raise UserError(f"{where} must return a dict {{phase: {{op: count}}}}, got {type(counts).__name__}")
    input_grad = any(t.requires_grad for t in inputs)
    trainable = any(p.requires_grad for p in m.parameters())
    for phase, ops in counts.items():
        if phase not in PHASES:
            raise UserError(f"{where} returned phase {phase!r}; use {', '.join(PHASES)}")
        if not isinstance(ops, Mapping) or any(op not in COUNTED_OPS for op in ops):
            raise UserError(f"{where} phase {phase!r} must map ops ({', '.join(COUNTED_OPS)}) to counts, got {ops!r}")
        if phase == "grad_input" and not input_grad:
            continue
        if phase in ("grad_weight", "update") and not trainable:
            continue
        rec.add(phase, "main", **ops)


# --------------------------------------------------------------------------- formulas

def count_multiplicative(rec: LayerOps, terms: int, out_numel: int, has_bias: bool, bias_grad: bool,
                         input_grad: bool, weight_grad: bool) -> None:
    """conv / linear / matmul: a multiply-accumulate per term, the same again per gradient."""
    rec.add("forward", "main", mult=terms, add=terms)
    if has_bias:
        rec.add("forward", "bias", add=out_numel)
    if input_grad:  # dX = W^T g (transposed convolution)
        rec.add("grad_input", "main", mult=terms, add=terms)
    if weight_grad:  # dW = sum x * g
        rec.add("grad_weight", "main", mult=terms, add=terms)
    if bias_grad:
        rec.add("grad_weight", "bias", add=out_numel)


def count_batchnorm(rec: LayerOps, numel: int, input_grad: bool, affine_grad: bool, stats: bool = False) -> None:
    """BatchNorm (``stats=False``: running statistics at inference) or Group/Layer/InstanceNorm."""
    if stats:  # Group/Layer/InstanceNorm compute statistics at inference too
        rec.add("forward", "main", mult=3 * numel, add=4 * numel)
    else:  # inference: running statistics folded into one scale and one shift per element
        rec.add("forward", "main", mult=numel, add=numel)
    # training: mean (add), x - mu (add), (x - mu)^2 (mult), var (add), * invstd (mult), * gamma, + beta
    rec.add("train_forward", "main", mult=3 * numel, add=4 * numel)
    if input_grad:  # dx = gamma*invstd*(g - mean(g) - xhat*mean(g*xhat)): 2 mult, 2 add per element
        rec.add("grad_input", "main", mult=2 * numel, add=2 * numel)
    if affine_grad:  # dgamma = sum g*xhat (mult + add), dbeta = sum g (add)
        rec.add("grad_weight", "main", mult=numel, add=2 * numel)


def count_activation(rec: LayerOps, cmp: int, mult: int, numel: int, input_grad: bool) -> None:
    """An element-wise activation: ``cmp`` comparisons and ``mult`` products per element, both ways."""
    rec.add("forward", "main", cmp=cmp * numel, mult=mult * numel)
    if input_grad:
        rec.add("grad_input", "main", cmp=cmp * numel, mult=mult * numel)


def count_pool(rec: LayerOps, is_max: bool, window: int, out_numel: int, input_grad: bool) -> None:
    """Max pooling (comparisons) or average pooling (additions and one scaling) over ``window``."""
    window = max(window, 1)
    if is_max:  # window - 1 comparisons per output; the gradient is routed by the saved index
        rec.add("forward", "main", cmp=(window - 1) * out_numel)
    else:  # window - 1 additions and one scaling by 1/window per output
        rec.add("forward", "main", add=(window - 1) * out_numel, mult=out_numel)
        if input_grad:
            rec.add("grad_input", "main", mult=out_numel)


# --------------------------------------------------------------------------- weight layers

@cost_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d, kind="conv")
@cost_rule(nn.Linear, kind="linear")
def _conv_or_linear(rec: LayerOps, call: LayerCall) -> None:
    m = call.module
    bias = getattr(m, "bias", None)
    rec.moves_data = True
    w = m.weight
    terms = call.out_numel * (w.numel() // _out_channels(m))
    count_multiplicative(rec, terms, call.out_numel, bias is not None, _needs_grad(bias), call.input_grad,
                         w.requires_grad)


@cost_rule(*ADDER_TYPES, kind="adder")
def _adder(rec: LayerOps, call: LayerCall) -> None:
    m = call.module
    count_adder(rec, m, call.out_numel * (m.weight.numel() // _out_channels(m)), call.out_numel, call.input_grad)


def count_adder(rec: LayerOps, m: nn.Module, terms: int, out_numel: int, input_grad: bool) -> None:
    """An adder layer with ``terms`` |x - w| terms per sample (its ``weight``, ``bias``, ``grad_mode``)."""
    rec.moves_data = True
    # AdderNet Eq. (2): Y = -sum |X - F|: per term a subtraction, an |.| and an accumulation.
    rec.add("forward", "main", add=2 * terms, abs=terms)
    bias = getattr(m, "bias", None)
    if bias is not None:
        rec.add("forward", "bias", add=out_numel)
    full = getattr(m, "grad_mode", "full") == "full"
    if input_grad:
        if full:  # Eq. (6): dX = sum HT(F - X) * g: subtract, clamp to [-1, 1], multiply, accumulate
            rec.add("grad_input", "main", mult=terms, add=2 * terms, cmp=2 * terms)
        else:  # sign(F - X) * g: subtract, sign test, conditional negate folded into the accumulate
            rec.add("grad_input", "main", add=2 * terms, cmp=terms)
    w = m.weight
    if w.requires_grad:
        if full:  # Eq. (5): dF = sum (X - F) * g, a full-precision product
            rec.add("grad_weight", "main", mult=terms, add=2 * terms)
        else:
            rec.add("grad_weight", "main", add=2 * terms, cmp=terms)
        k = w.numel()
        # Eq. (7)-(8): g <- eta * sqrt(k) * g / ||g||_2 : ||g||^2 (k mult, k add), then k mult
        rec.add("update", "adaptive_lr", mult=2 * k, add=k)
    if bias is not None and bias.requires_grad:
        rec.add("grad_weight", "bias", add=out_numel)


def effective_shift_weight(m: nn.Module) -> torch.Tensor:
    """A bit-shift layer's weight as its forward pass uses it: deterministically rounded (a stochastic
    layer in training mode would otherwise give a random count), the pruning mask applied."""
    from shiftadd.prune import get_mask

    mask = get_mask(m)
    if mask is not None:
        mask = mask.to(next(m.parameters()).device)
    with torch.no_grad():
        return m.effective_weight(stochastic=False, mask=mask).detach()


@cost_rule(*SHIFT_TYPES, kind="shift")
def _shift(rec: LayerOps, call: LayerCall) -> None:
    m, out_numel, in_numel, input_grad = call.module, call.out_numel, call.in_numel, call.input_grad
    rec.moves_data = True
    weight = effective_shift_weight(m)
    rec.weight_bits = int(getattr(m, "weight_bits", 0)) or None
    terms = out_numel * (weight.numel() // _out_channels(m))
    c_out = _out_channels(m)
    nonzero = int(torch.count_nonzero(weight).item())
    s_terms = nonzero * (out_numel // c_out)  # a zero shift weight costs nothing
    rec.add("forward", "main", shift=s_terms, add=s_terms)
    bias = getattr(m, "bias", None)
    if bias is not None:
        rec.add("forward", "bias", add=out_numel)
    act = getattr(m, "activation_bits", None)
    if act is not None:  # round(x * 2^f) / 2^f clamped: 2 shifts, a rounding add, 2 compares
        rec.add("forward", "act_quant", shift=2 * in_numel, add=in_numel, cmp=2 * in_numel)
    if input_grad:  # dX = transposed conv of g by the same power-of-two weights (DeepShift)
        rec.add("grad_input", "main", shift=s_terms, add=s_terms)
        if act is not None:  # straight-through estimator masked by the clamp
            rec.add("grad_input", "act_quant", cmp=in_numel)
    own = _own_params(m)
    weight_params = [p for p in own if p is not bias]
    trainable = any(p.requires_grad for p in weight_params)
    if trainable:
        rec.add("grad_weight", "main", mult=terms, add=terms)  # dW = sum x * g, dense
        k = weight.numel()
        if getattr(m, "mode", "ps") == "ps":
            # w = s * 2^round(clamp(p)): clamp p (2 cmp), round p (add), ternary s (2 cmp + add),
            # build 2^p (shift); backward dL/dp = dL/dw * w * ln2 (2 mult), dL/ds = dL/dw * 2^p (mult)
            rec.add("update", "weight_quant", cmp=4 * k, add=2 * k, shift=k, mult=3 * k)
        else:
            # w = sign(w) * 2^round(log2|w|): |w|, log2 (leading one + 1 cmp), round (add),
            # clamp (2 cmp), sign (cmp), build 2^p (shift); straight-through backward
            rec.add("update", "weight_quant", abs=k, cmp=4 * k, add=k, shift=k)
    if bias is not None and bias.requires_grad:
        rec.add("grad_weight", "bias", add=out_numel)


register_cost_rule(SHIFTADD_TYPES, "container")  # its .shift and .adder children are counted


# --------------------------------------------------------------------------- spatial shifts

def _spatial_shift_ops(m: nn.Module, inputs: Sequence[torch.Tensor]) -> Counts:
    """The spatial-shift module's own ``op_counts`` for this call, as counting ops.

    Counting runs a batch of one sample, so these are per-sample counts. ``ShortcutShift``
    takes the shapes of all its parts, the other modules the shape of their input.
    """
    from shiftadd.nn.spatial_shift import ShortcutShift

    shapes = [tuple(t.shape) for t in inputs]
    c = m.op_counts(shapes) if isinstance(m, ShortcutShift) else m.op_counts(shapes[0])
    return {"move": c.get("moves", 0), "mult": c.get("mults", 0), "add": c.get("adds", 0)}


@cost_rule(*SPATIAL_SHIFT_TYPES, kind="spatial_shift")
def _spatial_shift(rec: LayerOps, call: LayerCall) -> None:
    """Spatial shift: element moves (data movement) plus the interpolation arithmetic of active shift."""
    m = call.module
    inputs = [a for a in call.inputs if isinstance(a, torch.Tensor)]
    rec.input_numel, rec.output_numel = _numel(inputs), _numel(call.output)
    ops = _spatial_shift_ops(m, inputs)
    rec.add("forward", "main", **ops)
    if any(t.requires_grad for t in inputs):  # the adjoint: the opposite shift, same counts
        rec.add("grad_input", "main", **ops)
    shift = getattr(m, "shift", None)  # the real-valued shifts of active and sparse shift layers
    if isinstance(shift, nn.Parameter) and shift.requires_grad:
        # ASL Eq. 4 (also sparse shift's backward): each of the 2^dim corner maps read, times g, summed
        n = 2 ** shift.shape[1] * rec.output_numel
        rec.add("grad_weight", "main", move=n, mult=n, add=n)


# --------------------------------------------------------------------------- other layers

@cost_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, kind="norm")
def _batchnorm(rec: LayerOps, call: LayerCall) -> None:
    affine = any(p.requires_grad for p in _own_params(call.module))
    count_batchnorm(rec, call.out_numel, call.input_grad, affine, stats=False)


@cost_rule(nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, kind="norm")
def _norm_with_statistics(rec: LayerOps, call: LayerCall) -> None:
    affine = any(p.requires_grad for p in _own_params(call.module))
    count_batchnorm(rec, call.out_numel, call.input_grad, affine, stats=True)


def _activation_rule(cmp: int, mult: int) -> RuleFn:
    def count(rec: LayerOps, call: LayerCall) -> None:
        count_activation(rec, cmp, mult, call.out_numel, call.input_grad)
    return count


# Activations: (cmp, mult) per element, forward and input gradient alike.
for _types, _cost in (((nn.ReLU, nn.Threshold), (1, 0)), ((nn.ReLU6, nn.Hardtanh), (2, 0)),
                      ((nn.LeakyReLU, nn.PReLU), (1, 1))):
    register_cost_rule(_types, "activation", _activation_rule(*_cost))


def _pool_rule(is_max: bool) -> RuleFn:
    def count(rec: LayerOps, call: LayerCall) -> None:
        x, in_numel, out_numel = call.x, call.in_numel, call.out_numel
        ks = getattr(call.module, "kernel_size", None)
        window = _window(ks, max(1, (x.dim() - 2) if x is not None else 1)) if ks is not None else 0
        if not window:  # adaptive pooling: average window size
            window = max(1, round(in_numel / max(out_numel, 1)))
        count_pool(rec, is_max, window, out_numel, call.input_grad)
    return count


register_cost_rule((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                    nn.AdaptiveMaxPool3d), "pool", _pool_rule(is_max=True))
register_cost_rule((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                    nn.AdaptiveAvgPool3d), "pool", _pool_rule(is_max=False))


@cost_rule(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, kind="dropout")
def _dropout(rec: LayerOps, call: LayerCall) -> None:
    """Training only: x * mask / (1 - p) forward and backward."""
    rec.add("train_forward", "main", mult=call.out_numel)
    if call.input_grad:
        rec.add("grad_input", "main", mult=call.out_numel)


register_cost_rule((nn.Identity, nn.Flatten, nn.Unflatten, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d),
                   "free")


# --------------------------------------------------------------------------- quantizers of a weight layer

def _quantized_tensors(t: nn.Module) -> List[Tuple[str, Any, bool]]:
    """(tensor kind, TensorQuant, range found at run time?) of each tensor that transform ``t`` quantizes.

    A LayerQuantizer quantizes the tensors of its config (not the weight of a bit-shift layer,
    whose own ``weight_bits`` govern); a SharedScaleQuantizer the input (calibrated range) and
    the weight (range max|w|). Other transforms (pruning masks) quantize nothing.
    """
    from shiftadd.quant.qat import LayerQuantizer
    from shiftadd.quant.shared import SharedScaleQuantizer

    if isinstance(t, LayerQuantizer):
        specs = {k: getattr(t.config, k) for k in QUANT_ROLES}
        if not t._quantizes_weight():
            specs["weight"] = None
        return [(k, spec, spec.frac_bits is None) for k, spec in specs.items() if spec is not None]
    if isinstance(t, SharedScaleQuantizer):
        return [("activation", t.spec, False), ("weight", t.spec, True)]
    return []


def _layer_transforms(m: nn.Module) -> List[nn.Module]:
    """The transforms (quantizers, pruning masks) attached to layer ``m`` by shiftadd.quant / shiftadd.prune."""
    from shiftadd.quant.hooks import transforms

    return transforms(m)


def quantized_weight_bits(m: nn.Module) -> Optional[int]:
    """Storage bits of a weight that an attached quantizer rounds to a fixed-point format (None: none does)."""
    for t in _layer_transforms(m):
        for tensor, spec, _ in _quantized_tensors(t):
            if tensor == "weight":
                return int(spec.bits)
    return None


def _quantizer_ops(spec: Any, n: int, runtime_range: bool) -> Counts:
    """Quantizing ``n`` elements to ``spec``, q = clamp(round(x / s), qmin, qmax).

    Per element: the scaling (a shift for a power-of-two scale, else a mult), the rounding (an
    add) and the clamp (2 cmp); a range found at run time (max|x|) adds 1 abs + 1 cmp. The
    rescaling q * s is folded into the next layer's scale (BatchNorm) and not counted.
    """
    ops = {"shift" if spec.scale == "pow2" else "mult": n, "add": n, "cmp": 2 * n}
    if runtime_range:
        ops["abs"] = n
        ops["cmp"] += n
    return ops


def count_quantizers(rec: LayerOps, m: nn.Module, in_numel: int, out_numel: int, input_grad: bool,
                     output_grad: bool) -> None:
    """The quantizers attached to layer ``m`` (roles :data:`QUANT_ROLES`).

    Input: every element of every pass (inference too), straight-through backward (1 cmp).
    Output error: every element, in the input-gradient phase. Weight and weight gradient: once
    per training step (the weights change once per step; stored quantized for inference).
    """
    from shiftadd.quant.hooks import weight_param_names

    weights = [m._parameters[n] for n in weight_param_names(m) if m._parameters.get(n) is not None]
    k = sum(p.numel() for p in weights)
    trainable = any(p.requires_grad for p in weights)
    for t in _layer_transforms(m):
        for tensor, spec, runtime_range in _quantized_tensors(t):
            role = QUANT_ROLES[tensor]
            if tensor == "activation":
                rec.add("forward", role, **_quantizer_ops(spec, in_numel, runtime_range))
                if input_grad:  # straight-through estimator, zero where clipped
                    rec.add("grad_input", role, cmp=in_numel)
            elif tensor == "grad_output":
                if output_grad:
                    rec.add("grad_input", role, **_quantizer_ops(spec, out_numel, runtime_range))
            elif trainable:
                rec.add("update", role, **_quantizer_ops(spec, k, runtime_range))
                if tensor == "weight":  # straight-through estimator of the weight gradient
                    rec.add("update", role, cmp=k)


# --------------------------------------------------------------------------- functional calls

@dataclass(frozen=True)
class FunctionCall:
    """One torch function call made outside counted layers, as a function rule sees it."""

    name: str
    args: Sequence[Any]
    kwargs: Mapping[str, Any]
    tensors: List[torch.Tensor]   # the tensor arguments (positional, then keyword)
    x: Optional[torch.Tensor]     # the first of them
    numel: int                    # elements of the (floating-point) output
    grad: bool                    # some tensor argument requires a gradient
    record: Callable[[str], LayerOps]                                # a new record of this kind
    claim: Callable[[LayerOps, Iterable[torch.Tensor]], None]       # attribute parameters to a record


#: A function rule adds its counts to a record it makes with ``call.record(kind)``; it returns
#: False when it cannot price the call (the call is reported as uncounted).
FunctionRuleFn = Callable[[FunctionCall], bool]

#: Function rules by the function's ``__name__``.
FUNCTION_RULES: Dict[str, FunctionRuleFn] = {}

#: Functional calls that move or reshape data but compute nothing.
LAYOUT_FNS = frozenset("""
__get__ __getitem__ __setitem__ __len__ __iter__ __format__ __repr__ __bool__ __index__ __reduce_ex__
size dim shape ndim numel view view_as reshape reshape_as flatten unflatten squeeze squeeze_ unsqueeze
unsqueeze_ permute transpose transpose_ t contiguous clone detach detach_ to type type_as float double half
cpu cuda pad constant_pad_nd cat concat stack split chunk narrow select expand expand_as repeat
zeros zeros_like ones ones_like empty empty_like new_zeros new_ones new_empty new_full full full_like
is_floating_point is_contiguous requires_grad_ data_ptr stride storage_offset element_size dtype device
get_device is_complex movedim moveaxis roll flip unbind tolist item channel_shuffle pixel_shuffle
pixel_unshuffle identity dropout dropout_ dropout1d dropout2d dropout3d feature_dropout alpha_dropout
""".split())


def function_rule(*names: str) -> Callable[[FunctionRuleFn], FunctionRuleFn]:
    """Register a rule for torch functions of these ``__name__``s."""
    def deco(fn: FunctionRuleFn) -> FunctionRuleFn:
        for name in names:
            FUNCTION_RULES[name] = fn
        return fn
    return deco


@function_rule("add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__", "__isub__",
               "subtract", "rsub")
def _fn_add(call: FunctionCall) -> bool:
    n = call.numel
    both = sum(1 for t in call.tensors if t.numel() > 1) >= 2
    rec = call.record("residual" if both else "elementwise")
    rec.output_numel = n
    rec.add("forward", "main", add=n)
    if both and call.grad:  # charged for the gradient sum at the fork feeding the two branches
        rec.add("grad_input", "main", add=n)
    return True


@function_rule("mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__", "__rtruediv__",
               "__itruediv__", "multiply", "divide", "true_divide")
def _fn_mul(call: FunctionCall) -> bool:
    n = call.numel
    rec = call.record("elementwise")
    rec.output_numel = n
    rec.add("forward", "main", mult=n)
    rec.add("grad_input", "main", mult=n * sum(1 for t in call.tensors if t.requires_grad))
    return True


def _fn_activation_rule(cmp: int, mult: int) -> FunctionRuleFn:
    def count(call: FunctionCall) -> bool:
        rec = call.record("activation")
        rec.output_numel = call.numel
        count_activation(rec, cmp, mult, call.numel, call.grad)
        return True
    return count


for _names, _cost in ((("relu", "relu_", "threshold", "threshold_", "clamp_min", "clamp_max"), (1, 0)),
                      (("relu6", "hardtanh", "hardtanh_", "clamp", "clamp_", "clip"), (2, 0)),
                      (("leaky_relu", "leaky_relu_"), (1, 1))):
    function_rule(*_names)(_fn_activation_rule(*_cost))


def _fn_pool_rule(is_max: bool) -> FunctionRuleFn:
    def count(call: FunctionCall) -> bool:
        x, n, args, fname = call.x, call.numel, call.args, call.name
        rec = call.record("pool")
        rec.output_numel, rec.input_numel = n, _numel(x)
        ks = call.kwargs.get("kernel_size", args[1] if len(args) > 1 and "adaptive" not in fname else None)
        window = _window(ks, max(1, x.dim() - 2)) if ks is not None and x is not None else 0
        if not window:
            window = max(1, round(_numel(x) / max(n, 1)))
        count_pool(rec, is_max, window, n, call.grad)
        return True
    return count


function_rule("max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
              "adaptive_max_pool3d", "_max_pool1d", "_max_pool2d", "_max_pool3d", "max_pool1d_with_indices",
              "max_pool2d_with_indices")(_fn_pool_rule(is_max=True))
function_rule("avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
              "adaptive_avg_pool3d")(_fn_pool_rule(is_max=False))


@function_rule("mean", "sum")
def _fn_reduce(call: FunctionCall) -> bool:
    x, n = call.x, call.numel
    if x is None:
        return False
    rec = call.record("pool")
    rec.output_numel, rec.input_numel = n, x.numel()
    rec.add("forward", "main", add=max(x.numel() - n, 0), mult=n if call.name == "mean" else 0)
    if call.grad and call.name == "mean":
        rec.add("grad_input", "main", mult=n)
    return True


@function_rule("batch_norm")
def _fn_batch_norm(call: FunctionCall) -> bool:
    x, n, args = call.x, call.numel, call.args
    if x is None:
        return False
    rec = call.record("norm")
    rec.output_numel = n
    w = args[3] if len(args) > 3 else call.kwargs.get("weight")
    count_batchnorm(rec, n, x.requires_grad, _needs_grad(w))
    return True


@function_rule("conv1d", "conv2d", "conv3d", "linear")
def _fn_conv_or_linear(call: FunctionCall) -> bool:
    x, n, args = call.x, call.numel, call.args
    w = args[1] if len(args) > 1 else call.kwargs.get("weight")
    b = args[2] if len(args) > 2 else call.kwargs.get("bias")
    if not isinstance(w, torch.Tensor) or x is None:
        return False
    rec = call.record("linear" if call.name == "linear" else "conv")
    rec.input_numel, rec.output_numel, rec.moves_data = x.numel(), n, True
    call.claim(rec, [t for t in (w, b) if isinstance(t, torch.Tensor)])
    rec.weight_elems = int(w.numel()) if rec.params else 0
    rec.bias_elems = _numel(b) if rec.params else 0
    terms = n * (w.numel() // w.shape[0])
    count_multiplicative(rec, terms, n, b is not None, _needs_grad(b), x.requires_grad, w.requires_grad)
    return True


@function_rule("matmul", "mm", "bmm", "__matmul__", "__rmatmul__")
def _fn_matmul(call: FunctionCall) -> bool:
    if len(call.tensors) < 2:
        return False
    a, b = call.tensors[0], call.tensors[1]
    rec = call.record("matmul")
    rec.output_numel = call.numel
    terms = call.numel * int(a.shape[-1])
    count_multiplicative(rec, terms, call.numel, False, False, a.requires_grad, b.requires_grad)
    return True


# --------------------------------------------------------------------------- sequence models
# Transcendental functions in the priced ops (division is priced as one mult, like the "div" rule):
#: exp(x) = 2^(x log2 e): 1 mult, the integer part (1 add), 2^fraction by a cubic (Horner: 3 mult,
#: 3 add), then the scaling by 2^integer (1 shift on the exponent).
EXP_OPS: Counts = {"mult": 4, "add": 4, "shift": 1}
#: sigmoid(x) = 1 / (1 + exp(-x)): exp, 1 add, 1 division.
SIGMOID_OPS: Counts = {"mult": EXP_OPS["mult"] + 1, "add": EXP_OPS["add"] + 1, "shift": EXP_OPS["shift"]}


def _times(ops: Mapping[str, int], n: int, **extra: int) -> Counts:
    """``ops`` per element times ``n`` elements, plus ``extra`` per element."""
    out = {op: k * n for op, k in ops.items()}
    for op, k in extra.items():
        out[op] = out.get(op, 0) + k * n
    return out


def count_softmax(rec: LayerOps, numel: int, input_grad: bool, role: str = "main",
                  grad_phase: str = "grad_input") -> None:
    """softmax over rows of ``numel`` elements in all: per element the row max (1 cmp), x - max (add),
    exp, the row sum (add) and the division by it (mult); backward dx = y * (g - sum(g * y)):
    2 mult + 2 add per element (charged to ``grad_phase``)."""
    rec.add("forward", role, **_times(EXP_OPS, numel, cmp=1, add=2, mult=1))
    if input_grad:
        rec.add(grad_phase, role, mult=2 * numel, add=2 * numel)


def _lightweight_kernel(m: nn.Module) -> int:
    return int(m.weight.numel())  # (H, K)


def _lightweight_terms(call: LayerCall) -> int:
    """Terms of a lightweight time convolution: every output element (T x C) reads K inputs."""
    return call.out_numel * int(call.module.kernel_size)


def _register_sequence_rules() -> None:
    from shiftadd.nn.lightweight import AdderLightweightConv1d, LightweightConv1d

    @cost_rule(LightweightConv1d, kind="conv")
    def _lightweight(rec: LayerOps, call: LayerCall) -> None:
        """Wu et al.: a depthwise conv (T x C x K multiply-accumulates), its kernel softmax-normalised over K
        per head (H x K elements, once per call) and, while training, weight dropout on it."""
        m = call.module
        rec.moves_data = True
        w, bias = m.weight, m.bias
        count_multiplicative(rec, _lightweight_terms(call), call.out_numel, bias is not None, _needs_grad(bias),
                             call.input_grad, w.requires_grad)
        hk = _lightweight_kernel(m)
        if m.weight_softmax:
            count_softmax(rec, hk, w.requires_grad, role="kernel_softmax", grad_phase="grad_weight")
        if m.weight_dropout > 0:
            rec.add("train_forward", "main", **rec.phase_counts("forward"))
            rec.add("train_forward", "weight_dropout", mult=hk)

    @cost_rule(AdderLightweightConv1d, kind="adder")
    def _adder_lightweight(rec: LayerOps, call: LayerCall) -> None:
        """-sum_k |x - w|: T x C x K adder terms with AdderNet's gradients and adaptive LR over the (H, K) kernel."""
        count_adder(rec, call.module, _lightweight_terms(call), call.out_numel, call.input_grad)


_register_sequence_rules()
register_cost_rule(nn.GELU, "activation", lambda rec, call: _count_gelu(rec, call.out_numel, call.input_grad))


def _count_gelu(rec: LayerOps, numel: int, input_grad: bool) -> None:
    """GELU as x * sigmoid(1.702 x) (Hendrycks & Gimpel's approximation): 2 mult + a sigmoid per element;
    backward g * (s + 1.702 x s (1 - s)): 4 mult + 2 add."""
    rec.add("forward", "main", **_times(SIGMOID_OPS, numel, mult=2))
    if input_grad:
        rec.add("grad_input", "main", mult=4 * numel, add=2 * numel)


@cost_rule(nn.Embedding, kind="embedding")
def _embedding(rec: LayerOps, call: LayerCall) -> None:
    """A table lookup: one element read per output element (``move``); its gradient is a scatter-add of
    the output gradient into the used rows (1 add per output element). Ids have no gradient."""
    rec.input_numel = call.in_numel
    rec.add("forward", "main", move=call.out_numel)
    if call.module.weight.requires_grad:
        rec.add("grad_weight", "main", add=call.out_numel)


@function_rule("softmax", "_softmax")
def _fn_softmax(call: FunctionCall) -> bool:
    rec = call.record("softmax")
    rec.output_numel = call.numel
    count_softmax(rec, call.numel, call.grad)
    return True


@function_rule("glu")
def _fn_glu(call: FunctionCall) -> bool:
    """GLU(a, b) = a * sigmoid(b) per output element; backward: g * s (mult) for a, g * a * s * (1 - s) for b
    (1 add, 3 mult)."""
    rec = call.record("activation")
    rec.output_numel = call.numel
    rec.add("forward", "main", **_times(SIGMOID_OPS, call.numel, mult=1))
    if call.grad:
        rec.add("grad_input", "main", mult=4 * call.numel, add=call.numel)
    return True


@function_rule("gelu")
def _fn_gelu(call: FunctionCall) -> bool:
    rec = call.record("activation")
    rec.output_numel = call.numel
    _count_gelu(rec, call.numel, call.grad)
    return True


@function_rule("masked_fill", "masked_fill_", "nan_to_num", "nan_to_num_", "where")
def _fn_select(call: FunctionCall) -> bool:
    """Selecting elements by a precomputed mask (attention masks, the all-masked-row guard): no arithmetic,
    recorded with zero counts so the call is accounted for."""
    rec = call.record("select")
    rec.output_numel = call.numel
    return True
