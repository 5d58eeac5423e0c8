"""shiftadd.export: integer reference network and standalone C, bit for bit (host cc; Cortex-M3 under QEMU)."""
import json
import random
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from shiftadd.errors import UserError
from shiftadd.export import build_integer_network, export_c
from shiftadd.export import toolchain as tc
from shiftadd.export.cgen import MULTIPLICATION_FREE_KINDS, arena_bytes, fused_requant, plan_arena, write_c
from shiftadd.export.graph import UnsupportedModelError
from shiftadd.train.evaluate import recalibrate_batchnorm
from shiftadd.nn import (AdderConv2d, AdderLinear, ShiftAddConv2d, ShiftAddLinear, ShiftConv2d, ShiftLinear)

needs_cc = pytest.mark.skipif(tc.host_compiler() is None, reason="no host C compiler (cc/gcc/clang)")


def _randomise_bn(model: nn.Module, gen: torch.Generator) -> None:
    """BatchNorm with non-trivial statistics and affine parameters (some negative scales)."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            m.weight.data = torch.randn(c, generator=gen) * 0.5 + 0.8
            m.bias.data = torch.randn(c, generator=gen) * 0.3


def _recalibrate_bn(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Running statistics from ``x`` (so random adder/shift models have activations in range)."""
    recalibrate_batchnorm(model, [(x, torch.zeros(len(x)))], len(x), torch.device("cpu"))
    return model.eval()


def _c_matches_reference(model, x, tmp_path, n_check=None):
    """Export ``model`` calibrated on ``x``, compile with the host cc, run on ``x``; assert equal logits."""
    net = build_integer_network(model, x)
    write_c(net, str(tmp_path))
    exe = tc.build_host(str(tmp_path))
    q = net.quantize_input(x if n_check is None else x[:n_check])
    c_logits = tc.run_host(exe, q, str(tmp_path), net.num_classes)["logits"]
    ref = net(q)
    assert c_logits.shape == ref.shape == (len(q), net.num_classes)
    assert torch.equal(c_logits, ref), f"C differs from the integer reference at {(c_logits != ref).nonzero()[:5]}"
    assert ref.abs().max() > 0 and len(torch.unique(ref)) > 1  # a real signal went through
    return net, q


def _close_to_float(model, net, x, tol=0.08):
    """The integer model approximates the float model (relative to the logit range)."""
    with torch.no_grad():
        ref = model(x).double()
    err = (net.predict_float(x) - ref).abs().max()
    assert err <= tol * ref.abs().max(), f"integer model off by {float(err):.4g} (max |logit| {float(ref.abs().max()):.4g})"


def _layer(kind, cin, cout, k, stride, padding, dilation, groups, bias):
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    if kind == "conv":
        return nn.Conv2d(cin, cout, k, **args)
    if kind == "adder":
        return AdderConv2d(cin, cout, k, **args)
    if kind == "shift":
        return ShiftConv2d(cin, cout, k, **args)
    return ShiftAddConv2d(cin, cout, k, **args)


def _random_geometry(seed):
    rng = random.Random(seed)
    while True:
        k = rng.choice([1, 2, 3])
        if rng.random() < 0.3:
            k = 3
        g = rng.choice([1, 2])
        cin, cout = g * rng.choice([1, 2, 3]), g * rng.choice([2, 3])
        s, p, d = rng.choice([1, 2]), rng.choice([0, 1, 2]), rng.choice([1, 2])
        h, w = rng.randint(5, 9), rng.randint(5, 9)
        if (h + 2 * p - d * (k - 1) - 1) // s + 1 >= 1 and (w + 2 * p - d * (k - 1) - 1) // s + 1 >= 1:
            return dict(cin=cin, cout=cout, k=k, stride=s, padding=p, dilation=d, groups=g, h=h, w=w,
                        bias=rng.random() < 0.5)


