"""shiftadd.nas: search space, supernet weight sharing, Laplace regulariser, energy table, search, CLI."""
import json
import math

import numpy as np
import pytest
import torch

from shiftadd.cli import main
from shiftadd.errors import UserError
from shiftadd.models import create
from shiftadd.nas import (Architecture, BlockChoice, EnergyLookup, EvolutionConfig, PiecewiseLinearRemap,
                          SearchSpace, Supernet, evolutionary_search, laplace_w2_distance, pareto_search)
from shiftadd.nas.scoring import validation_split
from shiftadd.nas.sharing import laplace_quantiles
from shiftadd.train import make_config, recalibrate_batchnorm, train

SPACE = SearchSpace(depth=8, base_width=4)  # 3 blocks, 4 operators x 3 widths each
ATT_SPACE = SearchSpace(depth=14, base_width=4, attention=True)  # block 5 may also be an attention block


def _quiet(_msg):
    pass


@pytest.fixture(scope="module")
def tiny_data():
    """64 training / 40 test images of the embedded CIFAR subset at 8x8 (every 4th pixel)."""
    from shiftadd.data import ImageDataset, load_dataset

    tr, te = load_dataset("embedded", subset=64, seed=0)
    small = [ImageDataset(d.images[:, :, ::4, ::4].contiguous(), d.labels, d.classes) for d in (tr, te)]
    return small[0], small[1].subset(torch.arange(0, len(te), 25))


def _batches(n=2, size=16, res=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, res, res, generator=g), torch.zeros(size, dtype=torch.long)) for _ in range(n)]


# --------------------------------------------------------------------------- architecture and space
def test_sampling_covers_every_choice_of_every_block():
    rng = np.random.default_rng(0)
    seen = [set() for _ in range(SPACE.num_blocks)]
    for _ in range(300):
        a = SPACE.sample(rng)
        SPACE.validate(a)
        for s, b in zip(seen, a.blocks):
            s.add(b)
    assert all(s == set(SPACE.choices()) for s in seen) and len(SPACE.choices()) == 12


def test_mutation_and_crossover():
    rng = np.random.default_rng(1)
    a, b = SPACE.sample(rng), SPACE.sample(rng)
    assert SPACE.mutate(a, 0.0, rng) == a
    changed = [SPACE.mutate(a, 1.0, rng) != a for _ in range(20)]
    assert sum(changed) >= 15
    for _ in range(20):
        c = SPACE.crossover(a, b, rng)
        assert all(x in (y, z) for x, y, z in zip(c.blocks, a.blocks, b.blocks))
    big = SearchSpace(depth=20)
    kids = [big.crossover(Architecture.uniform("conv"), Architecture.uniform("adder"), rng) for _ in range(10)]
    assert any(set(k.ops) == {"conv", "adder"} for k in kids)


def test_architecture_round_trips_through_yaml_and_json(tmp_path):
    a = SPACE.sample(np.random.default_rng(2))
    for name in ("a.yaml", "a.json"):
        a.save(tmp_path / name)
        assert Architecture.load(tmp_path / name) == a
    assert Architecture.from_key(a.key()) == a
    assert str(a).startswith("hybrid-resnet8[") and a.blocks[0].op in str(a)
    assert Architecture.uniform("adder", 20).depth == 20 and len(Architecture.uniform("adder", 20).blocks) == 9


