import math

import pytest
import torch
import torch.nn.functional as F

from shiftadd.nn import ShiftConv1d, ShiftConv2d, ShiftLinear
from shiftadd.ops.bitshift import ps_weight, q_weight, round_power_of_two, shift_range
from shiftadd.ops.quant import fixed_point_range, quantize_fixed_point


def _is_power_of_two_or_zero(w, weight_bits, mode="ps"):
    p_min, p_max = shift_range(weight_bits, mode)
    nz = w[w != 0].abs()
    p = torch.log2(nz)
    return bool(torch.all(p == p.round()) and torch.all(p >= p_min) and torch.all(p <= p_max))


def test_shift_range_matches_deepshift():
    assert shift_range(5) == (-14, 0)
    assert shift_range(2) == (0, 0)
    assert shift_range(8) == (-126, 0)
    # DeepShift-Q: binary sign, all 2^(bits-1) shift codes are shifts
    assert shift_range(5, "q") == (-15, 0)
    assert shift_range(2, "q") == (-1, 0)
    assert shift_range(8, "q") == (-127, 0)
    with pytest.raises(ValueError, match="weight_bits"):
        shift_range(1)
    with pytest.raises(ValueError, match="mode"):
        shift_range(5, "x")


@pytest.mark.parametrize("mode", ["ps", "q"])
@pytest.mark.parametrize("bits", [2, 3, 5, 8])
@pytest.mark.parametrize("rounding", ["deterministic", "stochastic"])
def test_every_effective_weight_is_zero_or_power_of_two_in_range(mode, bits, rounding):
    torch.manual_seed(bits)
    m = ShiftConv2d(8, 16, 3, mode=mode, weight_bits=bits, rounding=rounding)
    with torch.no_grad():  # push parameters far outside the representable range
        if mode == "ps":
            m.shift.mul_(10).add_(3)
            m.sign.mul_(3)
        else:
            m.latent_weight.mul_(100)
    w = m.weight
    assert _is_power_of_two_or_zero(w, bits, mode)
    if mode == "ps":
        assert set(torch.sign(w).unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_ps_weight_and_straight_through_gradients():
    shift = torch.tensor([-1.3, -2.6, 0.4, -20.0], requires_grad=True)
    sign = torch.tensor([0.7, -0.9, 0.2, 1.0], requires_grad=True)
    w = ps_weight(shift, sign, weight_bits=5)
    torch.testing.assert_close(w.detach(), torch.tensor([0.5, -0.125, 0.0, 2.0 ** -14]))
    c = torch.tensor([1.0, 2.0, 3.0, 4.0])
    (w * c).sum().backward()
    # STE: d/dp (s * 2^p) = s * ln2 * 2^p at the rounded point; d/ds = 2^p
    p_q = torch.tensor([-1.0, -3.0, 0.0, -14.0])
    s_q = torch.tensor([1.0, -1.0, 0.0, 1.0])
    torch.testing.assert_close(shift.grad, s_q * math.log(2) * 2 ** p_q * c)
    torch.testing.assert_close(sign.grad, 2 ** p_q * c)


def test_q_weight_rounds_in_log_domain_and_passes_gradient_straight_through():
    latent = torch.tensor([0.3, -0.7, 0.0, 5.0, 1e-9], requires_grad=True)
    w = q_weight(latent, weight_bits=5)
    # log2(0.3) = -1.74 -> 2^-2; log2(0.7) = -0.51 -> 2^-1; 5 -> clamp to 2^0; tiny -> 2^-15 (Q's range)
    torch.testing.assert_close(w.detach(), torch.tensor([0.25, -0.5, 0.0, 1.0, 2.0 ** -15]))
    w.sum().backward()
    torch.testing.assert_close(latent.grad, torch.ones(5))


def test_stochastic_rounding_is_unbiased_and_only_floor_or_ceil():
    torch.manual_seed(0)
    p = torch.full((20000,), -2.3)
    w = round_power_of_two(2 ** p, weight_bits=5, stochastic=True)
    exps = torch.log2(w)
    assert set(exps.unique().tolist()) == {-3.0, -2.0}
    assert abs(exps.mean().item() - (-2.3)) < 0.02


def test_stochastic_rounding_only_in_training():
    torch.manual_seed(0)
    m = ShiftConv2d(16, 16, 3, rounding="stochastic")
    with torch.no_grad():
        m.shift.add_(0.5)  # every shift halfway between two integers
    assert not torch.equal(m.weight, m.weight)  # training: random draws differ
    m.eval()
    torch.testing.assert_close(m.weight, m.weight)


@pytest.mark.parametrize("signed", [True, False])
def test_fixed_point_activation_clips_rounds_and_passes_gradient_inside_range(signed):
    int_bits, frac_bits = 3, 2
    lo, hi = fixed_point_range(int_bits, frac_bits, signed)
    assert (lo, hi) == ((-4.0, 3.75) if signed else (0.0, 7.75))
    x = torch.linspace(-10, 10, 401, requires_grad=True)
    y = quantize_fixed_point(x, int_bits, frac_bits, signed)
    assert y.min().item() == lo and y.max().item() == hi
    assert torch.all((y * 4) == (y * 4).round())  # on the 2^-2 grid
    inside = (x > lo) & (x < hi)
    torch.testing.assert_close(y[inside], (x[inside] * 4).round() / 4)
    y.sum().backward()
    assert torch.all(x.grad[inside] == 1) and torch.all(x.grad[(x < lo) | (x > hi)] == 0)


def test_conv_uses_effective_weight_and_quantized_input():
    torch.manual_seed(1)
    m = ShiftConv2d(3, 5, 3, stride=2, padding=1, bias=True, activation_bits=(4, 4))
    x = torch.randn(2, 3, 9, 9)
    xq = quantize_fixed_point(x, 4, 4)
    torch.testing.assert_close(m(x), F.conv2d(xq, m.weight, m.bias, 2, 1))
    m1 = ShiftConv1d(3, 4, 3, padding=1, mode="q")
    x1 = torch.randn(2, 3, 10)
    torch.testing.assert_close(m1(x1), F.conv1d(x1, m1.weight, None, 1, 1))
    lin = ShiftLinear(6, 3)
    xl = torch.randn(4, 6)
    torch.testing.assert_close(lin(xl), F.linear(xl, lin.weight, lin.bias))


def test_training_step_moves_parameters_and_keeps_constraint():
    torch.manual_seed(2)
    m = ShiftConv2d(3, 4, 3, padding=1)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    x, target = torch.randn(4, 3, 6, 6), torch.randn(4, 4, 6, 6)
    before = m.shift.detach().clone()
    F.mse_loss(m(x), target).backward()
    assert m.shift.grad is not None and m.sign.grad is not None
    opt.step()
    assert not torch.equal(before, m.shift)
    assert _is_power_of_two_or_zero(m.weight, 5)


def test_state_dict_roundtrip_and_weight_property():
    m = ShiftConv2d(2, 3, 3, mode="ps")
    m2 = ShiftConv2d(2, 3, 3, mode="ps")
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m.weight, m2.weight)
    assert set(m.state_dict()) == {"shift", "sign"}
    assert set(ShiftConv2d(2, 3, 3, mode="q").state_dict()) == {"latent_weight"}
    assert m.weight.shape == (3, 2, 3, 3)
    assert "mode='ps'" in repr(m)


