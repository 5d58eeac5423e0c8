"""shiftadd.nas for Transformers: search space, SuperTransformer sharing, energy per sentence, search, CLI."""
import gzip
import json

import numpy as np
import pytest
import torch

from shiftadd.cli import main
from shiftadd.decode import beam_search, greedy_decode
from shiftadd.errors import UserError
from shiftadd.models import create
from shiftadd.models.transformer import TransformerConfig, TransformerSeq2Seq, preset_config
from shiftadd.nas import (EvolutionConfig, LayerChoice, SuperTransformer, TransformerArchitecture,
                          TransformerEnergyLookup, TransformerSearchSpace, evolutionary_search, pareto_search)
from shiftadd.nas.transformer_space import DECODER_BLOCKS, ENCODER_BLOCKS

V = 40
#: 2 encoder layers, 1-2 decoder layers, two widths of everything, both linear-layer families
SPACE = TransformerSearchSpace(embed_dims=(8, 16), ffn_dims=(8, 16), heads=(2, 4), encoder_layers=2,
                               decoder_layers=(1, 2), ops=("conv", "shift-ps"), kernel_sizes=(3, 5))
#: the same with pure lightweight decoder layers and no GLU: the fully multiplication-free network is in it
FREE_SPACE = TransformerSearchSpace(embed_dims=(8, 16), ffn_dims=(8, 16), heads=(2, 4), encoder_layers=2,
                                    decoder_layers=(1, 2), decoder_blocks=ENCODER_BLOCKS, ops=("conv", "shift-ps"),
                                    glu=False, kernel_sizes=(3, 5))
#: a part of SPACE with fewer choices per layer (quick to price completely)
SMALL = TransformerSearchSpace(embed_dims=(8, 16), ffn_dims=(8, 16), heads=(2,), encoder_layers=2,
                               decoder_layers=(1, 2), encoder_blocks=("lightweight-adder", "attention+lightweight"),
                               decoder_blocks=("attention", "attention+lightweight-shiftadd"),
                               ops=("conv", "shift-ps"), kernel_sizes=(3, 5))


def _tokens(seed=0, batch=3, s=7, t=6):
    g = torch.Generator().manual_seed(seed)
    src, tgt = torch.randint(4, V, (batch, s), generator=g), torch.randint(4, V, (batch, t), generator=g)
    src[0, -2:] = 0  # padding in the source
    tgt[0, 0] = tgt[1, 0] = 1
    return src, tgt


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    st = SuperTransformer(SPACE, V, dropout=0.0, max_positions=32)
    with torch.no_grad():  # break the symmetry of the freshly initialised biases / norms
        for p in st.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return st


# --------------------------------------------------------------------------- per-layer config
def test_transformer_config_takes_per_layer_dims_heads_and_ops():
    cfg = TransformerConfig(vocab_size=V, embed_dim=8, encoder_blocks=("attention", "lightweight"),
                            decoder_blocks=("attention",), encoder_ffn_dims=(8, 24), encoder_heads=(2, 4),
                            encoder_ops=("conv", "shift-ps"), decoder_ffn_dims=(12,), kernel_sizes=(3, 5))
    net = TransformerSeq2Seq(cfg)
    assert net.encoder[0].ffn.fc1.out_features == 8 and net.encoder[1].ffn.fc1.out_features == 24
    assert net.encoder[0].mixer.heads == 2 and net.encoder[1].mixer.conv.heads == 4
    assert type(net.encoder[1].ffn.fc1).__name__ == "ShiftLinear" and type(net.encoder[0].ffn.fc1).__name__ == "Linear"
    assert net.decoder[0].ffn.fc1.out_features == 12 and net.decoder[0].cross.heads == cfg.heads
    with pytest.raises(ValueError, match="2 entries for 1 decoder"):
        TransformerConfig(vocab_size=V, decoder_blocks=("attention",), decoder_heads=(2, 4))
    with pytest.raises(ValueError, match="divide"):
        TransformerConfig(vocab_size=V, embed_dim=8, encoder_blocks=("attention",), encoder_heads=(3,))


