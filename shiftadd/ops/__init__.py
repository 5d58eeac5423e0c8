"""The math of every operator family: plain PyTorch references with autograd."""
from shiftadd.ops.adder import adder_conv1d, adder_conv2d, adder_linear, adder_matmul, register_backend
from shiftadd.ops.bitshift import ps_weight, q_weight, round_power_of_two, shift_range, shift_sign_from_weight
from shiftadd.ops.quant import fixed_point_range, quantize_fixed_point, round_ste

__all__ = [
    "adder_conv1d", "adder_conv2d", "adder_linear", "adder_matmul", "register_backend",
    "ps_weight", "q_weight", "round_power_of_two", "shift_range", "shift_sign_from_weight",
    "fixed_point_range", "quantize_fixed_point", "round_ste",
]
