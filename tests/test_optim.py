import math

import torch
import torch.nn as nn

from shiftadd import AdderAdaptiveLR, scale_adder_gradients
from shiftadd.nn import AdderConv2d, AdderLinear, ShiftAddConv2d


def test_scaled_gradient_has_norm_eta_sqrt_k_and_direction_kept():
    torch.manual_seed(0)
    m = nn.Sequential(AdderConv2d(3, 4, 3), nn.Conv2d(4, 4, 1), AdderLinear(5, 2, eta=0.5))
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    before = [p.grad.clone() for p in m.parameters()]
    assert scale_adder_gradients(m) == 2
    g0 = m[0].weight.grad
    assert math.isclose(g0.norm().item(), 0.2 * math.sqrt(g0.numel()), rel_tol=1e-5)
    torch.testing.assert_close(g0 / g0.norm(), before[0] / before[0].norm())
    assert math.isclose(m[2].weight.grad.norm().item(), 0.5 * math.sqrt(10), rel_tol=1e-5)
    torch.testing.assert_close(m[1].weight.grad, before[1])  # conv untouched


def test_scaling_invariant_to_gradient_magnitude_and_zero_safe():
    a, b = AdderConv2d(2, 2, 3), AdderConv2d(2, 2, 3)
    g = torch.randn_like(a.weight)
    a.weight.grad, b.weight.grad = g.clone(), 4 * g.clone()  # e.g. sum over 4 processes vs mean
    scale_adder_gradients(a)
    scale_adder_gradients(b)
    torch.testing.assert_close(a.weight.grad, b.weight.grad)
    a.weight.grad = torch.zeros_like(a.weight)
    scale_adder_gradients(a)
    assert torch.all(a.weight.grad == 0) and torch.all(torch.isfinite(a.weight.grad))


def test_optimizer_wrapper_applies_scaling_before_step():
    torch.manual_seed(1)
    m = ShiftAddConv2d(2, 3, 3, padding=1)
    opt = AdderAdaptiveLR(torch.optim.SGD(m.parameters(), lr=1.0), m, eta=0.1)
    w0 = m.adder.weight.detach().clone()
    m(torch.randn(2, 2, 5, 5)).sum().backward()
    opt.step()
    step = (w0 - m.adder.weight.detach()).norm().item()
    assert math.isclose(step, 0.1 * math.sqrt(m.adder.weight.numel()), rel_tol=1e-4)
    opt.zero_grad()
    assert m.adder.weight.grad is None
    assert "lr" in opt.param_groups[0] and "state" in opt.state_dict()
