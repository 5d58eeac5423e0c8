import random

import pytest
import torch

import shiftadd.ops.adder as adder_ops
from shiftadd.nn import AdderConv1d, AdderConv2d, AdderLinear
from shiftadd.ops.adder import adder_conv2d, adder_matmul

from reference_impl import adder_conv2d_with_grads, adder_linear_with_grads

CONFIGS = [
    # N, C, O, H, W, (kh, kw), stride, padding, dilation, groups
    (2, 3, 4, 7, 7, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (1, 4, 6, 8, 5, (3, 3), (2, 2), (1, 1), (1, 1), 2),
    (3, 4, 4, 6, 6, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    (2, 6, 6, 9, 9, (3, 3), (1, 1), (2, 2), (2, 2), 3),
    (1, 2, 5, 6, 7, (2, 3), (1, 2), (1, 0), (1, 1), 1),
    (2, 4, 4, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1), 4),  # depthwise
    (1, 3, 2, 4, 4, (5, 5), (1, 1), (2, 2), (1, 1), 1),  # kernel larger than the unpadded input
]


def _random_configs(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        groups = rng.choice([1, 1, 2, 3])
        C, O = groups * rng.randint(1, 3), groups * rng.randint(1, 3)
        kh, kw = rng.randint(1, 4), rng.randint(1, 4)
        dh, dw = rng.randint(1, 2), rng.randint(1, 2)
        ph, pw = rng.randint(0, 2), rng.randint(0, 2)
        H = dh * (kh - 1) + 1 - 2 * ph + rng.randint(0, 5)
        W = dw * (kw - 1) + 1 - 2 * pw + rng.randint(0, 5)
        H, W = max(H, 1), max(W, 1)
        if H + 2 * ph < dh * (kh - 1) + 1 or W + 2 * pw < dw * (kw - 1) + 1:
            continue
        out.append((rng.randint(1, 3), C, O, H, W, (kh, kw), (rng.randint(1, 3), rng.randint(1, 3)),
                    (ph, pw), (dh, dw), groups))
    return out


@pytest.mark.parametrize("cfg", CONFIGS + _random_configs(12))
@pytest.mark.parametrize("mode", ["full", "sign"])
def test_conv2d_forward_and_gradients_match_paper_formulas(cfg, mode):
    N, C, O, H, W, k, s, p, d, g = cfg
    torch.manual_seed(0)
    x = torch.randn(N, C, H, W, dtype=torch.float64, requires_grad=True)
    w = torch.randn(O, C // g, *k, dtype=torch.float64, requires_grad=True)
    out = adder_conv2d(x, w, None, s, p, d, g, grad_mode=mode)
    g_out = torch.randn_like(out)
    out.backward(g_out)
    ref_out, ref_dx, ref_dw = adder_conv2d_with_grads(x.detach(), w.detach(), g_out, s, p, d, g, mode)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(x.grad, ref_dx)
    torch.testing.assert_close(w.grad, ref_dw)


def test_padding_contributes_minus_abs_weight():
    w = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    x = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    out = adder_conv2d(x, w, padding=1)
    torch.testing.assert_close(out.flatten(), -w.abs().sum().reshape(1))


def test_chunking_gives_identical_results(monkeypatch):
    torch.manual_seed(1)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    out = adder_conv2d(x, w, padding=1)
    out.sum().backward()
    grads = (x.grad.clone(), w.grad.clone())
    x.grad = w.grad = None
    monkeypatch.setattr(adder_ops, "CHUNK_ELEMENTS", 37)  # forces many uneven chunks
    out2 = adder_conv2d(x, w, padding=1)
    out2.sum().backward()
    torch.testing.assert_close(out, out2)
    torch.testing.assert_close(grads[0], x.grad)
    torch.testing.assert_close(grads[1], w.grad)


def test_sign_mode_passes_gradcheck():
    torch.manual_seed(2)
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w: adder_conv2d(x, w, None, 2, 1, 1, 2, grad_mode="sign")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w), eps=1e-6, atol=1e-5)
    xl = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    wl = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: adder_matmul(a[None], b[None], "sign"), (xl, wl))


def test_full_mode_is_not_the_exact_derivative():
    # the paper's gradients differ from the L1 derivative: gradcheck must fail in "full" mode
    torch.manual_seed(3)
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert not torch.autograd.gradcheck(lambda x, w: adder_conv2d(x, w), (x, w), raise_exception=False)


