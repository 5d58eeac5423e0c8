"""The math of every operator family: plain PyTorch references with autograd."""
from shiftadd.ops.adder import adder_conv1d, adder_conv2d, adder_linear, adder_matmul, register_backend
from shiftadd.ops.bitshift import (
    SHIFT_MODES, ps_weight, q_weight, round_power_of_two, shift_range, shift_sign_from_weight,
)
from shiftadd.ops.quant import (
    ROUNDING_MODES, fixed_point_range, grid_codes, quantize_fixed_point, quantize_to_grid, round_ste, round_values,
    straight_through,
)

__all__ = [
    "adder_conv1d", "adder_conv2d", "adder_linear", "adder_matmul", "register_backend",
    "SHIFT_MODES", "ps_weight", "q_weight", "round_power_of_two", "shift_range", "shift_sign_from_weight",
    "ROUNDING_MODES", "fixed_point_range", "grid_codes", "quantize_fixed_point", "quantize_to_grid", "round_ste",
    "round_values", "straight_through",
]