@needs_cc
@pytest.mark.parametrize("kind", ["conv", "adder", "shift", "shiftadd"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conv_like_layer_with_bn_c_equals_reference_on_random_geometry(kind, seed, tmp_path):
    g = _random_geometry(seed * 7 + len(kind))
    if kind == "shiftadd":  # the adder half keeps the size with odd kernels only
        g["k"] = 3
        g["dilation"] = 1
        g["bias"] = False
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer = _layer(kind, g["cin"], g["cout"], g["k"], g["stride"], g["padding"], g["dilation"], g["groups"], g["bias"])
    model = nn.Sequential(layer, nn.BatchNorm2d(g["cout"]), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(5))
    x = torch.randn(24, g["cin"], g["h"], g["w"], generator=gen)
    model(x)  # materialise the lazy head
    _recalibrate_bn(model, x)
    _randomise_bn(model, gen)
    net, _ = _c_matches_reference(model, x, tmp_path)
    _close_to_float(model, net, x, tol=0.15)


@needs_cc
@pytest.mark.parametrize("kind", ["conv", "adder", "shift", "shiftadd"])
def test_linear_layers_with_and_without_bn(kind, tmp_path):
    torch.manual_seed(3)
    lin = {"conv": nn.Linear, "adder": AdderLinear, "shift": ShiftLinear, "shiftadd": ShiftAddLinear}[kind]
    model = nn.Sequential(nn.Flatten(), lin(48, 20, bias=True), nn.BatchNorm1d(20), nn.ReLU(),
                          lin(20, 7, bias=True))
    x = torch.randn(32, 3, 4, 4)
    _recalibrate_bn(model, x)
    net, _ = _c_matches_reference(model, x, tmp_path)
    _close_to_float(model, net, x)


class _Residual(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = _layer(kind, 8, 8, 3, 1, 1, 1, 1, False)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(3, 2, padding=1)
        self.avg = nn.AvgPool2d(3, 3)  # 9 pixels: a fixed-point reciprocal, not a shift
        self.fc = nn.Linear(8 * 1 * 1, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.bn(self.body(x)) + x)
        x = self.avg(self.pool(x))
        return self.fc(torch.flatten(x, 1))


@needs_cc
@pytest.mark.parametrize("kind", ["conv", "adder", "shift"])
def test_residual_add_max_and_average_pooling(kind, tmp_path):
    torch.manual_seed(4)
    model = _Residual(kind)
    x = torch.randn(24, 3, 6, 6)
    _recalibrate_bn(model, x)
    _randomise_bn(model, torch.Generator().manual_seed(4))
    net, _ = _c_matches_reference(model, x, tmp_path)
    kinds = [op.kind for op in net.ops]
    assert {"add", "maxpool", "sumpool"} <= set(kinds)
    pool_requant = net.ops[kinds.index("sumpool") + 1]
    assert pool_requant.kind == "requant" and pool_requant.params["mode"] == "mult"
    _close_to_float(model, net, x, tol=0.15)


def _embedded(n_calib=64, n_test=16):
    from shiftadd.data import BatchLoader, load_dataset

    train, test = load_dataset("embedded")
    calib = next(iter(BatchLoader(train, n_calib, shuffle=False)))[0]
    images, labels = next(iter(BatchLoader(test, n_test, shuffle=False)))
    return calib, images, labels


@needs_cc
@pytest.mark.parametrize("op,shortcut", [("conv", "B"), ("adder", "B"), ("shift-ps", "B"), ("shiftadd", "B"),
                                         ("adder", "A")])
def test_whole_resnet8_c_equals_reference_on_real_images(op, shortcut, tmp_path):
    from shiftadd.models import create

    torch.manual_seed(0)
    model = create("resnet8", op=op, width=8, shortcut=shortcut)
    calib, images, _ = _embedded()
    _recalibrate_bn(model, calib)
    net = build_integer_network(model, calib)
    write_c(net, str(tmp_path))
    exe = tc.build_host(str(tmp_path))
    q = net.quantize_input(images)
    c_logits = tc.run_host(exe, q, str(tmp_path), 10)["logits"]
    assert torch.equal(c_logits, net(q))
    _close_to_float(model, net, images, tol=0.1)
    if shortcut == "A":
        assert "pad_channels" in [o.kind for o in net.ops]


@needs_cc
def test_adder_weights_far_beyond_the_activations_fold_exactly_into_the_bias(tmp_path):
    """Trained adder filters grow far beyond the activations: with ``adder_range="folded"`` the scale
    follows the activations and the clipped weight distance joins the requantization bias (C still
    bit-exact); ``"max"`` spends the int8 codes on the weights and loses the activations."""
    from shiftadd.models import create

    torch.manual_seed(0)
    model = create("resnet8", op="adder", width=8)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, AdderConv2d):
                m.weight.mul_(15.0)  # max|w| ~ 40-60, as in a trained AdderNet
    calib, images, _ = _embedded()
    _recalibrate_bn(model, calib)
    net, _ = _c_matches_reference(model, images, tmp_path)  # default: folded
    assert any(bool(o.params["offset"].any()) for o in net.ops if o.kind == "adder")
    coarse = build_integer_network(model, images, adder_range="max")
    with torch.no_grad():
        ref = model(images).double()
    err = {name: float((n.predict_float(images) - ref).abs().max()) for name, n in (("folded", net), ("max", coarse))}
    assert err["folded"] < 0.25 * err["max"], err
    with pytest.raises(UserError, match="adder_range must be one of"):
        build_integer_network(model, images, adder_range="weights")


def test_mse_calibration_saturates_a_rare_outlier_instead_of_coarsening_every_code():
    """One calibration image 40x brighter sets the max-abs range; mse calibration picks a finer frac
    for the tensors it inflates (saturating the outlier) and is closer to float on ordinary images."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), AdderConv2d(8, 8, 3, padding=1),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4))
    x = torch.randn(64, 3, 6, 6)
    _recalibrate_bn(model, x)
    calib = x.clone()
    calib[0] *= 40.0
    nets = {c: build_integer_network(model, calib, calibration=c) for c in ("max", "mse")}
    fr = {c: [t.frac for t in n.tensors.values() if t.dtype == "int8"] for c, n in nets.items()}
    assert all(a >= b for a, b in zip(fr["mse"], fr["max"])) and fr["mse"] != fr["max"], fr
    with torch.no_grad():
        ref = model(x[1:]).double()
    err = {c: float((n.predict_float(x[1:]) - ref).abs().mean()) for c, n in nets.items()}
    assert err["mse"] < 0.7 * err["max"], err
    with pytest.raises(UserError, match="calibration must be one of"):
        build_integer_network(model, calib, calibration="percentile")


@needs_cc
def test_integer_and_c_accuracy_within_half_a_point_of_float_for_a_trained_model(tmp_path):
    """The shipped conv ResNet-20 (40 epochs, pretrained=True) on the 1,000 embedded CIFAR-10 test images:
    the 8-bit integer model is within 0.5 points of float and agrees with it on >= 97 % of the images;
    the C build reproduces it bit for bit (first 100 images)."""
    from shiftadd.data import BatchLoader, load_dataset
    from shiftadd.models import create

    train, test = load_dataset("embedded")
    model = create("resnet20", op="conv", pretrained=True).eval()
    calib = next(iter(BatchLoader(train, 256, shuffle=False, augment=False)))[0]
    images, labels = next(iter(BatchLoader(test, len(test), shuffle=False, augment=False)))
    net = export_c(model, calib, str(tmp_path))
    with torch.no_grad():
        float_pred = torch.cat([model(part) for part in images.split(250)]).argmax(1)
    q = net.quantize_input(images)
    int_logits = net(q)
    int_pred = int_logits.argmax(1)
    c_logits = tc.run_host(tc.build_host(str(tmp_path)), q[:100], str(tmp_path), 10)["logits"]
    assert torch.equal(c_logits, int_logits[:100])
    float_acc, int_acc = (float((p == labels).double().mean()) for p in (float_pred, int_pred))
    assert float_acc > 0.85, f"not the trained model ({float_acc})"
    assert abs(int_acc - float_acc) <= 0.005, (float_acc, int_acc)
    assert float((int_pred == float_pred).double().mean()) >= 0.97


@needs_cc
@pytest.mark.parametrize("op", ["adder", "shift-ps", "shiftadd"])
def test_no_multiplication_in_adder_and_shift_functions_host_disassembly(op, tmp_path):
    from shiftadd.models import create

    torch.manual_seed(0)
    model = create("resnet8", op=op, width=8)
    calib, _, _ = _embedded(16, 1)
    _recalibrate_bn(model, calib)
    net = build_integer_network(model, calib)
    write_c(net, str(tmp_path))
    counts = tc.multiplications_in_object(tc.compile_object(str(tmp_path), str(tmp_path), "host"))
    free = {f: c for f, c in counts.items() if f.split("_", 1)[-1] in MULTIPLICATION_FREE_KINDS}
    kinds = {f.split("_", 1)[-1] for f in free}
    assert ({"adder"} if op == "adder" else {"shift"}) <= kinds
    assert all(c == 0 for c in free.values()), {f: c for f, c in free.items() if c}
    # the check can fail: the multiplicative first/last layers and the BN requantization do multiply
    assert any(c > 0 for f, c in counts.items() if f.endswith("_conv"))
    assert any(c > 0 for f, c in counts.items() if f.endswith("_requant"))
    assert net.multiplications()["adder"] == net.multiplications()["shift"] == 0


def test_large_batches_run_in_chunks_with_the_same_logits():
    """Verifying 10,000 images must not hold every int64 activation at once (it needed > 20 GB)."""
    from shiftadd.models import create

    torch.manual_seed(0)
    x = torch.randn(12, 3, 32, 32)
    net = build_integer_network(_recalibrate_bn(create("resnet8", op="adder", width=4), x), x)
    q = net.quantize_input(x)
    whole = net.run(q)
    net.chunk_size = 5  # 12 images -> chunks of 5, 5, 2
    assert torch.equal(net(q), whole)


def test_arena_plan_never_overlaps_live_tensors():
    from shiftadd.models import create

    torch.manual_seed(0)
    model = create("resnet8", op="shiftadd", width=4)
    net = build_integer_network(_recalibrate_bn(model, torch.randn(8, 3, 32, 32)), torch.randn(8, 3, 32, 32))
    offsets, sizes = plan_arena(net)
    call = {j: i for i, j in fused_requant(net).items()}  # a fused requantization runs inside the op before it
    live = {}
    for j, op in enumerate(net.ops):
        i = call.get(j, j)
        for t in op.inputs + [op.output]:
            live.setdefault(t, [i, i])[1] = i
    names = list(offsets)
    per_channel = {net.ops[i].output for i in fused_requant(net)}
    assert per_channel and all(net.tensors[t].dtype == "int32" for t in per_channel)
    assert set(names) == set(net.tensors) - {net.input_name, net.output_name} - per_channel
    for a in names:
        ta = net.tensors[a]
        width = 1 if ta.dtype == "int8" else 4
        assert (offsets[a] + ta.numel) * width <= sizes[ta.dtype]
        for b in names:
            tb = net.tensors[b]
            if a < b and ta.dtype == tb.dtype and not (live[a][1] < live[b][0] or live[b][1] < live[a][0]):
                assert offsets[a] + ta.numel <= offsets[b] or offsets[b] + tb.numel <= offsets[a], (a, b)
    assert sum(sizes.values()) < sum(net.tensors[t].nbytes for t in names)  # buffers are reused


def test_unsupported_layers_raise_a_user_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sigmoid(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 8, 8))
    with pytest.raises(UnsupportedModelError, match="Sigmoid"):
        build_integer_network(model.eval(), torch.randn(4, 3, 8, 8))
    with pytest.raises(UserError, match="bits"):
        build_integer_network(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).eval(), torch.randn(2, 3, 2, 2), bits=9)


@needs_cc
def test_fewer_bits_still_bit_exact(tmp_path):
    torch.manual_seed(5)
    model = nn.Sequential(AdderConv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 5 * 5, 3))
    x = torch.randn(16, 3, 5, 5)
    _recalibrate_bn(model, x)
    net = build_integer_network(model, x, bits=4)
    assert int(net.quantize_input(x).abs().max()) <= 7
    write_c(net, str(tmp_path))
    q = net.quantize_input(x)
    assert torch.equal(tc.run_host(tc.build_host(str(tmp_path)), q, str(tmp_path), 3)["logits"], net(q))


@needs_cc
def test_cli_export_writes_c_and_verifies_it(tmp_path):
    from shiftadd.cli import main
    from shiftadd.data import load_dataset
    from shiftadd.train import make_config, train

    data = load_dataset("embedded", subset=64, seed=0)
    cfg = make_config("shiftaddnet", model="mnist-mlp", op="shiftadd", dataset="embedded", subset=64, epochs=1,
                      batch_size=16, test_batch_size=50, progress=False, threads=1, model_options={"hidden": 32})
    train(cfg, str(tmp_path / "run"), data=data, log=lambda _m: None)
    out = tmp_path / "c"
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--format", "c", "--out", str(out),
                 "--calib", "32", "--verify", "20"]) == 0
    report = json.loads((out / "export.json").read_text())
    assert report["verify"]["bit_exact"] and report["verify"]["images"] == 20
    assert (out / "model.h").read_text().count("int model_run(const int8_t *input, int32_t *logits)") == 1
    code = re.sub(r"/\*.*?\*/", "", (out / "model.c").read_text(), flags=re.S)  # without comments
    for word in ("malloc", "float", "double", "math.h", "stdlib.h"):
        assert word not in code
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--format", "onnx", "--out", str(out)]) == 2


@needs_cc
def test_cortex_m3_build_under_qemu_is_bit_exact_and_multiplication_free(tmp_path):
    missing = tc.arm_tools_missing()
    if missing:
        pytest.skip(f"Cortex-M check skipped: {missing}")
    from shiftadd.models import create

    torch.manual_seed(0)
    model = create("resnet8", op="shiftadd", width=8)
    calib, images, _ = _embedded(32, 3)
    _recalibrate_bn(model, calib)
    net = build_integer_network(model, calib)
    write_c(net, str(tmp_path))
    q = net.quantize_input(images)
    logits = tc.run_qemu(tc.build_arm(str(tmp_path), str(tmp_path)), q, str(tmp_path), 10, timeout=300)
    assert torch.equal(logits, net(q))
    counts = tc.multiplications_in_object(tc.compile_object(str(tmp_path), str(tmp_path), "arm"), "arm")
    free = {f: c for f, c in counts.items() if f.split("_", 1)[-1] in MULTIPLICATION_FREE_KINDS}
    assert any(f.endswith("_adder") for f in free) and any(f.endswith("_shift") for f in free)
    assert all(c == 0 for c in free.values()), {f: c for f, c in free.items() if c}
    assert any(c > 0 for f, c in counts.items() if f.endswith("_conv"))
    size = tc.arm_size(str(tmp_path), str(tmp_path))
    assert size.bss >= arena_bytes(net) and size.text > 0 and size.stack > 0


@needs_cc
@pytest.mark.parametrize("name,op,options,shape", [
    ("mnist-cnn", "adder", {}, (1, 28, 28)), ("mnist-cnn", "shiftadd", {}, (1, 28, 28)),
    ("lenet5", "shift-ps", {"keep_first_last": False}, (1, 28, 28)), ("mnist-mlp", "shiftadd", {"hidden": 32}, (1, 28, 28)),
    ("vgg-small", "adder", {"width_mult": 0.125}, (3, 32, 32)), ("vgg-small", "shiftadd", {"width_mult": 0.125}, (3, 32, 32)),
])
def test_zoo_models_export_bit_exact(name, op, options, shape, tmp_path):
    from shiftadd.models import create

    torch.manual_seed(0)
    model = create(name, op=op, **options)
    x = torch.randn(16, *shape)
    _recalibrate_bn(model, x)
    net, _ = _c_matches_reference(model, x, tmp_path)
    _close_to_float(model, net, x, tol=0.2)


@needs_cc
def test_shift_layer_spanning_many_octaves_uses_rounded_right_shifts_and_stays_exact(tmp_path):
    torch.manual_seed(6)
    layer = ShiftLinear(2048, 4, bias=True)
    w = torch.randn(4, 2048).sign() * torch.pow(2.0, -torch.randint(0, 15, (4, 2048)).float())
    w[:, :1024] = torch.randn(4, 1024).sign()  # many taps of 2^0 next to 2^-14: int32 would overflow at e = 14
    layer.set_weight(w)
    model = nn.Sequential(nn.Flatten(), layer).eval()
    x = torch.rand(16, 2, 32, 32)
    net, _ = _c_matches_reference(model, x, tmp_path)
    shift_op = next(op for op in net.ops if op.kind == "shift")
    assert int(shift_op.params["shift"].min()) < 0 and shift_op.params["exponent"] < 14
    assert shift_op.params["bound"] <= 2 ** 31 - 1
    _close_to_float(model, net, x, tol=0.05)