def test_set_weight_initialises_from_float_weights():
    w = torch.tensor([[0.3, -0.7], [0.0, 0.05]])
    lin = ShiftLinear(2, 2, bias=False)
    lin.set_weight(w)
    torch.testing.assert_close(lin.weight.detach(), torch.tensor([[0.25, -0.5], [0.0, 0.0625]]))


@pytest.mark.parametrize("kwargs, word", [
    (dict(weight_bits=1), "weight_bits"),
    (dict(mode="x"), "mode"),
    (dict(rounding="up"), "rounding"),
    (dict(groups=3), "groups"),
    (dict(padding=-2), "padding"),
    (dict(activation_bits=(0, -1)), "fixed-point"),
])
def test_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        ShiftConv2d(4, 4, 3, **kwargs)


def test_wrong_input():
    with pytest.raises(ValueError, match=r"\(N, 4, L\)"):
        ShiftConv1d(4, 2, 3)(torch.randn(2, 3, 10))
    with pytest.raises(TypeError, match="floating"):
        ShiftConv2d(1, 1, 1)(torch.ones(1, 1, 2, 2, dtype=torch.long))


@pytest.mark.parametrize("mode", ["ps", "q"])
def test_eval_weight_is_cached_until_a_parameter_changes(mode):
    torch.manual_seed(0)
    layer = ShiftLinear(12, 8, mode=mode).eval()
    x = torch.randn(3, 12)
    with torch.no_grad():
        w0 = layer.weight
        assert layer.weight is w0  # computed once while nothing changes
        assert torch.equal(layer(x), F.linear(x, layer.effective_weight(), layer.bias))
    # an optimizer step (in-place, bumps the version counter) is seen
    layer.train()
    opt = torch.optim.SGD(layer.parameters(), lr=5.0)
    layer(x).square().sum().backward()
    opt.step()
    layer.eval()
    with torch.no_grad():
        assert torch.equal(layer.weight, layer.effective_weight())
        assert not torch.equal(layer.weight, w0)
        # load_state_dict, a dtype conversion and a replaced parameter are seen too
        other = ShiftLinear(12, 8, mode=mode)
        layer.load_state_dict(other.state_dict())
        assert torch.equal(layer.weight, other.effective_weight())
        layer.double()
        assert layer.weight.dtype == torch.float64
        name = "shift" if mode == "ps" else "latent_weight"
        setattr(layer, name, torch.nn.Parameter(getattr(other, name).detach().double() - 1))
        assert torch.equal(layer.weight, layer.effective_weight())
    # with autograd on (eval mode or not) the weight stays differentiable and is not cached
    layer.float()
    w = layer.weight
    assert w.requires_grad and w is not layer.weight
