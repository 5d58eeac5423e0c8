import pytest
import torch
import torch.nn as nn

from shiftadd.nn import AdderConv2d, ShiftAddConv1d, ShiftAddConv2d, ShiftAddLinear, ShiftConv2d


@pytest.mark.parametrize("k, s, p, d", [(3, 1, 1, 1), (3, 2, 1, 1), (1, 2, 0, 1), (2, 1, 0, 1), (4, 2, 1, 1),
                                        (3, 1, 2, 2), ((1, 3), 1, (0, 1), 1)])
def test_output_shape_matches_conv2d(k, s, p, d):
    x = torch.randn(2, 4, 9, 10)
    m = ShiftAddConv2d(4, 6, k, stride=s, padding=p, dilation=d)
    ref = nn.Conv2d(4, 6, k, stride=s, padding=p, dilation=d)
    assert m(x).shape == ref(x).shape


def test_structure_and_forward_composition():
    torch.manual_seed(0)
    m = ShiftAddConv2d(4, 8, 3, stride=2, padding=1, groups=2, bias=True)
    assert isinstance(m.shift, ShiftConv2d) and isinstance(m.adder, AdderConv2d)
    assert (m.shift.in_channels, m.shift.out_channels, m.shift.stride) == (4, 8, (2, 2))
    assert (m.adder.in_channels, m.adder.out_channels, m.adder.stride) == (8, 8, (1, 1))
    assert m.bias is m.adder.bias and m.shift.bias is None
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(m(x), m.adder(m.shift(x)))


def test_fixed_shift_trains_only_the_adder():
    torch.manual_seed(1)
    m = ShiftAddConv2d(3, 4, 3, padding=1, fixed_shift=True)
    frozen = {k: v.clone() for k, v in m.shift.state_dict().items()}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    m(torch.randn(2, 3, 6, 6)).pow(2).mean().backward()
    assert m.shift.shift.grad is None and m.shift.sign.grad is None
    assert m.adder.weight.grad is not None
    opt.step()
    for k, v in m.shift.state_dict().items():
        assert torch.equal(v, frozen[k])
    w = m.shift.weight
    nz = w[w != 0].abs()
    assert torch.all(torch.log2(nz) == torch.log2(nz).round())


def test_linear_and_1d_forms():
    lin = ShiftAddLinear(6, 4, fixed_shift=True)
    assert lin(torch.randn(3, 6)).shape == (3, 4)
    assert all(not p.requires_grad for p in lin.shift.parameters())
    c1 = ShiftAddConv1d(3, 5, 3, stride=2, padding=1)
    assert c1(torch.randn(2, 3, 11)).shape == nn.Conv1d(3, 5, 3, stride=2, padding=1)(torch.randn(2, 3, 11)).shape


def test_state_dict_roundtrip_and_repr():
    a, b = ShiftAddConv2d(2, 3, 3, padding=1), ShiftAddConv2d(2, 3, 3, padding=1)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(a(x), b(x))
    assert "fixed_shift=False" in repr(a) and "ShiftConv2d" in repr(a)
