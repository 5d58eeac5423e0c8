"""Measured CPU latency of Transformer architectures and a small predictor fitted to the measurements.

:func:`measure_latency` times the stand-alone network of an architecture translating one sentence
on the CPU: the encoder on ``tokens`` source tokens, then ``tokens`` incremental decoder steps (a
fixed output length, as HAT measures; no early stop at EOS), batch 1, evaluation mode, no
gradients; the minimum of ``repeats`` runs after one warm-up run, in milliseconds (the minimum:
on a shared machine other processes only ever add time).

:class:`LatencyPredictor` is ridge-regularised least squares on a few features of the architecture
(the embedding dim, the decoder depth, per side the number of layers of each block type and of each
linear-layer family times the embedding dim, and the summed FFN dim times the embedding dim): a
latency budget in the search is then a cheap prediction rather than a measurement per candidate.
:func:`fit_latency_predictor` measures a sample of the space, fits on a random 75 % and reports the
error on the other 25 % before refitting on everything.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from shiftadd.errors import UserError
from shiftadd.nas.transformer_space import SIDES, TransformerArchitecture, TransformerSearchSpace
from shiftadd.utils import atomic_write_json


@torch.no_grad()
def measure_latency(arch: TransformerArchitecture, vocab_size: int, tokens: int = 30, repeats: int = 5,
                    seed: int = 0) -> float:
    """Wall time (ms, fastest of ``repeats``) of translating one ``tokens``-token sentence into ``tokens`` tokens."""
    from shiftadd.models.transformer import TransformerSeq2Seq

    if tokens < 1 or repeats < 1:
        raise UserError(f"tokens and repeats must be positive, got {tokens} and {repeats}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = TransformerSeq2Seq(arch.to_config(vocab_size, max_positions=max(256, tokens + 2))).eval()
        src = torch.randint(4, max(vocab_size, 5), (1, tokens))
    cfg = net.cfg

    def translate() -> None:
        memory, mask = net.encode(src)
        state: Dict[str, Any] = {}
        token = torch.full((1, 1), cfg.bos_id, dtype=torch.long)
        for _ in range(tokens):
            logits = net.decode(token, memory, mask, state)[:, -1]
            logits[:, cfg.pad_id] = logits[:, cfg.bos_id] = float("-inf")
            token = logits.argmax(-1, keepdim=True)

    translate()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        translate()
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(min(times))


def features(arch: TransformerArchitecture, space: TransformerSearchSpace) -> np.ndarray:
    """The predictor's input, terms of the cost of one sentence: [1, d (the output projection), decoder
    layers, per side (count of each block type) x d^2 (its projections), per side and family the weights
    of the linear layers of that family, sum of d x (2 FFN + 4 d) over the layers that use it]."""
    d = float(arch.embed_dim)
    out = [1.0, d, float(len(arch.decoder))]
    for side in SIDES:
        layers = getattr(arch, side)
        out += [d * d * sum(c.block == b for c in layers) for b in space.blocks_of(side)]
        out += [sum(d * (2 * c.ffn_dim + 4 * d) for c in layers if c.op == o) for o in space.ops]
    return np.asarray(out, dtype=np.float64)


class LatencyPredictor:
    """Ridge least squares on :func:`features` (fit with :meth:`fit`, saved as JSON)."""

    def __init__(self, space: TransformerSearchSpace, ridge: float = 1e-3) -> None:
        self.space, self.ridge = space, float(ridge)
        self.coef: Optional[np.ndarray] = None
        self.scale: Optional[np.ndarray] = None
        self.report: Dict[str, Any] = {}

    def _matrix(self, archs: Sequence[TransformerArchitecture]) -> np.ndarray:
        return np.stack([features(a, self.space) for a in archs])

    def fit(self, archs: Sequence[TransformerArchitecture], latency_ms: Sequence[float]) -> "LatencyPredictor":
        """Fit ``latency_ms`` (one per architecture); features are scaled to unit maximum first."""
        if len(archs) != len(latency_ms) or len(archs) < 2:
            raise UserError(f"need at least 2 measured architectures with one latency each, got {len(archs)}")
        x, y = self._matrix(archs), np.asarray(latency_ms, dtype=np.float64)
        self.scale = np.maximum(np.abs(x).max(0), 1e-12)
        xs = x / self.scale
        a = xs.T @ xs + self.ridge * np.eye(xs.shape[1])
        self.coef = np.linalg.solve(a, xs.T @ y)
        return self

    def predict(self, arch: TransformerArchitecture) -> float:
        """Predicted latency (ms) of ``arch``."""
        if self.coef is None or self.scale is None:
            raise UserError("the latency predictor has not been fitted")
        return float((features(arch, self.space) / self.scale) @ self.coef)

    __call__ = predict

    def errors(self, archs: Sequence[TransformerArchitecture], latency_ms: Sequence[float]) -> Dict[str, float]:
        """Mean absolute error (ms), mean absolute percentage error and max percentage error."""
        pred = np.asarray([self.predict(a) for a in archs])
        y = np.asarray(latency_ms, dtype=np.float64)
        rel = np.abs(pred - y) / np.maximum(y, 1e-12)
        return {"mae_ms": float(np.mean(np.abs(pred - y))), "mape": float(np.mean(rel)), "max_ape": float(rel.max()),
                "n": int(len(y))}

    def settings(self) -> Dict[str, Any]:
        return {"space": self.space.as_dict(), "ridge": self.ridge,
                "coef": None if self.coef is None else [float(c) for c in self.coef],
                "scale": None if self.scale is None else [float(s) for s in self.scale]}

    def save(self, path: str) -> None:
        atomic_write_json(path, {**self.settings(), "report": self.report})

    @classmethod
    def load(cls, path: str, space: Optional[TransformerSearchSpace] = None) -> "LatencyPredictor":
        """A fitted predictor from ``path``; with ``space``, check that it was fitted for that space."""
        if not os.path.isfile(path):
            raise UserError(f"latency model {path!r} not found (make one with `shiftadd nas latency`)")
        with open(path) as f:
            data = json.load(f)
        fitted_for = TransformerSearchSpace.from_dict(data["space"])
        if space is not None and fitted_for != space:
            raise UserError(f"latency model {path!r} was fitted for another search space")
        p = cls(fitted_for, data["ridge"])
        p.coef, p.scale = np.asarray(data["coef"]), np.asarray(data["scale"])
        p.report = data.get("report", {})
        return p


def fit_latency_predictor(space: TransformerSearchSpace, vocab_size: int, samples: int = 40, tokens: int = 30,
                          repeats: int = 5, seed: int = 0, ridge: float = 1e-3,
                          measure: Callable[..., float] = measure_latency,
                          log: Callable[[str], None] = print) -> LatencyPredictor:
    """Measure ``samples`` distinct random architectures, fit on 75 %, report the error on the held-out
    25 % (``report``), then refit on all of them."""
    if samples < 4:
        raise UserError(f"--samples must be >= 4 (a quarter is held out), got {samples}")
    rng = np.random.default_rng(seed)
    archs: List[TransformerArchitecture] = []
    seen = set()
    for _ in range(samples * 50):
        if len(archs) == samples:
            break
        a = space.sample(rng)
        if a.key() not in seen:
            seen.add(a.key())
            archs.append(a)
    lat = []
    for i, a in enumerate(archs):
        lat.append(measure(a, vocab_size, tokens, repeats))
        log(f"measured {i + 1}/{len(archs)}: {lat[-1]:.2f} ms  {a}")
    order = rng.permutation(len(archs))
    n_test = max(1, len(archs) // 4)
    test, train = order[:n_test], order[n_test:]
    pred = LatencyPredictor(space, ridge).fit([archs[i] for i in train], [lat[i] for i in train])
    held_out = pred.errors([archs[i] for i in test], [lat[i] for i in test])
    fit_err = pred.errors([archs[i] for i in train], [lat[i] for i in train])
    final = LatencyPredictor(space, ridge).fit(archs, lat)
    final.report = {"held_out": held_out, "train": fit_err, "tokens": tokens, "repeats": repeats,
                    "vocab_size": vocab_size, "threads": torch.get_num_threads(),
                    "measured": [{"arch": a.key(), "latency_ms": t} for a, t in zip(archs, lat)]}
    return final


__all__ = ["LatencyPredictor", "features", "fit_latency_predictor", "measure_latency"]
