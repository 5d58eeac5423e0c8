"""Device-independent GPU readiness, checked on the CPU: shape propagation on the ``meta`` device,
device moves that keep buffers/masks/quantizer state, checkpoints loaded onto a chosen device,
adder layers under autocast (float32 accumulation), and honest dispatch (a warning, once per
reason, and an entry in shiftadd.backends(), whenever a tensor misses its device's fast kernel).
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import shiftadd
import shiftadd.ops.adder as adder_ops
from shiftadd import prune as P
from shiftadd import quant as Q
from shiftadd.errors import CheckpointError
from shiftadd.models import OPS, create
from shiftadd.nn import (
    ActiveShift2d, AdderConv1d, AdderConv2d, AdderLinear, ShiftAddConv1d, ShiftAddConv2d, ShiftAddLinear,
    ShiftConv1d, ShiftConv2d, ShiftLinear, SparseShift2d, SpatialShift2d,
)
from shiftadd.ops.adder import AdderFallbackWarning, adder_conv2d, adder_linear
from shiftadd.train.checkpoint import load_checkpoint, save_checkpoint

META = torch.device("meta")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (constructor, input shape, output shape)
LAYERS = [
    (lambda **kw: AdderConv2d(4, 6, 3, stride=2, padding=1, **kw), (2, 4, 9, 9), (2, 6, 5, 5)),
    (lambda **kw: AdderConv1d(4, 6, 3, **kw), (2, 4, 9), (2, 6, 7)),
    (lambda **kw: AdderLinear(4, 6, **kw), (2, 4), (2, 6)),
    (lambda **kw: ShiftConv2d(4, 6, 3, padding=1, **kw), (2, 4, 9, 9), (2, 6, 9, 9)),
    (lambda **kw: ShiftConv1d(4, 6, 3, mode="q", **kw), (2, 4, 9), (2, 6, 7)),
    (lambda **kw: ShiftLinear(4, 6, **kw), (2, 4), (2, 6)),
    (lambda **kw: ShiftAddConv2d(4, 6, 3, padding=1, groups=2, **kw), (2, 4, 8, 8), (2, 6, 8, 8)),
    (lambda **kw: ShiftAddConv1d(4, 6, 3, **kw), (2, 4, 9), (2, 6, 7)),
    (lambda **kw: ShiftAddLinear(4, 6, **kw), (2, 4), (2, 6)),
]


@pytest.fixture(autouse=True)
def fresh_fallbacks(monkeypatch):
    monkeypatch.delenv("SHIFTADD_BACKEND", raising=False)
    adder_ops.clear_fallbacks()
    yield
    adder_ops.clear_fallbacks()


# --------------------------------------------------------------------------- meta device
@pytest.mark.parametrize("make,in_shape,out_shape", LAYERS, ids=[f"layer{i}" for i in range(len(LAYERS))])
def test_layer_propagates_shapes_on_meta(make, in_shape, out_shape):
    layer = make(device=META)
    assert all(p.device == META for p in layer.parameters())
    x = torch.randn(in_shape, device=META, requires_grad=True)
    y = layer(x)
    assert y.shape == out_shape and y.device == META
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert all(p.grad is not None and p.grad.shape == p.shape for p in layer.parameters() if p.requires_grad)


def test_spatial_shift_on_meta():
    """(ActiveShift/SparseShift read their learned offsets on the host, so they need real values.)"""
    layer = SpatialShift2d(6).to(META)
    x = torch.randn(2, 6, 7, 7, device=META, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape and y.device == META
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("make", [lambda: ActiveShift2d(6), lambda: SparseShift2d(6)], ids=["active", "sparse"])
def test_learnable_shifts_keep_their_offsets_across_moves(make):
    layer = make()
    with torch.no_grad():
        layer.shift.uniform_(-2, 2)
    x = torch.randn(2, 6, 7, 7)
    want = layer(x)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    moved = layer.to(META).to_empty(device="cpu")  # the structure survives the trip, the values do not
    moved.load_state_dict(state)
    torch.testing.assert_close(moved(x), want)


@pytest.mark.parametrize("op", OPS)
def test_models_train_step_on_meta(op):
    with META:
        model = create("resnet20", op=op)
    Q.quantize_model(model, "fix8")
    out = model(torch.randn(2, 3, 32, 32, device=META))
    assert out.shape == (2, 10) and out.device == META
    out.sum().backward()


def test_shared_scale_quantizer_on_meta():
    with META:
        model = create("resnet8", op="adder")
    done = Q.shared_scale(model, 8, range_from="weight")  # an input range needs calibration data
    assert done and all(b.device == META for q in done.values() for b in q.buffers())
    assert model(torch.randn(2, 3, 32, 32, device=META)).shape == (2, 10)


# --------------------------------------------------------------------------- device moves
def _compressed_model() -> nn.Module:
    torch.manual_seed(0)
    model = create("resnet8", op="shiftadd")
    P.prune(model, 0.3)
    Q.quantize_model(model, {"adder": "fix16", "shift": "fix8"})
    return model


def test_to_meta_and_back_keeps_masks_buffers_and_quantizers():
    model = _compressed_model()
    before = {k: (v.dtype, v.shape) for k, v in model.state_dict().items()}
    assert any(k.endswith("pruning.mask") for k in before)
    configs = {k: repr(v["config"]) for k, v in Q.quantized_layers(model).items()}
    assert configs
    moved = model.to(META)
    after = moved.state_dict()
    assert {k: (v.dtype, v.shape) for k, v in after.items()} == before  # same keys, masks stay bool
    assert all(v.device == META for v in after.values())
    assert {k: repr(v["config"]) for k, v in Q.quantized_layers(moved).items()} == configs
    out = moved(torch.randn(2, 3, 32, 32, device=META))
    assert out.shape == (2, 10)
    back = moved.to_empty(device="cpu")
    assert all(v.device.type == "cpu" for v in back.state_dict().values())


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_loads_onto_the_requested_device(tmp_path):
    model = _compressed_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    save_checkpoint(str(tmp_path), model, opt, {"epoch": 1})
    for where in ("cpu", torch.device("cpu"), "meta"):
        ck = load_checkpoint(str(tmp_path), map_location=where)
        assert all(v.device == torch.device(where) for v in ck.model_state.values())
        assert all(v.device == torch.device(where) for s in ck.optimizer_state["state"].values()
                   for v in s.values() if isinstance(v, torch.Tensor))
    ck = load_checkpoint(str(tmp_path))
    fresh = create("resnet8", op="shiftadd")
    P.restore_masks(fresh, ck.model_state)
    Q.quantize_model(fresh, {"adder": "fix16", "shift": "fix8"})
    fresh.load_state_dict(ck.model_state)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


@needs_cuda
def test_cuda_checkpoint_loads_on_cpu_and_back(tmp_path):
    model = _compressed_model()
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    want = model(x)
    gpu = model.to("cuda")
    torch.testing.assert_close(gpu(x.cuda()).cpu(), want, rtol=1e-4, atol=1e-3)  # masks, quantizers moved
    save_checkpoint(str(tmp_path), gpu, None, {"epoch": 0})
    for where in ("cpu", "cuda"):
        ck = load_checkpoint(str(tmp_path), map_location=where)
        assert all(v.device.type == where for v in ck.model_state.values())
        fresh = create("resnet8", op="shiftadd")
        P.restore_masks(fresh, ck.model_state)
        Q.quantize_model(fresh, {"adder": "fix16", "shift": "fix8"})
        fresh.load_state_dict(ck.model_state)
        fresh.eval()
        torch.testing.assert_close(fresh(x), want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("where,match", [("bogus", "not a device name"), ("cuda:0", "CUDA is not available")])
def test_checkpoint_bad_device_is_a_user_error(tmp_path, where, match):
    if where.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    save_checkpoint(str(tmp_path), nn.Linear(2, 2), None, {"epoch": 0})
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(str(tmp_path), map_location=where)


# --------------------------------------------------------------------------- autocast
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_adder_under_autocast_computes_in_float32(dtype, device):
    torch.manual_seed(0)
    conv, adder = nn.Conv2d(3, 8, 3, padding=1).to(device), AdderConv2d(8, 6, 3, padding=1).to(device)
    x = torch.randn(2, 3, 8, 8, device=device)
    with warnings.catch_warnings():
        if device == "cpu":  # the float32 C++ kernel is used, no fallback
            warnings.simplefilter("error", AdderFallbackWarning)
        with torch.autocast(device, dtype=dtype):
            h = conv(x)
            assert h.dtype == dtype
            h.retain_grad()
            y = adder(h)
        assert y.dtype == torch.float32
        g = torch.randn_like(y)
        y.backward(g)
    # the same as the float32 layer applied to the (rounded) input it received
    h32 = h.detach().float().requires_grad_(True)
    w32 = adder.weight.detach().clone().requires_grad_(True)
    ref = adder_conv2d(h32, w32, None, 1, 1)
    ref.backward(g)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(adder.weight.grad, w32.grad, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(h.grad.float(), h32.grad, rtol=1e-2, atol=1e-2)  # rounded back to ``dtype``


def test_adder_linear_under_autocast_returns_float32():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = adder_linear(torch.randn(3, 5).bfloat16(), torch.randn(4, 5))
    assert y.dtype == torch.float32


def test_mixed_dtypes_without_autocast_are_refused():
    with pytest.raises(TypeError, match="input dtype torch.bfloat16 and weight dtype torch.float32 differ"):
        AdderConv2d(3, 4, 3)(torch.randn(1, 3, 5, 5).bfloat16())
    with pytest.raises(TypeError, match="differ"):
        AdderLinear(3, 4)(torch.randn(2, 3, dtype=torch.float64))


# --------------------------------------------------------------------------- dispatch honesty
def _fallback_warnings(fn, calls: int = 3):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(calls):
            fn()
    return [w for w in caught if issubclass(w.category, AdderFallbackWarning)]


def test_unsupported_dtype_warns_once_and_is_reported():
    x, w = torch.randn(1, 2, 5, 5, dtype=torch.float64), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    got = _fallback_warnings(lambda: adder_conv2d(x, w, padding=1))
    assert len(got) == 1
    msg = str(got[0].message)
    assert "cpu float64" in msg and "'cpu' kernel does not take float64" in msg and "float32" in msg
    report = shiftadd.backends()["fallbacks"]
    assert report == {msg: 3}
    assert msg in shiftadd.kernels.backends_report()


@needs_cuda
def test_cuda_float64_warns_once():
    x, w = torch.randn(4, 5, device="cuda", dtype=torch.float64), torch.randn(3, 5, device="cuda", dtype=torch.float64)
    got = _fallback_warnings(lambda: adder_linear(x, w))
    assert len(got) == 1 and "cuda float64" in str(got[0].message)


def test_float32_cpu_tensors_do_not_fall_back():
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    assert _fallback_warnings(lambda: adder_conv2d(x, w, padding=1)) == []
    assert shiftadd.backends()["fallbacks"] == {}


def test_unavailable_backend_warns_once(monkeypatch):
    from shiftadd.kernels.cpu_backend import cpu_backend

    monkeypatch.setattr(cpu_backend, "available", lambda: False)
    x, w = torch.randn(4, 5), torch.randn(3, 5)
    got = _fallback_warnings(lambda: adder_linear(x, w), calls=2)
    assert len(got) == 1 and "'cpu' backend is unavailable" in str(got[0].message)
    assert list(adder_ops.fallbacks().values()) == [2]
    torch.testing.assert_close(adder_linear(x, w), -(x[:, None] - w[None]).abs().sum(-1))


def test_missing_device_backend_names_the_fix(monkeypatch):
    """A device whose fast backend is not registered (CUDA without Triton) says how to install it;
    simulated with the meta device mapped to the unregistered 'triton' backend."""
    monkeypatch.setitem(adder_ops.FAST_BACKENDS, "meta", "triton")
    monkeypatch.delitem(adder_ops._BACKENDS, "triton", raising=False)
    x, w = torch.randn(4, 5, device=META), torch.randn(3, 5, device=META)
    got = _fallback_warnings(lambda: adder_linear(x, w))
    assert len(got) == 1
    assert "no 'triton' backend is registered" in str(got[0].message)
    assert "pip install 'shiftadd[triton]'" in str(got[0].message)


def test_forced_backend_does_not_warn(monkeypatch):
    monkeypatch.setenv("SHIFTADD_BACKEND", "reference")
    x, w = torch.randn(4, 5), torch.randn(3, 5)
    assert _fallback_warnings(lambda: adder_linear(x, w)) == []
