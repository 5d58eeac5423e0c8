"""Integer inference modules (shiftadd.export) built from trained adder / shift layers.

Every test runs twice: on the C++ integer kernels (skipped when the extension cannot be built)
and on the exact float64 PyTorch fallback of shiftadd.kernels.integer.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import shiftadd
import shiftadd.export as E
import shiftadd.kernels as K
import shiftadd.kernels.integer as KI


@pytest.fixture(params=["extension", "fallback"])
def kernel_path(request, monkeypatch):
    """Run on the C++ kernels, then on the float64 fallback (the extension hidden from the kernels)."""
    if request.param == "extension":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if K.load_extension() is None:
                pytest.skip(f"C++ extension unavailable: {K.build_info()['error']}")
    else:
        monkeypatch.setattr(KI, "_ext", lambda: None)
    return request.param


def test_integer_modules_match_float_layers(kernel_path):
    from shiftadd.nn import AdderConv2d, AdderLinear, ShiftConv2d, ShiftLinear

    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6)
    # shift: fixed-point activations, bit-exact against a float64 simulation, close to the float layer
    sc = ShiftConv2d(4, 5, 3, padding=1, activation_bits=(4, 6)).eval()
    isc = E.to_integer_module(sc)
    with torch.no_grad():
        qin = torch.round(x.double().clamp(-8, 8 - 2 ** -6) * 64) / 64
        sim = F.conv2d(qin, sc.weight.double(), None, 1, 1)
        y = isc(x)
    assert torch.equal(y, sim.float())  # exact value, rounded once to float32
    torch.testing.assert_close(y, sc(x), atol=1e-4, rtol=1e-4)
    # adder: shared-scale int8 is close to the float layer (quantization error only)
    ad = AdderConv2d(4, 5, 3, padding=1)
    with torch.no_grad():
        ad.weight.mul_(0.5)
    iad = E.to_integer_module(ad).calibrate(x)
    with torch.no_grad():
        ref = ad(x)
    err = (iad(x) - ref).abs().max() / ref.abs().max()
    assert err < 0.02
    lin = AdderLinear(12, 3)
    torch.testing.assert_close(E.to_integer_module(lin)(torch.randn(5, 12)).shape, torch.Size([5, 3]))
    sl = ShiftLinear(12, 3, activation_bits=(4, 8)).eval()
    xi = torch.randn(5, 12)
    torch.testing.assert_close(E.to_integer_module(sl)(xi), sl(xi), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scale,range_from", [("pow2", "max"), ("free", "max"), ("pow2", "folded"), ("free", "folded")])
def test_int8_module_reproduces_shared_scale_quantizer(kernel_path, scale, range_from):
    # shiftadd.quant's shared-scale simulation (fake quantization in float) vs the int8 kernel
    from shiftadd.nn import AdderConv2d, AdderLinear
    from shiftadd.quant import shared_scale

    torch.manual_seed(1)
    model = torch.nn.Sequential(AdderConv2d(8, 8, 3, padding=1), torch.nn.Flatten(), AdderLinear(8 * 36, 5)).eval()
    x = torch.randn(3, 8, 6, 6)
    if range_from == "folded":  # weights far beyond the inputs: folded offsets in both layers
        with torch.no_grad():
            model[0].weight.mul_(3 * x.abs().max() / model[0].weight.abs().max())
            feature_max = model[1](model[0](x)).abs().max()
            model[2].weight.mul_(3 * feature_max / model[2].weight.abs().max())
    shared_scale(model, 8, [x], scale=scale, range_from=range_from)
    if range_from == "folded":
        assert all(bool(m.shared_quantizer.weight_codes(m.weight)[1].any()) for m in (model[0], model[2]))
    with torch.no_grad():
        sim_conv = model[0](x)
        sim = model(x)
        ic = E.to_integer_module(model[0])
        out_conv = ic(x)
        E.to_integer(model)
        out = model(x)
    if scale == "pow2":  # every float operation of the simulation is exact: bit-identical
        assert torch.equal(out_conv, sim_conv)
        assert torch.equal(out, sim)
    else:  # free scale: the simulation rounds its float sums, the integer path does not
        torch.testing.assert_close(out_conv, sim_conv, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(out, sim, rtol=1e-4, atol=1e-3)


def test_to_integer_converts_a_model(kernel_path):
    from shiftadd.export import IntAdderConv2d, IntShiftConv2d
    from shiftadd.nn import AdderConv2d, ShiftConv2d

    model = torch.nn.Sequential(ShiftConv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                AdderConv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    E.to_integer(model)
    assert isinstance(model[0], IntShiftConv2d) and isinstance(model[3], IntAdderConv2d)
    with torch.no_grad():
        out = model(x)
    assert out.shape == ref.shape and torch.isfinite(out).all()


def test_conv1d_subclasses_and_shiftadd_containers_are_converted(kernel_path):
    from shiftadd.nn import AdderConv1d, ShiftAddConv2d, ShiftConv1d

    class MyAdder(AdderConv1d):  # a subclass uses its base class's handler
        pass

    torch.manual_seed(2)
    model = torch.nn.Sequential(
        torch.nn.Sequential(ShiftConv1d(3, 4, 3, padding=1, activation_bits=(4, 8)), MyAdder(4, 4, 3, padding=1)),
    ).eval()
    x = torch.randn(2, 3, 10)
    with torch.no_grad():
        ref = model(x)
    E.to_integer(model, act_max=float(x.abs().max()) * 8)
    assert isinstance(model[0][0], E.IntShiftConv2d) and isinstance(model[0][1], E.IntAdderConv2d)
    with torch.no_grad():
        out = model(x)
    assert out.shape == ref.shape
    assert ((out - ref).abs().max() / ref.abs().max()) < 0.05
    # a shift-add layer is a container: its shift and adder children are converted, the order kept
    sa = torch.nn.Sequential(ShiftAddConv2d(3, 4, 3, padding=1)).eval()
    E.to_integer(sa)
    assert isinstance(sa[0].shift, E.IntShiftConv2d) and isinstance(sa[0].adder, E.IntAdderConv2d)
    assert sa(torch.randn(1, 3, 6, 6)).shape == (1, 4, 6, 6)


def test_a_new_layer_type_is_one_handler_entry(kernel_path):
    from shiftadd.nn import AdderLinear

    class Doubler(torch.nn.Module):
        def forward(self, x):
            return 2 * x

    class IntDoubler(torch.nn.Module):
        def __init__(self, options):
            super().__init__()
            self.options = options

        def forward(self, x):
            return (2 * x.round()).to(torch.int64)

    try:
        E.register_integer_handler(Doubler)(lambda layer, options: IntDoubler(options))
        model = torch.nn.Sequential(Doubler(), AdderLinear(3, 2))
        E.to_integer(model, activation_bits=(4, 4), act_max=1.5)
        assert isinstance(model[0], IntDoubler) and isinstance(model[1], E.IntAdderLinear)
        assert model[0].options == E.IntegerOptions(act_max=1.5, activation_bits=(4, 4))
        assert model[1].act_max == 1.5
        assert E.integer_handler(Doubler()) is not None
        assert isinstance(E.to_integer(Doubler()), IntDoubler)  # a model that is one handled layer
    finally:
        E.INTEGER_HANDLERS.pop(Doubler, None)
    assert E.integer_handler(Doubler()) is None


def test_unsupported_layers_are_left_alone_or_named(kernel_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.ReLU())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert E.to_integer(model) is model
    assert [type(m) for m in model] == [torch.nn.Conv2d, torch.nn.ReLU]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(TypeError, match="no integer version of Conv2d; expected one of: .*AdderConv2d"):
        E.to_integer_module(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="at least one"):
        E.register_integer_handler()


def test_export_is_a_lazy_submodule_of_the_package():
    assert shiftadd.export is E
    assert "export" in shiftadd.__all__
    for name in E.__all__:
        assert hasattr(E, name), name
    for name in ("to_integer", "to_integer_module", "IntAdderConv2d"):
        assert not hasattr(K, name), f"shiftadd.kernels.{name} should have moved to shiftadd.export"


KERNELS_DIR = Path(K.__file__).parent
FORBIDDEN_IN_KERNELS = ("shiftadd.nn", "shiftadd.quant", "shiftadd.models", "shiftadd.train", "shiftadd.export")


def _imported_modules(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_kernels_import_nothing_above_them():
    files = sorted(KERNELS_DIR.glob("*.py"))
    assert {"integer.py", "cpu_backend.py", "__init__.py"} <= {f.name for f in files}
    bad = [(f.name, m) for f in files for m in _imported_modules(f)
           if any(m == p or m.startswith(p + ".") for p in FORBIDDEN_IN_KERNELS)]
    assert bad == []
    # at run time too: importing every kernels module loads no quantization, export or training code
    code = ("import sys, shiftadd.kernels, shiftadd.kernels.integer, shiftadd.kernels.bench, "
            "shiftadd.kernels.cpu_backend; print(','.join(m for m in sys.modules if m.startswith('shiftadd')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(out.strip().split(","))
    assert "shiftadd.kernels.integer" in loaded
    assert not [m for m in loaded if m.split(".")[:2] in (["shiftadd", "quant"], ["shiftadd", "export"],
                                                          ["shiftadd", "models"], ["shiftadd", "train"])]
