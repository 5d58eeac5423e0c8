"""Energy counts of the sequence models: attention and lightweight blocks equal closed forms, nothing
a Transformer does is left uncounted, and `shiftadd energy` reports per sentence and per token."""
import json
import re

import pytest
import torch

from shiftadd.cli import main
from shiftadd.energy import count_ops
from shiftadd.energy.rules import EXP_OPS, SIGMOID_OPS
from shiftadd.models.transformer import PRESETS, TransformerSeq2Seq, example_pair, preset_config
from shiftadd.nn import (
    TOKEN_MIXERS, AdderLightweightConv1d, LightweightBlock, LightweightConv1d, MultiheadAttention,
    ShiftAddLightweightConv1d, token_mixer,
)

T, C, H, K = 7, 8, 2, 3
ADAM = {"mult": 7, "add": 4}


def _count(block, optimizer="adam"):
    x = torch.randn(1, T, C, requires_grad=True)
    return count_ops(block, (1, T, C), optimizer=optimizer, example_input=x)


def _softmax(n):
    """Forward ops of a softmax over n elements: max (cmp), x - max and the sum (2 add), exp, 1 division (mult)."""
    return {"cmp": n, "add": 2 * n + EXP_OPS["add"] * n, "mult": n + EXP_OPS["mult"] * n, "shift": EXP_OPS["shift"] * n}


def _plus(*parts):
    out = {}
    for p in parts:
        for k, v in p.items():
            out[k] = out.get(k, 0) + v
    return {k: v for k, v in out.items() if v}


def test_attention_equals_closed_form():
    mha = MultiheadAttention(C, H)
    c = _count(mha)
    assert c.uncounted == []
    proj, proj_bias, score = T * C * C, T * C, T * T * C   # per projection; Q K^T and A V terms
    n = H * T * T                                            # attention scores
    forward = _plus({"mult": 4 * proj, "add": 4 * proj + 4 * proj_bias},      # Q, K, V, out projections
                    {"mult": score, "add": score},                              # Q K^T
                    {"mult": n},                                                # / sqrt(d)
                    _softmax(n),
                    {"mult": score, "add": score})                              # A V
    assert c.inference() == forward
    grad_input = _plus({"mult": 4 * proj, "add": 4 * proj},   # projections' input gradients
                       {"mult": score, "add": score},         # dQ
                       {"mult": n},                           # scaling
                       {"mult": 2 * n, "add": 2 * n},         # softmax backward
                       {"mult": score, "add": score})         # dA
    grad_weight = _plus({"mult": 4 * proj, "add": 4 * proj + 4 * proj_bias},  # dW, db of the projections
                        {"mult": 2 * score, "add": 2 * score})                 # dK, dV
    params = 4 * (C * C + C)
    update = {"mult": ADAM["mult"] * params, "add": ADAM["add"] * params}
    assert c.training_step() == _plus(forward, grad_input, grad_weight, update)


def test_lightweight_convolutions_equal_closed_forms():
    n, hk = T * C * K, H * K
    conv = _count(LightweightConv1d(C, K, H))
    fwd = _plus({"mult": n, "add": n}, _softmax(hk))
    assert conv.inference() == fwd
    assert conv.training_step() == _plus(fwd, {"mult": n, "add": n},                        # input gradient
                                         {"mult": n + 2 * hk, "add": n + 2 * hk},         # kernel + softmax
                                         {"mult": 7 * hk, "add": 4 * hk})                  # Adam

    adder = _count(AdderLightweightConv1d(C, K, H))
    assert adder.inference() == {"add": 2 * n, "abs": n}  # no multiplication
    assert adder.training_step() == _plus({"add": 2 * n, "abs": n},
                                          {"mult": n, "add": 2 * n, "cmp": 2 * n},      # HardTanh(w - x) * g
                                          {"mult": n, "add": 2 * n},                    # (x - w) * g
                                          {"mult": 2 * hk, "add": hk},                  # adaptive LR
                                          {"mult": 7 * hk, "add": 4 * hk})
    sign = _count(AdderLightweightConv1d(C, K, H, grad_mode="sign"), optimizer=None)
    assert sign.training_step()["mult"] == 2 * hk  # only the adaptive LR's norm and rescale

    sa = ShiftAddLightweightConv1d(C, K, H)
    s = T * int(torch.count_nonzero(sa.shift.effective_weight(stochastic=False)))
    assert _count(sa).inference() == {"shift": s, "add": s + 2 * n, "abs": n}


