"""A minimal translation training loop, translation of raw sentences, and BLEU evaluation.

The building blocks (loss, schedule, batches, decoding, BLEU) live in their own modules; this
module only strings them together, for smoke runs and as the reference for the trainer's
translation task (which adds checkpoints, exact resume, NaN guard and metrics files).
"""
from __future__ import annotations

import math
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from shiftadd.data.text import ParallelText, SubwordTokenizer, TokenBatchLoader, TranslationData
from shiftadd.decode import beam_search, greedy_decode
from shiftadd.metrics import corpus_bleu
from shiftadd.optim import AdderAdaptiveLR
from shiftadd.seq.loss import label_smoothed_cross_entropy
from shiftadd.seq.schedule import adam_inverse_sqrt


def train_steps(model: nn.Module, loader: TokenBatchLoader, steps: int, peak_lr: float = 5e-4, warmup: int = 4000,
                smoothing: float = 0.1, clip_norm: float = 0.0, adaptive_lr: bool = False, log_every: int = 50,
                log: Optional[Callable[[str], None]] = print) -> List[Dict[str, float]]:
    """Train ``model`` for ``steps`` optimiser steps (one token batch each), cycling over epochs.

    Adam with inverse-sqrt warm-up, label-smoothed cross-entropy per target token, optional
    gradient-norm clipping and AdderNet's adaptive learning rate (``adaptive_lr``). Returns one
    record per ``log_every`` steps: step, loss and nll (per token, averaged since the last
    record), lr, tokens/s.
    """
    opt, sched = adam_inverse_sqrt(model.parameters(), peak_lr, warmup)
    stepper = AdderAdaptiveLR(opt, model) if adaptive_lr else opt
    history: List[Dict[str, float]] = []
    model.train()
    step, epoch = 0, 0
    acc_loss = acc_nll = acc_tok = 0.0
    t0 = time.perf_counter()
    while step < steps:
        loader.set_epoch(epoch)
        for batch in loader:
            logits = model(batch.src, batch.tgt_in)
            loss, nll, ntok = label_smoothed_cross_entropy(logits, batch.tgt_out, smoothing, model.cfg.pad_id)
            opt.zero_grad(set_to_none=True)
            (loss / max(ntok, 1)).backward()
            if clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            stepper.step()
            sched.step()
            step += 1
            acc_loss, acc_nll, acc_tok = acc_loss + float(loss.detach()), acc_nll + float(nll), acc_tok + ntok
            if step % log_every == 0 or step == steps:
                dt = time.perf_counter() - t0
                rec = {"step": step, "epoch": epoch, "loss": acc_loss / acc_tok, "nll": acc_nll / acc_tok,
                       "ppl": math.exp(min(acc_nll / acc_tok, 50.0)), "lr": sched.get_last_lr()[0],
                       "tokens_per_s": acc_tok / dt}
                history.append(rec)
                if log is not None:
                    log(f"step {step} epoch {epoch} loss {rec['loss']:.3f} nll {rec['nll']:.3f} ppl {rec['ppl']:.1f} "
                        f"lr {rec['lr']:.2e} {rec['tokens_per_s']:.0f} tok/s")
                acc_loss = acc_nll = acc_tok = 0.0
                t0 = time.perf_counter()
            if step >= steps:
                break
        epoch += 1
    return history


@torch.no_grad()
def translate(model: nn.Module, tokenizer: SubwordTokenizer, sentences: Sequence[str], beam: int = 4,
              length_penalty: float = 1.0, max_tokens: int = 4096, max_len: Optional[int] = None) -> List[str]:
    """Detokenised translations of ``sentences`` (beam search; ``beam=1`` is greedy), in input order.

    Sources longer than the model's positions are cut to fit.
    """
    limit = model.cfg.max_positions - 1
    src = [ids[:limit] for ids in tokenizer.encode_batch(list(sentences))]
    data = TranslationData(src, [[] for _ in src])
    out: List[str] = [""] * len(src)
    for batch in TokenBatchLoader(data, max_tokens, shuffle=False, even_shards=False):
        if beam == 1:
            hyps = greedy_decode(model, batch.src, max_len)
        else:
            hyps = beam_search(model, batch.src, beam, length_penalty, max_len)
        for i, ids in zip(batch.index.tolist(), hyps):
            out[i] = tokenizer.decode(ids)
    return out


def evaluate_bleu(model: nn.Module, tokenizer: SubwordTokenizer, pairs: ParallelText, beam: int = 4,
                  length_penalty: float = 1.0, max_tokens: int = 4096) -> Dict[str, object]:
    """Translate ``pairs.src`` and score against ``pairs.tgt`` with detokenised sacreBLEU."""
    t0 = time.perf_counter()
    hyps = translate(model, tokenizer, pairs.src, beam, length_penalty, max_tokens)
    return {"bleu": corpus_bleu(hyps, pairs.tgt), "sentences": len(hyps), "seconds": time.perf_counter() - t0,
            "hypotheses": hyps}


__all__ = ["evaluate_bleu", "train_steps", "translate"]