# --------------------------------------------------------------------------- space and architecture
def test_sampling_covers_every_choice_and_stays_in_the_space():
    rng = np.random.default_rng(0)
    seen = {"embed": set(), "dec": set(), "encoder": set(), "decoder": set()}
    for _ in range(400):
        a = SPACE.validate(SPACE.sample(rng))
        seen["embed"].add(a.embed_dim)
        seen["dec"].add(len(a.decoder))
        for side, _, c in a.layers:
            seen[side].add(c)
    assert seen["embed"] == {8, 16} and seen["dec"] == {1, 2}
    assert seen["encoder"] == set(SPACE.layer_choices("encoder")) and len(seen["encoder"]) == 7 * 8
    assert seen["decoder"] == set(SPACE.layer_choices("decoder")) and len(seen["decoder"]) == 4 * 8
    assert SPACE.size() == 2 * 56 ** 2 * (32 + 32 ** 2)


def test_mutation_and_crossover_stay_in_the_space():
    rng = np.random.default_rng(1)
    a, b = SPACE.sample(rng), SPACE.sample(rng)
    assert SPACE.mutate(a, 0.0, rng) == a
    assert sum(SPACE.mutate(a, 1.0, rng) != a for _ in range(20)) >= 18
    for _ in range(30):
        SPACE.validate(SPACE.mutate(a, 0.5, rng))
        c = SPACE.validate(SPACE.crossover(a, b, rng))
        assert c.embed_dim in (a.embed_dim, b.embed_dim) and len(c.decoder) in (len(a.decoder), len(b.decoder))
        assert all(x in (y, z) for x, y, z in zip(c.encoder, a.encoder, b.encoder))
        for i, layer in enumerate(c.decoder):
            assert layer in [p.decoder[i] for p in (a, b) if i < len(p.decoder)]


def test_architecture_files_round_trip_and_bad_input_is_one_line(tmp_path):
    a = SPACE.sample(np.random.default_rng(3))
    for name in ("a.yaml", "a.json"):
        a.save(tmp_path / name)
        assert TransformerArchitecture.load(tmp_path / name) == a
    assert TransformerArchitecture.from_key(a.key()) == a and "enc" in str(a)
    assert TransformerSearchSpace.from_dict(json.loads(json.dumps(SPACE.as_dict()))) == SPACE
    good = a.as_dict()
    bad = [({**good, "depth": 3}, "unknown key"), ({**good, "embed_dim": -8}, "positive integer"),
           ({**good, "encoder": [{"block": "magic", "ffn_dim": 8, "heads": 2}]}, "magic"),
           ({**good, "encoder": [{"block": "attention", "ffn_dim": 8, "heads": 2, "op": "nope"}]}, "nope")]
    for data, msg in bad:
        with pytest.raises(UserError, match=msg):
            TransformerArchitecture.from_dict(data)
    wrong = TransformerArchitecture(8, (LayerChoice("attention", 32, 2),) * 2, (LayerChoice("attention", 8, 2),),
                                    (3, 5))
    with pytest.raises(UserError, match="ffn_dim 32"):
        SPACE.validate(wrong)
    with pytest.raises(UserError, match="divide"):
        TransformerSearchSpace(embed_dims=(8, 12), heads=(8,), encoder_layers=1, decoder_layers=(1,))


def _structure(net):
    return [(n, type(m).__name__) for n, m in net.named_modules()], {k: tuple(v.shape) for k, v in
                                                                      net.state_dict().items()}