def test_bad_architectures_get_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("blocks:\n- {op: multiply}\n- {op: conv}\n- {op: conv}\n")
    with pytest.raises(UserError, match="unknown operator 'multiply'"):
        create("hybrid-resnet8", arch=str(bad))
    with pytest.raises(UserError, match="unknown operator 'multiply'"):
        SPACE.validate(Architecture.load(bad))
    with pytest.raises(UserError, match="has 9 blocks but hybrid-resnet8 needs 3"):
        create("hybrid-resnet8", arch=Architecture.uniform("conv", 20))
    with pytest.raises(UserError, match="3 stages"):
        Architecture.from_dict({"blocks": ["conv", "conv"]})
    with pytest.raises(UserError, match="width 0.3 is not one of"):
        SPACE.validate(Architecture((BlockChoice("conv", 0.3),) * 3))
    with pytest.raises(UserError, match="not found"):
        Architecture.load(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("blocks: [\n")
    with pytest.raises(UserError, match="cannot parse"):
        Architecture.load(broken)
    with pytest.raises(UserError, match="width must be a positive number"):
        Architecture.from_dict({"blocks": [{"op": "conv", "width": -1}] * 3})
    with pytest.raises(UserError, match="does not match"):
        Architecture.from_dict({"depth": 20, "blocks": ["conv"] * 3})


@pytest.mark.parametrize("op", ["conv", "adder", "shift-ps", "shiftadd"])
def test_uniform_hybrid_resnet_is_the_zoo_resnet(op):
    torch.manual_seed(3)
    hybrid = create("hybrid-resnet20", op=op)
    torch.manual_seed(3)
    plain = create("resnet20", op=op)
    a, b = hybrid.state_dict(), plain.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_width_multiplier_scales_only_the_inner_channels():
    a = Architecture((BlockChoice("conv", 0.5), BlockChoice("adder", 1.0), BlockChoice("shiftadd", 0.75)))
    m = create("hybrid-resnet8", arch=a)
    assert (m.layer1[0].conv1.out_channels, m.layer1[0].conv2.out_channels) == (8, 16)
    assert (m.layer3[0].conv1.out_channels, m.layer3[0].conv2.in_channels, m.layer3[0].conv2.out_channels) == (48, 48, 64)
    assert m(torch.randn(2, 3, 8, 8)).shape == (2, 10)


# --------------------------------------------------------------------------- supernet
@pytest.mark.parametrize("mode", ["separate", "shared", "heterogeneous"])
def test_sampled_subnet_equals_the_standalone_model(mode):
    torch.manual_seed(0)
    net = Supernet(SPACE, mode=mode)
    with torch.no_grad():  # a non-identity remap, so the adder really sees transformed weights
        for c in net.remapped_convs():
            c.remap.log_slopes.normal_(0, 0.5)
    rng = np.random.default_rng(4)
    x = torch.randn(3, 3, 8, 8)
    archs = [SPACE.sample(rng) for _ in range(4)] + [Architecture.uniform(op, 8) for op in SPACE.ops]
    for arch in archs:
        net.set_active(arch)
        recalibrate_batchnorm(net, _batches(), 32, torch.device("cpu"))
        net.eval()
        standalone = create("hybrid-resnet8", arch=arch.as_dict(), width=4)
        standalone.load_state_dict(net.subnet(arch).state_dict())
        standalone.eval()
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = net(xa), standalone(xb)
        assert ya.std() > 1e-3  # not a degenerate constant output
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
        ya.square().sum().backward()
        yb.square().sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)


def test_sharing_modes_differ_in_size_as_described():
    sizes = {m: sum(p.numel() for p in Supernet(SearchSpace(depth=20), mode=m).parameters())
             for m in ("separate", "shared", "heterogeneous")}
    assert sizes["separate"] > 2 * sizes["shared"]
    remap_params = sum(p.numel() for c in Supernet(SearchSpace(depth=20), mode="heterogeneous").remapped_convs()
                       for p in c.remap.parameters())
    assert sizes["heterogeneous"] == sizes["shared"] + remap_params


