import copy
import io
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from shiftadd.nn import AdderConv2d, AdderLinear, ShiftAddConv2d, ShiftConv2d
from shiftadd.ops.adder import adder_conv2d, adder_linear
from shiftadd.ops.quant import quantize_fixed_point
from shiftadd.optim import scale_adder_gradients
from shiftadd.quant import (
    QuantConfig, TensorQuant, calibrate, compute_scale, dequantize, dequantize_model, evaluate_bit_widths,
    fake_quantize, fixed_point_format, freeze, preset, quantize_grad, quantize_model, quantize_to_int,
    quantized_layers, shared_scale, unfreeze,
)

DET8 = TensorQuant(bits=8)


def _is_on_grid(v: torch.Tensor, scale: float) -> bool:
    c = v.double() / scale
    return bool(torch.all(c == c.round()))


# ----------------------------------------------------------------------------- formats and range clipping
@pytest.mark.parametrize("bits", [4, 8, 16, 32])
@pytest.mark.parametrize("signed", [True, False])
def test_fixn_clips_to_its_range(bits, signed):
    f = bits // 2
    spec = TensorQuant(bits=bits, signed=signed, frac_bits=f)
    lo, hi = spec.qmin * 2.0 ** -f, spec.qmax * 2.0 ** -f
    x = torch.tensor([1e12, -1e12, hi + 1.0, lo - 1.0, 0.0], dtype=torch.float64)
    y = fake_quantize(x, spec)
    assert y.tolist() == [hi, lo, hi, lo, 0.0]
    q, s = quantize_to_int(x, spec)
    assert q.tolist() == [spec.qmax, spec.qmin, spec.qmax, spec.qmin, 0]
    assert s.item() == 2.0 ** -f


def test_fix32_codes_are_exact_and_clip_in_float32():
    spec = TensorQuant(bits=32, frac_bits=16)
    x = torch.tensor([1e6, -1e6, 0.3, 2.0 ** -18], dtype=torch.float32)
    q, _ = quantize_to_int(x, spec)
    assert q.tolist() == [2 ** 31 - 1, -(2 ** 31), round(0.3 * 2 ** 16), 0]
    y = fake_quantize(x, spec)
    assert y[0].item() <= 32768.0 and y[1].item() == -32768.0 and y[3].item() == 0.0


def test_fix32_dynamic_is_not_the_identity():
    # max |x| = 1 -> 30 fraction bits; anything below half an LSB (2^-31) vanishes
    x = torch.tensor([1.0, 1e-12, 3e-10, 6e-10], dtype=torch.float64)
    y = fake_quantize(x, TensorQuant(bits=32))
    assert y.tolist() == [1.0, 0.0, 0.0, 2.0 ** -30]
    assert fixed_point_format(x, TensorQuant(bits=32)) == [(2, 30)]


@pytest.mark.parametrize("bits", [2, 4, 8, 16, 32])
@pytest.mark.parametrize("signed", [True, False])
def test_pow2_scale_is_the_largest_that_does_not_clip(bits, signed):
    torch.manual_seed(bits)
    spec = TensorQuant(bits=bits, signed=signed)
    for m in [1.0, 0.75, 3.0, 1e-3, 127.0, 128.0, 2.0 ** -7, 1000.5]:
        x = torch.rand(50, dtype=torch.float64) * m
        x[7] = m
        if signed:
            x = x * torch.where(torch.rand(50, dtype=torch.float64) < 0.5, -1.0, 1.0)
        s = compute_scale(x, spec).item()
        f = -math.log2(s)
        assert f == round(f)  # a power of two
        assert spec.qmax * s >= m  # max |x| fits ...
        assert spec.qmax * s / 2 < m  # ... and one more fraction bit would clip it
        assert torch.equal(fake_quantize(x, spec).abs().max(), torch.tensor(m, dtype=torch.float64)
                           .div(s).round().mul(s))


