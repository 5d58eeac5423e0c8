"""Operation counting for any ``nn.Module``, for inference and for training.

One forward pass of a batch of one sample is run with hooks:

* module hooks count the layers whose arithmetic is known from their attributes
  (``nn.Conv*``/``nn.Linear``, adder, bit-shift and shift-add layers, spatial shifts,
  BatchNorm, ReLU-like activations, pooling, dropout); calls made inside such a layer
  (its own torch functions, the quantisers and pruning masks attached by shiftadd.quant /
  shiftadd.prune) are part of its count, never counted again;
* a ``TorchFunctionMode`` counts the functional calls made *outside* those layers (the
  residual ``out + shortcut``, ``F.relu``, ``F.adaptive_avg_pool2d``, ``F.conv2d`` /
  ``F.linear`` / ``matmul`` in user modules, ...); calls it cannot price are listed in
  :attr:`OpCounts.uncounted`.

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

Spatial shifts (``shiftadd.nn.SPATIAL_SHIFT_TYPES``, kind "spatial_shift") cost what their
``op_counts`` say: "moves" become the op ``move`` (one element read or written, priced as data
movement at the memory level, see :data:`MEMORY_OPS`), plus the interpolation mults/adds of
active shift. Input gradient: the opposite shift, the same counts. Shift gradient of active and
sparse shifts (ASL Eq. 4): 2^dim corner maps read, multiplied by g and summed, i.e. 2^dim
(move + mult + add) per output element. Per-channel work (rounding the shifts, interpolation
weights, gradient normalisation, the L1 penalty) is not counted.

Quantisers of shiftadd.quant (roles :data:`QUANT_ROLES`): quantising n elements costs n
(shift for a power-of-two scale, else mult) + n add (round) + 2n cmp (clamp), plus n abs + n cmp
when the range max|x| is found at run time. The input is quantised every pass (forward; 1 cmp per
element for the straight-through backward), the output error per sample (grad_input phase), the
weight and the weight gradient once per training step ("update"); a quantised weight is stored at
the quantiser's bits. A pruning mask costs nothing (it selects stored zeros).

A pruned (zero) adder weight still costs |x - 0|; a zero (or masked) shift weight costs nothing. Bias:
one add per output element. The sign of a shift weight and the minus of the adder output
are folded into the accumulation (an add becomes a subtract) and cost nothing extra.

Training only, once per step ("update" phase): weight quantisers of shift layers, the
chain rule of DeepShift-PS (dL/dp = dL/dw * w * ln2, dL/ds = dL/dw * 2^p), AdderNet's
adaptive learning rate (a norm and a rescale of each adder layer's gradient) and the
optimizer's update. BatchNorm, activations, pooling and residual adds have their own kinds.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from shiftadd.errors import UserError

#: Phases: per sample ("forward" = inference, "train_forward", "grad_input", "grad_weight")
#: and per optimisation step ("update").
PHASES = ("forward", "train_forward", "grad_input", "grad_weight", "update")
PER_SAMPLE_PHASES = ("forward", "train_forward", "grad_input", "grad_weight")
INFERENCE_PHASES = ("forward",)
TRAINING_PHASES = ("train_forward", "grad_input", "grad_weight", "update")

#: Kinds of layer records.
WEIGHT_KINDS = ("conv", "linear", "matmul", "adder", "shift")

#: Counted operations that are data movement: one element read or written at the memory level of
#: the data-movement estimate (priced per bit, not by the operation table).
MEMORY_OPS = ("move",)

#: Role of each quantised tensor of a layer (see :func:`_count_quantisers`).
QUANT_ROLES = {"activation": "quant_act", "weight": "quant_weight", "grad_output": "quant_grad_output",
               "weight_grad": "quant_weight_grad"}

#: Per-parameter work of one optimizer step (mult, add): SGD with momentum and weight
#: decay (g += wd*w; v = m*v + g; w -= lr*v) and Adam (two moment updates, bias-corrected step).
OPTIMIZER_OPS = {"sgd": {"mult": 3, "add": 3}, "adam": {"mult": 7, "add": 4}}

Counts = Dict[str, int]


@dataclass
class LayerOps:
    """Operation counts of one layer (one call of a module, or one functional call).

    ``items[(phase, role)] = {op: count}``; per-sample phases hold the counts for ONE
    sample, the "update" phase the counts of one optimisation step.
    """

    name: str
    kind: str
    module_type: str
    items: Dict[Tuple[str, str], Counts] = field(default_factory=dict)
    params: int = 0               # weight + bias elements (counted at the first call only)
    trainable_params: int = 0
    weight_bits: Optional[int] = None  # storage bits of the weights at inference (None: format bits)
    weight_elems: int = 0         # elements of the (effective) weight tensor, stored for inference
    bias_elems: int = 0
    input_numel: int = 0          # per sample
    output_numel: int = 0         # per sample
    moves_data: bool = False      # part of the data-movement estimate (the weight layers)

    def add(self, phase: str, role: str, **ops: float) -> None:
        """Add counts ``ops`` (op=count) to (phase, role); zero counts are dropped."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        d = self.items.setdefault((phase, role), {})
        for op, n in ops.items():
            n = int(round(n))
            if n:
                d[op] = d.get(op, 0) + n
        if not d:
            del self.items[(phase, role)]

    def phase_counts(self, phase: str) -> Counts:
        """Counts of one phase summed over roles; "train_forward" falls back to "forward"."""
        if phase == "train_forward" and not any(p == "train_forward" for p, _ in self.items):
            phase = "forward"
        out: Counts = defaultdict(int)
        for (p, _), ops in self.items.items():
            if p == phase:
                for op, n in ops.items():
                    out[op] += n
        return dict(out)

    def roles(self, phase: str) -> Dict[str, Counts]:
        if phase == "train_forward" and not any(p == "train_forward" for p, _ in self.items):
            phase = "forward"
        return {r: dict(ops) for (p, r), ops in self.items.items() if p == phase}

    def as_dict(self) -> Dict[str, Any]:
        phases: Dict[str, Dict[str, Counts]] = {}
        for (p, r), ops in self.items.items():
            phases.setdefault(p, {})[r] = dict(ops)
        return {"name": self.name, "kind": self.kind, "module_type": self.module_type, "params": self.params,
                "trainable_params": self.trainable_params, "weight_bits": self.weight_bits,
                "weight_elems": self.weight_elems, "bias_elems": self.bias_elems,
                "input_numel": self.input_numel, "output_numel": self.output_numel, "phases": phases}