def test_shared_mode_really_shares_one_tensor():
    net = Supernet(SPACE, mode="shared")
    conv = net.blocks[0].conv1
    assert conv.full_weight("conv") is conv.full_weight("adder") is conv.full_weight("shift-ps")
    het = Supernet(SPACE, mode="heterogeneous").blocks[0].conv1
    with torch.no_grad():
        het.remap.log_slopes.copy_(torch.linspace(-0.5, 0.5, het.remap.num_bins))
    assert not torch.equal(het.full_weight("adder"), het.weight) and het.full_weight("conv") is het.weight


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_adaptive_lr_reaches_the_adder_branches_the_path_used(mode):
    """AdderNet's Eq. 8 rescales a supernet position's adder kernel on steps whose path ran it as an adder
    (and the shift-add adder half), and leaves conv / shift-ps steps alone."""
    from shiftadd.optim import scale_adder_gradients

    torch.manual_seed(0)
    net = Supernet(SPACE, mode=mode).train()
    x = torch.randn(4, 3, 8, 8)
    conv = net.blocks[0].conv1
    for ops in ("adder", "shiftadd", "conv", "shift-ps"):
        arch = Architecture(tuple(BlockChoice(ops, 1.0) for _ in range(SPACE.num_blocks)))
        net.zero_grad(set_to_none=True)
        net.run_path(x, arch).square().mean().backward()
        kernel = conv.weights["adder"] if mode == "separate" else conv.weight
        raw = {id(p): p.grad.clone() for p in (kernel, conv.shiftadd_adder) if p.grad is not None}
        scale_adder_gradients(net, eta=0.2)
        target = {"adder": kernel, "shiftadd": conv.shiftadd_adder}.get(ops)
        assert target is None or target.grad is not None
        for p in (kernel, conv.shiftadd_adder):
            if p.grad is None:
                continue
            if p is target:
                assert math.isclose(float(p.grad.norm()), 0.2 * math.sqrt(p.numel()), rel_tol=1e-4), ops
            else:  # not used as an adder kernel on this step: untouched
                assert torch.equal(p.grad, raw[id(p)]), ops
        assert conv.take_adder_parameters() == []  # the record is consumed by the step


def test_adaptive_lr_bounds_the_heterogeneous_remap_step():
    """The remap's slope logits are part of the adder weight's parametrisation, and the raw adder gradient is
    large (unnormalised, a real supernet run overflowed free exp() slopes): on an adder step Eq. 8 rescales
    them with the shared kernel, on a conv step they get no gradient at all."""
    from shiftadd.optim import scale_adder_gradients

    torch.manual_seed(0)
    net = Supernet(SPACE, mode="heterogeneous").train()
    conv = net.blocks[0].conv1
    with torch.no_grad():
        conv.weight.mul_(30.0)  # trained adder filters grow this far
    x = torch.randn(4, 3, 8, 8) * 3
    for op in ("adder", "conv"):
        net.zero_grad(set_to_none=True)
        net.run_path(x, Architecture(tuple(BlockChoice(op, 1.0) for _ in range(SPACE.num_blocks)))).sum().backward()
        g = conv.remap.log_slopes.grad
        if op == "conv":
            assert g is None or not bool(g.any())
            continue
        assert float(g.norm()) > 2 * 0.2 * math.sqrt(g.numel())  # raw: several times Eq. 8's step
        assert any(p is conv.remap.log_slopes for p in conv.take_adder_parameters())
        net.blocks[0].conv1._adder_ops_used.add("adder")  # take_... consumed the record: restore it
        scale_adder_gradients(net, eta=0.2)
        assert math.isclose(float(g.norm()), 0.2 * math.sqrt(g.numel()), rel_tol=1e-4)


def test_remap_propagates_a_non_finite_weight_instead_of_failing_on_the_bin_index():
    from shiftadd.nas.sharing import PiecewiseLinearRemap

    w = torch.tensor([0.5, float("nan"), -1.0])
    out = PiecewiseLinearRemap(4)(w)
    assert torch.isnan(out).all()  # r = max|w| is NaN too: everything NaN, caught by the trainer's guard


def test_path_sampling_is_the_same_on_every_rank_and_resumes_with_the_step():
    # two "ranks": same seed, different weights (different torch seeds) -> the same paths, no communication
    ranks = []
    for torch_seed in (0, 1):
        torch.manual_seed(torch_seed)
        ranks.append(Supernet(SPACE, mode="heterogeneous", seed=7).train())
    paths = [[r.sample_path(s) for s in range(30)] for r in ranks]
    assert paths[0] == paths[1] and len(set(a.key() for a in paths[0])) > 20
    other = Supernet(SPACE, seed=8)
    assert [other.sample_path(s) for s in range(30)] != paths[0]
    x = torch.randn(4, 3, 8, 8)
    for r in ranks:
        for _ in range(3):
            r(x)
    assert int(ranks[0].sample_step) == int(ranks[1].sample_step) == 3
    assert "sample_step" in ranks[0].state_dict()


