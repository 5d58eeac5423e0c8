"""Independent, loop-based implementations of the papers' formulas (used only by tests).

They index the zero-padded input directly per kernel offset (no unfold, no shared code
with shiftadd.ops) and compute AdderNet's gradients from Eq. (5)-(6) explicitly.
"""
from __future__ import annotations

import torch


def _pad(x, ph, pw):
    N, C, H, W = x.shape
    xp = x.new_zeros(N, C, H + 2 * ph, W + 2 * pw)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    return xp


def adder_conv2d_with_grads(x, w, g_out, stride, padding, dilation, groups, mode="full"):
    """Returns (out, dx, dw); dx, dw are AdderNet's gradients for upstream gradient g_out."""
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw_) = stride, padding, dilation
    xp = _pad(x, ph, pw)
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw_ * (kw - 1) - 1) // sw + 1
    Og = O // groups
    out = x.new_zeros(N, O, Ho, Wo)
    dxp = torch.zeros_like(xp)
    dw = torch.zeros_like(w)
    for o in range(O):
        g = o // Og
        cs = slice(g * Cg, (g + 1) * Cg)
        for u in range(kh):
            for v in range(kw):
                rs = slice(u * dh, u * dh + sh * (Ho - 1) + 1, sh)
                qs = slice(v * dw_, v * dw_ + sw * (Wo - 1) + 1, sw)
                patch = xp[:, cs, rs, qs]  # (N, Cg, Ho, Wo)
                wv = w[o, :, u, v].view(1, Cg, 1, 1)
                out[:, o] -= (patch - wv).abs().sum(1)
                go = g_out[:, o:o + 1]
                if mode == "full":
                    dw[o, :, u, v] += ((patch - wv) * go).sum((0, 2, 3))
                    dxp[:, cs, rs, qs] += (wv - patch).clamp(-1, 1) * go
                else:
                    dw[o, :, u, v] += (torch.sign(patch - wv) * go).sum((0, 2, 3))
                    dxp[:, cs, rs, qs] += torch.sign(wv - patch) * go
    return out, dxp[:, :, ph:ph + H, pw:pw + W], dw


def adder_linear_with_grads(x, w, g_out):
    out = -(x[:, None, :] - w[None]).abs().sum(-1)
    dw = torch.einsum("noi,no->oi", x[:, None, :] - w[None], g_out)
    dx = torch.einsum("noi,no->ni", (w[None] - x[:, None, :]).clamp(-1, 1), g_out)
    return out, dx, dw