def test_fixed_format_matches_ops_quantize_fixed_point():
    torch.manual_seed(0)
    x = torch.randn(1000) * 10
    for int_bits, frac_bits, signed in [(4, 4, True), (1, 7, True), (8, 0, False), (3, 13, True)]:
        spec = TensorQuant(bits=int_bits + frac_bits, signed=signed, frac_bits=frac_bits)
        torch.testing.assert_close(fake_quantize(x, spec), quantize_fixed_point(x, int_bits, frac_bits, signed),
                                   rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- bit-exact integer mapping
@pytest.mark.parametrize("spec", [
    TensorQuant(bits=8), TensorQuant(bits=4, scale="free"), TensorQuant(bits=16, granularity="channel"),
    TensorQuant(bits=8, signed=False, scale="free", granularity="channel"), TensorQuant(bits=32),
    TensorQuant(bits=24, scale="free"), TensorQuant(bits=6, frac_bits=3),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fake_quantize_is_bit_identical_to_the_integer_mapping(spec, dtype):
    torch.manual_seed(1)
    x = (torch.randn(6, 5, 3) * torch.logspace(-3, 2, 6).view(6, 1, 1)).to(dtype)
    y = fake_quantize(x, spec)
    q, s = quantize_to_int(x, spec)
    assert q.dtype == torch.int64 and int(q.min()) >= spec.qmin and int(q.max()) <= spec.qmax
    assert torch.equal(y, dequantize(q, s, spec, dtype))
    if spec.scale == "pow2":
        assert torch.equal(fake_quantize(y, spec), y)  # idempotent on its own grid


def test_values_on_the_grid_map_to_their_integers():
    spec = TensorQuant(bits=8, frac_bits=5)
    k = torch.arange(-128, 128)
    x = k.float() / 32
    q, _ = quantize_to_int(x, spec)
    assert torch.equal(q, k)
    assert torch.equal(fake_quantize(x, spec), x)


# ----------------------------------------------------------------------------- rounding modes
def test_deterministic_rounding_is_half_to_even():
    spec = TensorQuant(bits=8, frac_bits=0)
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 0.49, 0.51])
    assert fake_quantize(x, spec).tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 0.0, 1.0]


def test_stochastic_rounding_is_unbiased_floor_or_ceil_and_seedable():
    spec = TensorQuant(bits=8, frac_bits=2, rounding="stochastic")
    x = torch.full((40000,), 0.3)  # grid 0.25: 0.25 w.p. 0.8, 0.5 w.p. 0.2
    g = torch.Generator().manual_seed(0)
    y = fake_quantize(x, spec, generator=g)
    assert set(y.unique().tolist()) == {0.25, 0.5}
    assert abs(y.mean().item() - 0.3) < 0.003
    y2 = fake_quantize(x, spec, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, y2)
    assert not torch.equal(y, fake_quantize(x, spec))
    q, s = quantize_to_int(x, spec, generator=torch.Generator().manual_seed(0))
    assert torch.equal(dequantize(q, s, spec), y)


# ----------------------------------------------------------------------------- granularity, sign, STE
def test_per_channel_scales_keep_small_channels():
    torch.manual_seed(0)
    w = torch.randn(4, 50) * torch.tensor([1.0, 1.0, 1e-3, 1.0]).view(4, 1)
    per_tensor = fake_quantize(w, TensorQuant(bits=8))
    per_channel = fake_quantize(w, TensorQuant(bits=8, granularity="channel"))
    assert per_tensor[2].abs().max() <= 2 ** -7  # small channel mostly rounded away
    rel = (per_channel[2] - w[2]).abs().max() / w[2].abs().max()
    assert rel <= 1 / 127
    s = compute_scale(w, TensorQuant(bits=8, granularity="channel"))
    assert s.shape == (4, 1) and s[2].item() < s[0].item() / 100


def test_unsigned_formats_clip_negative_values_to_zero():
    spec = TensorQuant(bits=4, signed=False, frac_bits=1)
    y = fake_quantize(torch.tensor([-3.0, 0.2, 7.5, 9.0]), spec)
    assert y.tolist() == [0.0, 0.0, 7.5, 7.5]


def test_straight_through_gradient_is_zero_where_clipped():
    spec = TensorQuant(bits=4, frac_bits=1)  # range [-4, 3.5]
    x = torch.tensor([-10.0, -3.3, 0.26, 3.4, 5.0], requires_grad=True)
    fake_quantize(x, spec).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_quantize_grad_is_identity_forward_and_quantizes_the_gradient():
    torch.manual_seed(0)
    x = torch.randn(3, 7, requires_grad=True)
    c = torch.randn(3, 7)
    y = quantize_grad(x, DET8)
    assert torch.equal(y, x)
    (y * c).sum().backward()
    assert torch.equal(x.grad, fake_quantize(c, DET8))