def test_sandwich_trains_widest_and_narrowest_paths_with_distillation():
    torch.manual_seed(0)
    net = Supernet(SPACE, sandwich=True, reg_weight=0.0).train()
    big, small, _ = net._sandwich_paths(0)
    assert {b.width for b in big.blocks} == {1.0} and {b.width for b in small.blocks} == {0.5}
    out = net(torch.randn(4, 3, 8, 8))
    reg = net.regularization_loss()
    assert out.shape == (4, 10) and reg.item() > 0 and reg.requires_grad
    assert net.regularization_loss().item() == 0.0  # consumed once per step


def test_attention_is_a_choice_of_the_last_stage_only():
    assert [i for i in range(ATT_SPACE.num_blocks) if "attention" in ATT_SPACE.ops_at(i)] == [5]
    rng = np.random.default_rng(0)
    assert any(ATT_SPACE.sample(rng).blocks[5].op == "attention" for _ in range(60))
    early = Architecture((BlockChoice("attention"),) + (BlockChoice("conv"),) * 5)
    with pytest.raises(UserError, match="block 0 uses unknown operator 'attention'"):
        ATT_SPACE.validate(early)
    with pytest.raises(UserError, match="attention is only allowed"):
        create("hybrid-resnet14", arch=early)
    with pytest.raises(UserError, match="not an operator family"):
        SearchSpace(depth=14, ops=("conv", "attention"))
    late = Architecture((BlockChoice("conv"),) * 5 + (BlockChoice("attention", 0.5),))
    model = create("hybrid-resnet14", arch=late)
    assert type(model.layer3[1]).__name__ == "AttentionBlock" and model.layer3[1].q_weight.shape == (32, 64)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("mode", ["shared", "heterogeneous"])