def test_the_space_holds_the_all_attention_and_the_multiplication_free_extremes():
    attention = TransformerArchitecture(16, (LayerChoice("attention", 16, 4),) * 2,
                                        (LayerChoice("attention", 16, 4),) * 2, (3, 5), False)
    free = TransformerArchitecture(16, (LayerChoice("lightweight-shiftadd", 16, 4, "shift-ps"),) * 2,
                                   (LayerChoice("lightweight-shiftadd", 16, 4, "shift-ps"),) * 2, (3, 5), False)
    FREE_SPACE.validate(attention)
    FREE_SPACE.validate(free)
    assert free.multiplication_free() and not attention.multiplication_free()
    # the same networks as the hand-designed presets of the sequence models (independently configured)
    sizes = dict(embed_dim=16, ffn_dim=16, heads=4, kernel_sizes=(3, 5))
    for arch, preset in ((attention, "transformer"), (free, "multiplication-free")):
        torch.manual_seed(0)
        ours = TransformerSeq2Seq(arch.to_config(V))
        torch.manual_seed(0)
        ref = TransformerSeq2Seq(preset_config(preset, V, 2, **sizes))
        assert _structure(ours) == _structure(ref)
        src, tgt = _tokens()
        assert torch.equal(ours.eval()(src, tgt), ref.eval()(src, tgt))
        # and back: a preset's architecture, found in the space (the all-attention preset keeps the
        # config's default glu/kernels, which shape no layer of it)
        found = TransformerArchitecture.from_config(ref.cfg)
        assert FREE_SPACE.member(found) == arch
    assert TransformerArchitecture.from_config(attention.to_config(V)) == attention
    with pytest.raises(UserError, match="one op for both"):
        TransformerArchitecture.from_config(preset_config("transformer", V, 2, ffn_op="shift-ps"))
    with pytest.raises(UserError, match="embed_dim 32"):
        FREE_SPACE.member(TransformerArchitecture.from_config(preset_config("transformer", V, 2, embed_dim=32)))
    # the default decoder choices keep attention in every decoder layer (ShiftAddNAS); the encoder can be free
    assert set(SPACE.decoder_blocks) == set(DECODER_BLOCKS) and "lightweight-shiftadd" not in SPACE.decoder_blocks
    # the energy model counts no multiplication in a multiplication-free layer
    lookup = TransformerEnergyLookup(FREE_SPACE, V, tokens=5)
    from shiftadd.energy import count_ops
    from shiftadd.models.transformer import EncoderLayer

    layer = EncoderLayer(free.to_config(V), 0)
    counts = count_ops(layer.ffn, (1, 5, 16)).inference()
    assert counts.get("mult", 0) == 0 and counts.get("shift", 0) > 0
    assert lookup.energy_uj(free) < lookup.energy_uj(attention)


# --------------------------------------------------------------------------- SuperTransformer sharing
@pytest.mark.parametrize("seed", range(6))
def test_sub_transformer_equals_the_standalone_model_with_sliced_weights(supernet, seed):
    arch = SPACE.sample(np.random.default_rng(100 + seed))
    supernet.eval().set_active(arch)
    sub = supernet.subnet(arch).eval()
    assert isinstance(sub, TransformerSeq2Seq)
    src, tgt = _tokens(seed)
    torch.testing.assert_close(supernet(src, tgt), sub(src, tgt), rtol=0, atol=1e-6)
    # incremental decoding through the supernet: one token at a time == the full prefix at once
    memory, mask = supernet.encode(src)
    full = supernet.decode(tgt, memory, mask)
    state, steps = {}, []
    for t in range(tgt.shape[1]):
        steps.append(supernet.decode(tgt[:, t:t + 1], memory, mask, state))
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-5)
    sub_memory, sub_mask = sub.encode(src)
    sub_state = {}
    sub_steps = [sub.decode(tgt[:, t:t + 1], sub_memory, sub_mask, sub_state) for t in range(tgt.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), torch.cat(sub_steps, 1), rtol=0, atol=1e-6)
    assert greedy_decode(supernet, src, max_len=6) == greedy_decode(sub, src, max_len=6)
    assert beam_search(supernet, src, 2, max_len=5) == beam_search(sub, src, 2, max_len=5)


def test_sub_transformer_weights_are_the_leading_slices(supernet):
    a = TransformerArchitecture(8, (LayerChoice("lightweight", 8, 2), LayerChoice("attention+lightweight-adder", 8, 2)),
                                (LayerChoice("attention", 8, 2),), (3, 5))
    sub = supernet.subnet(a)
    big = supernet.encoder[0].mixers["lightweight@conv"]
    assert torch.equal(sub.embed.weight, supernet.embed.weight[:, :8])
    assert torch.equal(sub.encoder[0].ffn.fc1.weight, supernet.encoder[0].ffns["conv"].fc1.weight[:8, :8])
    assert torch.equal(sub.encoder[0].mix_res.norm.weight, supernet.encoder[0].mix_res.norm.weight[:8])
    # GLU input projection (C -> 2C): value rows and gate rows sliced separately (16 = the widest C)
    w, b = big.in_proj.weight, sub.encoder[0].mixer.in_proj.weight
    assert torch.equal(b[:8], w[:8, :8]) and torch.equal(b[8:], w[16:24, :8])
    assert torch.equal(sub.encoder[0].mixer.conv.weight, big.conv.weight[:2])  # 2 of 4 head kernels
    two = supernet.encoder[1].mixers["attention+lightweight-adder@conv"]
    assert torch.equal(sub.encoder[1].mixer.attention.q_proj.weight, two.attention.q_proj.weight[:4, :4])
    assert torch.equal(sub.decoder[0].cross.k_proj.weight, supernet.decoder[0].crosses["conv"].k_proj.weight[:8, :8])


