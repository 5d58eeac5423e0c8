"""DeepShift's sign/shift freezing (Elhoushi et al.): train only the shifts, or only the signs.

ShiftAddNet's fixed-shift variant (the whole shift layer frozen, only adders learn) is
``op="shiftadd-fixed"`` / ``ShiftAddConv2d(..., fixed_shift=True)``; :func:`freeze` with
``sign=True, shift=True`` does the same to an existing model.
"""
from __future__ import annotations

import torch.nn as nn

from shiftadd.nn import SHIFT_TYPES


def _set(model: nn.Module, sign: bool, shift: bool, requires_grad: bool) -> int:
    if not (sign or shift):
        return 0
    layers = [m for m in model.modules() if isinstance(m, SHIFT_TYPES)]
    if not layers:
        raise ValueError("the model has no bit-shift layers (ShiftConv*/ShiftLinear or shift-add layers)")
    changed = 0
    for m in layers:
        if m.mode == "ps":
            params = ([m.sign] if sign else []) + ([m.shift] if shift else [])
        elif sign and shift:
            params = [m.latent_weight]
        else:
            raise ValueError("DeepShift-Q layers (op shift-q) keep one latent weight: their sign and shift can "
                             "only be frozen together (sign=True, shift=True); use DeepShift-PS (shift-ps)")
        for p in params:
            changed += p.requires_grad != requires_grad
            p.requires_grad_(requires_grad)
    return changed


def freeze(model: nn.Module, sign: bool = False, shift: bool = False) -> int:
    """Freeze (``requires_grad=False``) the signs and/or shifts of every bit-shift layer; returns how
    many parameters changed. Frozen parameters get no gradient, so any optimizer leaves them alone."""
    return _set(model, sign, shift, False)


def unfreeze(model: nn.Module, sign: bool = True, shift: bool = True) -> int:
    """Undo :func:`freeze` (also unfreezes the shift part of fixed-shift shift-add layers)."""
    return _set(model, sign, shift, True)
