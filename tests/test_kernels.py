"""Fast backends (shiftadd.kernels) against naive PyTorch formulas.

The first test that needs the C++ extension builds it (JIT, ~20-70 s on a busy 2-core machine,
cached in $SHIFTADD_CACHE or ~/.cache/shiftadd afterwards); tests that need it are skipped
cleanly when it cannot be built.
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import shiftadd.kernels as K
from shiftadd.kernels.cpu_backend import cdist_backend, cpu_backend
from shiftadd.ops.adder import ReferenceBackend, adder_matmul, registered_backends, select_backend
from reference_impl import adder_conv2d_with_grads


@pytest.fixture(scope="module")
def ext():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = K.load_extension()
    if mod is None:
        pytest.skip(f"C++ extension unavailable: {K.build_info()['error']}")
    return mod


@pytest.fixture(params=["best", "avx2", "scalar"])
def isa(request, ext):
    """Run a test once per instruction set this CPU supports (best, AVX2, portable scalar)."""
    supported = list(ext.supported_isas())
    name = supported[0] if request.param == "best" else request.param
    if name not in supported:
        pytest.skip(f"{name} not supported here")
    before = ext.isa()
    ext.set_isa(name)
    yield name
    ext.set_isa(before)


# --- naive formulas (AdderNet Eq. 2, 5, 6) ---------------------------------------------------

def naive_forward(X, W):
    return -(X.unsqueeze(2) - W.unsqueeze(1)).abs().sum(-1)


def naive_grad_input(X, W, dY, mode):
    d = W.unsqueeze(1) - X.unsqueeze(2)  # (G, P, O, K)
    d = d.clamp(-1, 1) if mode == "full" else d.sign()
    return torch.einsum("gpok,gpo->gpk", d, dY)


def naive_grad_weight(X, W, dY, mode):
    d = X.unsqueeze(2) - W.unsqueeze(1)
    if mode == "sign":
        d = d.sign()
    return torch.einsum("gpok,gpo->gok", d.double(), dY.double()).float()


SHAPES = [  # (G, P, K, O)
    (1, 1, 1, 1),
    (1, 1, 19, 7),       # P = 1
    (2, 37, 13, 5),      # odd everything, G > 1
    (3, 100, 27, 17),
    (1, 300, 144, 16),
    (2, 65, 50, 33),
    (1, 129, 9, 70),
    (1, 70, 600, 9),     # K > 256: the forward works in K chunks
]


def _data(G, P, K, O, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(G, P, K, generator=g)
    W = torch.randn(G, O, K, generator=g)
    dY = torch.randn(G, P, O, generator=g)
    return X, W, dY


def _tol(X, W):
    # forward sums K terms of size ~|x|+|w|: allow float32 rounding of such sums
    return 1e-5 * (X.abs().sum(-1).max() + W.abs().sum(-1).max()).item() + 1e-5


@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_primitive_matches_naive(ext, isa, shape):
    X, W, dY = _data(*shape)
    tol = _tol(X, W)
    torch.testing.assert_close(cpu_backend.forward(X, W), naive_forward(X, W), atol=tol, rtol=0)
    for mode in ("full", "sign"):
        torch.testing.assert_close(cpu_backend.grad_input(X, W, dY, mode), naive_grad_input(X, W, dY, mode),
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(cpu_backend.grad_weight(X, W, dY, mode), naive_grad_weight(X, W, dY, mode),
                                   atol=1e-3, rtol=1e-4)


def test_both_forward_formulas_agree(ext, monkeypatch):
    X, W, _ = _data(2, 77, 31, 9)
    outs = []
    for flag in ("0", "1"):
        monkeypatch.setenv("SHIFTADD_ADDER_EXACT", flag)
        outs.append(cpu_backend.forward(X, W))
    torch.testing.assert_close(outs[0], outs[1], atol=_tol(X, W), rtol=0)
    torch.testing.assert_close(outs[1], naive_forward(X, W), atol=_tol(X, W), rtol=0)


@pytest.mark.parametrize("shape", SHAPES[:4])
def test_cdist_and_reference_backends_match_naive(shape):
    X, W, dY = _data(*shape, seed=1)
    for backend in (cdist_backend, ReferenceBackend()):
        torch.testing.assert_close(backend.forward(X, W), naive_forward(X, W), atol=_tol(X, W), rtol=0)
        for mode in ("full", "sign"):
            torch.testing.assert_close(backend.grad_input(X, W, dY, mode), naive_grad_input(X, W, dY, mode),
                                       atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(backend.grad_weight(X, W, dY, mode), naive_grad_weight(X, W, dY, mode),
                                       atol=1e-3, rtol=1e-4)


def test_sign_mode_counts_ties_as_zero(ext):
    # x == w exactly: sign(0) = 0 must contribute nothing (the SIMD sign trick masks it)
    X = torch.tensor([[[0.5, -1.0, 2.0]]])
    W = torch.tensor([[[0.5, -1.0, 3.0], [0.0, 0.0, 2.0]]])
    dY = torch.tensor([[[1.0, 10.0]]])
    torch.testing.assert_close(cpu_backend.grad_input(X, W, dY, "sign"), naive_grad_input(X, W, dY, "sign"))
    torch.testing.assert_close(cpu_backend.grad_weight(X, W, dY, "sign"), naive_grad_weight(X, W, dY, "sign"))


CONVS = [  # (N, C, H, W, O, kernel, stride, padding, dilation, groups)
    (2, 3, 9, 11, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1),     # "same" conv fast path
    (3, 4, 10, 7, 6, (3, 2), (2, 1), (1, 2), (1, 2), 2),     # general path, groups
    (1, 8, 5, 5, 8, (1, 1), (2, 2), (0, 0), (1, 1), 8),      # depthwise 1x1 strided
    (2, 6, 12, 12, 9, (3, 3), (2, 2), (1, 1), (2, 2), 3),
    (1, 2, 4, 4, 3, (5, 5), (1, 1), (2, 2), (1, 1), 1),      # same conv, kernel larger than half the image
    (2, 16, 8, 8, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (1, 40, 6, 6, 5, (3, 3), (2, 2), (1, 1), (1, 1), 1),     # K = 360, strided
]


@pytest.mark.parametrize("cfg", CONVS)
@pytest.mark.parametrize("mode", ["full", "sign"])
def test_fused_conv_matches_loop_reference(ext, isa, cfg, mode):
    N, C, H, Wd, O, k, s, p, d, g = cfg
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(N, C, H, Wd, generator=gen, requires_grad=True)
    w = torch.randn(O, C // g, *k, generator=gen, requires_grad=True)
    out = cpu_backend.conv2d(x, w, s, p, d, g, mode)
    gout = torch.randn(out.shape, generator=gen)
    ref_out, ref_dx, ref_dw = adder_conv2d_with_grads(x.detach().double(), w.detach().double(), gout.double(),
                                                      s, p, d, g, mode)
    out.backward(gout)
    torch.testing.assert_close(out, ref_out.float(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(x.grad, ref_dx.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(w.grad, ref_dw.float(), atol=1e-3, rtol=1e-4)


BACKWARD_CONVS = [  # odd sizes: position tails inside vectors, K not a multiple of the lanes, O tails
    (3, 5, 13, 11, 7, (3, 3), (1, 1), (1, 1), (1, 1), 1),    # same conv
    (2, 6, 9, 10, 10, (3, 3), (2, 2), (1, 1), (1, 1), 2),    # strided (phase planes), groups
    (2, 16, 12, 12, 24, (3, 3), (1, 1), (1, 1), (1, 1), 1),  # K = 144 (ResNet-20 stage 1), O = 24
]


@pytest.mark.parametrize("cfg", BACKWARD_CONVS)
@pytest.mark.parametrize("block_floats", [1024, 131072])  # many small blocks per image / one block
def test_one_pass_backward_matches_separate_gradients(ext, isa, cfg, block_floats):
    """conv_backward (input gradient and Eq. 5 weight gradient from the same packed blocks) against the
    independent loop reference and against oneDNN's conv weight gradient minus W * sum dY."""
    from shiftadd.kernels.cpu_backend import grad_weight_full_conv

    N, C, H, Wd, O, k, s, p, d, g = cfg
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(N, C, H, Wd, generator=gen)
    w = torch.randn(O, C // g, *k, generator=gen)
    gout = torch.randn(cpu_backend.conv2d(x, w, s, p, d, g).shape, generator=gen)
    _, ref_dx, ref_dw = adder_conv2d_with_grads(x.double(), w.double(), gout.double(), s, p, d, g, "full")
    ext.set_blocking(block_floats, 64)
    try:
        dx, dw = ext.conv_backward(x, w, gout, s, p, d, g, 0, True, True)
        dx_only, empty_w = ext.conv_backward(x, w, gout, s, p, d, g, 0, True, False)
        empty_x, dw_only = ext.conv_backward(x, w, gout, s, p, d, g, 0, False, True)
    finally:
        ext.set_blocking(131072, 4096)
    torch.testing.assert_close(dx, ref_dx.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dw, ref_dw.float(), atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(dw, grad_weight_full_conv(x, w, gout, s, p, d, g), atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(dx_only, dx, atol=0, rtol=0)
    torch.testing.assert_close(dw_only, dw, atol=0, rtol=0)
    assert empty_w.numel() == 0 and empty_x.numel() == 0  # a gradient not asked for is not computed


def test_fused_conv_weight_gradient_without_input_gradient(ext):
    """A first layer (input without grad) still gets the Eq. 5 weight gradient from the one-pass backward."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    w = torch.randn(5, 3, 3, 3, generator=gen, requires_grad=True)
    out = cpu_backend.conv2d(x, w, 1, 1)
    gout = torch.randn(out.shape, generator=gen)
    out.backward(gout)
    _, _, ref_dw = adder_conv2d_with_grads(x.double(), w.detach().double(), gout.double(), (1, 1), (1, 1), (1, 1), 1)
    torch.testing.assert_close(w.grad, ref_dw.float(), atol=1e-3, rtol=1e-4)


def test_fused_conv_falls_back_for_float64(ext):
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    assert not cpu_backend.supports(x)
    ref, _, _ = adder_conv2d_with_grads(x, w, torch.zeros(1, 3, 5, 5, dtype=torch.float64), (1, 1), (1, 1),
                                        (1, 1), 1)
    torch.testing.assert_close(cpu_backend.conv2d(x, w, 1, 1), ref)


def test_adder_matmul_uses_cpu_backend_and_autograd_matches(ext, monkeypatch):
    monkeypatch.delenv("SHIFTADD_BACKEND", raising=False)
    X, W, dY = _data(2, 40, 12, 7, seed=5)
    assert select_backend(X).name == "cpu"
    Xr, Wr = X.clone().requires_grad_(), W.clone().requires_grad_()
    adder_matmul(Xr, Wr, "full").backward(dY)
    torch.testing.assert_close(Xr.grad, naive_grad_input(X, W, dY, "full"), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(Wr.grad, naive_grad_weight(X, W, dY, "full"), atol=1e-3, rtol=1e-4)


def test_backend_report_and_forcing(ext, monkeypatch):
    monkeypatch.delenv("SHIFTADD_BACKEND", raising=False)
    info = K.backends()
    assert {"cpu", "cdist", "reference"} <= set(info["backends"])
    assert info["backends"]["cpu"]["available"] is True
    assert info["in_use"]["cpu/float32"] == "cpu"
    assert info["extension"]["loaded"] is True
    assert list(registered_backends())[0] in ("cpu", "triton")  # highest priority first
    monkeypatch.setenv("SHIFTADD_BACKEND", "reference")
    assert select_backend(torch.zeros(1)).name == "reference"
    assert K.backends()["forced"] == "reference"
    assert "reference" in K.backends_report()


def test_failed_build_warns_once_and_falls_back(tmp_path):
    # A fresh interpreter whose compiler is broken: one warning, correct results, no crash.
    code = (
        "import warnings, torch\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as rec:\n"
        "    warnings.simplefilter('always')\n"
        "    from shiftadd.ops.adder import adder_matmul, select_backend\n"
        "    from shiftadd.kernels.cpu_backend import cpu_backend\n"
        "    X = torch.randn(1, 5, 4); W = torch.randn(1, 3, 4)\n"
        "    name = select_backend(X).name\n"
        "    y = cpu_backend.forward(X, W); y2 = adder_matmul(X, W)\n"
        "    ref = -(X.unsqueeze(2) - W.unsqueeze(1)).abs().sum(-1)\n"
        "    assert torch.allclose(y, ref, atol=1e-5) and torch.allclose(y2, ref, atol=1e-5)\n"
        "n = sum('could not be built' in str(r.message) for r in rec)\n"
        "print(name, n)\n"
    )
    env = dict(os.environ, SHIFTADD_CACHE=str(tmp_path), CXX="false")
    env.pop("SHIFTADD_BACKEND", None)
    env.pop("SHIFTADD_NO_EXTENSION", None)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["cdist", "1"]


# --- integer paths: bit-exact ------------------------------------------------------------------

INT_CONVS = CONVS + [(2, 64, 8, 8, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1)]


@pytest.mark.parametrize("cfg", INT_CONVS)
def test_int8_adder_conv_is_bit_exact(ext, isa, cfg):
    N, C, H, Wd, O, k, s, p, d, g = cfg
    gen = torch.Generator().manual_seed(7)
    qx = torch.randint(-127, 128, (N, C, H, Wd), generator=gen).to(torch.int8)
    qw = torch.randint(-127, 128, (O, C // g, *k), generator=gen).to(torch.int8)
    y = K.int_adder_conv2d(qx, qw, s, p, d, g)
    assert y.dtype == torch.int32
    ref, _, _ = adder_conv2d_with_grads(qx.double(), qw.double(), torch.zeros(y.shape, dtype=torch.float64),
                                        s, p, d, g)
    assert torch.equal(y.double(), ref)
    # simulated quantization in float: with a power-of-two shared scale, s * int == float adder exactly
    sc = 2.0 ** -6
    sim, _, _ = adder_conv2d_with_grads(qx.float() * sc, qw.float() * sc, torch.zeros(y.shape), s, p, d, g)
    assert torch.equal(y.float() * sc, sim)


def test_int8_adder_extremes_and_matmul(ext, isa):
    qx = torch.full((1, 3, 4, 4), -128, dtype=torch.int8)
    qw = torch.full((2, 3, 3, 3), 127, dtype=torch.int8)
    y = K.int_adder_conv2d(qx, qw, 1, 0)
    assert torch.equal(y, torch.full((1, 2, 2, 2), -255 * 27, dtype=torch.int32))
    gen = torch.Generator().manual_seed(2)
    qX = torch.randint(-128, 128, (3, 37, 70), generator=gen).to(torch.int8)
    qW = torch.randint(-128, 128, (3, 11, 70), generator=gen).to(torch.int8)
    ref = -(qX.long().unsqueeze(2) - qW.long().unsqueeze(1)).abs().sum(-1)
    assert torch.equal(K.int_adder_matmul(qX, qW).long(), ref)


@pytest.mark.parametrize("cfg", INT_CONVS)
def test_int_shift_conv_is_bit_exact(ext, isa, cfg):
    N, C, H, Wd, O, k, s, p, d, g = cfg
    gen = torch.Generator().manual_seed(11)
    qx = torch.randint(-128, 128, (N, C, H, Wd), generator=gen, dtype=torch.int32)
    shift = torch.randint(0, 15, (O, C // g, *k), generator=gen, dtype=torch.int32)
    sign = torch.randint(-1, 2, (O, C // g, *k), generator=gen).to(torch.int8)
    y = K.int_shift_conv2d(qx, shift, sign, s, p, d, g)
    ref = F.conv2d(qx.double(), sign.double() * torch.pow(2.0, shift.double()), None, s, p, d, g)
    assert y.dtype == torch.int32 and torch.equal(y.double(), ref)
    # int64 accumulation path (forced by large activations) agrees too
    big = qx * (2 ** 15)
    y64 = K.int_shift_conv2d(big, shift, sign, s, p, d, g)
    assert y64.dtype == torch.int64
    assert torch.equal(y64, (y.long() * 2 ** 15))


def test_decompose_pow2_roundtrip_and_rejects_non_powers():
    w = torch.tensor([0.5, -0.25, 0.0, 1.0, -2.0 ** -14])
    shift, sign, e = K.decompose_pow2(w)
    assert e == 14
    torch.testing.assert_close(sign.double() * torch.pow(2.0, shift.double() - e), w.double(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="power"):
        K.decompose_pow2(torch.tensor([0.3]))


def test_bad_inputs_give_clear_errors(ext):
    with pytest.raises(TypeError, match="int8"):
        K.int_adder_conv2d(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 1, 1, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="groups"):
        cpu_backend.conv2d(torch.zeros(1, 3, 5, 5), torch.zeros(2, 2, 3, 3), groups=2)
    with pytest.raises(ValueError, match="grad mode"):
        cpu_backend.conv2d(torch.zeros(1, 2, 5, 5), torch.zeros(2, 2, 3, 3), grad_mode="exact")


def test_bench_cli_quick(ext, capsys):
    from shiftadd.cli import main

    assert main(["bench", "--shapes", "quick", "--repeats", "1", "--no-reference", "--forward-only"]) == 0
    out = capsys.readouterr().out
    assert "conv2d (oneDNN)" in out and "adder cpu fused" in out and "int8 adder" in out
    assert main(["bench", "--backends"]) == 0
    assert "cpu" in capsys.readouterr().out


def test_bench_cli_network_rows_reach_the_json(ext, tmp_path, capsys):
    import json

    from shiftadd.cli import main

    path = tmp_path / "bench.json"
    assert main(["bench", "--shapes", "quick", "--repeats", "1", "--no-reference", "--forward-only", "--no-int8",
                 "--network", "--batch", "2", "--json", str(path)]) == 0
    assert "whole-network training step" in capsys.readouterr().out
    network = json.loads(path.read_text())["network"]
    from shiftadd.nn.families import family_names

    # every operator family in one run, conv first, each with its ratio to conv and its phases
    assert [r["family"] for r in network] == ["conv"] + [f for f in family_names() if f != "conv"]
    assert {"adder", "shift-ps", "shiftadd", "shiftadd-fixed"} <= {r["family"] for r in network}
    assert all(r["model"] == "resnet20" and r["batch"] == 2 and r["step_ms"] > 0 for r in network)
    for r in network:
        assert r["throughput_vs_conv"] == pytest.approx(network[0]["step_ms"] / r["step_ms"])
        assert sum(r["phases_ms"].values()) > 0 and set(r["phases_ms"]) == {"forward", "backward", "optimizer"}


def test_bench_cli_network_only_subset_and_bad_family(ext, capsys):
    from shiftadd.cli import main

    assert main(["bench", "--network-only", "--families", "adder,conv", "--steps", "1", "--batch", "2",
                 "--phases", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "conv2d (oneDNN)" not in out  # no per-layer rows
    assert "| adder |" in out and "| conv |" in out and "forward" in out
    assert main(["bench", "--network-only", "--families", "nope", "--steps", "1", "--batch", "2"]) == 2
    assert "unknown operator family nope" in capsys.readouterr().err