def test_linear_matches_formulas():
    torch.manual_seed(4)
    layer = AdderLinear(7, 5, bias=True).double()
    x = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    g = torch.randn_like(out)
    out.backward(g)
    ref_out, ref_dx, ref_dw = adder_linear_with_grads(x.detach(), layer.weight.detach(), g)
    torch.testing.assert_close(out, ref_out + layer.bias)
    torch.testing.assert_close(x.grad, ref_dx)
    torch.testing.assert_close(layer.weight.grad, ref_dw)
    torch.testing.assert_close(layer.bias.grad, g.sum(0))
    assert layer(torch.randn(2, 3, 7, dtype=torch.float64)).shape == (2, 3, 5)


def test_conv1d_matches_2d_formulas():
    torch.manual_seed(5)
    layer = AdderConv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2).double()
    x = torch.randn(2, 4, 11, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    g = torch.randn_like(out)
    out.backward(g)
    ref_out, ref_dx, ref_dw = adder_conv2d_with_grads(
        x.detach()[:, :, None], layer.weight.detach()[:, :, None], g[:, :, None], (1, 2), (0, 1), (1, 2), 2)
    torch.testing.assert_close(out, ref_out[:, :, 0])
    torch.testing.assert_close(x.grad, ref_dx[:, :, 0])
    torch.testing.assert_close(layer.weight.grad, ref_dw[:, :, 0])


def test_module_matches_functional_and_weight_grad_is_raw():
    torch.manual_seed(6)
    m = AdderConv2d(3, 4, 3, stride=2, padding=1, bias=True)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = m(x)
    assert out.shape == torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)(x).shape
    g = torch.randn_like(out)
    out.backward(g)
    _, _, ref_dw = adder_conv2d_with_grads(x.detach().double(), m.weight.detach().double(), g.double(),
                                           (2, 2), (1, 1), (1, 1), 1)
    torch.testing.assert_close(m.weight.grad.double(), ref_dw, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(m.bias.grad, g.sum((0, 2, 3)))


def test_unbatched_input_and_state_dict_roundtrip():
    m = AdderConv2d(2, 3, 3, padding=1)
    x = torch.randn(2, 5, 5)
    assert m(x).shape == (3, 5, 5)
    m2 = AdderConv2d(2, 3, 3, padding=1)
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x), m2(x))
    assert m.double()(x.double()).dtype == torch.float64
    assert "eta=0.2" in repr(m) and "padding=(1, 1)" in repr(m)


@pytest.mark.parametrize("kwargs, word", [
    (dict(in_channels=4, out_channels=6, kernel_size=3, groups=4), "groups"),
    (dict(in_channels=4, out_channels=4, kernel_size=3, padding=-1), "padding"),
    (dict(in_channels=4, out_channels=4, kernel_size=0), "kernel_size"),
    (dict(in_channels=4, out_channels=4, kernel_size=3, stride=0), "stride"),
    (dict(in_channels=4, out_channels=4, kernel_size=3, grad_mode="l2"), "grad_mode"),
    (dict(in_channels=4, out_channels=4, kernel_size=3, eta=0), "eta"),
])
def test_bad_arguments_name_the_argument(kwargs, word):
    with pytest.raises(ValueError, match=word):
        AdderConv2d(**kwargs)


def test_wrong_input_shape_states_expected_shape():
    m = AdderConv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        m(torch.randn(2, 5, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        m(torch.randn(8, 8))
    with pytest.raises(ValueError, match=r"\(\.\.\., 7\)"):
        AdderLinear(7, 2)(torch.randn(3, 6))


@pytest.mark.parametrize("cfg", CONFIGS + _random_configs(8, seed=7))
@pytest.mark.parametrize("mode", ["full", "sign"])
def test_default_backend_float32_matches_paper_formulas(cfg, mode):
    # float32 goes through the fastest available backend (fused C++ kernel when it builds)
    N, C, O, H, W, k, s, p, d, g = cfg
    torch.manual_seed(1)
    x = torch.randn(N, C, H, W, requires_grad=True)
    w = torch.randn(O, C // g, *k, requires_grad=True)
    out = adder_conv2d(x, w, None, s, p, d, g, grad_mode=mode)
    g_out = torch.randn_like(out)
    out.backward(g_out)
    ref_out, ref_dx, ref_dw = adder_conv2d_with_grads(x.detach().double(), w.detach().double(), g_out.double(),
                                                      s, p, d, g, mode)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x.grad.double(), ref_dx, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(w.grad.double(), ref_dw, rtol=1e-4, atol=1e-3)
