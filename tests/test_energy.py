"""Operation counting and energy model (shiftadd.energy): closed forms, tables, CLI."""
import json

import pytest
import torch
import torch.nn as nn
import yaml

import shiftadd
from shiftadd.energy import count_ops, evaluate, load_table, profile, training_energy
from shiftadd.energy.costs import TABLE_DIR
from shiftadd.errors import UserError
from shiftadd.nn import AdderConv2d, AdderLinear, ShiftAddConv2d, ShiftConv2d, ShiftLinear


def out_size(n, k, s, p, d=1):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


class Lead(nn.Module):
    """A trainable elementwise scale in front of the layer under test, so that the layer's
    input requires a gradient (as for every layer but the first of a network)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.a


def layer_counts(layer, shape, lead=True):
    model = nn.Sequential(Lead(), layer) if lead else nn.Sequential(layer)
    c = count_ops(model, shape, optimizer=None)
    name = "1" if lead else "0"
    return c, [r for r in c.layers if r.name.startswith(name)]


def phase(recs, ph):
    out = {}
    for r in recs:
        for op, n in r.phase_counts(ph).items():
            out[op] = out.get(op, 0) + n
    return out


# ---------------------------------------------------------------- tables

def test_tables_reproduce_shiftaddnet_ratios():
    asic, fpga = load_table("asic45nm"), load_table("fpga")
    # fixed-point add vs mult: 196x (FPGA), 31x (ASIC)
    assert fpga.ratio("mult", "add", "fix32") == pytest.approx(196)
    assert asic.ratio("mult", "add", "fix32") == pytest.approx(31)
    # floating-point add vs mult: 47x (FPGA), 4.1x (ASIC)
    assert fpga.ratio("mult", "add", "fp32") == pytest.approx(47)
    assert round(asic.ratio("mult", "add", "fp32"), 1) == 4.1
    # shift vs mult: 196x (FPGA), 24x (ASIC)
    assert fpga.ratio("mult", "shift", "fix32") == pytest.approx(196)
    assert round(asic.ratio("mult", "shift", "fix32")) == 24


def test_table_values_and_sources():
    asic, fpga = load_table("asic"), load_table("fpga_zc706")
    published = [
        (asic, "mult", "fp32", 3.7), (asic, "add", "fp32", 0.9), (asic, "mult", "fix32", 3.1),
        (asic, "add", "fix32", 0.1), (asic, "mult", "fix8", 0.2), (asic, "add", "fix8", 0.03),
        (asic, "shift", "fix32", 0.13), (asic, "shift", "fix8", 0.024),
        (fpga, "mult", "fp32", 18.8), (fpga, "add", "fp32", 0.4), (fpga, "mult", "fix32", 19.6),
        (fpga, "add", "fix32", 0.1), (fpga, "shift", "fix32", 0.1),
    ]
    for t, op, f, v in published:
        e = t.entry(op, f)
        assert e.value_pj == v and not e.estimate and e.source
    for f in ("fix16", "fix8"):  # not published for the FPGA: must be marked as estimates
        for op in ("mult", "add", "shift"):
            assert fpga.entry(op, f).estimate
    for t in (asic, fpga):
        for per in t.ops.values():
            for e in per.values():
                assert isinstance(e.estimate, bool) and len(e.source) > 10
        assert set(t.memory) == {"rf", "sram", "dram"}
        # abs and cmp are priced like an add
        assert t.energy("abs", "fix32") == t.energy("add", "fix32") == t.energy("cmp", "fix32")
    assert {p.stem for p in TABLE_DIR.glob("*.yaml")} >= {"asic45nm", "fpga_zc706"}
    assert asic.format("int8") == "fix8" and asic.bits("fix16") == 16


def test_bad_platform_format_and_table(tmp_path):
    with pytest.raises(UserError, match="unknown platform"):
        load_table("tpu")
    with pytest.raises(UserError, match="no number format"):
        load_table("fpga").format("fp16")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "formats": {"fp32": {"bits": 32}},
                                   "ops": {"mult": {"fp32": {"value_pj": 1.0}}}}))
    with pytest.raises(UserError, match="missing source, estimate"):
        load_table(str(bad))
    with pytest.raises(UserError, match="not found"):
        load_table(str(tmp_path / "missing.yaml"))


def test_user_table_file(tmp_path):
    data = {"name": "mychip", "formats": {"fix32": {"bits": 32}},
            "op_aliases": {"abs": "add", "cmp": "add"},
            "ops": {op: {"fix32": {"value_pj": v, "source": "made up for a test", "estimate": True}}
                    for op, v in (("mult", 2.0), ("add", 0.5), ("shift", 0.25))},
            "memory": {"sram": {"value_pj": 3.2, "word_bits": 32, "source": "made up", "estimate": True}}}
    path = tmp_path / "mychip.yaml"
    path.write_text(yaml.safe_dump(data))
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
    p = profile(nn.Sequential(conv), (2, 4, 6, 6), platform=str(path), fmt="fix32", memory="sram")
    T = 2 * 8 * 6 * 6 * 4 * 9
    assert p.compute_pj == pytest.approx(T * 2.0 + T * 0.5)
    # memory: weights read once, each sample's input read and output written, 0.1 pJ per bit
    bits = (8 * 4 * 9 + 2 * (4 * 36 + 8 * 36)) * 32
    assert p.memory_pj == pytest.approx(bits * 0.1)
    assert p.total_pj == pytest.approx(p.compute_pj + p.memory_pj)
    assert p.platform == "mychip"


# ---------------------------------------------------------------- closed forms

GEOMETRIES = [  # (cin, cout, k, stride, padding, dilation, groups, bias, size)
    (4, 8, 3, 1, 1, 1, 1, False, 8),
    (4, 6, 3, 2, 0, 1, 2, True, 9),
    (6, 6, 5, 2, 2, 2, 3, False, 11),
    (4, 8, 1, 1, 0, 1, 1, True, 5),
]


@pytest.mark.parametrize("cin, cout, k, s, p, d, g, bias, n", GEOMETRIES)
def test_conv_closed_form(cin, cout, k, s, p, d, g, bias, n):
    N = 3
    ho = out_size(n, k, s, p, d)
    T = cout * ho * ho * (cin // g) * k * k  # per sample
    c, recs = layer_counts(nn.Conv2d(cin, cout, k, s, p, d, g, bias=bias), (N, cin, n, n))
    assert phase(recs, "forward") == {"mult": T, "add": T + (cout * ho * ho if bias else 0)}
    assert phase(recs, "grad_input") == {"mult": T, "add": T}
    assert phase(recs, "grad_weight") == {"mult": T, "add": T + (cout * ho * ho if bias else 0)}
    assert c.macs() == T
    # first layer of a network: no input gradient is computed
    _, first = layer_counts(nn.Conv2d(cin, cout, k, s, p, d, g, bias=bias), (N, cin, n, n), lead=False)
    assert phase(first, "grad_input") == {}
    inf = c.inference()
    assert inf["mult"] == N * (T + cin * n * n)  # + the Lead's elementwise scale


@pytest.mark.parametrize("cin, cout, k, s, p, d, g, bias, n", GEOMETRIES)
@pytest.mark.parametrize("grad_mode", ["full", "sign"])
def test_adder_closed_form(cin, cout, k, s, p, d, g, bias, n, grad_mode):
    ho = out_size(n, k, s, p, d)
    T = cout * ho * ho * (cin // g) * k * k
    layer = AdderConv2d(cin, cout, k, s, p, d, g, bias=bias, grad_mode=grad_mode)
    with torch.no_grad():
        layer.weight[0].zero_()  # a pruned adder weight still costs |x - 0|
    _, recs = layer_counts(layer, (2, cin, n, n))
    b = cout * ho * ho if bias else 0
    assert phase(recs, "forward") == {"add": 2 * T + b, "abs": T}
    if grad_mode == "full":
        assert phase(recs, "grad_input") == {"mult": T, "add": 2 * T, "cmp": 2 * T}
        assert phase(recs, "grad_weight") == {"mult": T, "add": 2 * T + b}
    else:
        assert phase(recs, "grad_input") == {"add": 2 * T, "cmp": T}
        assert phase(recs, "grad_weight") == {"add": 2 * T + b, "cmp": T}
    k_w = layer.weight.numel()
    assert recs[0].roles("update") == {"adaptive_lr": {"mult": 2 * k_w, "add": k_w}}


@pytest.mark.parametrize("cin, cout, k, s, p, d, g, bias, n", GEOMETRIES)
@pytest.mark.parametrize("mode", ["ps", "q"])
def test_shift_closed_form_counts_nonzero_weights(cin, cout, k, s, p, d, g, bias, n, mode):
    ho = out_size(n, k, s, p, d)
    T = cout * ho * ho * (cin // g) * k * k
    torch.manual_seed(0)
    layer = ShiftConv2d(cin, cout, k, s, p, d, g, bias=bias, mode=mode)
    with torch.no_grad():  # prune every third weight
        target = layer.sign if mode == "ps" else layer.latent_weight
        target.view(-1)[::3] = 0.0
    nnz = int(torch.count_nonzero(layer.weight))
    assert 0 < nnz < layer.weight.numel()
    S = nnz * ho * ho  # a pruned shift weight costs nothing
    _, recs = layer_counts(layer, (2, cin, n, n))
    b = cout * ho * ho if bias else 0
    assert phase(recs, "forward") == {"shift": S, "add": S + b}
    assert phase(recs, "grad_input") == {"shift": S, "add": S}
    assert phase(recs, "grad_weight") == {"mult": T, "add": T + b}  # dW = x * g is dense
    w = layer.weight.numel()
    quant = recs[0].roles("update")["weight_quant"]
    if mode == "ps":
        assert quant == {"cmp": 4 * w, "add": 2 * w, "shift": w, "mult": 3 * w}
    else:
        assert quant == {"abs": w, "cmp": 4 * w, "add": w, "shift": w}


def test_shift_activation_quantizer_counted():
    layer = ShiftConv2d(4, 4, 3, padding=1, activation_bits=(3, 4))
    _, recs = layer_counts(layer, (1, 4, 6, 6))
    n_in = 4 * 36
    assert recs[0].roles("forward")["act_quant"] == {"shift": 2 * n_in, "add": n_in, "cmp": 2 * n_in}


@pytest.mark.parametrize("fixed", [False, True])
def test_shiftadd_closed_form(fixed):
    cin, cout, k, s, p, n = 4, 6, 3, 2, 1, 8
    ho = out_size(n, k, s, p)
    layer = ShiftAddConv2d(cin, cout, k, s, p, fixed_shift=fixed)
    Ts = cout * ho * ho * cin * k * k           # shift part: cin -> cout with the stride
    Ta = cout * ho * ho * cout * k * k          # adder part: cout -> cout at the output size
    nnz = int(torch.count_nonzero(layer.shift.weight))
    S = nnz * ho * ho
    _, recs = layer_counts(layer, (2, cin, n, n))
    assert [r.name for r in recs] == ["1.shift", "1.adder"]
    assert phase(recs, "forward") == {"shift": S, "add": S + 2 * Ta, "abs": Ta}
    assert phase(recs, "grad_input") == {"shift": S, "add": S + 2 * Ta, "mult": Ta, "cmp": 2 * Ta}
    if fixed:  # frozen shift weights: no weight gradient, no quantizer work
        assert phase(recs, "grad_weight") == {"mult": Ta, "add": 2 * Ta}
        assert "weight_quant" not in recs[0].roles("update")
    else:
        assert phase(recs, "grad_weight") == {"mult": Ts + Ta, "add": Ts + 2 * Ta}


@pytest.mark.parametrize("cls", [nn.Linear, AdderLinear, ShiftLinear])
def test_linear_closed_form(cls):
    layer = cls(12, 5, bias=False)
    _, recs = layer_counts(layer, (4, 7, 12))  # (batch, tokens, features)
    T = 7 * 12 * 5
    fwd = phase(recs, "forward")
    if cls is nn.Linear:
        assert fwd == {"mult": T, "add": T}
    elif cls is AdderLinear:
        assert fwd == {"add": 2 * T, "abs": T}
    else:
        S = int(torch.count_nonzero(layer.weight)) * 7
        assert fwd == {"shift": S, "add": S}


def test_resnet20_conv_counts_41M_macs():
    from shiftadd.models import create

    c = count_ops(create("resnet20", op="conv"), (1, 3, 32, 32))
    # stem + 3 stages of 3 basic blocks (16/32/64 channels, 32/16/8 pixels), 1x1 projections, fc
    hw = {16: 32 * 32, 32: 16 * 16, 64: 8 * 8}
    macs = 3 * 16 * 9 * hw[16]
    macs += 6 * 16 * 16 * 9 * hw[16]
    macs += 16 * 32 * 9 * hw[32] + 5 * 32 * 32 * 9 * hw[32] + 16 * 32 * hw[32]
    macs += 32 * 64 * 9 * hw[64] + 5 * 64 * 64 * 9 * hw[64] + 32 * 64 * hw[64]
    macs += 64 * 10
    assert c.macs() == macs
    assert 40.5e6 < macs < 41.5e6
    kinds = {}
    for r in c.layers:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    assert kinds["residual"] == 9 and kinds["norm"] == 21 and kinds["activation"] == 19
    assert kinds["pool"] == 1 and kinds["optimizer"] == 1
    res = [r for r in c.layers if r.kind == "residual"]
    assert sum(r.phase_counts("forward")["add"] for r in res) == 3 * (16 * 1024 + 32 * 256 + 64 * 64)
    assert c.uncounted == []
    assert c.params == sum(p.numel() for p in create("resnet20", op="conv").parameters())


def test_converted_user_model_and_functional_ops():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.c2 = nn.Conv2d(8, 8, 3, padding=1)
            self.c3 = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            x = torch.relu(self.c1(x))
            y = torch.nn.functional.relu(self.c2(x))
            x = self.c3(y) + x
            return self.fc(torch.sigmoid(x).mean((2, 3)))

    net = shiftadd.convert(Net(), "adder")
    c = count_ops(net, (1, 3, 6, 6))
    assert [r.kind for r in c.layers if r.name in ("c1", "c2", "c3", "fc")] == ["conv", "adder", "adder", "linear"]
    assert c.layer("c2").phase_counts("forward")["abs"] == 8 * 36 * 8 * 9
    assert c.layer("(model):add").kind == "residual"
    assert len([r for r in c.layers if r.kind == "activation"]) == 2
    assert any(u.startswith("sigmoid") for u in c.uncounted)
    # hooks and stand-ins are gone, the mode is restored
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert "forward" not in net.c2.__dict__
    net.train()
    count_ops(net, (1, 3, 6, 6))
    assert net.training


def test_training_counts_and_energy():
    from shiftadd.models import create

    model = create("resnet8", op="adder")
    c = count_ops(model, (8, 3, 32, 32))
    step = c.training_step()
    per_sample = c.totals(("train_forward", "grad_input", "grad_weight"))
    update = c.totals(("update",))
    assert step == {op: 8 * per_sample.get(op, 0) + update.get(op, 0) for op in set(per_sample) | set(update)}
    trainable = sum(p.numel() for p in model.parameters())
    assert c.layer("(optimizer)").phase_counts("update") == {"mult": 3 * trainable, "add": 3 * trainable}
    p = evaluate(c, "asic", "fp32", training=True, memory=None)
    t = load_table("asic")
    assert p.compute_pj == pytest.approx(sum(n * t.energy(op, "fp32") for op, n in step.items()))
    assert p.memory_pj == 0
    # one step's worth of samples = one training step
    run = training_energy(model, (8, 3, 32, 32), 8, "asic", "fp32", memory=None)
    assert run.steps == 1 and run.compute_pj == pytest.approx(p.compute_pj)
    run = training_energy(model, (8, 3, 32, 32), 20, "asic", "fp32", memory="sram")
    assert run.steps == 3
    assert run.compute_pj == pytest.approx(20 * run.per_sample_pj + 3 * run.per_step_pj)
    assert run.memory_pj > 0 and run.total_j == pytest.approx(run.total_pj / 1e12)
    assert "samples" in run.summary()


def test_saving_and_grad_format():
    from shiftadd.models import create

    conv = count_ops(create("resnet8", op="conv"), (1, 3, 32, 32))
    sa = count_ops(create("resnet8", op="shiftadd"), (1, 3, 32, 32))
    base = evaluate(conv, "fpga", "fix32")
    mine = evaluate(sa, "fpga", "fix32")
    assert mine.saving(base) == pytest.approx(1 - mine.compute_pj / base.compute_pj)
    assert 0 < mine.saving(base) < 1
    # gradients in fp32 cost more than in fix8
    lo = evaluate(sa, "asic", "fix8", training=True, grad_fmt="fix8")
    hi = evaluate(sa, "asic", "fix8", training=True, grad_fmt="fp32")
    assert hi.compute_pj > lo.compute_pj
    d = hi.as_dict()
    json.dumps(d)
    assert d["grad_format"] == "fp32" and d["training"]
    assert set(d["op_energy_pj"]) <= {"mult", "add", "shift", "abs", "cmp"}
    assert sum(d["role_energy_pj"].values()) == pytest.approx(d["compute_pj"])
    assert any("fix8" in e for e in evaluate(sa, "fpga", "fix8").estimates_used())


# ---------------------------------------------------------------- spatial shifts

def _spatial_shift_layers():
    from shiftadd.nn import (ActiveShift2d, AddressShift, ChannelShift, SparseShift2d, SpatialShift1d,
                             SpatialShift2d)

    torch.manual_seed(0)
    return [SpatialShift2d(8), SpatialShift2d(8, stride=2), SpatialShift1d(8, kernel_size=5),
            ActiveShift2d(8), ActiveShift2d(8, stride=2), SparseShift2d(8, init_range=2.0),
            ChannelShift(3), AddressShift(return_groups=True), AddressShift()]


@pytest.mark.parametrize("layer", _spatial_shift_layers(), ids=lambda m: repr(m).replace(" ", ""))
def test_spatial_shift_counts_its_op_counts(layer):
    shape = (1, 8, 6) if layer.__class__.__name__.endswith("1d") else (1, 8, 6, 6)
    c, recs = layer_counts(layer, (3,) + shape[1:])
    assert [r.kind for r in recs] == ["spatial_shift"]
    own = layer.op_counts(shape)
    fwd = {op: n for op, n in {"move": own["moves"], "mult": own["mults"], "add": own["adds"]}.items() if n}
    assert phase(recs, "forward") == fwd and fwd["move"] > 0
    assert phase(recs, "grad_input") == fwd  # the adjoint (opposite) shift moves as much
    shift = getattr(layer, "shift", None)
    if isinstance(shift, nn.Parameter):  # d/dshift: every corner map read, times g, summed
        n = 2 ** shift.shape[1] * recs[0].output_numel
        assert phase(recs, "grad_weight") == {"move": n, "mult": n, "add": n}
        assert recs[0].params == shift.numel()
    else:
        assert phase(recs, "grad_weight") == {}
    assert all("(Lead)" in u for u in c.uncounted)  # nothing of the shift is left uncounted
    # moves are data movement: priced per bit at the memory level, not as compute
    t = load_table("asic")
    p = evaluate(c, t, "fp32", memory="sram")
    shift_energy = next(layer for layer in p.layers if layer.kind == "spatial_shift")
    assert shift_energy.memory_pj == pytest.approx(3 * fwd["move"] * 32 * t.memory_pj_per_bit("sram"))
    assert shift_energy.compute_pj == pytest.approx(3 * sum(n * t.energy(op, "fp32") for op, n in fwd.items()
                                                            if op != "move"))
    assert evaluate(c, t, "fp32", memory=None).memory_pj == 0
    step = evaluate(c, t, "fp32", training=True, memory="sram")
    moved = phase(recs, "grad_input")["move"] + phase(recs, "grad_weight").get("move", 0)
    assert step.memory_pj == pytest.approx(p.memory_pj + 3 * moved * 32 * t.memory_pj_per_bit("sram"))


def test_shiftresnet20_counts_shifts_as_moves_and_exact_macs():
    from shiftadd.models import create

    model = create("shiftresnet20", op="conv", expansion=3)
    c = count_ops(model, (1, 3, 32, 32))
    assert c.uncounted == []
    shifts = [r for r in c.layers if r.kind == "spatial_shift"]
    assert len(shifts) == 9
    assert all(r.phase_counts("forward").keys() == {"move"} for r in shifts)
    # stem, then per CSC block (in, planes, stride, input size): 1x1 conv (x3) -> shift -> 1x1 conv (stride)
    macs = 3 * 16 * 9 * 32 * 32
    moves = 0
    blocks = [(16, 16, 1, 32)] * 3 + [(16, 32, 2, 32)] + [(32, 32, 1, 16)] * 2 + [(32, 64, 2, 16)] \
        + [(64, 64, 1, 8)] * 2
    for cin, planes, stride, hw in blocks:
        mid, out = 3 * planes, hw // stride
        macs += cin * mid * hw * hw + mid * planes * out * out
        if stride != 1 or cin != planes:
            macs += cin * planes * out * out  # 1x1 projection shortcut
        moves += mid * hw * hw  # the grouped shift writes every element once
    macs += 64 * 10
    assert c.macs() == macs == 16_433_792  # (docs/energy.md)
    assert sum(r.phase_counts("forward")["move"] for r in shifts) == moves == 368_640
    assert c.totals(("forward",)).get("move") == moves


@pytest.mark.parametrize("name, options", [("fe_net", {}), ("addressnet20", {}),
                                           ("shiftresnet20", {"shift": "active"}),
                                           ("shiftresnet20", {"shift": "sparse", "op": "shiftadd"})])
def test_shift_networks_have_no_uncounted_entries(name, options):
    from shiftadd.models import create

    model = create(name, **options)
    c = count_ops(model, (1, 3, 32, 32))
    assert c.uncounted == []
    shifts = [r for r in c.layers if r.kind == "spatial_shift"]
    assert shifts and all(r.phase_counts("forward")["move"] > 0 for r in shifts)
    assert c.params == sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- quantizers and pruning masks

def _by_name(c, kinds=("conv", "linear", "adder", "shift")):
    return {r.name: r for r in c.layers if r.kind in kinds}


def test_quantized_model_counts_quantizers_per_phase():
    from shiftadd.models import create
    from shiftadd.quant import quantize_model

    model = create("resnet8", op="shiftadd")
    plain = count_ops(model, (1, 3, 32, 32))
    quantize_model(model, "fix8")  # 8-bit pow2 forward, 8-bit stochastic backward, ranges at run time
    c = count_ops(model, (1, 3, 32, 32))
    assert c.uncounted == []
    assert [r.name for r in c.layers] == [r.name for r in plain.layers]  # the transforms are no layers
    before, after = _by_name(plain), _by_name(c)

    def q(n):  # scale by 2^-f (a shift), round (add), clamp (2 cmp), range max|x| (abs + cmp)
        return {"shift": n, "add": n, "cmp": 3 * n, "abs": n}

    for name, r in after.items():
        ref = before[name]
        for ph in ("forward", "grad_input", "grad_weight", "update"):
            assert r.roles(ph).get("main") == ref.roles(ph).get("main")  # the layer's own work is unchanged
        n_in, n_out = r.input_numel, r.output_numel
        assert r.roles("forward")["quant_act"] == q(n_in)
        assert r.roles("grad_input")["quant_grad_output"] == q(n_out)
        if name != "conv1":  # the first layer's input needs no gradient
            assert r.roles("grad_input")["quant_act"] == {"cmp": n_in}
        layer = model.get_submodule(name)
        if r.kind == "shift":  # its own weight_bits govern: no weight quantizer; shift and sign gradients
            assert "quant_weight" not in r.roles("update") and r.weight_bits == layer.weight_bits
            assert r.roles("update")["quant_weight_grad"] == q(2 * layer.weight.numel())
        else:
            k = layer.weight.numel()
            w = q(k)
            assert r.roles("update")["quant_weight"] == {**w, "cmp": w["cmp"] + k}  # + straight-through mask
            assert r.roles("update")["quant_weight_grad"] == q(k)
            assert r.weight_bits == 8
    # inference pays for the input quantizers only; the stored weights are already quantized
    extra = {}
    for r in after.values():
        for op, n in r.roles("forward")["quant_act"].items():
            extra[op] = extra.get(op, 0) + n
    assert c.totals(("forward",)) == {op: plain.totals(("forward",)).get(op, 0) + extra.get(op, 0)
                                      for op in set(extra) | set(plain.totals(("forward",)))}
    p = evaluate(c, "asic", "fix8", training=True)
    roles = p.role_energy_pj()
    assert {"quant_act", "quant_grad_output", "quant_weight", "quant_weight_grad"} <= set(roles)
    assert sum(roles.values()) == pytest.approx(p.compute_pj)


def test_quantizer_scale_and_fixed_range():
    from shiftadd.quant import QuantConfig, TensorQuant, quantize_model

    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    model = nn.Sequential(Lead(), conv)
    cfg = QuantConfig(weight=TensorQuant(6, scale="free"), activation=TensorQuant(8, frac_bits=4))
    quantize_model(model, cfg)
    c = count_ops(model, (2, 4, 5, 5), optimizer=None)
    r = c.layer("1")
    n, k = 4 * 25, conv.weight.numel()
    assert r.roles("forward")["quant_act"] == {"shift": n, "add": n, "cmp": 2 * n}  # fixed Q4.4: no range
    assert r.roles("update")["quant_weight"] == {"mult": k, "add": k, "cmp": 4 * k, "abs": k}  # free scale
    assert "quant_grad_output" not in r.roles("grad_input") and "quant_weight_grad" not in r.roles("update")
    assert r.weight_bits == 6
    conv.weight.requires_grad_(False)  # frozen weights are quantized once, not every step
    assert "quant_weight" not in count_ops(model, (2, 4, 5, 5), optimizer=None).layer("1").roles("update")


def test_shared_scale_quantizer_counted():
    from shiftadd.models import create
    from shiftadd.quant import shared_scale

    model = create("resnet8", op="adder")
    shared_scale(model, 8, [torch.randn(2, 3, 32, 32)])  # free scale, calibrated input range
    c = count_ops(model, (1, 3, 32, 32))
    assert c.uncounted == []
    adders = [r for r in c.layers if r.kind == "adder"]
    assert adders
    for r in adders:
        n, k = r.input_numel, r.weight_elems
        assert r.roles("forward")["quant_act"] == {"mult": n, "add": n, "cmp": 2 * n}
        assert r.roles("update")["quant_weight"] == {"mult": k, "add": k, "cmp": 4 * k, "abs": k}
        assert r.weight_bits == 8


def test_pruning_masks_shift_counts_drop_adder_counts_stay():
    from shiftadd.models import create
    from shiftadd.prune import PruningMask, prune
    from shiftadd.quant.hooks import attach

    model = create("resnet20", op="shiftadd")
    dense = count_ops(model, (1, 3, 32, 32))
    prune(model, 0.5)
    c = count_ops(model, (1, 3, 32, 32))
    assert c.uncounted == []

    def kind_total(counts, kind):
        return phase([r for r in counts.layers if r.kind == kind], "forward")

    assert kind_total(c, "adder") == kind_total(dense, "adder")  # a pruned adder weight still costs |x - 0|
    ratio = kind_total(c, "shift")["shift"] / kind_total(dense, "shift")["shift"]
    assert 0.45 < ratio < 0.55  # a pruned shift weight costs nothing
    assert kind_total(c, "shift")["shift"] == kind_total(c, "shift")["add"]
    # the mask counts even before the stored weights were zeroed
    layer = ShiftConv2d(4, 4, 3, padding=1)
    mask = torch.ones_like(layer.sign, dtype=torch.bool)
    mask.view(-1)[::2] = False
    attach(layer, "pruning", PruningMask(mask))
    _, recs = layer_counts(layer, (1, 4, 6, 6))
    assert phase(recs, "forward")["shift"] == int(mask.sum()) * 36


# ---------------------------------------------------------------- CLI

@pytest.fixture
def main(monkeypatch):
    """shiftadd.cli.main with only the energy sub-command (independent of the other areas)."""
    import shiftadd.cli

    monkeypatch.setattr(shiftadd.cli, "COMMAND_MODULES", ["shiftadd.energy.commands"])
    return shiftadd.cli.main


def test_cli_table_json_plot(main, tmp_path, capsys):
    png = tmp_path / "e.png"
    assert main(["energy", "--model", "resnet8", "--op", "shiftadd", "--platform", "fpga", "--format", "fix32",
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "TOTAL" in out and "vs resnet8/conv" in out and "saving" in out
    assert png.stat().st_size > 1000
    assert main(["energy", "--model", "resnet8", "--op", "adder", "--training", "--json", "--batch-size", "4"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["training"] and d["batch_size"] == 4 and "saving_vs_baseline" in d
    assert main(["energy", "--model", "resnet8", "--all-ops", "--platform", "asic", "--format", "fix8"]) == 0
    out = capsys.readouterr().out
    assert all(op in out for op in shiftadd.nn.OPS)


def test_cli_shift_network(main, capsys):
    assert main(["energy", "--model", "shiftresnet20", "--op", "conv", "--platform", "asic", "--format", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.shift" in out and "spatial_shift" in out and " move " in out
    assert "not counted" not in out


@pytest.mark.parametrize("argv, msg", [
    (["--model", "nope"], "unknown model"),
    (["--model", "resnet8", "--op", "mul"], "unknown op"),
    (["--model", "resnet8", "--platform", "gpu"], "unknown platform"),
    (["--model", "resnet8", "--format", "fp64"], "no number format"),
    (["--model", "resnet8", "--memory", "l3"], "no memory level"),
    (["--model", "resnet8", "--input-shape", "a,b"], "input-shape"),
])
def test_cli_user_errors(main, argv, msg, capsys):
    assert main(["energy"] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err


def test_shared_module_wrappers_and_example_input():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.fc(self.act(self.fc(x))))

    net = Twice()
    c = count_ops(nn.DataParallel(net), (5, 6))  # wrappers are unwrapped
    names = [r.name for r in c.layers]
    assert names[:4] == ["fc", "act", "fc#2", "act#2"]
    assert c.layer("fc").params == 42 and c.layer("fc#2").params == 0  # parameters counted once
    assert c.macs() == 2 * 36 and c.inference()["mult"] == 5 * 2 * 36
    c2 = count_ops(net, (5, 6), example_input=torch.randn(1, 6))
    assert c2.macs() == c.macs()
    with pytest.raises(UserError):
        count_ops(net, (6,))
    with pytest.raises(UserError):
        count_ops(net, (2, 6), optimizer="lbfgs")
