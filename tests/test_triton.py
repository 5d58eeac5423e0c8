"""The Triton adder kernels against the paper's formulas: on CUDA tensors when a GPU is present,
otherwise in Triton's CPU interpreter (TRITON_INTERPRET=1, set here for this module only).

Triton is an optional extra (``pip install -e '.[triton]'``); without it every test here is skipped
with that reason. Shapes are tiny because the interpreter runs each program in NumPy.
"""
from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRET = DEVICE == "cpu"
if INTERPRET and "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set; run this file on its own",
                allow_module_level=True)
# Triton decides at import (of triton.language too) whether kernels are interpreted: set the
# variable for the import only; the fixture below sets it again while the tests run.
with pytest.MonkeyPatch.context() as _mp:
    if INTERPRET:
        _mp.setenv("TRITON_INTERPRET", "1")
    pytest.importorskip("triton", reason="Triton is not installed (optional extra: pip install -e '.[triton]')")

from shiftadd.ops.adder import _BACKENDS, ReferenceBackend, adder_conv2d, adder_linear, select_backend  # noqa: E402
from reference_impl import adder_conv2d_with_grads, adder_linear_with_grads  # noqa: E402

REF = ReferenceBackend()


@pytest.fixture(scope="module")
def triton_module():
    """shiftadd.kernels.triton_adder, interpreted when there is no GPU (the env var must be set at import
    and while the kernels run, so it stays set for this module's tests)."""
    with pytest.MonkeyPatch.context() as mp:
        if INTERPRET:
            mp.setenv("TRITON_INTERPRET", "1")
        mod = importlib.import_module("shiftadd.kernels.triton_adder")
        if INTERPRET and not mod.INTERPRETED:  # imported earlier without the interpreter
            mod = importlib.reload(mod)
        yield mod


@pytest.fixture
def tb(triton_module):
    return triton_module.triton_backend


@pytest.fixture
def forced_triton(tb, monkeypatch):
    """Every adder call in the test runs on the Triton backend (registered and forced by name)."""
    monkeypatch.setitem(_BACKENDS, "triton", (200, tb))
    monkeypatch.setenv("SHIFTADD_BACKEND", "triton")
    return tb


def _rand(*shape, dtype=torch.float32, generator=None):
    return torch.randn(*shape, generator=generator, dtype=torch.float32).to(DEVICE, dtype)


# (G, P, O, K): single element, tails of every tile, several tiles per axis, several groups
PRIMITIVE_SHAPES = [(1, 1, 1, 1), (1, 37, 5, 19), (3, 70, 33, 9), (2, 5, 40, 41), (2, 3, 1, 70), (1, 150, 16, 12)]


