"""Translation: the configurable Transformer, incremental decoding, greedy/beam search, the Multi30k
loader, the subword vocabulary, token batches, label-smoothed loss, schedule, BLEU, and a tiny overfit."""
import gzip
import itertools
import math

import pytest
import torch

from shiftadd.data.text import (
    BOS_ID, EOS_ID, PAD_ID, SubwordTokenizer, TokenBatchLoader, TranslationData, joint_tokenizer, load_parallel,
)
from shiftadd.decode import beam_search, greedy_decode
from shiftadd.errors import DataError
from shiftadd.metrics import corpus_bleu
from shiftadd.models import create
from shiftadd.models.transformer import PRESETS, TransformerConfig, TransformerSeq2Seq, preset_config
from shiftadd.nn import ShiftLinear
from shiftadd.seq import inverse_sqrt_factor, label_smoothed_cross_entropy, train_steps

SMALL = dict(embed_dim=16, ffn_dim=32, heads=4, dropout=0.0, max_positions=64)


def _model(preset="transformer", vocab=23, layers=2, **kw):
    torch.manual_seed(0)
    return TransformerSeq2Seq(preset_config(preset, vocab, layers, **{**SMALL, **kw})).eval()


def _src(vocab=23, B=3, S=6):
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, vocab, (B, S), generator=g)
    src[1, 4:] = PAD_ID
    src[1, 3] = EOS_ID
    return src


# ---------------------------------------------------------------- model
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_trains_every_parameter(preset):
    model = _model(preset).train()
    src, tgt = _src(), _src(S=5)
    logits = model(src, tgt)
    assert logits.shape == (3, 5, 23) and torch.isfinite(logits).all()
    logits.pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


def test_embeddings_are_shared_and_tied_with_the_output():
    model = _model()
    vocab_shaped = [n for n, p in model.named_parameters() if p.shape[0] == 23]
    assert vocab_shaped == ["embed.weight"]
    memory, mask = model.encode(_src())
    tgt = _src(S=4)
    logits = model.decode(tgt, memory, mask)
    # logits = final hidden state @ E^T
    hidden = {}
    model.decoder_norm.register_forward_hook(lambda m, i, o: hidden.setdefault("h", o))
    model.decode(tgt, memory, mask)
    torch.testing.assert_close(logits, hidden["h"] @ model.embed.weight.t())


def test_positions_are_sinusoidal():
    pe = _model().positions
    pos, i = 7, 3
    assert pe[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / 16)), abs=1e-6)
    assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / 16)), abs=1e-6)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="block type"):
        TransformerConfig(vocab_size=10, encoder_blocks=("conv",))
    with pytest.raises(ValueError, match="divide"):
        TransformerConfig(vocab_size=10, embed_dim=10, heads=4)
    with pytest.raises(ValueError, match="ffn_op"):
        TransformerConfig(vocab_size=10, ffn_op="mult")
    with pytest.raises(ValueError, match="preset"):
        preset_config("bert", 10)
    with pytest.raises(ValueError, match="vocab_size"):
        create("transformer-seq")


def test_registry_builds_with_op_family_and_config_round_trips():
    m = create("transformer-seq", op="shift-ps", vocab_size=30, **SMALL)
    assert isinstance(m.encoder[0].ffn.fc1, ShiftLinear) and isinstance(m.decoder[0].cross.q_proj, ShiftLinear)
    cfg = m.cfg
    assert TransformerConfig(**cfg.to_dict()) == cfg


@pytest.mark.parametrize("preset", PRESETS)
def test_post_norm_variant_runs(preset):
    model = _model(preset, pre_norm=False)
    assert torch.isfinite(model(_src(), _src(S=4))).all()


MIXED = dict(encoder_blocks=("attention+lightweight", "lightweight-adder"),
             decoder_blocks=("attention+lightweight-shiftadd", "lightweight-shiftadd"), kernel_sizes=(3, 5))