def test_config_validation_and_presets():
    for name, bits in [("fix32", 32), ("fix16", 16), ("fix8", 8), ("FIX6", 6)]:
        c = preset(name)
        assert c.weight.bits == c.activation.bits == bits
        assert c.grad_output.bits == c.weight_grad.bits == 8
        assert c.grad_output.rounding == "stochastic" and c.weight.rounding == "deterministic"
        assert c.weight.scale == "pow2" and QuantConfig.from_dict(c.to_dict()) == c
    assert not preset("float").enabled
    with pytest.raises(ValueError, match="unknown quantization preset"):
        preset("fix64")
    with pytest.raises(ValueError, match="bits"):
        TensorQuant(bits=1)
    with pytest.raises(ValueError, match="rounding"):
        TensorQuant(rounding="up")
    with pytest.raises(ValueError, match="frac_bits"):
        TensorQuant(scale="free", frac_bits=3)


# ----------------------------------------------------------------------------- quantization-aware layers
def _net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), ShiftAddConv2d(8, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))


def test_quantize_model_keeps_state_dict_and_is_reversible():
    torch.manual_seed(0)
    m = _net()
    x = torch.randn(4, 3, 6, 6)
    m.eval()
    y_float = m(x)
    keys = list(m.state_dict())
    done = quantize_model(m, "fix8")
    assert set(done) == {"0", "2.shift", "2.adder", "5"}
    assert list(m.state_dict()) == keys
    info = quantized_layers(m)
    assert info["2.adder"]["kind"] == "adder" and info["2.adder"]["config"] == preset("fix8")
    y_q = m(x)
    assert not torch.equal(y_q, y_float)
    assert torch.equal(copy.deepcopy(m)(x), y_q)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), y_q)
    assert dequantize_model(m) == 4
    assert torch.equal(m(x), y_float)
    assert not quantized_layers(m)
    assert not m[0]._forward_pre_hooks and not m[0]._forward_hooks


def test_a_forward_that_raises_leaves_the_parameters_in_place():
    torch.manual_seed(0)
    layer = AdderConv2d(4, 6, 3)
    quantize_model(layer, "fix8")
    w = layer.weight
    with pytest.raises(ValueError, match="expects input"):
        layer(torch.randn(2, 5, 6, 6))
    assert layer.weight is w and isinstance(layer._parameters["weight"], nn.Parameter)
    layer(torch.randn(2, 4, 6, 6)).sum().backward()
    assert w.grad is not None


def test_per_layer_type_config():
    m = _net()
    done = quantize_model(m, {"adder": "fix8", "shift": preset("fix16"), "conv": None})
    assert set(done) == {"2.adder", "2.shift"} and done["2.shift"].activation.bits == 16
    done = quantize_model(m, "fix8", layer_types=("linear",))
    assert set(done) == {"5"}
    with pytest.raises(ValueError, match="layer type"):
        quantize_model(m, "fix8", layer_types=("mult",))
    with pytest.raises(ValueError, match="config keys"):
        quantize_model(m, {"adder": "fix8", "weights": None})


def test_adder_forward_uses_quantized_weight_and_input():
    torch.manual_seed(0)
    layer = AdderConv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 5, 5)
    quantize_model(layer, QuantConfig(weight=DET8, activation=TensorQuant(bits=6, scale="free")))
    ref = adder_conv2d(fake_quantize(x, TensorQuant(bits=6, scale="free")), fake_quantize(layer.weight, DET8),
                       padding=1)
    assert torch.equal(layer(x), ref)


def test_shift_layer_keeps_its_power_of_two_weight_and_quantizes_the_input():
    torch.manual_seed(0)
    layer = ShiftConv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 5, 5)
    quantize_model(layer, "fix8")
    layer.eval()
    ref = F.conv2d(fake_quantize(x, DET8), layer.weight, None, 1, 1)
    assert torch.equal(layer(x), ref)


def test_activation_fixed_format_clips_inside_the_model():
    layer = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    quantize_model(layer, QuantConfig(activation=TensorQuant(bits=8, frac_bits=4)))  # [-8, 7.9375]
    y = layer(torch.tensor([[100.0, -100.0, 0.5]]))
    assert y.item() == 7.9375 - 8 + 0.5


