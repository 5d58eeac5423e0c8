"""torch.compile (eager, aot_eager, inductor) and torch.export of adder layers on the default CPU backend."""
import pytest
import torch
import torch.nn as nn

import shiftadd.kernels as K
from shiftadd.models import registry
from shiftadd.nn import AdderConv2d, AdderLinear
from shiftadd.ops.adder import select_backend

pytestmark = pytest.mark.skipif(K.load_extension() is None, reason="C++ extension not built: nothing to trace")


def _resnet8():
    torch.manual_seed(0)
    return registry.create("resnet8", op="adder")


def _outputs_and_grads(model, x):
    x = x.clone().requires_grad_()
    model.zero_grad()
    y = model(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return y.detach(), x.grad, [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _check_compiled(model, x, backend, atol=1e-4):
    torch._dynamo.reset()
    y0, gx0, gp0 = _outputs_and_grads(model, x)
    y1, gx1, gp1 = _outputs_and_grads(torch.compile(model, backend=backend, fullgraph=True), x)
    torch.testing.assert_close(y1, y0, atol=atol, rtol=1e-5)
    torch.testing.assert_close(gx1, gx0, atol=atol, rtol=1e-5)
    assert len(gp1) == len(gp0)
    for a, b in zip(gp1, gp0):
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)


def test_default_backend_is_the_cpp_kernel():
    assert select_backend(torch.zeros(1), record=False).name == "cpu"


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_resnet8_matches_eager_outputs_and_gradients(backend):
    _check_compiled(_resnet8().train(), torch.randn(2, 3, 32, 32), backend)


@pytest.mark.parametrize("grad_mode", ["full", "sign"])
def test_compile_inductor_adder_layers(grad_mode):
    torch.manual_seed(1)
    model = nn.Sequential(AdderConv2d(3, 4, 3, padding=1, stride=2, grad_mode=grad_mode), nn.Flatten(),
                          AdderLinear(4 * 4 * 4, 5, bias=True, grad_mode=grad_mode))
    _check_compiled(model, torch.randn(2, 3, 8, 8), "inductor")


@pytest.mark.slow
def test_compile_inductor_resnet8():
    _check_compiled(_resnet8().train(), torch.randn(2, 3, 32, 32), "inductor")


def test_export_resnet8_matches_eager():
    model = _resnet8().eval()
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(model, (x,))
    targets = {str(n.target) for n in program.graph.nodes}
    assert any("shiftadd.conv_forward" in t for t in targets), targets  # the fused C++ kernel, not a fallback
    other = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(program.module()(other), model(other), atol=1e-5, rtol=1e-6)


def test_traceable_ops_run_the_same_kernel():
    ext = K.load_extension()
    x, w = torch.randn(2, 4, 6, 6), torch.randn(5, 4, 3, 3)
    args = ([1, 1], [1, 1], [1, 1], 1, True)
    torch.testing.assert_close(ext.conv_forward(x, w, *args), torch.ops.shiftadd_cpu.conv_forward(x, w, *args),
                               atol=0, rtol=0)
    assert isinstance(ext.isa(), str)  # non-tensor ops still reachable