@pytest.mark.parametrize("glu", [True, False])
def test_lightweight_block_equals_closed_form(glu):
    block = LightweightBlock(C, K, H, "mult", glu=glu)
    c = _count(block)
    n, hk, tok = T * C * K, H * K, T * C
    width = 2 * C if glu else C
    gate = _plus({k: v * tok for k, v in SIGMOID_OPS.items()}, {"mult": tok}) if glu else {}
    assert c.inference() == _plus({"mult": T * width * C, "add": T * width * C + T * width},   # in projection
                                  gate,
                                  {"mult": n, "add": n}, _softmax(hk),                          # time conv
                                  {"mult": T * C * C, "add": T * C * C + T * C})               # out projection
    assert c.uncounted == []


@pytest.mark.parametrize("kind", TOKEN_MIXERS)
def test_every_token_mixer_is_fully_counted(kind):
    block = token_mixer(kind, C, H, K, causal=True, proj_op="shiftadd")
    c = _count(block)
    assert c.uncounted == []
    assert all(layer.name != "(other parameters)" for layer in c.layers)  # every parameter in a counted layer
    assert c.params == sum(p.numel() for p in block.parameters())


@pytest.mark.parametrize("preset", PRESETS)
def test_transformer_presets_are_fully_counted(preset):
    model = TransformerSeq2Seq(preset_config(preset, 50, 2, embed_dim=16, ffn_dim=32, heads=4))
    c = count_ops(model.packed(6), (1, 11), optimizer="adam", example_input=example_pair(50, 6, 5))
    assert c.uncounted == []
    assert all(layer.name != "(other parameters)" for layer in c.layers)
    assert c.params == sum(p.numel() for p in model.parameters())
    embedding = [layer for layer in c.layers if layer.kind == "embedding"]
    assert sum(layer.phase_counts("forward")["move"] for layer in embedding) == (6 + 5) * 16  # lookups
    output = c.layer("model:linear")  # the tied output projection
    assert output.phase_counts("forward") == {"mult": 5 * 50 * 16, "add": 5 * 50 * 16}


def test_multiplication_free_preset_multiplies_only_outside_the_searched_operators():
    def count(preset):
        model = TransformerSeq2Seq(preset_config(preset, 50, 2, embed_dim=16, ffn_dim=32, heads=4))
        return count_ops(model.packed(30), (1, 60), optimizer=None, example_input=example_pair(50, 30, 30))

    free = count("multiplication-free")
    for layer in free.layers:
        if re.search(r"\.(mixer|ffn)[.:]", layer.name):  # the token mixers and FFNs, their layers and calls
            assert layer.phase_counts("forward").get("mult", 0) == 0, layer.name
    cross = [layer for layer in free.layers if ".cross" in layer.name and layer.kind == "matmul"]
    assert cross and all(layer.phase_counts("forward")["mult"] > 0 for layer in cross)  # stays multiplicative
    assert free.inference()["mult"] < count("transformer").inference()["mult"]


def test_energy_command_reports_per_sentence_and_per_token(capsys):
    argv = ["energy", "--model", "transformer-seq", "-O", "preset=lightweight-adder", "-O", "embed_dim=16",
            "-O", "ffn_dim=32", "-O", "vocab_size=50", "--tokens", "30", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target_tokens"] == 30 and out["per_sentence_pj"] == pytest.approx(out["compute_pj"])
    assert out["per_token_pj"] == pytest.approx(out["per_sentence_pj"] / 30)
    assert main(argv + ["--training", "--batch-size", "2"]) == 0
    train = json.loads(capsys.readouterr().out)
    assert train["per_sentence_pj"] > out["per_sentence_pj"]
    assert main(argv[:11] + ["--input-shape", "12,20"]) == 0
    assert "per sentence (12 source + 20 target tokens)" in capsys.readouterr().out
    assert main(["energy", "--model", "resnet20", "--tokens", "30"]) == 2
    assert "sequence models" in capsys.readouterr().err