def test_subnet_with_attention_equals_the_standalone_model(mode):
    torch.manual_seed(1)
    net = Supernet(ATT_SPACE, mode=mode)
    x = torch.randn(3, 3, 16, 16)
    rng = np.random.default_rng(2)
    archs = [Architecture(a.blocks[:5] + (BlockChoice("attention", w),))
             for a, w in zip([ATT_SPACE.sample(rng) for _ in range(3)], (0.5, 0.75, 1.0))]
    for arch in archs:
        net.set_active(arch)
        recalibrate_batchnorm(net, _batches(res=16), 32, torch.device("cpu"))
        net.eval()
        standalone = create("hybrid-resnet14", arch=arch, width=4)
        standalone.load_state_dict(net.subnet(arch).state_dict())
        torch.testing.assert_close(net(x), standalone.eval()(x), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- heterogeneous sharing
def test_remap_is_identity_at_init_monotone_and_differentiable():
    torch.manual_seed(0)
    remap = PiecewiseLinearRemap(8)
    w = torch.randn(500, dtype=torch.float64)
    torch.testing.assert_close(remap(w.float()), w.float())
    with torch.no_grad():
        remap.log_slopes.copy_(torch.linspace(-1, 1, 8))
    w = w.float().requires_grad_()
    t = remap(w)
    order = torch.argsort(w.detach())
    assert torch.all(torch.diff(t.detach()[order]) >= 0)  # monotone
    t.sum().backward()
    slopes = 8 * torch.softmax(remap.log_slopes.detach(), 0)
    r = w.detach().abs().max()
    ends = torch.stack([w.detach().argmin(), w.detach().argmax()])
    extreme = int(w.detach().abs().argmax())  # T(+-r) = +-r: the range is kept
    torch.testing.assert_close(t.detach()[extreme], w.detach()[extreme])
    assert bool((t.detach()[ends].abs() <= r + 1e-6).all())
    j = torch.floor((w.detach() + r) / (2 * r / 8)).clamp(0, 7).long()
    torch.testing.assert_close(w.grad, slopes[j])  # dT/dw = the slope of the weight's bin
    assert remap.log_slopes.grad.abs().sum() > 0
    # continuity at the bin edges
    edges = -r + torch.arange(1, 8) * (2 * r / 8)
    left, right = remap(edges - 1e-6), remap(edges + 1e-6)
    torch.testing.assert_close(left, right, atol=1e-4, rtol=0)


def test_laplace_regulariser_decreases_toward_a_laplacian():
    g = torch.Generator().manual_seed(0)
    n = 4000
    gauss = torch.sort(torch.randn(n, generator=g)).values
    lap = laplace_quantiles(n, torch.tensor(0.0), torch.tensor(1.0))  # an exact Laplacian, sorted
    values = [laplace_w2_distance((1 - t) * gauss + t * lap).item() for t in torch.linspace(0, 1, 6)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert values[-1] < 1e-5 and values[0] > 0.05
    sample = torch.distributions.Laplace(0.0, 1.0).sample((n,))
    assert laplace_w2_distance(sample) < 0.2 * values[0]  # a Laplace sample is close, a Gaussian is not
    uniform = torch.rand(n, generator=g) * 2 - 1
    assert laplace_w2_distance(uniform) > values[0]  # further from a Laplacian than a Gaussian is
    # scale-free: the shape is measured, not the size
    assert math.isclose(laplace_w2_distance(3 * gauss).item(), values[0], rel_tol=1e-4)


def test_laplace_regulariser_trains_the_remap_toward_a_laplacian():
    torch.manual_seed(0)
    remap = PiecewiseLinearRemap(16)
    w = torch.randn(2000)
    opt = torch.optim.Adam(remap.parameters(), lr=0.05)
    start = laplace_w2_distance(remap(w)).item()
    for _ in range(100):
        opt.zero_grad()
        loss = laplace_w2_distance(remap(w))
        loss.backward()
        opt.step()
    assert laplace_w2_distance(remap(w)).item() < 0.1 * start


@pytest.mark.parametrize("w", [torch.zeros(50), torch.full((50,), 0.7), torch.tensor([1.5])])
def test_laplace_regulariser_is_zero_gradient_safe(w):
    w = w.clone().requires_grad_()
    d = laplace_w2_distance(w)
    d.backward()
    assert d.item() == 0.0 and torch.isfinite(w.grad).all() and w.grad.abs().sum() == 0
    remap = PiecewiseLinearRemap(4)
    v = torch.zeros(10, requires_grad=True)
    laplace_w2_distance(remap(v)).backward()
    assert torch.isfinite(v.grad).all() and torch.isfinite(remap.log_slopes.grad).all()


def test_heterogeneous_regulariser_reaches_shared_weights_and_remaps():
    torch.manual_seed(0)
    net = Supernet(SPACE, mode="heterogeneous", reg_weight=1.0)
    loss = net.regularization_loss()
    loss.backward()
    conv = net.blocks[1].conv1
    assert loss.item() > 0 and conv.weight.grad.abs().sum() > 0 and conv.remap.log_slopes.grad.abs().sum() > 0
    assert Supernet(SPACE, mode="shared").regularization_loss().item() == 0.0


# --------------------------------------------------------------------------- energy table
@pytest.mark.parametrize("platform,fmt,memory", [("asic45nm", "fp32", "sram"), ("fpga_zc706", "fix16", None)])
def test_energy_table_equals_the_profile_of_the_built_model(platform, fmt, memory):
    from shiftadd.energy import profile

    lookup = EnergyLookup(SPACE, platform, fmt, memory, image_size=16)
    rng = np.random.default_rng(5)
    for arch in [SPACE.sample(rng) for _ in range(5)] + [lookup.extreme(True), lookup.extreme(False)]:
        model = create("hybrid-resnet8", arch=arch, width=4)
        p = profile(model, (1, 3, 16, 16), platform=platform, fmt=fmt, memory=memory)
        assert math.isclose(lookup.energy_pj(arch), p.total_pj, rel_tol=1e-9)
        assert lookup.params(arch) == sum(t.numel() for t in model.parameters())
    cheap, dear = lookup.energy_uj(lookup.extreme(True)), lookup.energy_uj(lookup.extreme(False))
    assert all(cheap <= lookup.energy_uj(SPACE.sample(rng)) <= dear for _ in range(20))
    rows = lookup.breakdown(arch)
    assert math.isclose(sum(r["share"] for r in rows), 1.0) and len(rows) == 1 + SPACE.num_blocks


def test_energy_table_with_attention_equals_the_profile():
    from shiftadd.energy import profile

    lookup = EnergyLookup(ATT_SPACE, image_size=16)
    rng = np.random.default_rng(6)
    for arch in [Architecture(ATT_SPACE.sample(rng).blocks[:5] + (BlockChoice("attention", 0.75),)) for _ in range(3)]:
        model = create("hybrid-resnet14", arch=arch, width=4)
        assert math.isclose(lookup.energy_pj(arch), profile(model, (1, 3, 16, 16)).total_pj, rel_tol=1e-9)
    att = lookup.block_pj[5]["attention@1"]
    assert att > 0 and lookup.block_params[5]["attention@1"] == 4 * 16 * 16 + 2 * 16


def test_energy_table_cache(tmp_path):
    path = str(tmp_path / "e.json")
    a = EnergyLookup.cached(path, SPACE, "asic45nm", "fp32", "sram", 16)
    b = EnergyLookup.cached(path, SPACE, "asic45nm", "fp32", "sram", 16)  # loaded
    arch = SPACE.sample(np.random.default_rng(0))
    assert b.energy_pj(arch) == a.energy_pj(arch) and b.params(arch) == a.params(arch)
    c = EnergyLookup.cached(path, SPACE, "asic45nm", "fix8", "sram", 16)  # other settings: recounted
    assert c.energy_pj(arch) < a.energy_pj(arch)


# --------------------------------------------------------------------------- search
def _fake_score(arch):
    """A deterministic stand-in for validation accuracy: prefers conv and wide blocks."""
    gain = {"conv": 1.0, "shiftadd": 0.6, "adder": 0.5, "shift-ps": 0.3}
    return sum(gain[b.op] * b.width for b in arch.blocks) / len(arch.blocks)


@pytest.fixture(scope="module")
def lookup():
    return EnergyLookup(SearchSpace(depth=14, base_width=4), "asic45nm", "fp32", "sram", image_size=16)


def _cfg(**kw):
    base = dict(population=12, parents=4, mutations=6, crossovers=6, generations=5, seed=3)
    base.update(kw)
    return EvolutionConfig(**base)


def test_search_respects_the_energy_budget(lookup):
    space = lookup.space
    low, high = lookup.energy_uj(lookup.extreme(True)), lookup.energy_uj(lookup.extreme(False))
    budget = low + 0.3 * (high - low)
    state = evolutionary_search(space, _fake_score, lookup, _cfg(energy_budget_uj=budget), log=_quiet)
    assert all(lookup.energy_uj(Architecture.from_key(k)) <= budget for k in state["scores"])
    assert state["best"]["energy_uj"] <= budget and state["best"]["score"] == max(state["scores"].values())
    free = evolutionary_search(space, _fake_score, lookup, _cfg(), log=_quiet)
    assert free["best"]["score"] > state["best"]["score"]  # the budget binds
    assert free["history"][-1]["best"]["score"] >= free["history"][0]["best"]["score"]
    params = lookup.params(lookup.extreme(True)) * 1.2
    capped = evolutionary_search(space, _fake_score, lookup, _cfg(max_params=int(params)), log=_quiet)
    assert all(lookup.params(Architecture.from_key(k)) <= params for k in capped["scores"])
    with pytest.raises(UserError, match="below the cheapest network"):
        evolutionary_search(space, _fake_score, lookup, _cfg(energy_budget_uj=0.5 * low), log=_quiet)
    # a budget so tight that random sampling almost never fits: filled around the cheapest network
    tight = low * 1.2
    rng = np.random.default_rng(0)
    assert sum(lookup.energy_uj(space.sample(rng)) <= tight for _ in range(500)) == 0
    narrow = evolutionary_search(space, _fake_score, lookup, _cfg(energy_budget_uj=tight), log=_quiet)
    assert len(narrow["scores"]) > 1 and all(lookup.energy_uj(Architecture.from_key(k)) <= tight
                                             for k in narrow["scores"])


def test_search_resume_is_exact(tmp_path, lookup):
    cfg = _cfg(energy_budget_uj=lookup.energy_uj(lookup.extreme(False)) * 0.8)
    full = evolutionary_search(lookup.space, _fake_score, lookup, cfg, str(tmp_path / "full.json"), log=_quiet)
    cut = str(tmp_path / "cut.json")
    part = evolutionary_search(lookup.space, _fake_score, lookup, cfg, cut, stop_after=2, log=_quiet)
    assert part["generation"] == 2 and not part["done"] and "best" not in part
    resumed = evolutionary_search(lookup.space, _fake_score, lookup, cfg, cut, log=_quiet)
    for key in ("population", "parents", "scores", "history", "best", "rng"):
        assert resumed[key] == full[key], key
    assert json.load(open(cut))["done"]
    with pytest.raises(UserError, match="other settings"):
        evolutionary_search(lookup.space, _fake_score, lookup, _cfg(seed=9), cut, log=_quiet)


def test_pareto_search_with_a_shared_journal_storage(tmp_path, lookup):
    pytest.importorskip("optuna")
    storage = str(tmp_path / "study.log")
    res = pareto_search(lookup.space, _fake_score, lookup, trials=16, seed=0, storage=storage, population=6,
                        log=_quiet)
    front = res["pareto_front"]
    assert res["trials"] == 16 and front
    for a in front:  # nobody on the front is dominated by another front member
        assert not any(b["score"] >= a["score"] and b["energy_uj"] < a["energy_uj"] for b in front)
    again = pareto_search(lookup.space, _fake_score, lookup, trials=20, seed=1, storage=storage, population=6,
                          log=_quiet)  # a second worker on the same study adds only the missing trials
    assert again["trials"] == 20


# --------------------------------------------------------------------------- training through the trainer
def _supernet_cfg(epochs):
    return make_config("shiftaddnet", model="supernet-resnet8", dataset="embedded", epochs=epochs, batch_size=16,
                       test_batch_size=50, augment=True, progress=False, threads=1, milestones=[0.5],
                       model_options={"mode": "heterogeneous", "width": 2, "widths": [0.5, 1.0], "seed": 1})


def test_supernet_training_resume_is_exact(tmp_path, tiny_data):
    train_part, val_part = validation_split(tiny_data[0], 16, seed=0)
    data = (train_part, val_part)
    full = train(_supernet_cfg(2), str(tmp_path / "full"), data=data, log=_quiet)
    train(_supernet_cfg(1), str(tmp_path / "cut"), data=data, log=_quiet)
    resumed = train(_supernet_cfg(2), str(tmp_path / "cut"), resume=True, data=data, log=_quiet)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert int(a["sample_step"]) == 2 * 3  # 48 images, batch 16: one path per step
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]
    # evaluation ran on freshly estimated statistics of the evaluated (active) path only: the other
    # paths' BatchNorms were reset by the recalibration, the active path's hold its own statistics
    active = full.model.active.blocks[0]
    bns = full.model.blocks[0].bn1
    key = f"{active.op}-w{int(round(active.width * 1000))}"
    assert all(torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean)) for k, bn in bns.items() if k != key)
    assert not torch.equal(bns[key].running_mean, torch.zeros_like(bns[key].running_mean))


