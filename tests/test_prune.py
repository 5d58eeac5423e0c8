import io

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from shiftadd.errors import CheckpointError
from shiftadd.nn import AdderConv2d, AdderLinear, ShiftAddConv2d, ShiftConv2d, ShiftLinear
from shiftadd.optim import scale_adder_gradients
from shiftadd.prune import (
    apply_masks, effective_weight, format_sparsity_report, get_mask, prune, remove_pruning, restore_masks,
    skipped_ops_mask, sparsity_report,
)
from shiftadd.quant import quantize_model


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
        ShiftAddConv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
        AdderConv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16),
        ShiftConv2d(16, 8, 1), nn.Flatten(), nn.Linear(8 * 4 * 4, 4),
    )


def _scramble_shift(layer, seed=0):
    """Give a PS shift layer a spread of shifts and signs (incl. some zero signs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.shift.copy_(torch.rand(layer.shift.shape, generator=g) * -8)
        layer.sign.copy_(torch.rand(layer.sign.shape, generator=g) * 2.4 - 1.2)


# ----------------------------------------------------------------------------- semantics per operator
def test_adder_magnitude_pruning_per_layer_removes_the_smallest_weights():
    m = _net()
    before = m[4].weight.detach().clone()
    rep = prune(m, 0.3, scope="layer", layer_types=("adder",))
    w, mask = m[4].weight.detach(), get_mask(m[4])
    n = w.numel()
    assert int((~mask).sum()) == round(0.3 * n)
    assert torch.all(w[~mask] == 0) and torch.equal(w[mask], before[mask])
    assert before[~mask].abs().max() <= before[mask].abs().min()
    for r in rep["layers"]:
        assert r["kind"] == "adder" and r["sparsity"] == pytest.approx(round(0.3 * r["weights"]) / r["weights"])
        assert r["skipped_ops"] == 0.0  # |x - 0| is still computed


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_shift_ps_pruning_removes_the_smallest_effective_weights_and_zeroes_their_sign(scope):
    m = _net()
    _scramble_shift(m[2].shift, 1)
    _scramble_shift(m[6], 2)
    eff = {i: effective_weight(l).clone() for i, l in ((2, m[2].shift), (6, m[6]))}
    raw_p = {i: l.shift.detach().clone() for i, l in ((2, m[2].shift), (6, m[6]))}
    prune(m, 0.6, scope=scope, layer_types=("shift",))
    pruned_abs, kept_abs = [], []
    for i, layer in ((2, m[2].shift), (6, m[6])):
        mask = get_mask(layer)
        assert torch.all(layer.sign.detach()[~mask] == 0)  # a pruned weight has sign 0
        assert torch.all(layer.weight.detach()[~mask] == 0)
        assert torch.equal(effective_weight(layer)[mask], eff[i][mask])  # kept weights unchanged
        pruned_abs.append(eff[i][~mask].abs())
        kept_abs.append(eff[i][mask].abs())
        if scope == "layer":
            assert eff[i][~mask].abs().max() <= eff[i][mask].abs().min()
            # among weights of the same effective magnitude the more negative raw shift goes first
            top = eff[i][~mask].abs().max()
            tie_pruned = raw_p[i][(~mask) & (eff[i].abs() == top)]
            tie_kept = raw_p[i][mask & (eff[i].abs() == top)]
            if tie_pruned.numel() and tie_kept.numel():
                assert tie_pruned.max() <= tie_kept.min()
    if scope == "global":
        assert torch.cat(pruned_abs).max() <= torch.cat(kept_abs).min()
        total = sum(get_mask(l).numel() for l in (m[2].shift, m[6]))
        assert sum(int((~get_mask(l)).sum()) for l in (m[2].shift, m[6])) == round(0.6 * total)
    rep = sparsity_report(m, ("shift",))
    for r in rep["layers"]:
        assert r["skipped_ops"] == r["sparsity"] >= r["masked"] / r["weights"]


def test_shift_q_pruning_zeroes_the_latent_weight():
    torch.manual_seed(0)
    layer = ShiftLinear(20, 10, mode="q")
    eff = effective_weight(layer).clone()
    prune(layer, 0.5, layer_types=("shift",))
    mask = get_mask(layer)
    assert torch.all(layer.latent_weight.detach()[~mask] == 0) and torch.all(layer.weight[~mask] == 0)
    assert eff[~mask].abs().max() <= eff[mask].abs().min()


def test_global_scope_ranks_each_operator_kind_separately():
    m = _net()
    with torch.no_grad():
        m[2].adder.weight.mul_(100)  # much larger adder weights in one layer
    adders = [m[2].adder, m[4]]
    before = [l.weight.detach().clone() for l in adders]
    prune(m, 0.5, scope="global", layer_types=("adder", "shift"))
    rep = sparsity_report(m, ("adder", "shift"))
    for kind in ("adder", "shift"):
        assert rep["by_kind"][kind]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    per_layer = {r["name"]: r["sparsity"] for r in rep["layers"]}
    # one threshold across adder layers: the large layer keeps almost everything, the other pays
    assert per_layer["2.adder"] < 0.05 and per_layer["4"] > 0.7
    pruned = torch.cat([b[~get_mask(l)] for b, l in zip(before, adders)])
    kept = torch.cat([b[get_mask(l)] for b, l in zip(before, adders)])
    assert pruned.abs().max() <= kept.abs().min()


def test_random_pruning_baseline_is_exact_seeded_and_not_magnitude():
    m1, m2, m3 = _net(), _net(), _net()
    prune(m1, 0.5, method="random", scope="layer", seed=3)
    prune(m2, 0.5, method="random", scope="layer", seed=3)
    prune(m3, 0.5, method="magnitude", scope="layer")
    for a, b, c in zip(m1.modules(), m2.modules(), m3.modules()):
        if get_mask(a) is not None:
            assert torch.equal(get_mask(a), get_mask(b))
            assert not torch.equal(get_mask(a), get_mask(c))
            assert int((~get_mask(a)).sum()) == round(0.5 * get_mask(a).numel())


def test_iterative_pruning_extends_masks_and_ratio_zero_is_noop():
    m = _net()
    prune(m, 0.3, scope="layer")
    first = {n: get_mask(l).clone() for n, l in m.named_modules() if get_mask(l) is not None}
    prune(m, 0.6, scope="layer")
    for n, l in m.named_modules():
        if n in first:
            assert torch.all(get_mask(l) <= first[n])  # everything pruned before stays pruned
            assert int((~get_mask(l)).sum()) == round(0.6 * get_mask(l).numel())
    m2 = _net()
    x = torch.randn(2, 3, 4, 4)
    m2.eval()
    y = m2(x)
    prune(m2, 0.0)
    assert torch.equal(m2(x), y)


# ----------------------------------------------------------------------------- masks through training and save/load
def test_masks_survive_fine_tuning_with_momentum_and_weight_decay():
    m = _net()
    prune(m, 0.5, scope="layer")
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x, y = torch.randn(8, 3, 4, 4), torch.randint(0, 4, (8,))
    for _ in range(3):
        loss = nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        assert torch.all(m[4].weight.grad[~get_mask(m[4])] == 0)  # pruned weights get no gradient
        scale_adder_gradients(m)
        opt.step()
        apply_masks(m)
    for layer in (m[2].shift, m[2].adder, m[4], m[6]):
        assert torch.all(effective_weight(layer)[~get_mask(layer)] == 0)
        assert torch.all(layer.weight.detach()[~get_mask(layer)] == 0)
    assert sparsity_report(m)["by_kind"]["shift"]["sparsity"] >= 0.5


def test_forward_is_masked_even_if_stored_weights_drift():
    m = _net()
    prune(m, 0.5, scope="layer")
    m.eval()
    x = torch.randn(2, 3, 4, 4)
    y = m(x)
    with torch.no_grad():  # what an optimizer step without apply_masks could do to pruned entries
        m[4].weight.masked_fill_(~get_mask(m[4]), 5.0)
        m[6].sign.masked_fill_(~get_mask(m[6]), 1.0)
    assert torch.equal(m(x), y)
    assert apply_masks(m) == 4
    assert torch.all(m[4].weight.detach()[~get_mask(m[4])] == 0) and torch.all(m[6].weight[~get_mask(m[6])] == 0)


def test_masks_are_in_state_dict_and_restored_into_a_fresh_model():
    m = _net()
    prune(m, 0.5)
    m.eval()
    x = torch.randn(2, 3, 4, 4)
    sd = m.state_dict()
    assert {k for k in sd if k.endswith("pruning.mask")} == {"2.shift.pruning.mask", "2.adder.pruning.mask",
                                                            "4.pruning.mask", "6.pruning.mask"}
    blob = st_save({k: v.contiguous() for k, v in sd.items()})  # the checkpoint format (safetensors)
    loaded = st_load(blob)
    fresh = _net(seed=1)
    with pytest.raises(RuntimeError, match="pruning.mask"):
        fresh.load_state_dict(loaded)
    assert restore_masks(fresh, loaded) == 4
    fresh.load_state_dict(loaded)
    fresh.eval()
    assert torch.equal(fresh(x), m(x))
    for a, b in zip(m.modules(), fresh.modules()):
        if get_mask(a) is not None:
            assert torch.equal(get_mask(a), get_mask(b))
    # fine-tuning the restored model keeps the pruned weights at zero
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    fresh.train()
    for _ in range(2):
        fresh(x).sum().backward()
        opt.step()
        apply_masks(fresh)
    assert torch.all(fresh[4].weight.detach()[~get_mask(fresh[4])] == 0)
    buf = io.BytesIO()
    torch.save(fresh.state_dict(), buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf)["4.pruning.mask"], get_mask(fresh[4]))


def test_restore_masks_rejects_mismatched_checkpoints():
    m = _net()
    prune(m, 0.5)
    sd = m.state_dict()
    with pytest.raises(CheckpointError, match="belongs to no layer"):
        restore_masks(nn.Sequential(nn.Linear(2, 2)), {"9.pruning.mask": sd["4.pruning.mask"]})
    with pytest.raises(CheckpointError, match="shape"):
        restore_masks(_net(), {"4.pruning.mask": torch.ones(3, dtype=torch.bool)})


def test_remove_pruning_keeps_zeros_and_drops_masks():
    m = _net()
    prune(m, 0.4)
    zeros = sparsity_report(m)["total"]["zeros"]
    assert remove_pruning(m) == 4
    assert not any(k.endswith("pruning.mask") for k in m.state_dict())
    assert sparsity_report(m)["total"]["zeros"] == zeros


# ----------------------------------------------------------------------------- reports, energy view, combos, errors
def test_sparsity_report_and_skipped_operations():
    m = _net()
    prune(m, 0.5, scope="layer", layer_types=("adder", "shift", "conv", "linear"))
    rep = sparsity_report(m)
    rows = {r["name"]: r for r in rep["layers"]}
    assert rows["0"]["kind"] == "conv" and rows["8"]["kind"] == "linear"
    assert rows["4"]["skipped_ops"] == 0.0 and rows["4"]["sparsity"] == 0.5
    assert rows["6"]["skipped_ops"] == rows["6"]["sparsity"] >= 0.5
    assert rows["0"]["skipped_ops"] == rows["0"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert not skipped_ops_mask(m[4]).any() and torch.equal(skipped_ops_mask(m[6]), effective_weight(m[6]) == 0)
    assert rep["total"]["weights"] == sum(r["weights"] for r in rep["layers"])
    text = format_sparsity_report(rep)
    assert "total" in text and "[adder]" in text


def test_pruning_and_quantization_compose():
    torch.manual_seed(0)
    layer = AdderLinear(8, 4)
    prune(layer, 0.5, layer_types=("adder",))
    quantize_model(layer, "fix8")
    x = torch.randn(5, 8)
    layer(x).sum().backward()
    assert torch.all(layer.weight.grad[~get_mask(layer)] == 0)
    assert [type(t).__name__ for t in layer.children()] == ["PruningMask", "LayerQuantizer"]


def test_errors():
    m = _net()
    for bad in (1.0, -0.1, "0.5", True):
        with pytest.raises(ValueError, match="ratio"):
            prune(m, bad)
    with pytest.raises(ValueError, match="method"):
        prune(m, 0.5, method="l2")
    with pytest.raises(ValueError, match="scope"):
        prune(m, 0.5, scope="net")
    with pytest.raises(ValueError, match="no layers"):
        prune(nn.Sequential(nn.Linear(2, 2)), 0.5)
