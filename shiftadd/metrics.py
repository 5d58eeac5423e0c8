"""Translation metrics: detokenised corpus BLEU computed by sacreBLEU (Post, 2018).

The hypotheses must be plain detokenised text (the subword model's ``decode``); sacreBLEU
applies its own standard tokenisation ("13a") so scores are comparable with published ones.
"""
from __future__ import annotations

from typing import Any, Sequence

from shiftadd.errors import UserError


def require(module: str, extra: str = "text") -> Any:
    """Import an optional dependency or raise a one-line :class:`UserError` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{module} is not installed; install it with: pip install 'shiftadd[{extra}]' "
                        f"(or pip install {module})") from None


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> float:
    """sacreBLEU corpus BLEU (0-100) of detokenised ``hypotheses`` against one reference each."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    sacrebleu = require("sacrebleu")
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize=tokenize).score)


__all__ = ["corpus_bleu", "require"]