def test_training_samples_one_path_per_step_and_grads_reach_only_its_slices():
    torch.manual_seed(1)
    st = SuperTransformer(SPACE, V, seed=5)
    st.train()
    src, tgt = _tokens()
    step = int(st.sample_step)
    path = st.sample_path(step)
    assert path == SPACE.sample(np.random.default_rng([5, step]))
    out = st(src, tgt)
    assert int(st.sample_step) == step + 1 and "sample_step" in st.state_dict()
    assert out.shape == (3, 6, V)
    (out.sum() + st.regularization_loss()).backward()
    g = st.embed.weight.grad
    assert g[:, :path.embed_dim].abs().sum() > 0 and torch.all(g[:, path.embed_dim:] == 0)
    assert all(p.grad is not None for p in st.parameters())  # zero for the unused branches (DDP)
    c = path.encoder[0]
    unused = [k for k in st.encoder[0].mixers if k != f"{c.block}@{c.op}"]
    assert all(p.grad.abs().sum() == 0 for k in unused for p in st.encoder[0].mixers[k].parameters())


def test_supertransformer_is_a_zoo_model_and_checks_options():
    st = create("supertransformer", vocab_size=V, space=SPACE.as_dict(), seed=2, dropout=0.0)
    assert isinstance(st, SuperTransformer) and st.space == SPACE and st.seed == 2
    with pytest.raises(UserError, match="unknown SuperTransformer option"):
        create("supertransformer", vocab_size=V, space=SPACE.as_dict(), bogus=1)
    arch = SPACE.sample(np.random.default_rng(0))
    net = create("transformer-seq", vocab_size=V, arch=arch.as_dict())
    assert _structure(net)[1] == _structure(TransformerSeq2Seq(arch.to_config(V)))[1]
    with pytest.raises(UserError, match="not both"):
        create("transformer-seq", vocab_size=V, arch=arch.as_dict(), preset="lightweight")


# --------------------------------------------------------------------------- energy and search
@pytest.mark.parametrize("seed", range(3))
def test_energy_table_sums_to_the_count_of_the_whole_model(seed):
    lookup = TransformerEnergyLookup(SPACE, V, tokens=5)
    arch = SPACE.sample(np.random.default_rng(seed))
    assert lookup.energy_pj(arch) == pytest.approx(lookup.whole_model_pj(arch), rel=1e-9)
    assert lookup.params(arch) == sum(p.numel() for p in lookup.build(arch).parameters())


def _score(supernet):
    src, tgt = _tokens(7)

    @torch.no_grad()
    def score(arch):  # minus the loss of the inherited sub-network on fixed tokens (a stand-in for the val split)
        logits = supernet.eval().set_active(arch)(src, tgt[:, :-1])
        return -float(torch.nn.functional.cross_entropy(logits.reshape(-1, V), tgt[:, 1:].reshape(-1)))
    return score


def test_search_respects_the_energy_budget_and_resumes_exactly(supernet, tmp_path):
    lookup = TransformerEnergyLookup(SMALL, V, tokens=5)
    low = lookup.energy_uj(lookup.extreme(True))
    high = lookup.energy_uj(lookup.extreme(False))
    budget = low + 0.3 * (high - low)
    cfg = dict(population=8, parents=3, mutations=4, crossovers=4, generations=3, energy_budget_uj=budget, seed=4)
    full = evolutionary_search(SMALL, _score(supernet), lookup, EvolutionConfig(**cfg), str(tmp_path / "a.json"),
                               log=lambda *_: None)
    keys = set(full["scores"])
    assert len(keys) > 8 and all(lookup.energy_uj(SMALL.from_key(k)) <= budget for k in keys)
    assert max(lookup.energy_uj(SMALL.sample(np.random.default_rng(i))) for i in range(20)) > budget  # it binds
    assert full["best"]["energy_uj"] <= budget
    part = str(tmp_path / "b.json")
    first = evolutionary_search(SMALL, _score(supernet), lookup, EvolutionConfig(**cfg), part, stop_after=1,
                                log=lambda *_: None)
    assert not first["done"] and first["generation"] == 1
    resumed = evolutionary_search(SMALL, _score(supernet), lookup, EvolutionConfig(**cfg), part, log=lambda *_: None)
    assert resumed["best"] == full["best"] and resumed["history"] == full["history"]
    with pytest.raises(UserError, match="below the cheapest"):
        lookup.check_budget(low * 0.5)


