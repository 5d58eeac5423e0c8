"""Fixed-point quantization-aware training, shared-scale quantization of adder layers, DeepShift freezing.

* :func:`quantize_model` / :func:`dequantize_model` / :func:`quantized_layers`: FIXn QAT per layer type
  (:class:`QuantConfig`, presets ``fix32``/``fix16``/``fix8``: n-bit forward, 8-bit backward).
* :func:`shared_scale`, :func:`calibrate`, :func:`evaluate_bit_widths`: one scale for an adder layer's
  input and weight, post-training or quantization-aware.
* :func:`fake_quantize`, :func:`quantize_to_int`, :func:`dequantize`, :func:`quantize_grad`: the quantizers.
* :func:`freeze` / :func:`unfreeze`: DeepShift's sign/shift freezing.
"""
from shiftadd.quant.config import (
    GRANULARITIES, PRESETS, ROUNDINGS, SCALES, TENSOR_KINDS, QuantConfig, TensorQuant, as_config,
    fixed_point_config, preset,
)
from shiftadd.quant.freeze import freeze, unfreeze
from shiftadd.quant.functional import (
    compute_scale, dequantize, fake_quantize, fixed_point_format, max_abs, pow2_frac_bits, quantize_grad,
    quantize_to_int,
)
from shiftadd.quant.hooks import KINDS, LayerTransform, layer_kind
from shiftadd.quant.qat import LayerQuantizer, dequantize_model, quantize_model, quantized_layers, select_layers
from shiftadd.quant.shared import SharedScaleQuantizer, calibrate, evaluate_bit_widths, fold_adder_codes, shared_scale

__all__ = [
    "TensorQuant", "QuantConfig", "preset", "fixed_point_config", "as_config", "PRESETS", "ROUNDINGS", "SCALES",
    "GRANULARITIES", "TENSOR_KINDS", "KINDS",
    "fake_quantize", "quantize_to_int", "dequantize", "quantize_grad", "compute_scale", "max_abs",
    "pow2_frac_bits", "fixed_point_format",
    "quantize_model", "dequantize_model", "quantized_layers", "select_layers", "LayerQuantizer", "LayerTransform",
    "layer_kind",
    "shared_scale", "calibrate", "evaluate_bit_widths", "SharedScaleQuantizer", "fold_adder_codes",
    "freeze", "unfreeze",
]
