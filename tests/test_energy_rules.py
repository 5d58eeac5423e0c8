"""Cost rules of the energy counter: registered per module type (found by MRO), a layer's own
``op_counts``, function rules; what has no rule is reported, never silently free."""
import pytest
import torch
import torch.nn as nn

from shiftadd.energy import (
    LayerCall, LayerOps, cost_rule, count_ops, evaluate, function_rule, load_table, profile, register_cost_rule,
)
from shiftadd.energy import rules
from shiftadd.errors import UserError


@pytest.fixture(autouse=True)
def private_registry(monkeypatch):
    """Rules registered by a test stay in that test."""
    monkeypatch.setattr(rules, "_RULES", dict(rules._RULES))
    monkeypatch.setattr(rules, "FUNCTION_RULES", dict(rules.FUNCTION_RULES))
    import shiftadd.energy.recorder as recorder

    monkeypatch.setattr(recorder, "FUNCTION_RULES", rules.FUNCTION_RULES)


class Lead(nn.Module):
    """A trainable scale first, so that the layer under test gets an input that requires a gradient."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.a


class ChannelScale(nn.Module):
    """y = x * w per channel: a toy layer without a built-in rule."""

    def __init__(self, channels):
        super().__init__()
        self.w = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x):
        return torch.tanh(x * self.w)  # tanh: a function the counter cannot price by itself


SHAPE = (4, 3, 5, 5)
N = 3 * 5 * 5  # elements of one sample


def test_unknown_module_and_function_are_reported_not_free():
    c = count_ops(nn.Sequential(Lead(), ChannelScale(3)), SHAPE, optimizer=None)
    assert "module 1 (ChannelScale): only its functional calls are counted" in c.uncounted
    assert "tanh (x1)" in c.uncounted
    mul = c.layer("1:mul")  # its product is still counted, as a functional call
    assert mul.kind == "elementwise" and mul.phase_counts("forward") == {"mult": N}
    assert c.layer("(other parameters)").params == 1 + 3  # Lead.a and w: used by no counted layer


def test_registered_rule_counts_the_layer_and_its_subclasses():
    @cost_rule(ChannelScale, kind="scale")
    def _scale(rec: LayerOps, call: LayerCall) -> None:
        rec.add("forward", "main", mult=call.out_numel, cmp=2 * call.out_numel)  # product + a clamped tanh
        if call.input_grad:
            rec.add("grad_input", "main", mult=2 * call.out_numel)
        if call.module.w.requires_grad:
            rec.add("grad_weight", "main", mult=call.out_numel, add=call.out_numel)

    class Wider(ChannelScale):  # found through the MRO
        pass

    for layer in (ChannelScale(3), Wider(3)):
        c = count_ops(nn.Sequential(Lead(), layer), SHAPE, optimizer=None)
        assert all("(Lead)" in u for u in c.uncounted)  # the tanh inside is part of the layer's count
        [r] = [r for r in c.layers if r.name.startswith("1")]
        assert (r.kind, r.module_type, r.params) == ("scale", type(layer).__name__, 3)
        assert r.input_numel == r.output_numel == N
        assert r.phase_counts("forward") == {"mult": N, "cmp": 2 * N}
        assert r.phase_counts("grad_input") == {"mult": 2 * N}
        assert r.phase_counts("grad_weight") == {"mult": N, "add": N}
    # profile prices exactly these counts, scaled by the batch
    t = load_table("asic")
    p = profile(nn.Sequential(ChannelScale(3)), SHAPE, platform=t, fmt="fp32", training=False)
    [scale] = [layer for layer in p.layers if layer.kind == "scale"]
    assert scale.compute_pj == pytest.approx(4 * N * (t.energy("mult", "fp32") + 2 * t.energy("cmp", "fp32")))
    # a registered rule applies by MRO: a Conv2d subclass is a conv, a ReLU subclass an activation
    class MyConv(nn.Conv2d):
        pass

    class MyReLU(nn.ReLU):
        pass

    c = count_ops(nn.Sequential(MyConv(3, 2, 1), MyReLU()), SHAPE, optimizer=None)
    assert [r.kind for r in c.layers] == ["conv", "activation"] and c.uncounted == []
    assert c.layer("1").phase_counts("forward") == {"cmp": 2 * 25}


def test_register_cost_rule_rejects_non_modules():
    with pytest.raises(UserError, match="nn.Module subclasses"):
        register_cost_rule(int, "x")


class Gate(nn.Module):
    """A block that brings its own cost: y = x * sigmoid(W x) over channels (a child Linear)."""

    energy_kind = "gate"

    def __init__(self, channels):
        super().__init__()
        self.proj = nn.Linear(channels, channels)

    def forward(self, x):
        g = torch.sigmoid(self.proj(x.transpose(1, -1))).transpose(1, -1)
        return x * g

    def op_counts(self, input_shapes):
        (b, c, *rest), = input_shapes
        pos = b * int(torch.tensor(rest).prod())
        macs = pos * c * c
        return {"forward": {"mult": macs + 2 * pos * c, "add": macs + pos * c, "cmp": pos * c},
                "grad_input": {"mult": 2 * macs, "add": 2 * macs},
                "grad_weight": {"mult": macs, "add": macs},
                "update": {"mult": c * c}}


def test_layer_with_its_own_op_counts():
    gate = Gate(3)
    own = gate.op_counts([(1,) + SHAPE[1:]])
    c = count_ops(nn.Sequential(Lead(), gate), SHAPE, optimizer=None)
    assert all("(Lead)" in u for u in c.uncounted)
    [r] = [r for r in c.layers if r.name.startswith("1")]  # the child Linear and the calls inside are its count
    assert (r.name, r.kind, r.module_type) == ("1", "gate", "Gate")
    assert r.params == sum(p.numel() for p in gate.parameters())  # the child's parameters are its own
    for ph, ops in own.items():
        assert r.phase_counts(ph) == ops
    assert r.phase_counts("train_forward") == own["forward"]  # falls back to the forward
    [priced] = [layer for layer in evaluate(c, "asic", "fp32").layers if layer.name == "1"]
    assert priced.counts == {op: 4 * n for op, n in own["forward"].items()}  # a batch of 4
    # the first layer's input needs no gradient; frozen parameters need no weight gradient or update
    for p in gate.parameters():
        p.requires_grad_(False)
    r = count_ops(nn.Sequential(gate), SHAPE, optimizer=None).layer("0")
    assert r.phase_counts("grad_input") == r.phase_counts("grad_weight") == r.phase_counts("update") == {}
    assert r.phase_counts("forward") == own["forward"]


def test_own_op_counts_overrides_a_parent_rule_and_is_checked():
    class CheapConv(nn.Conv2d):
        def op_counts(self, input_shapes):
            return {"forward": {"shift": 7}}

    c = count_ops(nn.Sequential(CheapConv(3, 2, 1)), SHAPE, optimizer=None)
    assert c.layer("0").kind == "custom" and c.layer("0").phase_counts("forward") == {"shift": 7}

    class BadPhase(nn.Module):
        def forward(self, x):
            return x

        def op_counts(self, input_shapes):
            return {"backward": {"mult": 1}}

    class BadOp(BadPhase):
        def op_counts(self, input_shapes):
            return {"forward": {"mults": 1}}  # the spatial-shift form is not the general one

    with pytest.raises(UserError, match="BadPhase.op_counts returned phase 'backward'"):
        count_ops(BadPhase(), SHAPE)
    with pytest.raises(UserError, match="BadOp.op_counts phase 'forward' must map ops"):
        count_ops(BadOp(), SHAPE)


def test_function_rule_prices_a_new_function():
    model = nn.Sequential(Lead(), ChannelScale(3))
    assert "tanh (x1)" in count_ops(model, SHAPE, optimizer=None).uncounted

    @function_rule("tanh")
    def _tanh(call):
        rec = call.record("activation")
        rules.count_activation(rec, 2, 1, call.numel, call.grad)
        return True

    c = count_ops(model, SHAPE, optimizer=None)
    assert not any(u.startswith("tanh") for u in c.uncounted) and c.layer("1:mul").kind == "elementwise"
    r = c.layer("1:tanh")
    assert r.kind == "activation" and r.phase_counts("forward") == r.phase_counts("grad_input") == {"cmp": 2 * N,
                                                                                                     "mult": N}