def test_a_search_narrowed_to_multiplication_based_blocks_uses_the_same_supernet_and_table(supernet, tmp_path):
    from shiftadd.nas.space import restrict_space

    lookup = TransformerEnergyLookup(SMALL, V, tokens=5)
    mult = restrict_space(SMALL, encoder_blocks=["attention+lightweight"], decoder_blocks=["attention"], ops=["conv"])
    assert mult.embed_dims == SMALL.embed_dims and mult.size() < SMALL.size()
    narrow = lookup.narrowed(mult)
    assert narrow.settings() == lookup.settings() and narrow.entries is lookup.entries  # one table, one cache
    low_full, low_mult = lookup.energy_uj(lookup.extreme(True)), narrow.energy_uj(narrow.extreme(True))
    assert low_mult > low_full  # the cheapest network of the narrowed space is dearer
    budget = low_mult * 1.2
    cfg = EvolutionConfig(population=6, parents=2, mutations=3, crossovers=3, generations=2, energy_budget_uj=budget,
                          seed=1)
    state = evolutionary_search(mult, _score(supernet), narrow, cfg, str(tmp_path / "s.json"), log=lambda *_: None)
    archs = [SMALL.from_key(k) for k in state["scores"]]
    assert archs and all(c.block in ("attention+lightweight", "attention") and c.op == "conv"
                         for a in archs for _, _, c in a.layers)
    assert all(lookup.energy_uj(a) <= budget for a in archs)
    with pytest.raises(UserError, match="below the cheapest"):
        narrow.check_budget((low_full + low_mult) / 2)  # fits the full space, not the narrowed one
    with pytest.raises(UserError, match="not a non-empty subset"):
        restrict_space(SMALL, encoder_blocks=["lightweight"])
    with pytest.raises(UserError, match="no choice list"):
        restrict_space(SMALL, widths=[0.5])


def test_pareto_search_over_the_transformer_space(supernet):
    pytest.importorskip("optuna")
    lookup = TransformerEnergyLookup(SMALL, V, tokens=5)
    res = pareto_search(SMALL, _score(supernet), lookup, trials=6, seed=0, population=4, log=lambda *_: None)
    assert res["trials"] == 6 and res["pareto_front"]
    energies = [r["energy_uj"] for r in res["pareto_front"]]
    assert energies == sorted(energies)
    for r in res["pareto_front"]:
        SMALL.validate(SMALL.from_key(r["arch"]))


# --------------------------------------------------------------------------- latency
def test_latency_predictor_recovers_a_linear_latency_and_round_trips(tmp_path):
    from shiftadd.nas.latency import LatencyPredictor, features, fit_latency_predictor

    true = np.random.default_rng(0).uniform(0.5, 2.0, len(features(SMALL.sample(np.random.default_rng(0)), SMALL)))

    def fake(arch, vocab, tokens, repeats):  # an exactly linear "measurement"
        return float(features(arch, SMALL) @ true)

    pred = fit_latency_predictor(SMALL, V, samples=60, measure=fake, ridge=1e-9, log=lambda *_: None)
    assert pred.report["held_out"]["n"] == 15 and pred.report["held_out"]["mape"] < 1e-3
    for i in range(5):
        a = SMALL.sample(np.random.default_rng(50 + i))
        assert pred(a) == pytest.approx(fake(a, V, 30, 1), rel=1e-3)
    pred.save(str(tmp_path / "lat.json"))
    again = LatencyPredictor.load(str(tmp_path / "lat.json"), SMALL)
    assert again(a) == pytest.approx(pred(a), rel=1e-12) and again.report["held_out"] == pred.report["held_out"]
    with pytest.raises(UserError, match="another search space"):
        LatencyPredictor.load(str(tmp_path / "lat.json"), SPACE)
    with pytest.raises(UserError, match=">= 4"):
        fit_latency_predictor(SMALL, V, samples=2, measure=fake)