@dataclass
class OpCounts:
    """Result of :func:`count_ops`: per-layer records, for a batch of ``batch_size``."""

    layers: List[LayerOps]
    input_shape: Tuple[int, ...]
    batch_size: int
    optimizer: Optional[str]
    uncounted: List[str] = field(default_factory=list)

    def totals(self, phases: Iterable[str]) -> Counts:
        """Counts summed over layers for ``phases`` (per sample / per step, unscaled)."""
        out: Counts = defaultdict(int)
        for layer in self.layers:
            for ph in phases:
                for op, n in layer.phase_counts(ph).items():
                    out[op] += n
        return dict(out)

    def inference(self) -> Counts:
        """Operations of one forward pass of the whole batch."""
        return {op: n * self.batch_size for op, n in self.totals(INFERENCE_PHASES).items()}

    def training_step(self) -> Counts:
        """Operations of one training step on the whole batch (forward, backward, update)."""
        out: Counts = defaultdict(int)
        for op, n in self.totals(("train_forward", "grad_input", "grad_weight")).items():
            out[op] += n * self.batch_size
        for op, n in self.totals(("update",)).items():
            out[op] += n
        return dict(out)

    def macs(self, kinds: Sequence[str] = ("conv", "linear", "matmul")) -> int:
        """Multiply-accumulates of one sample's forward pass in layers of ``kinds``."""
        return sum(layer.phase_counts("forward").get("mult", 0) for layer in self.layers
                   if layer.kind in kinds)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    def layer(self, name: str) -> LayerOps:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def as_dict(self) -> Dict[str, Any]:
        return {"input_shape": list(self.input_shape), "batch_size": self.batch_size,
                "optimizer": self.optimizer, "params": self.params,
                "layers": [layer.as_dict() for layer in self.layers], "uncounted": list(self.uncounted)}


