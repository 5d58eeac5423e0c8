"""Model zoo: every registered architecture in every operator family, and their structure."""
import pytest
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from shiftadd.models import OPS, create, list_models
from shiftadd.nn import ADDER_TYPES, SHIFT_TYPES, SHIFTADD_TYPES

# Input shape per architecture and options that shrink widths (the layer structure is unchanged)
# so that the adder reference implementation stays fast in this test.
SPECS = {
    "resnet8": ((2, 3, 16, 16), {"width": 4}),
    "resnet20": ((2, 3, 16, 16), {"width": 4}),
    "resnet32": ((2, 3, 16, 16), {"width": 4}),
    "resnet56": ((2, 3, 8, 8), {"width": 2}),
    "resnet110": ((2, 3, 8, 8), {"width": 2}),
    "vgg-small": ((2, 3, 32, 32), {"width_mult": 1 / 32}),
    "vgg19-small": ((2, 3, 32, 32), {"width_mult": 1 / 32, "hidden": (8,)}),
    "mnist-mlp": ((2, 1, 28, 28), {"hidden": 16}),
    "mnist-cnn": ((2, 1, 28, 28), {}),
    "lenet5": ((2, 1, 28, 28), {}),
    "har-cnn": ((2, 6, 24), {"widths": (4, 8, 8)}),
}
OURS = sorted(SPECS)
# Spatial-shift networks (shiftadd/models/shiftnet.py), shrunk the same way for the all-models test.
PREFIX_SPECS = {
    "shiftresnet": ((2, 3, 8, 8), {"width": 4, "expansion": 1}),
    "addressnet": ((2, 3, 8, 8), {"width": 8, "expansion": 1}),
    "fe-net": ((2, 3, 16, 16), {"expansion": 1}),
    "hybrid-resnet": ((2, 3, 8, 8), {"width": 2}),  # shiftadd/models/hybrid.py
}
# Image classifiers with every parameter on the forward path. Weight-sharing supernets run one sampled
# path per forward (tests/test_nas.py); sequence-to-sequence models take token ids (tests/test_transformer.py).
STATIC_MODELS = [n for n in list_models(task="classification") if not n.startswith("supernet-")]


def _spec(name):
    if name in SPECS:
        return SPECS[name]
    for prefix, spec in PREFIX_SPECS.items():
        if name.startswith(prefix):
            return spec
    return (2, 3, 32, 32), {}


def test_registry_lists_the_zoo():
    names = list_models()
    for n in OURS:
        assert n in names
    assert names == sorted(names)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", STATIC_MODELS)
def test_every_model_every_op_forward_backward(name, op):
    torch.manual_seed(0)
    shape, opts = _spec(name)
    model = create(name, op=op, num_classes=7, **opts)
    x = torch.randn(*shape)
    out = model(x)
    assert out.shape == (shape[0], 7)
    assert torch.isfinite(out).all()
    out.float().pow(2).mean().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    if op == "shiftadd-fixed":
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        assert frozen, "shiftadd-fixed must freeze the shift layers"


def _leaf_order(model, x):
    order = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod))
             for m in model.modules() if not list(m.children())]
    model(x)
    for h in hooks:
        h.remove()
    return order


@pytest.mark.parametrize("op", ["adder", "shiftadd"])
@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("name", OURS)
def test_batchnorm_follows_every_adder_layer(name, op, keep):
    shape, opts = _spec(name)
    model = create(name, op=op, keep_first_last=keep, **opts).eval()
    order = _leaf_order(model, torch.randn(*shape))
    adders = [i for i, m in enumerate(order) if isinstance(m, ADDER_TYPES)]
    assert adders
    for i in adders:
        assert i + 1 < len(order) and isinstance(order[i + 1], _BatchNorm), \
            f"{type(order[i]).__name__} at position {i} is followed by {type(order[i + 1]).__name__ if i + 1 < len(order) else 'nothing'}"


def _weighted_layers(model, x):
    mult_free = ADDER_TYPES + SHIFT_TYPES + SHIFTADD_TYPES
    out = []
    for m in _leaf_order(model, x):
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) or isinstance(m, mult_free):
            out.append(m)
    return out