def test_output_error_and_weight_gradient_are_quantized():
    torch.manual_seed(0)
    ref = AdderLinear(6, 4)
    q = copy.deepcopy(ref)
    quantize_model(q, QuantConfig(grad_output=DET8, weight_grad=DET8))
    x = torch.randn(5, 6)
    g = torch.randn(5, 4)
    x_ref, x_q = x.clone().requires_grad_(), x.clone().requires_grad_()
    # reference: the same adder fed with the quantized output error
    adder_linear(x_ref, ref.weight).backward(fake_quantize(g, DET8))
    q(x_q).backward(g)
    assert torch.equal(x_q.grad, x_ref.grad)
    assert torch.equal(q.weight.grad, fake_quantize(ref.weight.grad, DET8))
    assert q.weight.grad.unique().numel() <= 256


def test_shift_ps_parameter_gradients_are_quantized():
    torch.manual_seed(0)
    ref = ShiftConv2d(3, 4, 3)
    q = copy.deepcopy(ref)
    quantize_model(q, QuantConfig(weight_grad=DET8))
    x = torch.randn(2, 3, 5, 5)
    ref(x).square().sum().backward()
    q(x).square().sum().backward()
    assert torch.equal(q.shift.grad, fake_quantize(ref.shift.grad, DET8))
    assert torch.equal(q.sign.grad, fake_quantize(ref.sign.grad, DET8))


def test_backward_8bit_linear_layer_gradients_on_grid():
    torch.manual_seed(0)
    layer = nn.Linear(10, 3)
    quantize_model(layer, "fix8")
    x = torch.randn(16, 10, requires_grad=True)
    layer(x).pow(2).sum().backward()
    s = compute_scale(layer.weight.grad, DET8).item()  # the grid of the quantized weight gradient
    assert _is_on_grid(layer.weight.grad, s) and layer.weight.grad.abs().max() <= 127 * s


def test_fix8_qat_trains_with_adaptive_lr():
    torch.manual_seed(0)
    x = torch.randn(128, 8)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), AdderLinear(16, 16), nn.BatchNorm1d(16),
                          nn.ReLU(), nn.Linear(16, 2))
    quantize_model(model, "fix8")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        assert scale_adder_gradients(model) == 1
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


# ----------------------------------------------------------------------------- shared scale (adder layers)
def _batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 4, 5, 5, generator=g) for _ in range(n)]


def test_shared_scale_adder_works_on_integers_bit_exactly():
    torch.manual_seed(0)
    layer = AdderConv2d(4, 6, 3, padding=1)
    shared_scale(layer, 8, _batches(), scale="pow2")
    layer.eval()
    x = torch.randn(2, 4, 5, 5) * 1.5
    qx, qw, s = layer.shared_quantizer.integer_codes(layer, x)
    assert -128 <= int(qx.min()) and int(qx.max()) <= 127 and -128 <= int(qw.min()) and int(qw.max()) <= 127
    # |s*qx - s*qw| = s*|qx - qw|: the float layer equals s times the integer adder, bit for bit
    integer_out = adder_conv2d(qx.float(), qw.float(), padding=1)
    assert torch.equal(integer_out, integer_out.round())
    assert torch.equal(layer(x), integer_out * s.float())


def test_shared_scale_free_scale_and_calibration_statistics():
    torch.manual_seed(0)
    layer = AdderConv2d(4, 6, 3, padding=1)
    batches = _batches()
    q = shared_scale(layer, 8, batches)[""]
    expected = max(b.abs().max().item() for b in batches)
    assert q.input_max.item() == pytest.approx(expected)
    s = q.scale(layer.weight).item()
    assert s == pytest.approx(max(expected, layer.weight.abs().max().item()) / 127)
    qx, qw, s2 = q.integer_codes(layer, batches[0])
    torch.testing.assert_close(layer(batches[0]), adder_conv2d(qx.double(), qw.double(), padding=1).float()
                               * float(s2), rtol=1e-5, atol=1e-4)
    shared_scale(layer, 8, batches, statistic="mean")
    assert layer.shared_quantizer.input_max.item() == pytest.approx(
        sum(b.abs().max().item() for b in batches) / 3)