def test_validation_split_is_balanced_disjoint_and_seeded(tiny_data):
    tr = tiny_data[0]
    a_train, a_val = validation_split(tr, 20, seed=0)
    b_train, b_val = validation_split(tr, 20, seed=0)
    assert torch.equal(a_val.images, b_val.images) and len(a_val) == 20 and len(a_train) == len(tr) - 20
    assert max(a_val.class_counts()) - min(a_val.class_counts()) <= 1
    both = torch.cat([a_train.images.flatten(1), a_val.images.flatten(1)])
    assert torch.unique(both, dim=0).shape[0] == torch.unique(tr.images.flatten(1), dim=0).shape[0]
    with pytest.raises(UserError, match="validation size"):
        validation_split(tr, len(tr), seed=0)


# --------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def supernet_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("nas") / "super")
    assert main(["nas", "supernet", "--out", out, "--depth", "8", "--base-width", "2", "--widths", "0.5,1",
                 "--dataset", "embedded", "--subset", "60", "--val-size", "20", "--epochs", "1",
                 "--batch-size", "20", "--threads", "1", "--no-progress"]) == 0
    return out


def test_cli_supernet_search_show_and_retrain(supernet_run, tmp_path, capsys):
    arch = str(tmp_path / "best.yaml")
    args = ["nas", "search", supernet_run, "--population", "4", "--parents", "2", "--mutations", "2",
            "--crossovers", "2", "--generations", "2", "--recal-images", "20", "--threads", "1"]
    assert main(args + ["--stop-after", "1"]) == 0
    assert "stopped after generation 1" in capsys.readouterr().out
    assert main(args + ["--save-arch", arch]) == 0  # resumes the saved search
    out = capsys.readouterr().out
    assert "resuming search" in out and "best: hybrid-resnet8[" in out
    found = Architecture.load(arch)
    assert set(found.ops) <= {"conv", "adder", "shift-ps", "shiftadd"}
    assert main(["nas", "show", arch, "--base-width", "2"]) == 0
    table = capsys.readouterr().out
    assert "stem+classifier" in table and "share" in table and found.blocks[0].op in table
    # the same supernet searched over multiplication-free operators at full width only
    free = str(tmp_path / "free.yaml")
    assert main(args + ["--ops", "adder,shift-ps", "--widths", "1", "--generations", "1", "--save-arch", free]) == 0
    assert "narrowed space" in capsys.readouterr().out
    assert set(Architecture.load(free).ops) <= {"adder", "shift-ps"}
    assert {b.width for b in Architecture.load(free).blocks} == {1.0}
    pareto = str(tmp_path / "pareto.json")
    assert main(["nas", "search", supernet_run, "--multi-objective", "--trials", "4", "--population", "2",
                 "--storage", str(tmp_path / "study.log"), "--recal-images", "20", "--out", pareto]) == 0
    front = json.load(open(pareto))["pareto_front"]
    assert front and "Pareto front of" in capsys.readouterr().out
    assert all(Architecture.from_key(r["arch"]).depth == 8 for r in front)
    assert main(["train", "--model", "hybrid-resnet8", "-O", f"arch={arch}", "-O", "width=2", "--dataset",
                 "embedded", "--subset", "20", "--test-subset", "20", "--epochs", "1", "--batch-size", "10",
                 "--out", str(tmp_path / "retrain"), "--no-progress", "--threads", "1"]) == 0