@pytest.mark.parametrize("name", OURS)
def test_first_and_last_layers_stay_multiplicative_by_default(name):
    shape, opts = _spec(name)
    x = torch.randn(*shape)
    layers = _weighted_layers(create(name, op="shift-ps", **opts).eval(), x)
    assert type(layers[0]) in (nn.Conv1d, nn.Conv2d, nn.Linear)
    assert type(layers[-1]) is nn.Linear
    assert all(isinstance(m, SHIFT_TYPES) for m in layers[1:-1])
    layers = _weighted_layers(create(name, op="shift-ps", keep_first_last=False, **opts).eval(), x)
    assert all(isinstance(m, SHIFT_TYPES) for m in layers)


def test_resnet_depths_and_sizes():
    x = torch.randn(1, 3, 32, 32)
    for depth in (20, 32, 56, 110):
        m = create(f"resnet{depth}", op="conv").eval()
        convs = [l for l in _weighted_layers(m, x)]
        # 6n+2 weighted layers on the main path (+ two 1x1 projection shortcuts, option B)
        assert len(convs) == depth + 2
    # He et al. report 0.27M parameters for ResNet-20 (option A); option B adds two 1x1 projections.
    a = sum(p.numel() for p in create("resnet20", shortcut="A").parameters())
    assert 0.26e6 < a < 0.28e6
    with pytest.raises(ValueError):
        create("resnet20", shortcut="C")


def test_vgg_structures():
    x = torch.randn(1, 3, 32, 32)
    small = _weighted_layers(create("vgg-small").eval(), x)
    assert [type(l) for l in small] == [nn.Conv2d] * 6 + [nn.Linear]
    assert [l.out_channels for l in small[:6]] == [128, 128, 256, 256, 512, 512]
    assert small[-1].in_features == 512 * 4 * 4
    v19 = _weighted_layers(create("vgg19-small").eval(), x)
    assert [type(l) for l in v19] == [nn.Conv2d] * 16 + [nn.Linear] * 2
    assert (v19[-2].in_features, v19[-2].out_features, v19[-1].in_features) == (512, 512, 512)


def test_deepshift_mnist_models_match_the_reference_shapes():
    x = torch.randn(1, 1, 28, 28)
    mlp = _weighted_layers(create("mnist-mlp").eval(), x)
    assert [(l.in_features, l.out_features) for l in mlp] == [(784, 512), (512, 512), (512, 10)]
    cnn = _weighted_layers(create("mnist-cnn").eval(), x)
    assert [(l.in_channels, l.out_channels) for l in cnn[:2]] == [(1, 20), (20, 50)]
    assert [(l.in_features, l.out_features) for l in cnn[2:]] == [(800, 500), (500, 10)]
    lenet = _weighted_layers(create("lenet5").eval(), x)
    assert [(l.in_features, l.out_features) for l in lenet[2:]] == [(400, 120), (120, 84), (84, 10)]
    # DeepShift's models have biases and no BatchNorm
    assert not any(isinstance(m, _BatchNorm) for m in create("mnist-mlp", op="shift-ps").modules())


def test_shift_ps_layers_expose_shift_and_sign():
    m = create("mnist-cnn", op="shift-ps")
    names = {n.rsplit(".", 1)[-1] for n, _ in m.named_parameters()}
    assert {"shift", "sign"} <= names


def test_har_cnn_inputs():
    m = create("har-cnn", op="conv", in_channels=3, num_classes=5).eval()
    assert m(torch.randn(2, 3, 50)).shape == (2, 5)
    assert m(torch.randn(2, 3, 5, 10)).shape == (2, 5)  # (N, C, H, W) read as C channels of H*W
    with pytest.raises(ValueError, match="har-cnn expects"):
        m(torch.randn(2, 4, 50))


def test_layer_options_reach_the_layers_and_bad_ones_are_rejected():
    m = create("resnet8", op="shift-ps", weight_bits=3, width=4)
    bits = {mod.weight_bits for mod in m.modules() if isinstance(mod, SHIFT_TYPES)}
    assert bits == {3}
    with pytest.raises((ValueError, TypeError)):
        create("resnet8", op="adder", no_such_option=1)
    with pytest.raises(ValueError):
        create("no-such-model")