@pytest.mark.parametrize("preset,extra", [(p, {}) for p in PRESETS] + [("transformer", MIXED)])
def test_incremental_decoder_equals_full_decoder(preset, extra):
    model = _model(preset, **extra)
    memory, mask = model.encode(_src())
    tgt = torch.cat([torch.full((3, 1), BOS_ID), _src(S=6).clamp_min(4)], 1)
    full = model.decode(tgt, memory, mask)
    state = {}
    steps = [model.decode(tgt[:, t:t + 1], memory, mask, state) for t in range(tgt.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("preset", PRESETS)
def test_beam_one_equals_greedy_equals_full_recompute(preset):
    model = _model(preset)
    src = _src()
    greedy = greedy_decode(model, src, max_len=8)
    assert greedy == greedy_decode(model, src, max_len=8, incremental=False)
    assert beam_search(model, src, beam=1, max_len=8) == greedy


def _exhaustive_best(model, src, max_len, length_penalty):
    """Score every hypothesis over {eos, 3, 4} (vocabulary 5) by re-running the full decoder."""
    memory, mask = model.encode(src)
    best, best_score = None, -math.inf
    for L in range(1, max_len + 1):
        for body in itertools.product([3, 4], repeat=L - 1):
            for last in ([EOS_ID, 3, 4] if L == max_len else [EOS_ID]):
                seq = list(body) + [last]
                tgt = torch.tensor([[BOS_ID] + seq[:-1]])
                logp = torch.log_softmax(model.decode(tgt, memory, mask)[0], -1)
                score = sum(logp[t, tok].item() for t, tok in enumerate(seq)) / len(seq) ** length_penalty
                if score > best_score:
                    best, best_score = [t for t in seq if t != EOS_ID], score
    return best


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_wide_beam_finds_the_exhaustive_best(length_penalty):
    torch.manual_seed(3)
    model = TransformerSeq2Seq(preset_config("transformer", 5, 1, **SMALL)).eval()
    with torch.no_grad():  # make EOS competitive so lengths vary
        model.embed.weight.mul_(3.0)
    src = torch.tensor([[3, 4, 4, EOS_ID]])
    got = beam_search(model, src, beam=27, length_penalty=length_penalty, max_len=3)[0]
    assert got == _exhaustive_best(model, src, 3, length_penalty)


# ---------------------------------------------------------------- data
EN = ["a dog runs in the park .", "two men play football .", "a woman reads a book .", "the cat sleeps .",
      "a child eats an apple .", "people walk on the street ."]
DE = ["ein hund rennt im park .", "zwei männer spielen fußball .", "eine frau liest ein buch .",
      "die katze schläft .", "ein kind isst einen apfel .", "leute gehen auf der straße ."]


def _write(folder, stem, lang, lines):
    with gzip.open(folder / f"{stem}.{lang}.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


@pytest.fixture
def multi30k(tmp_path, monkeypatch):
    root = tmp_path / "multi30k"
    root.mkdir()
    for stem in ("train", "val", "test_2016_flickr"):
        _write(root, stem, "en", EN * 5)
        _write(root, stem, "de", DE * 5)
    monkeypatch.setenv("SHIFTADD_CACHE", str(tmp_path / "cache"))
    return root


def test_load_parallel_and_errors(multi30k, tmp_path):
    pairs = load_parallel("test", "en", "de", multi30k)
    assert len(pairs) == 30 and pairs.src[1] == EN[1] and pairs.tgt[1] == DE[1]
    with pytest.raises(DataError, match="does not exist"):
        load_parallel("train", data_dir=tmp_path / "nowhere")
    with pytest.raises(DataError, match="missing"):
        load_parallel("train", "en", "fr", multi30k)
    with pytest.raises(DataError, match="split"):
        load_parallel("dev", data_dir=multi30k)
    _write(multi30k, "val", "de", DE)
    with pytest.raises(DataError, match="line-aligned"):
        load_parallel("val", data_dir=multi30k)


def test_joint_tokenizer_round_trip_and_cache(multi30k, tmp_path):
    tok = joint_tokenizer("en", "de", vocab_size=60, data_dir=multi30k)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (PAD_ID, BOS_ID, EOS_ID)
    for s in EN + DE:
        ids = tok.encode(s)
        assert ids and min(ids) > 3
        assert tok.decode(ids) == s
    assert tok.decode([BOS_ID] + tok.encode(EN[0]) + [EOS_ID, PAD_ID]) == EN[0]
    cached = list((tmp_path / "cache" / "subword").glob("*.model"))
    assert len(cached) == 1
    again = joint_tokenizer("en", "de", vocab_size=60, data_dir=multi30k)
    assert again.model_proto == tok.model_proto
    assert SubwordTokenizer.load(cached[0]).encode(EN[2]) == tok.encode(EN[2])


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = [torch.randint(4, 50, (int(torch.randint(1, 15, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    tgt = [torch.randint(4, 50, (int(torch.randint(1, 15, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    return TranslationData(src, tgt)


def test_token_batches_respect_max_tokens_and_cover_every_pair():
    data = _data()
    loader = TokenBatchLoader(data, max_tokens=48, shuffle=True, seed=3)
    seen = []
    for b in loader:
        assert b.src.numel() <= 48 and b.tgt_in.numel() <= 48
        seen += b.index.tolist()
        for row, i in enumerate(b.index.tolist()):
            n = len(data.tgt[i])
            assert b.tgt_in[row, 0] == BOS_ID and b.tgt_out[row, n] == EOS_ID
            assert b.tgt_in[row, 1:n + 1].tolist() == data.tgt[i] == b.tgt_out[row, :n].tolist()
            assert b.src[row, len(data.src[i])] == EOS_ID
    assert sorted(seen) == list(range(len(data)))
    first = loader.batches()
    loader.set_epoch(1)
    assert loader.batches() != first
    loader.set_epoch(0)
    assert loader.batches() == first


def test_token_batches_ddp_shards_are_disjoint_and_even():
    data = _data()
    shards = [TokenBatchLoader(data, 48, shuffle=True, seed=1, rank=r, world_size=3).batches() for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    flat = [i for s in shards for b in s for i in b]
    assert len(flat) == len(set(flat))
    full = TokenBatchLoader(data, 48, shuffle=True, seed=1).batches()
    assert [b for s in shards for b in s] and all(b in full for s in shards for b in s)
    uneven = [TokenBatchLoader(data, 48, seed=1, rank=r, world_size=3, even_shards=False).batches() for r in range(3)]
    assert sorted(i for s in uneven for b in s for i in b) == list(range(len(data)))


# ---------------------------------------------------------------- loss, schedule, BLEU
def test_label_smoothed_loss_closed_form():
    torch.manual_seed(4)
    logits = torch.randn(2, 3, 7)
    target = torch.tensor([[4, 5, PAD_ID], [6, 1, 2]])
    loss, nll, ntok = label_smoothed_cross_entropy(logits, target, 0.1)
    logp = torch.log_softmax(logits, -1)
    keep = target != PAD_ID
    ref_nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)[keep].sum()
    ref = 0.9 * ref_nll + 0.1 * (-logp.mean(-1))[keep].sum()
    assert ntok == 5
    torch.testing.assert_close(nll, ref_nll)
    torch.testing.assert_close(loss, ref)


def test_inverse_sqrt_schedule():
    w = 100
    f = [inverse_sqrt_factor(s, w) for s in range(400)]
    assert f[0] == pytest.approx(1 / w) and max(f) == pytest.approx(1.0) and f.index(max(f)) == w - 1
    assert f[399] == pytest.approx(math.sqrt(w / 400))


def test_bleu_equals_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps = ["Ein Mann fährt Fahrrad auf der Straße.", "Zwei Hunde spielen im Schnee.", "Eine Frau lacht."]
    refs = ["Ein Mann fährt mit dem Fahrrad auf der Straße.", "Zwei Hunde spielen im Schnee.", "Die Frau lacht laut."]
    expected = sacrebleu.corpus_bleu(hyps, [refs]).score
    assert corpus_bleu(hyps, refs) == pytest.approx(expected)
    assert 0 < expected < 100
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)


# ---------------------------------------------------------------- a tiny model overfits
@pytest.mark.parametrize("preset,lr", [("transformer", 3e-3), ("multiplication-free", 1e-2)])
def test_tiny_model_overfits_a_handful_of_pairs(preset, lr):
    torch.manual_seed(0)
    data = _data(n=8, seed=5)
    model = TransformerSeq2Seq(preset_config(preset, 50, 1, embed_dim=32, ffn_dim=64, heads=4, dropout=0.0))
    loader = TokenBatchLoader(data, max_tokens=10_000)
    hist = train_steps(model, loader, steps=120, peak_lr=lr, warmup=10, smoothing=0.0, log_every=20, log=None)
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"], [h["loss"] for h in hist]
    if preset == "transformer":
        assert hist[-1]["loss"] < 0.5
        got = greedy_decode(model, data.collate(range(8)).src, max_len=16)
        assert sum(g == t for g, t in zip(got, data.tgt)) >= 6


def test_missing_optional_dependency_is_a_one_line_user_error():
    from shiftadd.errors import UserError
    from shiftadd.metrics import require

    with pytest.raises(UserError, match=r"pip install 'shiftadd\[text\]'"):
        require("no_such_module_for_shiftadd")