def test_shared_scale_range_from_weight_clips_inputs():
    torch.manual_seed(0)
    layer = AdderLinear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -1.0, 0.25], [1.0, 0.0, -0.5]]))
    shared_scale(layer, 8, [torch.randn(4, 3)], range_from="weight")
    y = layer(torch.tensor([[50.0, -50.0, 0.0]]))
    s = 1.0 / 127  # max |w| / qmax
    wq = torch.round(layer.weight.detach() / s) * s
    ref = adder_linear(torch.tensor([[127 * s, -128 * s, 0.0]]), wq)  # input clipped to [-128, 127] * s
    torch.testing.assert_close(y, ref)


def test_fold_adder_codes_is_exact_for_every_in_range_input():
    from shiftadd.quant import fold_adder_codes

    torch.manual_seed(0)
    codes = torch.randint(-400, 400, (5, 3, 2, 2))
    clipped, distance = fold_adder_codes(codes, -127, 127)
    assert int(clipped.abs().max()) <= 127 and distance.shape == (5,) and int(distance.min()) >= 0
    x = torch.randint(-127, 128, (7, 12)).double()
    full = -torch.cdist(x, codes.reshape(5, -1).double(), p=1)
    folded = -torch.cdist(x, clipped.reshape(5, -1).double(), p=1) - distance.double()
    assert torch.equal(full, folded)
    assert torch.equal(fold_adder_codes(codes.clamp(-127, 127), -127, 127)[1], torch.zeros(5, dtype=torch.int64))
    x = torch.randint(-128, 128, (7, 12)).double()  # asymmetric range: [-128, 127]
    clipped, distance = fold_adder_codes(codes, -128, 127)
    assert torch.equal(-torch.cdist(x, codes.reshape(5, -1).double(), p=1),
                       -torch.cdist(x, clipped.reshape(5, -1).double(), p=1) - distance.double())


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_shared_scale_folded_keeps_the_input_resolution_and_the_far_weights(kind):
    """Weights far beyond the activations (as in trained adder networks): ``folded`` equals the adder on
    unclipped weight codes at the input's scale, where ``input`` clips them and ``max`` coarsens the input."""
    torch.manual_seed(0)
    layer = AdderConv2d(4, 6, 3, padding=1) if kind == "conv" else AdderLinear(12, 6)
    with torch.no_grad():
        layer.weight.mul_(20.0)  # max|w| ~ 60 against max|x| ~ 3
    shape = (3, 4, 5, 5) if kind == "conv" else (3, 12)
    batches = [torch.randn(*shape) for _ in range(3)]
    x = batches[0]
    op = (lambda a, w: adder_conv2d(a, w, padding=1)) if kind == "conv" else adder_linear
    outs = {}
    for rng in ("folded", "input", "max"):
        q = copy.deepcopy(layer)
        shared_scale(q, 8, batches, range_from=rng)
        outs[rng] = q.eval()(x)
    s = max(b.abs().max().item() for b in batches) / 127
    qx = torch.round(x.double() / s).clamp(-128, 127)
    exact = op(qx, torch.round(layer.weight.detach().double() / s)) * s  # no weight code clipped
    torch.testing.assert_close(outs["folded"].double(), exact, rtol=1e-6, atol=1e-3)
    ref = op(x.double(), layer.weight.detach().double())
    err = {k: float((v.double() - ref).abs().max()) for k, v in outs.items()}
    assert err["folded"] < 0.25 * err["max"] and err["folded"] < 0.01 * err["input"], err
    # integer codes + offset reproduce the simulation; the far weights still get a gradient (QAT)
    q = copy.deepcopy(layer)
    shared_scale(q, 8, batches, range_from="folded")
    qx2, qw, s2 = q.shared_quantizer.integer_codes(q, x)
    _, distance = q.shared_quantizer.weight_codes(q.weight)
    acc = op(qx2.double(), qw.double())
    acc = acc - (distance.double() if kind == "linear" else distance.double().view(1, -1, 1, 1))
    torch.testing.assert_close(q(x).double(), acc * float(s2), rtol=1e-6, atol=1e-3)
    q.train()
    q(x).sum().backward()
    far = q.weight.detach().abs() > 127 * s
    assert bool(far.any()) and bool((q.weight.grad[far] != 0).all())