def test_cli_errors_exit_2_with_one_line(supernet_run, tmp_path, capsys):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("blocks: [{op: conv}, {op: multiply}, {op: conv}]\n")
    wrong_count = tmp_path / "count.yaml"
    Architecture.uniform("conv", 20).save(wrong_count)
    cases = [
        (["nas", "show", str(unknown)], "unknown operator 'multiply'"),
        (["nas", "search", supernet_run, "--energy-budget", "1e-6"], "below the cheapest network"),
        (["train", "--model", "hybrid-resnet8", "-O", f"arch={wrong_count}", "--dataset", "embedded",
          "--subset", "20", "--epochs", "1", "--out", str(tmp_path / "r"), "--no-progress"],
         "has 9 blocks but hybrid-resnet8 needs 3"),
        (["nas", "search", str(tmp_path)], "not a supernet run"),
        (["nas", "supernet", "--out", str(tmp_path / "s"), "--mode", "mixed"], "unknown sharing mode"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_two_process_supernet_training_matches_one_process(one_and_two_processes):
    """torchrun --nproc_per_node 2 (gloo): every rank samples the same paths; the result is the 1-process one."""
    args = ["train", "--model", "supernet-resnet8", "-O", "width=2", "-O", "widths=[0.5,1.0]", "-O", "seed=3",
            "--dataset", "embedded", "--subset", "64", "--test-subset", "100", "--epochs", "1", "--batch-size", "16",
            "--threads", "1", "--device", "cpu", "--no-progress"]
    a, b = one_and_two_processes(args)
    assert b.meta["world_size"] == 2 and int(a.model_state["sample_step"]) == int(b.model_state["sample_step"]) == 4
    assert b.meta["history"][0]["train_loss"] == pytest.approx(a.meta["history"][0]["train_loss"], rel=1e-3)
    for k, v in a.model_state.items():
        if v.is_floating_point():
            torch.testing.assert_close(b.model_state[k], v, rtol=2e-2, atol=2e-2, msg=k)
