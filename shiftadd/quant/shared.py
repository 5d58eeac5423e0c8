"""Shared-scale quantization of adder layers (AdderNet's minimalist hardware design, Wang et al. 2021).

An adder layer computes -sum |x - w|. If input and weight are quantized with *one* scale ``s``,

    |s*qx - s*qw| = s * |qx - qw|        (so  -sum|x_q - w_q| = -s * sum|qx - qw|)

and the adder array works on the integers ``qx``, ``qw`` directly, with a single multiplication by
``s`` per output (or none, folded into the following BatchNorm); different scales would need a
shift to align the binary points before every addition. Here ``s`` is one scale per layer (symmetric,
signed, ``bits`` bits):

* ``range_from="max"`` (default): ``s`` covers max(|x| range, max|w|), nothing is clipped at calibration;
* ``range_from="weight"``: ``s`` covers max|w| only, inputs beyond it are clipped;
* ``range_from="input"``: ``s`` covers the input range only, weights beyond it are clipped;
* ``range_from="folded"``: ``s`` covers the input range only, weights beyond it are clipped *and the
  clipped distance is added back*, exactly (:func:`fold_adder_codes`): for integer inputs inside the
  range, the layer computes what unclipped weight codes on the input's grid would. Trained adder
  filters grow far beyond the activations (max|w| 25-50 against max|x| 2-6 in a trained ResNet-20),
  so ``"max"`` spends the int8 codes on the weights and rounds most activations to zero; ``"folded"``
  keeps the activations' resolution at no loss on the weights' side;

with ``scale="free"`` (``s = range / qmax``, default) or ``scale="pow2"`` (``s = 2^-f``, f as in
:func:`shiftadd.quant.functional.pow2_frac_bits`). The input range is

* post-training (``qat=False``): calibrated on a few batches (``statistic="max"``: the largest |x|
  seen, ``"mean"``: the mean of the per-batch maxima), then fixed;
* quantization-aware (``qat=True``): an exponential moving average of the per-batch max|x| updated in
  training mode (``momentum``), used as is in eval mode; gradients pass straight through the rounding
  and are zero where a value was clipped.

The calibrated range is the buffer ``<layer>.shared_quantizer.input_max`` (in the state_dict).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from shiftadd.nn.adder import AdderLinear
from shiftadd.ops.quant import grid_codes
from shiftadd.quant.config import TensorQuant
from shiftadd.quant.functional import compute_scale, fake_quantize, quantize_to_int
from shiftadd.quant.hooks import LayerTransform, attach
from shiftadd.quant.qat import QUANTIZER_NAME, SHARED_NAME, select_layers
from shiftadd.utils import Patterns

RANGES = ("max", "weight", "input", "folded")
STATISTICS = ("max", "mean")
_WIDE = 2 ** 24  # code range of unclipped weight codes (exact in float32 and float64)


def fold_adder_codes(codes: torch.Tensor, qmin: int, qmax: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(clamp(codes, qmin, qmax), D)``: adder weight codes (O, ...) clipped to the input's code range,
    and D (O,), the clipped distance per output channel, so that for every input code qmin <= qx <= qmax

        -sum |qx - codes| = -sum |qx - clipped| - D        (|qx - q| = |qx - qmax| + (q - qmax) if q > qmax)

    The adder array then works on in-range codes and the constant D joins the output's bias."""
    clipped = codes.clamp(qmin, qmax)
    distance = (codes - clipped).abs().reshape(codes.shape[0], -1).sum(1)
    return clipped, distance


