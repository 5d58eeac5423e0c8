"""DeepShift fidelity: both shift ranges, stochastic sign rounding, DeepShift's initialisation, and the one
rounding / straight-through / fixed-point implementation shared by the bit-shift layers and shiftadd.quant."""
import math

import pytest
import torch

from shiftadd.nn import ShiftConv1d, ShiftConv2d, ShiftLinear
from shiftadd.nn.adder import kaiming_like_conv
from shiftadd.ops.bitshift import ps_weight, q_weight, shift_range, shift_sign_from_weight
from shiftadd.ops.quant import (
    fixed_point_range, quantize_fixed_point, round_ste, round_values, straight_through,
)
from shiftadd.prune import effective_weight as pruned_effective_weight
from shiftadd.prune import prune
from shiftadd.quant import TensorQuant, fake_quantize, quantize_to_int


def _exponents(w):
    """Exponents of the non-zero entries; asserts every entry is 0 or exactly +-2^integer."""
    nz = w[w != 0].abs().double()
    p = torch.log2(nz)
    assert torch.equal(p, p.round()), "a non-zero weight is not a power of two"
    return set(p.round().long().tolist())


# ----------------------------------------------------------------------------- the two ranges
@pytest.mark.parametrize("bits", range(2, 9))
def test_range_formulas(bits):
    # 1 sign bit + (bits - 1) shift bits = 2^(bits-1) shift codes; PS spends one of them on the zero sign
    assert shift_range(bits, "q") == (-(2 ** (bits - 1) - 1), 0)
    assert shift_range(bits, "ps") == (-(2 ** (bits - 1) - 2), 0)
    assert shift_range(bits) == shift_range(bits, "ps")
    assert 1 - shift_range(bits, "q")[0] == 2 ** (bits - 1)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("mode", ["ps", "q"])
@pytest.mark.parametrize("rounding", ["deterministic", "stochastic"])
def test_every_weight_is_in_its_range_and_both_extremes_are_reached(bits, mode, rounding):
    p_min, p_max = shift_range(bits, mode)
    torch.manual_seed(bits)
    n = 4000
    m = ShiftLinear(n, 1, bias=False, mode=mode, weight_bits=bits, rounding=rounding)
    m.train()
    # exponents spread from far below p_min to far above p_max, both signs
    target = torch.linspace(p_min - 4.0, p_max + 4.0, n).view(1, n)
    signs = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0).view(1, n)
    with torch.no_grad():
        if mode == "ps":
            m.shift.copy_(target)
            m.sign.copy_(signs * 2.0)  # outside [-1, 1]: clamped to +-1
        else:
            m.latent_weight.copy_(signs * torch.pow(2.0, target))
    w = m.weight.detach()
    assert set(torch.sign(w).unique().tolist()) == {-1.0, 1.0}
    assert _exponents(w) == set(range(p_min, p_max + 1))  # every shift in the range, the extremes included
    m.eval()
    assert _exponents(m.weight.detach()) == set(range(p_min, p_max + 1))


def test_q_mode_reaches_one_more_shift_than_ps_mode():
    tiny = torch.tensor([2.0 ** -15, -(2.0 ** -20)])
    torch.testing.assert_close(q_weight(tiny, weight_bits=5), torch.tensor([2.0 ** -15, -(2.0 ** -15)]))
    shift, sign = torch.tensor([-15.0, -20.0]), torch.tensor([1.0, -1.0])
    torch.testing.assert_close(ps_weight(shift, sign, weight_bits=5), torch.tensor([2.0 ** -14, -(2.0 ** -14)]))


# ----------------------------------------------------------------------------- stochastic sign (DeepShift-PS)
@pytest.mark.parametrize("s", [-0.8, -0.3, 0.1, 0.55, 0.9])
def test_stochastic_ps_sign_is_nonzero_with_probability_abs_s(s):
    n = 200_000
    gen = torch.Generator().manual_seed(1234)
    sign = torch.full((n,), s)
    shift = torch.full((n,), -2.0)  # an integer: its stochastic rounding is exact
    w = ps_weight(shift, sign, weight_bits=5, stochastic=True, generator=gen)
    assert set(w.unique().tolist()) <= {0.0, math.copysign(0.25, s)}  # sign(s) when non-zero
    freq = (w != 0).double().mean().item()
    std = math.sqrt(abs(s) * (1 - abs(s)) / n)
    assert abs(freq - abs(s)) < 5 * std, (freq, abs(s), std)