def test_measured_latency_grows_with_the_decoder_and_constrains_the_search(supernet, tmp_path):
    from shiftadd.nas.latency import LatencyPredictor, measure_latency

    one = TransformerArchitecture(8, (LayerChoice("attention", 8, 2),) * 2, (LayerChoice("attention", 8, 2),), (3,) * 6)
    six = TransformerArchitecture(8, one.encoder, one.decoder * 6, (3,) * 6)
    t1, t6 = measure_latency(one, V, tokens=4, repeats=5), measure_latency(six, V, tokens=4, repeats=5)
    assert 0 < t1 < t6  # six decoder layers per step cost more than one (fastest of 5: robust to load)
    archs = [SMALL.sample(np.random.default_rng(i)) for i in range(12)]
    pred = LatencyPredictor(SMALL).fit(archs, [1.0 + len(a.decoder) + a.embed_dim / 8 for a in archs])
    lookup = TransformerEnergyLookup(SMALL, V, tokens=5)
    cfg = EvolutionConfig(population=6, parents=2, mutations=3, crossovers=3, generations=2, max_latency_ms=4.5)
    state = evolutionary_search(SMALL, _score(supernet), lookup, cfg, str(tmp_path / "s.json"), log=lambda *_: None,
                                latency=pred)
    assert state["scores"] and all(pred(SMALL.from_key(k)) <= 4.5 for k in state["scores"])
    assert state["settings"]["latency"] == pred.settings()
    with pytest.raises(UserError, match="latency model"):
        evolutionary_search(SMALL, _score(supernet), lookup, cfg, None, log=lambda *_: None)


# --------------------------------------------------------------------------- CLI end to end
EN = ["a dog runs in the park .", "two men play football .", "a woman reads a book .", "the cat sleeps ."]
DE = ["ein hund rennt im park .", "zwei männer spielen fußball .", "eine frau liest ein buch .", "die katze schläft ."]