# --------------------------------------------------------------------------- helpers

def _core_types() -> Tuple[tuple, tuple, tuple, tuple]:
    """(ADDER_TYPES, SHIFT_TYPES, SHIFTADD_TYPES, SPATIAL_SHIFT_TYPES) from shiftadd.nn (empty tuples
    if unavailable)."""
    try:
        from shiftadd.nn import ADDER_TYPES, SHIFT_TYPES, SHIFTADD_TYPES, SPATIAL_SHIFT_TYPES
    except ImportError:  # pragma: no cover - the core package always ships them
        return (), (), (), ()
    return tuple(ADDER_TYPES), tuple(SHIFT_TYPES), tuple(SHIFTADD_TYPES), tuple(SPATIAL_SHIFT_TYPES)


def _out_channels(m: nn.Module) -> int:
    return int(getattr(m, "out_channels", None) or getattr(m, "out_features"))


def _own_params(m: nn.Module) -> List[nn.Parameter]:
    return list(m.parameters(recurse=False))


def _needs_grad(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.requires_grad


def _first_tensor(args: Sequence[Any]) -> Optional[torch.Tensor]:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    return None


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


# Activations: (cmp, mult) per element, forward and input gradient alike.
_ACTIVATIONS: Dict[type, Tuple[int, int]] = {
    nn.ReLU: (1, 0), nn.ReLU6: (2, 0), nn.Hardtanh: (2, 0), nn.Threshold: (1, 0),
    nn.LeakyReLU: (1, 1), nn.PReLU: (1, 1),
}
_FN_ACTIVATIONS = {"relu": (1, 0), "relu_": (1, 0), "relu6": (2, 0), "hardtanh": (2, 0), "hardtanh_": (2, 0),
                   "threshold": (1, 0), "threshold_": (1, 0), "leaky_relu": (1, 1), "leaky_relu_": (1, 1),
                   "clamp": (2, 0), "clamp_": (2, 0), "clip": (2, 0), "clamp_min": (1, 0), "clamp_max": (1, 0)}
_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
              nn.AdaptiveMaxPool3d)
_AVG_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
              nn.AdaptiveAvgPool3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_OTHER_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_FREE_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d)

# Functional calls that move or reshape data but compute nothing.
_LAYOUT_FNS = frozenset("""
__get__ __getitem__ __setitem__ __len__ __iter__ __format__ __repr__ __bool__ __index__ __reduce_ex__
size dim shape ndim numel view view_as reshape reshape_as flatten unflatten squeeze squeeze_ unsqueeze
unsqueeze_ permute transpose transpose_ t contiguous clone detach detach_ to type type_as float double half
cpu cuda pad constant_pad_nd cat concat stack split chunk narrow select expand expand_as repeat
zeros zeros_like ones ones_like empty empty_like new_zeros new_ones new_empty new_full full full_like
is_floating_point is_contiguous requires_grad_ data_ptr stride storage_offset element_size dtype device
get_device is_complex movedim moveaxis roll flip unbind tolist item channel_shuffle pixel_shuffle
pixel_unshuffle identity dropout dropout_ dropout1d dropout2d dropout3d feature_dropout alpha_dropout
""".split())
_ADD_FNS = frozenset({"add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__",
                      "__rsub__", "__isub__", "subtract", "rsub"})