def test_stochastic_ps_sign_edge_values_and_gradient():
    gen = torch.Generator().manual_seed(0)
    sign = torch.tensor([-1.0, 0.0, 1.0, 3.0, -2.0] * 1000, requires_grad=True)
    shift = torch.zeros(5000, requires_grad=True)
    w = ps_weight(shift, sign, weight_bits=5, stochastic=True, generator=gen)
    torch.testing.assert_close(w.detach(), torch.tensor([-1.0, 0.0, 1.0, 1.0, -1.0] * 1000))
    w.sum().backward()  # straight through: d/ds = 2^p = 1 even where the sign was clamped
    torch.testing.assert_close(sign.grad, torch.ones(5000))


def test_layer_rounds_the_sign_stochastically_only_in_training():
    torch.manual_seed(0)
    m = ShiftLinear(500, 200, bias=False, rounding="stochastic")
    with torch.no_grad():
        m.shift.round_()  # integer shifts: only the sign is random
        m.sign.uniform_(-1, 1)
    s = m.sign.detach()
    w1, w2 = m.weight.detach(), m.weight.detach()
    assert not torch.equal(w1, w2)
    frac = (w1 != 0).double().mean().item()
    expected = s.abs().mean().item()
    assert abs(frac - expected) < 5 * math.sqrt(0.25 / s.numel())
    m.eval()
    w3, w4 = m.weight.detach(), m.weight.detach()
    assert torch.equal(w3, w4)
    torch.testing.assert_close(w3, torch.round(s) * torch.pow(2.0, m.shift.detach()))
    m2 = ShiftLinear(500, 200, bias=False, rounding="deterministic")
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2.weight, m2.weight) and torch.equal(m2.weight.detach(), w3)


# ----------------------------------------------------------------------------- initialisation
def test_default_init_is_unchanged_and_has_no_zero_weight():
    torch.manual_seed(5)
    m = ShiftConv2d(6, 8, 3)
    torch.manual_seed(5)
    p, s = shift_sign_from_weight(kaiming_like_conv((8, 6, 3, 3)), 5)
    assert torch.equal(m.shift, p) and torch.equal(m.sign, s)
    assert bool((m.weight != 0).all())
    torch.manual_seed(5)
    lin = ShiftLinear(7, 3)
    assert torch.equal(lin.bias, torch.zeros(3))
    torch.manual_seed(5)
    q = ShiftLinear(7, 3, mode="q")
    torch.manual_seed(5)
    assert torch.equal(q.latent_weight, kaiming_like_conv((3, 7)))


def test_deepshift_init_matches_deepshift_reset_parameters():
    torch.manual_seed(0)
    conv = ShiftConv2d(64, 64, 3, bias=True, init="deepshift")
    fan_in = 64 * 9
    assert conv.shift.min() >= -10 and conv.shift.max() <= -1 and conv.shift.std() > 2
    assert conv.sign.min() >= -1 and conv.sign.max() <= 1
    assert conv.bias.abs().max() <= 1 / math.sqrt(fan_in) and conv.bias.abs().max() > 0
    n = conv.sign.numel()
    zero = (conv.weight == 0).double().mean().item()
    assert abs(zero - 0.5) < 5 * math.sqrt(0.25 / n)  # |s| < 0.5 rounds to 0: about half the weights
    assert "init='deepshift'" in repr(conv)
    lin = ShiftLinear(300, 40, init="deepshift", weight_bits=4)
    p_min, _ = shift_range(4, "ps")
    assert lin.shift.min() >= p_min and lin.shift.max() <= 0 and lin.shift.min() < p_min + 0.5
    assert lin.bias.abs().max() <= 1 / math.sqrt(300)
    # DeepShift-Q initialises its latent weight like nn.Conv2d: the same as the default here
    torch.manual_seed(3)
    q1 = ShiftConv1d(4, 5, 3, mode="q", bias=False)
    torch.manual_seed(3)
    q2 = ShiftConv1d(4, 5, 3, mode="q", bias=False, init="deepshift")
    assert torch.equal(q1.latent_weight, q2.latent_weight)
    assert set(conv.state_dict()) == {"shift", "sign", "bias"}
    with pytest.raises(ValueError, match="init"):
        ShiftLinear(3, 3, init="xavier")