@pytest.fixture()
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTADD_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "m30k"
    folder.mkdir()
    for stem, reps in (("train", 2), ("val", 1), ("test_2016_flickr", 1)):
        for lang, lines in (("en", EN), ("de", DE)):
            with gzip.open(folder / f"{stem}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.write("\n".join(lines * reps) + "\n")
    return folder


def test_cli_supernet_resume_search_show_and_retrain(corpus, tmp_path, capsys):
    pytest.importorskip("sentencepiece")
    pytest.importorskip("sacrebleu")
    space = ["--embed-dims", "8,16", "--ffn-dims", "8,16", "--heads", "2", "--encoder-layers", "2",
             "--decoder-layers", "1,2", "--layer-ops", "conv,shift-ps", "--kernel-sizes", "3,5",
             "--encoder-blocks", "attention,lightweight-adder", "--decoder-blocks", "attention,attention+lightweight"]
    data = ["--data-dir", str(corpus), "--vocab-size", "50", "--max-tokens", "40", "--threads", "1"]
    common = data + ["-T", "warmup_steps=4", "-T", "beam=1", "-T", "lr=0.003"]
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    assert main(["nas", "supernet", "--space", "transformer", "--out", full, "--epochs", "2"] + space + common) == 0
    assert main(["nas", "supernet", "--space", "transformer", "--out", part, "--epochs", "1"] + space + common) == 0
    assert main(["nas", "supernet", "--resume", part, "--epochs", "2"]) == 0
    from shiftadd.train import load_trained_model

    a, b = load_trained_model(full)[0].state_dict(), load_trained_model(part)[0].state_dict()
    assert int(a["sample_step"]) > 0 and all(torch.equal(a[k], b[k]) for k in a)  # resumed == uninterrupted
    search = ["nas", "search", full, "--energy-budget", "1", "--tokens", "5", "--population", "4", "--parents", "2",
              "--mutations", "2", "--crossovers", "2", "--generations", "2", "--save-arch", str(tmp_path / "f.yaml")]
    assert main(search + ["--stop-after", "1"]) == 0
    assert "stopped after generation 1" in capsys.readouterr().out
    assert main(search) == 0
    assert "best: transformer[" in capsys.readouterr().out
    state = json.load(open(tmp_path / "full" / "search-1uJ.json"))
    assert state["done"] and state["best"]["energy_uj"] <= 1
    assert main(["nas", "show", str(tmp_path / "f.yaml"), "--vocab-size", "50", "--tokens", "5"]) == 0
    table = capsys.readouterr().out
    assert "embedding+output" in table and table.count("encoder ") == 2 and "all-attention" in table
    assert main(["nas", "show", str(tmp_path / "f.yaml"), "--json", "--tokens", "5"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["total_pj"] == pytest.approx(sum(r["energy_pj"] for r in shown["rows"]))
    retrain = ["train", "--task", "translation", "--model", "transformer-seq", "-O", f"arch={tmp_path / 'f.yaml'}",
               "--epochs", "1", "--out", str(tmp_path / "re"), "--warmup-steps", "4", "--beam", "1"] + data
    assert main(retrain) == 0
    net = load_trained_model(str(tmp_path / "re"))[0]
    arch = TransformerArchitecture.load(tmp_path / "f.yaml")
    assert [m.__class__.__name__ for m in net.encoder] == ["EncoderLayer"] * 2 and len(net.decoder) == len(arch.decoder)
    assert net.cfg.embed_dim == arch.embed_dim
    # latency: measure a few sub-networks, fit, search under a predicted-latency budget
    assert main(["nas", "latency", full, "--samples", "4", "--tokens", "3", "--repeats", "1"]) == 0
    assert "held-out error" in capsys.readouterr().out
    model = str(tmp_path / "full" / "latency-3tok.json")
    assert main(search[:5] + ["--max-latency", "1000", "--latency-model", model, "--generations", "1",
                              "--population", "2", "--tokens", "5"]) == 0
    assert "ms predicted" in capsys.readouterr().out
    assert main(search[:5] + ["--max-latency", "1000", "--tokens", "5"]) == 2
    # the same supernet searched over its multiplication-based blocks only (a HAT-like space)
    assert main(search[:5] + ["--energy-budget", "5", "--generations", "1", "--encoder-blocks", "attention",
                              "--decoder-blocks", "attention", "--layer-ops", "conv",
                              "--save-arch", str(tmp_path / "m.yaml")]) == 0
    assert "narrowed space" in capsys.readouterr().out
    hat = TransformerArchitecture.load(tmp_path / "m.yaml")
    assert all(c.block == "attention" and c.op == "conv" for _, _, c in hat.layers)
    assert len(list((tmp_path / "full").glob("search-5uJ-sub*.json"))) == 1
    # bad input: one line, exit code 2
    assert main(["nas", "search", full, "--tokens", "5", "--encoder-blocks", "lightweight"]) == 2
    assert "not a non-empty subset" in capsys.readouterr().err
    assert main(["nas", "search", full, "--tokens", "5", "--ops", "conv"]) == 2
    assert "narrows a ResNet space" in capsys.readouterr().err
    assert main(["nas", "search", full, "--energy-budget", "0.00001", "--tokens", "5"]) == 2
    assert "below the cheapest" in capsys.readouterr().err
    assert main(["nas", "supernet", "--space", "transformer", "--out", str(tmp_path / "x"), "--heads", "3"]
                + common) == 2


@pytest.mark.slow
def test_two_process_supertransformer_training_matches_one_process(corpus, one_and_two_processes):
    """torchrun --nproc_per_node 2 (gloo) with the trainer's translation task: the 1-process result
    (about 50 s: three processes start; run with -m slow)."""
    pytest.importorskip("sentencepiece")
    pytest.importorskip("sacrebleu")
    args = ["train", "--task", "translation", "--model", "supertransformer", "-O", f"space={json.dumps(SMALL.as_dict())}",
            "-O", "seed=3", "-O", "dropout=0.0", "--data-dir", str(corpus), "--vocab-size", "50", "--max-tokens", "64",
            "--epochs", "1", "--warmup-steps", "4", "--beam", "1", "--threads", "1", "--device", "cpu", "--no-progress"]
    a, b = one_and_two_processes(args)
    assert b.meta["world_size"] == 2 and int(a.model_state["sample_step"]) == int(b.model_state["sample_step"]) > 0
    assert b.meta["history"][0]["train_loss"] == pytest.approx(a.meta["history"][0]["train_loss"], rel=1e-3)
    for k, v in a.model_state.items():
        if v.is_floating_point():
            torch.testing.assert_close(b.model_state[k], v, rtol=1e-3, atol=1e-4, msg=k)
