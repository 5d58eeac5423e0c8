"""The DeepShift-PS ablation of docs/results.md: ``python variants.py VARIANT train ARGS...``.

VARIANT ``base`` runs ``shiftadd train ARGS`` unchanged (the shift-LR rows pass ``--shift-lr``);
``dsgrad`` replaces the sign's gradient by DeepShift's unscaled one (dL/ds = dL/dw instead of
dL/dw * 2^p) for the duration of the run.
"""
import sys

import torch

import shiftadd.nn.shift as shift_module
from shiftadd.cli import main

variant = sys.argv[1]
if variant == "dsgrad":
    from shiftadd.ops.bitshift import shift_range
    from shiftadd.ops.quant import round_ste

    def ps_weight_unscaled_sign(shift, sign, weight_bits=5, stochastic=False, generator=None):
        p = round_ste(shift, *shift_range(weight_bits, "ps"), stochastic, generator)
        s = round_ste(sign, -1.0, 1.0, stochastic, generator)
        pow2 = torch.pow(2.0, p)
        # forward unchanged (s * 2^p); the sign gets dL/dw * 2^p + dL/dw * (1 - 2^p) = dL/dw
        return s * pow2 + (sign - sign.detach()) * (1 - pow2).detach()

    shift_module.ps_weight = ps_weight_unscaled_sign
elif variant != "base":
    sys.exit(f"unknown variant {variant!r}: base or dsgrad")
sys.exit(main(sys.argv[2:]))
