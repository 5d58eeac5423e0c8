import pytest
import torch
import torch.nn as nn

import shiftadd
from shiftadd.nn import AdderConv2d, AdderLinear, ShiftAddConv2d, ShiftConv2d, ShiftLinear


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.layer1 = Block(8, 8, 1)
        self.layer2 = Block(8, 16, 2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(torch.relu(self.bn(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("op, cls", [("adder", AdderConv2d), ("shift-q", ShiftConv2d), ("shift-ps", ShiftConv2d),
                                     ("shiftadd", ShiftAddConv2d), ("shiftadd-fixed", ShiftAddConv2d)])
def test_convert_residual_network(op, cls):
    torch.manual_seed(0)
    model = TinyResNet()
    out = shiftadd.convert(model, op)
    assert out is model
    assert type(model.stem) is nn.Conv2d and type(model.fc) is nn.Linear  # first/last kept
    for name in ["layer1.conv1", "layer1.conv2", "layer2.conv1", "layer2.conv2", "layer2.down.0"]:
        assert isinstance(model.get_submodule(name), cls), name
    assert model.layer2.down[0].stride == (2, 2) and model.layer2.down[0].kernel_size == (1, 1)
    if op == "shift-q":
        assert model.layer1.conv1.mode == "q"
    if op == "shiftadd-fixed":
        assert model.layer1.conv1.fixed_shift
    x = torch.randn(2, 3, 8, 8)
    y = model(x)
    assert y.shape == (2, 10)
    y.sum().backward()


def test_convert_user_mlp_all_layers_and_options():
    torch.manual_seed(1)
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    shiftadd.convert(mlp, "shift-ps", skip_first_last=False, weight_bits=3, eta=0.1)  # eta ignored by shifts
    assert all(isinstance(mlp[i], ShiftLinear) for i in (0, 2, 4))
    assert mlp[0].weight_bits == 3
    mlp2 = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    shiftadd.convert(mlp2, "adder", skip_first_last=False, exclude="4", eta=0.1)
    assert isinstance(mlp2[0], AdderLinear) and mlp2[0].eta == 0.1 and type(mlp2[4]) is nn.Linear


def test_convert_include_and_types():
    model = TinyResNet()
    shiftadd.convert(model, "adder", include="layer2.*")
    assert type(model.layer1.conv1) is nn.Conv2d and isinstance(model.layer2.conv1, AdderConv2d)
    model = TinyResNet()
    shiftadd.convert(model, "adder", skip_first_last=False, types=[nn.Linear])
    assert isinstance(model.fc, AdderLinear) and type(model.stem) is nn.Conv2d


def test_init_from_weights():
    torch.manual_seed(2)
    model = TinyResNet()
    w = model.layer1.conv1.weight.detach().clone()
    shiftadd.convert(model, "shift-ps", init_from_weights=True)
    eff = model.layer1.conv1.weight.detach()
    expected = torch.sign(w) * 2 ** torch.round(torch.log2(w.abs())).clamp(-14, 0)
    torch.testing.assert_close(eff, expected)
    model = TinyResNet()
    w = model.layer1.conv2.weight.detach().clone()
    shiftadd.convert(model, "adder", init_from_weights=True)
    torch.testing.assert_close(model.layer1.conv2.weight.detach(), w)
    model = TinyResNet()
    w = model.layer1.conv2.weight.detach().clone()
    shiftadd.convert(model, "shiftadd", init_from_weights=True)
    torch.testing.assert_close(model.layer1.conv2.shift.weight.detach(),
                               torch.sign(w) * 2 ** torch.round(torch.log2(w.abs())).clamp(-14, 0))


def test_convert_keeps_device_dtype_and_bias():
    lin = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3, bias=True), nn.Linear(3, 3)).double()
    b = lin[1].bias.detach().clone()
    shiftadd.convert(lin, "shift-q")
    assert lin[1].latent_weight.dtype == torch.float64
    torch.testing.assert_close(lin[1].bias.detach(), b)


def test_convert_conv_is_identity_and_bad_op():
    model = TinyResNet()
    assert shiftadd.convert(model, "conv") is model and type(model.layer1.conv1) is nn.Conv2d
    with pytest.raises(ValueError, match="unknown op"):
        shiftadd.convert(model, "multiply")
    with pytest.raises(ValueError, match="unknown layer option"):
        shiftadd.convert(model, "adder", etaa=0.1)


def test_convert_same_padding_and_reflect_error():
    m = nn.Sequential(nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3, padding="same"), nn.Conv2d(2, 2, 1))
    shiftadd.convert(m, "adder")
    assert m[1].padding == (1, 1)
    m = nn.Sequential(nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), nn.Conv2d(2, 2, 1))
    with pytest.raises(ValueError, match="padding_mode"):
        shiftadd.convert(m, "adder")