_MUL_FNS = frozenset({"mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__",
                      "__rtruediv__", "__itruediv__", "multiply", "divide", "true_divide"})
_CONV_FNS = frozenset({"conv1d", "conv2d", "conv3d"})
_MATMUL_FNS = frozenset({"matmul", "mm", "bmm", "__matmul__", "__rmatmul__"})
_MAXPOOL_FNS = frozenset({"max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d",
                          "adaptive_max_pool2d", "adaptive_max_pool3d", "_max_pool1d", "_max_pool2d",
                          "_max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices"})
_AVGPOOL_FNS = frozenset({"avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
                          "adaptive_avg_pool2d", "adaptive_avg_pool3d"})
_MEAN_FNS = frozenset({"mean", "sum"})


# --------------------------------------------------------------------------- formulas

def _count_multiplicative(rec: LayerOps, terms: int, out_numel: int, has_bias: bool, bias_grad: bool,
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


def _count_adder(rec: LayerOps, m: nn.Module, terms: int, out_numel: int, input_grad: bool) -> None:
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


def _count_shift(rec: LayerOps, m: nn.Module, terms: int, weight: torch.Tensor, out_numel: int,
                 in_numel: int, input_grad: bool) -> None:
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


def _count_batchnorm(rec: LayerOps, numel: int, input_grad: bool, affine_grad: bool, stats: bool = False) -> None:
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


def _count_activation(rec: LayerOps, cmp: int, mult: int, numel: int, input_grad: bool) -> None:
    rec.add("forward", "main", cmp=cmp * numel, mult=mult * numel)
    if input_grad:
        rec.add("grad_input", "main", cmp=cmp * numel, mult=mult * numel)


def _count_pool(rec: LayerOps, is_max: bool, window: int, out_numel: int, input_grad: bool) -> None:
    window = max(window, 1)
    if is_max:  # window - 1 comparisons per output; the gradient is routed by the saved index
        rec.add("forward", "main", cmp=(window - 1) * out_numel)
    else:  # window - 1 additions and one scaling by 1/window per output
        rec.add("forward", "main", add=(window - 1) * out_numel, mult=out_numel)
        if input_grad:
            rec.add("grad_input", "main", mult=out_numel)


def _spatial_shift_ops(m: nn.Module, inputs: Sequence[torch.Tensor]) -> Counts:
    """The spatial-shift module's own ``op_counts`` for this call, as counting ops.

    Counting runs a batch of one sample, so these are per-sample counts. ``ShortcutShift``
    takes the shapes of all its parts, the other modules the shape of their input.
    """
    from shiftadd.nn.spatial_shift import ShortcutShift

    shapes = [tuple(t.shape) for t in inputs]
    c = m.op_counts(shapes) if isinstance(m, ShortcutShift) else m.op_counts(shapes[0])
    return {"move": c.get("moves", 0), "mult": c.get("mults", 0), "add": c.get("adds", 0)}


def _count_spatial_shift(rec: LayerOps, m: nn.Module, ops: Counts, out_numel: int, input_grad: bool) -> None:
    """Spatial shift: element moves (data movement) plus the interpolation arithmetic of active shift."""
    rec.add("forward", "main", **ops)
    if input_grad:  # the adjoint: the opposite shift (active shift: the weighted opposite shifts), same counts
        rec.add("grad_input", "main", **ops)
    shift = getattr(m, "shift", None)  # the real-valued shifts of active and sparse shift layers
    if isinstance(shift, nn.Parameter) and shift.requires_grad:
        # ASL Eq. 4 (also sparse shift's backward): each of the 2^dim corner maps read, times g, summed
        n = 2 ** shift.shape[1] * out_numel
        rec.add("grad_weight", "main", move=n, mult=n, add=n)


def _effective_shift_weight(m: nn.Module) -> torch.Tensor:
    """A bit-shift layer's weight as its forward pass uses it (the pruning mask applied)."""
    from shiftadd.prune import get_mask

    with torch.no_grad():
        w = m.weight.detach()
    mask = get_mask(m)
    return w if mask is None else w.masked_fill(~mask.to(w.device), 0)


def _quantised_tensors(t: nn.Module) -> List[Tuple[str, Any, bool]]:
    """(tensor kind, TensorQuant, range found at run time?) of each tensor that transform ``t`` quantises.

    A LayerQuantizer quantises the tensors of its config (not the weight of a bit-shift layer,
    whose own ``weight_bits`` govern); a SharedScaleQuantizer the input (calibrated range) and
    the weight (range max|w|). Other transforms (pruning masks) quantise nothing.
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
    """The transforms (quantisers, pruning masks) attached to layer ``m`` by shiftadd.quant / shiftadd.prune."""
    from shiftadd.quant.hooks import transforms

    return transforms(m)


def _quantised_weight_bits(m: nn.Module) -> Optional[int]:
    """Storage bits of a weight that an attached quantiser rounds to a fixed-point format (None: none does)."""
    for t in _layer_transforms(m):
        for tensor, spec, _ in _quantised_tensors(t):
            if tensor == "weight":
                return int(spec.bits)
    return None


def _quantiser_ops(spec: Any, n: int, runtime_range: bool) -> Counts:
    """Quantising ``n`` elements to ``spec``, q = clamp(round(x / s), qmin, qmax).

    Per element: the scaling (a shift for a power-of-two scale, else a mult), the rounding (an
    add) and the clamp (2 cmp); a range found at run time (max|x|) adds 1 abs + 1 cmp. The
    rescaling q * s is folded into the next layer's scale (BatchNorm) and not counted.
    """
    ops = {"shift" if spec.scale == "pow2" else "mult": n, "add": n, "cmp": 2 * n}
    if runtime_range:
        ops["abs"] = n
        ops["cmp"] += n
    return ops


def _count_quantisers(rec: LayerOps, m: nn.Module, in_numel: int, out_numel: int, input_grad: bool,
                      output_grad: bool) -> None:
    """The quantisers attached to layer ``m`` (roles :data:`QUANT_ROLES`).

    Input: every element of every pass (inference too), straight-through backward (1 cmp).
    Output error: every element, in the input-gradient phase. Weight and weight gradient: once
    per training step (the weights change once per step; stored quantised for inference).
    """
    from shiftadd.quant.hooks import weight_param_names

    weights = [m._parameters[n] for n in weight_param_names(m) if m._parameters.get(n) is not None]
    k = sum(p.numel() for p in weights)
    trainable = any(p.requires_grad for p in weights)
    for t in _layer_transforms(m):
        for tensor, spec, runtime_range in _quantised_tensors(t):
            role = QUANT_ROLES[tensor]
            if tensor == "activation":
                rec.add("forward", role, **_quantiser_ops(spec, in_numel, runtime_range))
                if input_grad:  # straight-through estimator, zero where clipped
                    rec.add("grad_input", role, cmp=in_numel)
            elif tensor == "grad_output":
                if output_grad:
                    rec.add("grad_input", role, **_quantiser_ops(spec, out_numel, runtime_range))
            elif trainable:
                rec.add("update", role, **_quantiser_ops(spec, k, runtime_range))
                if tensor == "weight":  # straight-through estimator of the weight gradient
                    rec.add("update", role, cmp=k)


# --------------------------------------------------------------------------- recorder

class _Recorder(TorchFunctionMode):
    def __init__(self, model: nn.Module, optimizer: Optional[str]) -> None:
        super().__init__()
        self.model = model
        self.names = {m: n for n, m in model.named_modules()}
        self.adder_types, self.shift_types, self.shiftadd_types, self.spatial_types = _core_types()
        self.layers: List[LayerOps] = []
        self.uncounted: Dict[str, int] = defaultdict(int)
        self.stack: List[nn.Module] = []
        self.depth = 0  # > 0 while inside a layer that is counted as a whole
        self.busy = False
        self.seen_params: set = set()
        self.name_uses: Dict[str, int] = defaultdict(int)
        self.optimizer = optimizer

    # ---- naming
    def _unique(self, name: str) -> str:
        self.name_uses[name] += 1
        n = self.name_uses[name]
        return name if n == 1 else f"{name}#{n}"

    def _module_name(self, m: nn.Module) -> str:
        return self.names.get(m, type(m).__name__) or "(model)"

    def _new(self, name: str, kind: str, module_type: str) -> LayerOps:
        rec = LayerOps(self._unique(name), kind, module_type)
        self.layers.append(rec)
        return rec

    def _claim_params(self, rec: LayerOps, params: Iterable[torch.Tensor]) -> None:
        for p in params:
            if id(p) in self.seen_params:
                continue
            self.seen_params.add(id(p))
            rec.params += p.numel()
            if p.requires_grad:
                rec.trainable_params += p.numel()

    # ---- classification of modules
    def kind_of(self, m: nn.Module) -> Optional[str]:
        if self.shiftadd_types and isinstance(m, self.shiftadd_types):
            return "container"  # its .shift and .adder children are counted
        if self.adder_types and isinstance(m, self.adder_types):
            return "adder"
        if self.shift_types and isinstance(m, self.shift_types):
            return "shift"
        if self.spatial_types and isinstance(m, self.spatial_types):
            return "spatial_shift"
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return "conv"
        if isinstance(m, nn.Linear):
            return "linear"
        if isinstance(m, _BATCHNORMS) or isinstance(m, _OTHER_NORMS):
            return "norm"
        if type(m) in _ACTIVATIONS:
            return "activation"
        if isinstance(m, _MAX_POOLS) or isinstance(m, _AVG_POOLS):
            return "pool"
        if isinstance(m, _DROPOUTS):
            return "dropout"
        if isinstance(m, _FREE_MODULES):
            return "free"
        return None

    # ---- module hooks
    def pre_hook(self, m: nn.Module, args: Any) -> None:
        self.stack.append(m)
        if getattr(m, "_energy_counted", False):
            self.depth += 1

    def post_hook(self, m: nn.Module, args: Any, out: Any) -> None:
        try:
            if getattr(m, "_energy_counted", False):
                if self.depth == 1:  # the outermost counted layer
                    self.busy = True
                    try:
                        self.count_module(m, args, out)
                    finally:
                        self.busy = False
                self.depth -= 1
        finally:
            if self.stack and self.stack[-1] is m:
                self.stack.pop()

    def count_module(self, m: nn.Module, args: Any, out: Any) -> None:
        kind = m._energy_kind
        args = args if isinstance(args, (tuple, list)) else (args,)
        x = _first_tensor(args)
        in_numel = _numel(x)
        y = out if isinstance(out, torch.Tensor) else _first_tensor(out if isinstance(out, (tuple, list)) else ())
        out_numel = _numel(y)
        input_grad = _needs_grad(x)
        name = self._module_name(m)
        if kind == "free":
            return
        rec = self._new(name, kind, type(m).__name__)
        rec.input_numel, rec.output_numel = in_numel, out_numel
        own = _own_params(m)
        self._claim_params(rec, own)
        bias = getattr(m, "bias", None) if kind in WEIGHT_KINDS else None
        bias_grad = isinstance(bias, torch.Tensor) and bias.requires_grad
        if kind in WEIGHT_KINDS and rec.params:  # first call of this layer: its stored weights
            with torch.no_grad():
                rec.weight_elems = int(m.weight.numel())
            rec.bias_elems = _numel(getattr(m, "bias", None))
        if kind in ("conv", "linear"):
            rec.moves_data = True
            w = m.weight
            terms = out_numel * (w.numel() // _out_channels(m))
            _count_multiplicative(rec, terms, out_numel, bias is not None, bias_grad, input_grad, w.requires_grad)
        elif kind == "adder":
            rec.moves_data = True
            terms = out_numel * (m.weight.numel() // _out_channels(m))
            _count_adder(rec, m, terms, out_numel, input_grad)
        elif kind == "shift":
            rec.moves_data = True
            w = _effective_shift_weight(m)
            rec.weight_bits = int(getattr(m, "weight_bits", 0)) or None
            terms = out_numel * (w.numel() // _out_channels(m))
            _count_shift(rec, m, terms, w, out_numel, in_numel, input_grad)
        elif kind == "norm":
            affine = any(p.requires_grad for p in own)
            _count_batchnorm(rec, out_numel, input_grad, affine, stats=not isinstance(m, _BATCHNORMS))
        elif kind == "activation":
            cmp, mult = _ACTIVATIONS[type(m)]
            _count_activation(rec, cmp, mult, out_numel, input_grad)
        elif kind == "pool":
            is_max = isinstance(m, _MAX_POOLS)
            ks = getattr(m, "kernel_size", None)
            window = _window(ks, max(1, (x.dim() - 2) if x is not None else 1)) if ks is not None else 0
            if not window:  # adaptive pooling: average window size
                window = max(1, round(in_numel / max(out_numel, 1)))
            _count_pool(rec, is_max, window, out_numel, input_grad)
        elif kind == "dropout":  # training only: x * mask / (1 - p) forward and backward
            rec.add("train_forward", "main", mult=out_numel)
            if input_grad:
                rec.add("grad_input", "main", mult=out_numel)
        elif kind == "spatial_shift":
            inputs = [a for a in args if isinstance(a, torch.Tensor)]
            rec.input_numel, rec.output_numel = _numel(inputs), _numel(out)
            _count_spatial_shift(rec, m, _spatial_shift_ops(m, inputs), rec.output_numel,
                                 any(t.requires_grad for t in inputs))
        if kind in WEIGHT_KINDS:
            rec.weight_bits = rec.weight_bits or _quantised_weight_bits(m)
            _count_quantisers(rec, m, in_numel, out_numel, input_grad, _needs_grad(y))

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

    def _fn_record(self, fname: str, kind: str) -> LayerOps:
        owner = self._module_name(self.stack[-1]) if self.stack else "(model)"
        return self._new(f"{owner}:{fname}", kind, fname)

    def count_function(self, func: Callable, args: Sequence[Any], kwargs: Dict[str, Any], out: Any) -> None:
        fname = getattr(func, "__name__", None) or str(func)
        if fname in _LAYOUT_FNS:
            return
        y = out if isinstance(out, torch.Tensor) else _first_tensor(out if isinstance(out, (tuple, list)) else ())
        if y is None or not y.is_floating_point():
            return
        n = y.numel()
        tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
        grad = any(t.requires_grad for t in tensors)
        x = tensors[0] if tensors else None
        if fname in _ADD_FNS:
            both = sum(1 for t in tensors if t.numel() > 1) >= 2
            rec = self._fn_record(fname, "residual" if both else "elementwise")
            rec.output_numel = n
            rec.add("forward", "main", add=n)
            if both and grad:  # charged for the gradient sum at the fork feeding the two branches
                rec.add("grad_input", "main", add=n)
        elif fname in _MUL_FNS:
            rec = self._fn_record(fname, "elementwise")
            rec.output_numel = n
            rec.add("forward", "main", mult=n)
            rec.add("grad_input", "main", mult=n * sum(1 for t in tensors if t.requires_grad))
        elif fname in _FN_ACTIVATIONS:
            cmp, mult = _FN_ACTIVATIONS[fname]
            rec = self._fn_record(fname, "activation")
            rec.output_numel = n
            _count_activation(rec, cmp, mult, n, grad)
        elif fname in _MAXPOOL_FNS or fname in _AVGPOOL_FNS:
            rec = self._fn_record(fname, "pool")
            rec.output_numel, rec.input_numel = n, _numel(x)
            ks = kwargs.get("kernel_size", args[1] if len(args) > 1 and "adaptive" not in fname else None)
            window = _window(ks, max(1, x.dim() - 2)) if ks is not None and x is not None else 0
            if not window:
                window = max(1, round(_numel(x) / max(n, 1)))
            _count_pool(rec, fname in _MAXPOOL_FNS, window, n, grad)
        elif fname in _MEAN_FNS and x is not None:
            rec = self._fn_record(fname, "pool")
            rec.output_numel, rec.input_numel = n, x.numel()
            rec.add("forward", "main", add=max(x.numel() - n, 0), mult=n if fname == "mean" else 0)
            if grad and fname == "mean":
                rec.add("grad_input", "main", mult=n)
        elif fname == "batch_norm" and x is not None:
            rec = self._fn_record(fname, "norm")
            rec.output_numel = n
            w = args[3] if len(args) > 3 else kwargs.get("weight")
            _count_batchnorm(rec, n, x.requires_grad, _needs_grad(w))
        elif fname in _CONV_FNS or fname == "linear":
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if not isinstance(w, torch.Tensor) or x is None:
                self.uncounted[fname] += 1
                return
            rec = self._fn_record(fname, "conv" if fname in _CONV_FNS else "linear")
            rec.input_numel, rec.output_numel, rec.moves_data = x.numel(), n, True
            self._claim_params(rec, [t for t in (w, b) if isinstance(t, torch.Tensor)])
            rec.weight_elems = int(w.numel()) if rec.params else 0
            rec.bias_elems = _numel(b) if rec.params else 0
            terms = n * (w.numel() // w.shape[0])
            _count_multiplicative(rec, terms, n, b is not None, _needs_grad(b), x.requires_grad, w.requires_grad)
        elif fname in _MATMUL_FNS and len(tensors) >= 2:
            a, b = tensors[0], tensors[1]
            rec = self._fn_record(fname, "matmul")
            rec.output_numel = n
            terms = n * int(a.shape[-1])
            _count_multiplicative(rec, terms, n, False, False, a.requires_grad, b.requires_grad)
        else:
            self.uncounted[fname] += 1


def _surrogate(m: nn.Module, adder_types: tuple) -> Optional[Callable[..., torch.Tensor]]:
    """A cheap stand-in for an adder layer's forward with the same output shape.

    The values do not matter for counting; a convolution with the same geometry is 10-100x
    faster than the L1-distance reference kernel.
    """
    if not adder_types or not isinstance(m, adder_types):
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
    rec = _Recorder(model, optimizer)
    handles = []
    patched: List[nn.Module] = []
    was_training = model.training
    try:
        for m in model.modules():
            kind = rec.kind_of(m)
            counted = kind is not None and kind != "container"
            m._energy_counted = counted  # type: ignore[attr-defined]
            m._energy_kind = kind  # type: ignore[attr-defined]
            # first of the pre-hooks: the transforms of shiftadd.quant (quantisers, pruning masks) run
            # inside the layer's count, not as functional calls of their own
            handles.append(m.register_forward_pre_hook(rec.pre_hook, prepend=True))
            handles.append(m.register_forward_hook(rec.post_hook, always_call=True))
            stand_in = _surrogate(m, rec.adder_types)
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
        for m in model.modules():
            for attr in ("_energy_counted", "_energy_kind"):
                if attr in m.__dict__:
                    delattr(m, attr)
        model.train(was_training)
    # parameters never touched by a counted layer (e.g. used only in uncounted functions)
    rest = LayerOps("(other parameters)", "other", "-")
    rec._claim_params(rest, model.parameters())
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
        if rec.kind_of(m) is None and _own_params(m) and not any(True for _ in m.children()):
            uncounted.append(f"module {rec._module_name(m)} ({type(m).__name__}): only its functional calls are counted")
    return OpCounts(rec.layers, shape, batch, optimizer, uncounted)