@pytest.mark.parametrize("shape", PRIMITIVE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", ["full", "sign"])
def test_primitive_matches_reference(tb, shape, mode):
    G, P, O, K = shape
    g = torch.Generator().manual_seed(hash(shape) % 1000)
    X, W, dY = _rand(G, P, K, generator=g), _rand(G, O, K, generator=g), _rand(G, P, O, generator=g)
    tol = dict(rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(tb.forward(X, W), REF.forward(X, W), **tol)
    torch.testing.assert_close(tb.grad_input(X, W, dY, mode), REF.grad_input(X, W, dY, mode), **tol)
    torch.testing.assert_close(tb.grad_weight(X, W, dY, mode), REF.grad_weight(X, W, dY, mode), **tol)


def test_grad_input_is_hardtanh_not_sign(tb):
    """Eq. 6: |W - X| < 1 gives the difference itself, beyond it +-1 (sign mode: always +-1)."""
    X = torch.tensor([[[0.0, 0.0, 0.0]]], device=DEVICE)
    W = torch.tensor([[[0.25, -3.0, 2.0]]], device=DEVICE)
    dY = torch.ones(1, 1, 1, device=DEVICE)
    assert tb.grad_input(X, W, dY, "full").flatten().tolist() == [0.25, -1.0, 1.0]
    assert tb.grad_input(X, W, dY, "sign").flatten().tolist() == [1.0, -1.0, 1.0]
    assert tb.forward(X, W).item() == -5.25


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_float32(tb, dtype):
    g = torch.Generator().manual_seed(1)
    X, W, dY = _rand(2, 9, 300, dtype=dtype, generator=g), _rand(2, 3, 300, dtype=dtype, generator=g), \
        _rand(2, 9, 3, dtype=dtype, generator=g)
    Y = tb.forward(X, W)
    assert Y.dtype == dtype
    # float32 accumulation, rounded once: within one ulp of ``dtype`` of the float32 reference
    # (accumulating 300 terms in ``dtype`` would be off by several)
    torch.testing.assert_close(Y.float(), REF.forward(X.float(), W.float()), rtol=torch.finfo(dtype).eps, atol=0)
    for mode in ("full", "sign"):
        dX, dW = tb.grad_input(X, W, dY, mode), tb.grad_weight(X, W, dY, mode)
        assert dX.dtype == dW.dtype == dtype
        torch.testing.assert_close(dX.float(), REF.grad_input(X.float(), W.float(), dY.float(), mode),
                                   rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(dW.float(), REF.grad_weight(X.float(), W.float(), dY.float(), mode),
                                   rtol=1e-2, atol=5e-2)


def test_empty_inputs(tb):
    X, W = torch.zeros(1, 0, 4, device=DEVICE), torch.randn(1, 3, 4, device=DEVICE)
    assert tb.forward(X, W).shape == (1, 0, 3)
    assert tb.grad_weight(X, W, torch.zeros(1, 0, 3, device=DEVICE), "sign").abs().sum().item() == 0


# conv cases: (N, C, H, W, O, kernel, stride, padding, dilation, groups)
CONV_CASES = [
    (2, 3, 7, 7, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1),   # plain 3x3, odd size
    (1, 4, 9, 8, 6, (3, 3), (2, 2), (1, 1), (1, 1), 2),   # batch 1, stride 2, groups 2, non-square input
    (2, 4, 6, 6, 4, (3, 3), (1, 1), (1, 1), (1, 1), 4),   # depthwise
    (1, 3, 9, 9, 5, (3, 3), (1, 1), (2, 2), (2, 2), 1),   # dilation 2
    (2, 5, 5, 7, 3, (1, 1), (1, 1), (0, 0), (1, 1), 1),   # 1x1
    (1, 2, 8, 7, 3, (2, 3), (2, 1), (1, 0), (1, 2), 1),   # non-square kernel, stride, padding, dilation
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[f"case{i}" for i in range(len(CONV_CASES))])
@pytest.mark.parametrize("mode", ["full", "sign"])
def test_conv2d_on_triton_matches_loop_reference(forced_triton, case, mode):
    N, C, H, Wd, O, k, s, p, d, groups = case
    g = torch.Generator().manual_seed(7)
    x = _rand(N, C, H, Wd, generator=g).requires_grad_(True)
    w = _rand(O, C // groups, *k, generator=g).requires_grad_(True)
    assert select_backend(x) is forced_triton
    out = adder_conv2d(x, w, None, s, p, d, groups, grad_mode=mode)
    g_out = _rand(*out.shape, generator=g)
    out.backward(g_out)
    ref_out, ref_dx, ref_dw = adder_conv2d_with_grads(x.detach(), w.detach(), g_out, s, p, d, groups, mode)
    tol = dict(rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out, ref_out, **tol)
    torch.testing.assert_close(x.grad, ref_dx, **tol)
    torch.testing.assert_close(w.grad, ref_dw, **tol)


def test_linear_on_triton_matches_loop_reference(forced_triton):
    g = torch.Generator().manual_seed(3)
    x = _rand(5, 11, generator=g).requires_grad_(True)
    w = _rand(7, 11, generator=g).requires_grad_(True)
    out = adder_linear(x, w)
    g_out = _rand(5, 7, generator=g)
    out.backward(g_out)
    ref_out, ref_dx, ref_dw = adder_linear_with_grads(x.detach(), w.detach(), g_out)
    for got, want in ((out, ref_out), (x.grad, ref_dx), (w.grad, ref_dw)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_automatic_choice(tb, monkeypatch):
    """Triton is chosen automatically for CUDA tensors only; CPU float32 keeps the C++ kernel."""
    monkeypatch.setitem(_BACKENDS, "triton", (200, tb))
    monkeypatch.delenv("SHIFTADD_BACKEND", raising=False)
    assert select_backend(torch.zeros(2), record=False).name != "triton"
    if DEVICE == "cuda":
        assert select_backend(torch.zeros(2, device="cuda")).name == "triton"
        assert not tb.supports(torch.zeros(2, device="cuda", dtype=torch.float64))


def test_cpu_tensors_without_interpreter_are_refused(triton_module, monkeypatch):
    monkeypatch.setattr(triton_module, "INTERPRETED", False)
    with pytest.raises(RuntimeError, match="need CUDA tensors"):
        triton_module.triton_backend.forward(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3))
