"""torch.func (vmap, per-sample gradients, ensembles) and torch.jit.script on the library's layers."""
import copy
import warnings

import pytest
import torch
from torch.func import functional_call, grad, stack_module_state, vmap

import shiftadd.nn as snn
from shiftadd.models import registry
from shiftadd.nn.base import NotScriptableError

LAYERS = {
    "adder-conv2d": (lambda: snn.AdderConv2d(3, 4, 3, padding=1), (2, 3, 6, 6)),
    "adder-conv2d-sign": (lambda: snn.AdderConv2d(3, 4, 3, stride=2, grad_mode="sign"), (2, 3, 7, 7)),
    "adder-conv1d": (lambda: snn.AdderConv1d(3, 4, 3, padding=1), (2, 3, 7)),
    "adder-linear": (lambda: snn.AdderLinear(5, 4), (2, 5)),
    "shift-q": (lambda: snn.ShiftConv2d(3, 4, 3, padding=1), (2, 3, 6, 6)),
    "shift-ps": (lambda: snn.ShiftConv2d(3, 4, 3, padding=1, mode="ps"), (2, 3, 6, 6)),
    "shift-linear": (lambda: snn.ShiftLinear(5, 4), (2, 5)),
    "shiftadd-conv2d": (lambda: snn.ShiftAddConv2d(3, 4, 3, padding=1), (2, 3, 6, 6)),
    "shiftadd-linear": (lambda: snn.ShiftAddLinear(5, 4), (2, 5)),
    "adder-lightweight": (lambda: snn.AdderLightweightConv1d(8, 3, heads=2), (2, 5, 8)),
    "spatial-shift": (lambda: snn.SpatialShift2d(4), (2, 4, 6, 6)),
    "active-shift": (lambda: snn.ActiveShift2d(4), (2, 4, 6, 6)),
    "sparse-shift": (lambda: snn.SparseShift2d(4), (2, 4, 6, 6)),
}
# per-sample gradients need a backward that runs under vmap: the learnable spatial shifts' backward
# writes into freshly allocated maps in place, which functorch refuses (documented in docs/operators.md)
PER_SAMPLE = [k for k in LAYERS if k not in ("spatial-shift", "active-shift", "sparse-shift")]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():  # PyTorch's "no batching rule, looping" performance warning
        warnings.simplefilter("ignore", UserWarning)
        yield


def _fresh(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = LAYERS[name][0]()
    with torch.no_grad():  # learnable shifts start at zero: give them fractional values
        for p in m.parameters():
            if p.numel() and not p.any():
                p.uniform_(-1.5, 1.5)
    return m.eval()


@pytest.mark.parametrize("name", list(LAYERS))
def test_vmap_over_inputs_equals_a_loop(name):
    m = _fresh(name, 0)
    x = torch.randn(3, *LAYERS[name][1])
    torch.testing.assert_close(vmap(m)(x), torch.stack([m(xi) for xi in x]))
    torch.testing.assert_close(vmap(m, in_dims=1, out_dims=1)(x.transpose(0, 1)).transpose(0, 1),
                               torch.stack([m(xi) for xi in x]))


@pytest.mark.parametrize("name", list(LAYERS))
def test_vmap_over_stacked_weights_runs_an_ensemble(name):
    models = [_fresh(name, s) for s in range(3)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(*LAYERS[name][1])
    out = vmap(lambda p, b: functional_call(base, (p, b), (x,)))(params, buffers)
    torch.testing.assert_close(out, torch.stack([m(x) for m in models]))


@pytest.mark.parametrize("name", PER_SAMPLE)
def test_per_sample_gradients_equal_one_backward_per_sample(name):
    m = _fresh(name, 1)
    x = torch.randn(*LAYERS[name][1])
    params = {k: v.detach() for k, v in m.named_parameters()}

    def loss(p, xi):
        return functional_call(m, p, (xi.unsqueeze(0),)).pow(2).sum()

    got = vmap(grad(loss), in_dims=(None, 0))(params, x)
    for i, xi in enumerate(x):
        m.zero_grad()
        m(xi.unsqueeze(0)).pow(2).sum().backward()
        for k, p in m.named_parameters():
            torch.testing.assert_close(got[k][i], p.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layer", [lambda: snn.AdderConv2d(3, 4, 3), lambda: snn.ShiftLinear(3, 4),
                                   lambda: snn.SpatialShift2d(9), lambda: registry.create("resnet8", op="adder")])
def test_jit_script_refuses_in_one_line_and_names_the_alternatives(layer):
    with pytest.raises(NotScriptableError) as e:
        torch.jit.script(layer())
    msg = str(e.value)
    assert "\n" not in msg and "torch.compile" in msg and "torch.export" in msg
