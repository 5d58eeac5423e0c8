"""Smoke run of the translation pieces on Multi30k: subword vocabulary, token batches, a small
Transformer of any preset, a few hundred Adam steps, greedy/beam decoding and sacreBLEU.

    python scripts/translation_smoke.py --preset transformer --steps 300
    python scripts/translation_smoke.py --preset multiplication-free --steps 300 --lr 1e-2 --json smoke.json

It proves that the pieces fit, not the targets of issue 14 (those need the trainer's translation
task and about an hour of training). Validation sentences only (``--eval-sentences`` of them).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shiftadd.data.text import TokenBatchLoader, TranslationData, joint_tokenizer, load_parallel  # noqa: E402
from shiftadd.models.transformer import PRESETS, TransformerSeq2Seq, preset_config  # noqa: E402
from shiftadd.seq import evaluate_bleu, train_steps  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="Multi30k folder (default: the shared one)")
    p.add_argument("--src", default="en")
    p.add_argument("--tgt", default="de")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--preset", default="transformer", choices=PRESETS)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--ffn-dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--eval-sentences", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    tok = joint_tokenizer(args.src, args.tgt, args.vocab, data_dir=args.data_dir)
    train = TranslationData.from_text(load_parallel("train", args.src, args.tgt, args.data_dir), tok, max_len=100)
    val = load_parallel("val", args.src, args.tgt, args.data_dir).subset(args.eval_sentences)
    print(f"vocabulary {tok.vocab_size}, {len(train)} training pairs, data ready in {time.perf_counter() - t0:.1f}s")

    cfg = preset_config(args.preset, tok.vocab_size, args.layers, embed_dim=args.embed_dim, ffn_dim=args.ffn_dim,
                        heads=args.heads, dropout=0.1, max_positions=128)
    model = TransformerSeq2Seq(cfg)
    print(f"{args.preset}: {sum(q.numel() for q in model.parameters()) / 1e6:.2f}M parameters, "
          f"encoder {cfg.encoder_blocks}, decoder {cfg.decoder_blocks}, ffn {cfg.ffn_op}, proj {cfg.proj_op}")
    loader = TokenBatchLoader(train, args.max_tokens, shuffle=True, seed=args.seed)
    t1 = time.perf_counter()
    hist = train_steps(model, loader, args.steps, args.lr, args.warmup, smoothing=0.1, clip_norm=1.0,
                       log_every=max(1, args.steps // 6))
    train_s = time.perf_counter() - t1
    res = evaluate_bleu(model, tok, val, beam=args.beam)
    print(f"trained {args.steps} steps in {train_s:.0f}s; val BLEU ({len(val)} sentences, beam {args.beam}) "
          f"{res['bleu']:.2f} in {res['seconds']:.1f}s")
    for s, h, r in list(zip(val.src, res["hypotheses"], val.tgt))[:3]:
        print(f"  src: {s}\n  hyp: {h}\n  ref: {r}")
    if args.json:
        out = {"args": vars(args), "history": hist, "train_seconds": train_s, "bleu": res["bleu"],
               "eval_seconds": res["seconds"], "config": cfg.to_dict()}
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