# ----------------------------------------------------------------------------- one effective weight
@pytest.mark.parametrize("mode", ["ps", "q"])
def test_effective_weight_with_mask_is_the_pruned_weight(mode):
    torch.manual_seed(1)
    m = ShiftConv2d(4, 6, 3, mode=mode)
    mask = torch.rand(6, 4, 3, 3) > 0.4
    w = m.effective_weight(mask=mask).detach()
    assert bool((w[~mask] == 0).all()) and torch.equal(w[mask], m.weight.detach()[mask])
    prune(m, 0.5, scope="layer")
    from shiftadd.prune import get_mask

    torch.testing.assert_close(pruned_effective_weight(m), m.effective_weight(stochastic=False, mask=get_mask(m)))


# ----------------------------------------------------------------------------- shared rounding / STE / fixed point
def test_round_ste_rounds_clamps_and_passes_the_gradient_straight_through():
    x = torch.tensor([-3.7, -0.5, 0.5, 1.5, 2.4, 9.0], requires_grad=True)
    y = round_ste(x, -2.0, 2.0)
    assert y.tolist() == [-2.0, -0.0, 0.0, 2.0, 2.0, 2.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0] * 6
    v = torch.tensor([0.2, 0.7], requires_grad=True)
    out = straight_through(v, torch.tensor([5.0, 6.0]))
    (out * torch.tensor([2.0, 3.0])).sum().backward()
    assert out.tolist() == [5.0, 6.0] and v.grad.tolist() == [2.0, 3.0]


def test_stochastic_round_values_is_unbiased_and_seeded():
    x = torch.full((100_000,), 1.25)
    a = round_values(x, True, torch.Generator().manual_seed(7))
    b = round_values(x, True, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and set(a.unique().tolist()) == {1.0, 2.0}
    assert abs(a.mean().item() - 1.25) < 5 * math.sqrt(0.25 * 0.75 / x.numel())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fmt", [(4, 4, True), (1, 7, True), (8, 0, False), (3, 13, True), (2, 3, False),
                                 (10, 20, True)])
def test_fixed_point_quantizer_and_fake_quantize_are_one_implementation(dtype, fmt):
    int_bits, frac_bits, signed = fmt
    torch.manual_seed(0)
    x = (torch.randn(3000) * 2.0 ** int_bits).to(dtype)
    lo, hi = fixed_point_range(int_bits, frac_bits, signed)
    x[:4] = torch.tensor([lo, hi, lo - 1, hi + 1], dtype=dtype)
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    spec = TensorQuant(bits=int_bits + frac_bits, signed=signed, frac_bits=frac_bits)
    y1 = quantize_fixed_point(x1, int_bits, frac_bits, signed)
    y2 = fake_quantize(x2, spec)
    assert y1.dtype == dtype and torch.equal(y1, y2)
    g = torch.randn(3000, dtype=dtype)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    assert torch.equal(x1.grad, x2.grad)
    inside = (x.double() >= lo) & (x.double() <= hi)  # (hi of a 30-bit format is not a float32: 2^9 there)
    assert bool(inside[:2].all() or dtype == torch.float32) and not bool(inside[2:4].any())
    assert torch.equal(x1.grad, inside.to(dtype) * g)
    q, s = quantize_to_int(x, spec)
    assert torch.equal((q.double() * s).to(dtype), y1.detach())