def test_shared_scale_state_dict_round_trip_and_uncalibrated_error():
    torch.manual_seed(0)
    net = nn.Sequential(AdderConv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), AdderConv2d(4, 4, 3, padding=1))
    shared_scale(net, 6, _batches())
    net.eval()
    x = torch.randn(2, 4, 5, 5)
    sd = net.state_dict()
    assert "0.shared_quantizer.input_max" in sd and "2.shared_quantizer.input_max" in sd
    fresh = nn.Sequential(AdderConv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), AdderConv2d(4, 4, 3, padding=1))
    shared_scale(fresh, 6)  # same structure, no calibration
    fresh.eval()
    with pytest.raises(RuntimeError, match="no calibrated shared scale"):
        fresh(x)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh(x), net(x))


def test_shared_scale_qat_updates_running_range_and_trains():
    torch.manual_seed(0)
    layer = AdderConv2d(4, 4, 3, padding=1)
    q = shared_scale(layer, 8, qat=True, momentum=0.5)[""]
    b = _batches(2)
    layer.train()
    layer(b[0]).sum().backward()
    assert q.input_max.item() == pytest.approx(b[0].abs().max().item())
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    layer(b[1])
    assert q.input_max.item() == pytest.approx(0.5 * b[0].abs().max().item() + 0.5 * b[1].abs().max().item())
    layer.eval()
    before = q.input_max.clone()
    layer(b[1] * 10)
    assert torch.equal(q.input_max, before)


def test_evaluate_bit_widths_error_grows_as_bits_shrink():
    torch.manual_seed(0)
    net = nn.Sequential(AdderConv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), AdderConv2d(8, 4, 3, padding=1))
    net.eval()
    x = torch.randn(8, 4, 5, 5)
    ref = net(x).detach()

    def evaluate(model):
        model.eval()
        with torch.no_grad():
            return (model(x) - ref).pow(2).mean().item()

    res = evaluate_bit_widths(net, evaluate, _batches(), bits=(16, 8, 6, 4))
    assert list(res) == ["float", "int16", "int8", "int6", "int4"]
    assert res["float"] == 0.0
    assert 0 < res["int16"] < res["int8"] < res["int6"] < res["int4"]
    assert not quantized_layers(net)  # the model itself is untouched


def test_shared_scale_conflicts_and_combination_with_backward_quantizers():
    m = AdderLinear(3, 2)
    quantize_model(m, "fix8")
    with pytest.raises(ValueError, match="already quantizes"):
        shared_scale(m, 8)
    dequantize_model(m)
    shared_scale(m, 8, [torch.randn(4, 3)])
    with pytest.raises(ValueError, match="shared-scale"):
        quantize_model(m, "fix8")
    quantize_model(m, QuantConfig(grad_output=DET8, weight_grad=DET8))
    m(torch.randn(4, 3)).sum().backward()
    s = compute_scale(m.weight.grad, DET8).item()
    assert _is_on_grid(m.weight.grad, s)
    with pytest.raises(ValueError, match="no adder layers"):
        shared_scale(nn.Linear(2, 2), 8)
    with pytest.raises(ValueError, match="empty"):
        calibrate(m, [])


# ----------------------------------------------------------------------------- DeepShift freezing
def test_freeze_sign_and_shift():
    torch.manual_seed(0)
    m = nn.Sequential(ShiftConv2d(3, 4, 3), ShiftAddConv2d(4, 4, 3, padding=1))
    assert freeze(m, sign=True) == 2
    m(torch.randn(1, 3, 6, 6)).sum().backward()
    assert m[0].sign.grad is None and m[0].shift.grad is not None
    assert unfreeze(m) == 2
    assert freeze(m, sign=True, shift=True) == 4
    assert all(not p.requires_grad for p in m[0].parameters()) and not m[1].shift.sign.requires_grad
    q = ShiftConv2d(3, 4, 3, mode="q")
    with pytest.raises(ValueError, match="only be frozen together"):
        freeze(q, sign=True)
    assert freeze(q, sign=True, shift=True) == 1
    with pytest.raises(ValueError, match="no bit-shift layers"):
        freeze(nn.Linear(2, 2), sign=True)