class SharedScaleQuantizer(LayerTransform):
    """One scale for an adder layer's input and weight (see the module docstring)."""

    priority = 10

    def __init__(self, bits: int, scale: str = "free", range_from: str = "max", qat: bool = False,
                 momentum: float = 0.1, statistic: str = "max") -> None:
        super().__init__()
        if range_from not in RANGES:
            raise ValueError(f"range_from must be one of {RANGES}, got {range_from!r}")
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        self.spec = TensorQuant(bits=bits, signed=True, scale=scale)
        self.range_from, self.qat, self.momentum, self.statistic = range_from, bool(qat), float(momentum), statistic
        self.register_buffer("input_max", torch.tensor(float("nan")))
        self.register_buffer("calibration_batches", torch.tensor(0, dtype=torch.int64))
        self.calibrating = False
        self._scale: Optional[torch.Tensor] = None
        self._offset: Optional[torch.Tensor] = None  # "folded": s * D of this forward (see fold_adder_codes)

    # ---- statistics
    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        m = x.detach().abs().amax().to(self.input_max)
        if self.calibrating:
            n = int(self.calibration_batches.item())
            if n == 0 or torch.isnan(self.input_max):
                self.input_max.copy_(m)
            elif self.statistic == "max":
                self.input_max.copy_(torch.maximum(self.input_max, m))
            else:  # running mean of the per-batch maxima
                self.input_max.add_((m - self.input_max) / (n + 1))
            self.calibration_batches.add_(1)
        else:  # QAT: exponential moving average, like BatchNorm's running statistics (first batch: its max)
            self.input_max.copy_(torch.where(torch.isnan(self.input_max), m,
                                             torch.lerp(self.input_max, m, self.momentum)))

    def range_value(self, weight: torch.Tensor) -> torch.Tensor:
        """The range the scale covers (see ``range_from``)."""
        w = weight.detach().abs().amax().to(torch.float64)
        if self.range_from == "weight":
            return w
        if torch.isnan(self.input_max):
            raise RuntimeError("adder layer has no calibrated shared scale: run shared_scale(model, bits, "
                               "calibration_batches), train with qat=True, or load a state_dict that has it")
        xm = self.input_max.to(torch.float64)
        return torch.maximum(xm, w) if self.range_from == "max" else xm

    def scale(self, weight: torch.Tensor) -> torch.Tensor:
        """The shared scale (float64 scalar) for ``weight`` and the current input range."""
        return compute_scale(weight, self.spec, m=self.range_value(weight))

    # ---- transform protocol
    def begin(self, layer: nn.Module, x: Optional[torch.Tensor]) -> None:
        self._scale, self._offset = None, None
        if x is not None and (self.calibrating or (self.qat and self.training)):
            self._observe(x)

    def param_names(self, layer: nn.Module):
        return () if self.calibrating else ("weight",)

    def transform_param(self, layer: nn.Module, name: str, p: torch.Tensor) -> torch.Tensor:
        self._scale = self.scale(p)
        if self.range_from == "folded":
            _, distance = self.weight_codes(p, self._scale)
            lo, hi = (float(self._scale) * q for q in (self.spec.qmin, self.spec.qmax))
            beyond = (p - p.clamp(lo, hi)).abs().reshape(p.shape[0], -1).sum(1)  # its gradient: straight through
            self._offset = (distance.to(p.dtype) * self._scale.to(p.dtype) - beyond).detach() + beyond
        return fake_quantize(p, self.spec, scale=self._scale)

    def transform_output(self, layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
        if self._offset is None:
            return y
        offset, self._offset = self._offset.to(y.dtype), None
        return y - (offset if isinstance(layer, AdderLinear) else offset.view(1, -1, *([1] * (y.dim() - 2))))

    @torch.no_grad()
    def weight_codes(self, w: torch.Tensor, s: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(qw, D)``: the weight codes the adder array sees at scale ``s`` (default: :meth:`scale`) and the
        per-output-channel distance D folded back (zeros unless ``range_from="folded"``)."""
        s = self.scale(w) if s is None else s
        if self.range_from != "folded":
            qw, _ = quantize_to_int(w, self.spec, scale=s)
            return qw, torch.zeros(w.shape[0], dtype=torch.int64, device=w.device)
        wide, _, _ = grid_codes(w, s, -_WIDE, _WIDE, self.spec.rounding == "stochastic")
        qw, distance = fold_adder_codes(wide.to(torch.int64), self.spec.qmin, self.spec.qmax)
        return qw, distance

    def transform_input(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            return x
        s = self._scale if self._scale is not None else self.scale(layer.weight)
        self._scale = None
        return fake_quantize(x, self.spec, scale=s)

    @torch.no_grad()
    def integer_codes(self, layer: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(qx, qw, s)``: the integer input and weight codes the adder array sees, and the shared scale
        (``"folded"``: the output also subtracts ``weight_codes(w)[1]``, see :func:`fold_adder_codes`)."""
        w = layer.weight
        mask = layer._modules.get("pruning")
        if mask is not None:
            w = w * mask.mask
        s = self.scale(w)
        qx, _ = quantize_to_int(x, self.spec, scale=s)
        return qx, self.weight_codes(w, s)[0], s

    def describe(self, layer: nn.Module) -> Dict[str, Any]:
        try:
            s = float(self.scale(layer.weight))
        except RuntimeError:
            s = None
        return {"bits": self.spec.bits, "scale_type": self.spec.scale, "range_from": self.range_from,
                "qat": self.qat, "input_max": float(self.input_max), "scale": s}

    def extra_repr(self) -> str:
        return (f"bits={self.spec.bits}, scale={self.spec.scale!r}, range_from={self.range_from!r}, "
                f"{'qat' if self.qat else 'ptq'}, input_max={float(self.input_max):.4g}")


def _inputs(batch: Any) -> Any:
    """The model input of a calibration batch: a tensor, or the first element of (x, y) pairs."""
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if isinstance(batch, dict) and "x" in batch:
        return batch["x"]
    return batch


@torch.no_grad()
def calibrate(model: nn.Module, calibration_batches: Iterable[Any], device: Optional[torch.device] = None) -> int:
    """Run the batches through ``model`` (eval mode, float) to set every shared-scale input range;
    returns the number of batches. Earlier calibrations are discarded."""
    qs = [m for m in model.modules() if isinstance(m, SharedScaleQuantizer)]
    if not qs:
        raise ValueError("the model has no shared-scale quantizers; call shared_scale() first")
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    modes = {m: m.training for m in model.modules()}
    for q in qs:
        q.input_max.fill_(float("nan"))
        q.calibration_batches.zero_()
        q.calibrating = True
    n = 0
    try:
        model.eval()
        for batch in calibration_batches:
            x = _inputs(batch)
            model(x.to(device) if isinstance(x, torch.Tensor) else x)
            n += 1
    finally:
        for q in qs:
            q.calibrating = False
        for m, t in modes.items():
            m.training = t
    if n == 0:
        raise ValueError("calibration_batches is empty")
    missing = sum(bool(torch.isnan(q.input_max)) for q in qs)
    if missing:
        raise ValueError(f"{missing} adder layer(s) saw no input during calibration")
    return n


def shared_scale(model: nn.Module, bits: int, calibration_batches: Optional[Iterable[Any]] = None, *,
                 scale: str = "free", range_from: str = "max", qat: bool = False, momentum: float = 0.1,
                 statistic: str = "max", include: Patterns = None, exclude: Patterns = None) -> Dict[str, SharedScaleQuantizer]:
    """Quantize every adder layer of ``model`` with one shared scale per layer, in place.

    ``calibration_batches`` (tensors or (x, y) pairs) set the input ranges (post-training quantization);
    without them the ranges are unset until calibrated, trained (``qat=True``) or loaded with
    ``load_state_dict``. Returns ``{layer name: quantizer}``. Combine with :func:`quantize_model`
    only through backward quantizers (``QuantConfig(grad_output=..., weight_grad=...)``).
    """
    layers = select_layers(model, ("adder",), include, exclude)
    if not layers:
        raise ValueError("the model has no adder layers to quantize with a shared scale")
    done = {}
    for name, layer in layers.items():
        lq = layer._modules.get(QUANTIZER_NAME)
        if lq is not None and (lq.config.weight is not None or lq.config.activation is not None):
            raise ValueError(f"layer {name!r} already quantizes its weight/input with quantize_model(); "
                             "call dequantize_model first or keep only backward quantizers")
        q = SharedScaleQuantizer(bits, scale, range_from, qat, momentum, statistic)
        ref = layer.weight
        q.to(device=ref.device)
        done[name] = attach(layer, SHARED_NAME, q)
    if calibration_batches is not None:
        calibrate(model, calibration_batches)
    return done


def evaluate_bit_widths(model: nn.Module, evaluate: Callable[[nn.Module], Any], calibration_batches: Iterable[Any],
                        bits: Sequence[int] = (16, 8, 6, 4), **options: Any) -> Dict[str, Any]:
    """Post-training shared-scale quantization of a trained adder network at each bit width.

    Returns ``{"float": evaluate(model), "int16": evaluate(copy quantized to 16 bits), ...}``; ``model``
    is left unchanged (each width quantizes a deep copy). ``options`` go to :func:`shared_scale`.
    """
    batches = list(calibration_batches)
    out: Dict[str, Any] = {"float": evaluate(model)}
    for b in bits:
        q = copy.deepcopy(model)
        shared_scale(q, int(b), batches, **options)
        out[f"int{int(b)}"] = evaluate(q)
    return out
