"""Weight pruning with the right meaning for each operator.

* Adder layers: magnitude = |w|. A pruned weight is 0, but the layer still computes |x - 0| = |x|
  for it: pruning an adder saves storage, not additions.
* Bit-shift layers: magnitude = the *effective* |w| = |round(s)| * 2^round(p). The smallest effective
  weights (most negative shift p; ties broken by the unrounded p) go first, and a pruned weight has
  sign 0 (DeepShift-PS) or latent weight 0 (DeepShift-Q), i.e. effective weight 0: its shift and
  addition can be skipped.
* Conv/linear layers (if selected): |w|; a zero weight's multiply-add can be skipped.

``scope="layer"`` prunes ``ratio`` of every layer; ``scope="global"`` ranks all weights of the same
operator kind together (one threshold for all adder layers, one for all shift layers, ...), because
adder weights (|w| unbounded) and shift weights (|w| <= 1) are not comparable. ``method="random"`` is
the baseline: uniformly random weights. Weights already pruned count towards the ratio and stay pruned.

Masks are boolean buffers ``<layer>.pruning.mask`` (True = kept), so they are in ``state_dict``.
They act in every forward call (the weight is multiplied by the mask, so pruned weights also get a
zero gradient and do not enter the AdderNet adaptive learning rate's norm). Call
:func:`apply_masks` after every ``optimizer.step()`` so that the stored parameters stay exactly 0
(momentum/weight decay would otherwise move them; the energy model reads stored weights).
To load a pruned checkpoint into a freshly built model, call :func:`restore_masks` first.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from shiftadd.errors import CheckpointError
from shiftadd.ops.bitshift import shift_range
from shiftadd.quant.hooks import KINDS, LayerTransform, attach, check_kinds, detach, layer_kind
from shiftadd.quant.qat import select_layers
from shiftadd.utils import Patterns

METHODS = ("magnitude", "random")
SCOPES = ("global", "layer")
DEFAULT_TYPES = ("adder", "shift")
MASK_NAME = "pruning"


def mask_target(layer: nn.Module) -> str:
    """The parameter a layer's mask zeroes: ``sign`` (DeepShift-PS), ``latent_weight`` (-Q), else ``weight``."""
    if layer_kind(layer) == "shift":
        return "sign" if layer.mode == "ps" else "latent_weight"
    return "weight"


class PruningMask(LayerTransform):
    """Holds a layer's mask (buffer ``mask``, True = kept) and applies it in every forward call."""

    priority = 0

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())

    def param_names(self, layer: nn.Module):
        return (mask_target(layer),)

    def transform_param(self, layer: nn.Module, name: str, p: torch.Tensor) -> torch.Tensor:
        return p.masked_fill(~self.mask, 0)

    def extra_repr(self) -> str:
        n = self.mask.numel()
        return f"pruned={n - int(self.mask.sum())}/{n}"


def get_mask(layer: nn.Module) -> Optional[torch.Tensor]:
    """The layer's mask (True = kept), or None if it is not pruned."""
    t = layer._modules.get(MASK_NAME)
    return t.mask if isinstance(t, PruningMask) else None


@torch.no_grad()
def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The weight the hardware holds: masks applied, power-of-two rounding deterministic."""
    mask = get_mask(layer)
    kind = layer_kind(layer)
    if kind == "shift":
        return layer.effective_weight(stochastic=False, mask=mask)
    w = layer.weight.detach()
    return w if mask is None else w.masked_fill(~mask, 0)


@torch.no_grad()
def skipped_ops_mask(layer: nn.Module) -> torch.Tensor:
    """Per weight: can its operation be skipped? Zero shift/conv/linear weights yes; adder weights never
    (|x - 0| is still computed)."""
    w = effective_weight(layer)
    if layer_kind(layer) == "adder":
        return torch.zeros_like(w, dtype=torch.bool)
    return w == 0


@torch.no_grad()
def _scores(layer: nn.Module, method: str, generator: Optional[torch.Generator]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(primary, secondary) importance per weight, flattened; the lowest are pruned first."""
    kind = layer_kind(layer)
    mask = get_mask(layer)
    shape_ref = effective_weight(layer)
    if method == "random":
        primary = torch.rand(shape_ref.shape, generator=generator, dtype=torch.float64).to(shape_ref.device)
        secondary = torch.zeros_like(primary)
    elif kind == "shift":
        primary = effective_weight(layer).abs().to(torch.float64)
        if layer.mode == "ps":
            p_min, p_max = shift_range(layer.weight_bits, "ps")
            secondary = layer.shift.detach().clamp(p_min, p_max).to(torch.float64)
        else:
            secondary = layer.latent_weight.detach().abs().to(torch.float64)
    else:
        primary = effective_weight(layer).abs().to(torch.float64)
        secondary = torch.zeros_like(primary)
    if mask is not None:
        primary = primary.masked_fill(~mask, -1.0)  # already pruned: first
    return primary.flatten(), secondary.flatten()


def _lowest(primary: torch.Tensor, secondary: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k entries lowest in (primary, secondary) lexicographic order (stable)."""
    order = torch.argsort(secondary, stable=True)
    order = order[torch.argsort(primary[order], stable=True)]
    return order[:k]


def _prune_group(layers: List[Tuple[str, nn.Module]], ratio: float, method: str,
                 generator: Optional[torch.Generator]) -> None:
    scores = [_scores(m, method, generator) for _, m in layers]
    sizes = [p.numel() for p, _ in scores]
    device = scores[0][0].device
    primary = torch.cat([p.to(device) for p, _ in scores])
    secondary = torch.cat([s.to(device) for _, s in scores])
    k = int(round(ratio * primary.numel()))
    keep = torch.ones(primary.numel(), dtype=torch.bool, device=device)
    keep[_lowest(primary, secondary, k)] = False
    for (name, layer), part in zip(layers, torch.split(keep, sizes)):
        old = get_mask(layer)
        ref = getattr(layer, mask_target(layer))
        new = part.view(ref.shape).to(ref.device)
        if old is not None:
            new = new & old
        attach(layer, MASK_NAME, PruningMask(new))
    apply_masks(nn.ModuleList([m for _, m in layers]))


def prune(model: nn.Module, ratio: float, method: str = "magnitude", scope: str = "global",
          layer_types: Sequence[str] = DEFAULT_TYPES, include: Patterns = None,
          exclude: Patterns = None, seed: Optional[int] = None) -> Dict[str, Any]:
    """Prune ``ratio`` of the weights of the selected layers, in place; returns :func:`sparsity_report`.

    ``ratio`` in [0, 1): the fraction of weights that are pruned afterwards (per layer with
    ``scope="layer"``, per operator kind with ``scope="global"``); exactly ``round(ratio * n)``
    weights, ties broken deterministically. Pruning again with a higher ratio extends the masks.
    ``seed`` seeds ``method="random"``.
    """
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 <= ratio < 1:
        raise ValueError(f"pruning ratio must be a number in [0, 1), got {ratio!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    kinds = check_kinds(layer_types)
    layers = select_layers(model, kinds, include, exclude)
    if not layers:
        raise ValueError(f"the model has no layers of type {list(kinds)} to prune")
    generator = None
    if method == "random":
        generator = torch.Generator()
        generator.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2 ** 62, ()).item()))
    items = list(layers.items())
    if scope == "layer":
        groups = [[it] for it in items]
    else:
        groups = [[it for it in items if layer_kind(it[1]) == k] for k in kinds]
        groups = [g for g in groups if g]
    for g in groups:
        _prune_group(g, float(ratio), method, generator)
    return sparsity_report(model, kinds)


@torch.no_grad()
def apply_masks(model: nn.Module) -> int:
    """Zero the stored pruned parameters (sign / latent weight / weight); call after every optimizer step.
    Returns the number of masked layers."""
    n = 0
    for m in model.modules():
        mask = get_mask(m)
        if mask is None:
            continue
        getattr(m, mask_target(m)).masked_fill_(~mask, 0)
        n += 1
    return n


def remove_pruning(model: nn.Module) -> int:
    """Make the pruning permanent (pruned parameters stay 0) and drop the masks; returns how many."""
    apply_masks(model)
    n = 0
    for m in list(model.modules()):
        n += detach(m, MASK_NAME) is not None
    return n


def restore_masks(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> int:
    """Attach the masks found in ``state_dict`` (keys ``<layer>.pruning.mask``) to a freshly built model,
    so that ``model.load_state_dict(state_dict)`` then works; returns how many."""
    suffix = MASK_NAME + ".mask"
    n = 0
    for key, value in state_dict.items():
        if not (key == suffix or key.endswith("." + suffix)):
            continue
        prefix = key[: -len(suffix)].rstrip(".")
        try:
            layer = model.get_submodule(prefix)
        except AttributeError:
            raise CheckpointError(f"pruning mask {key!r} belongs to no layer of this model") from None
        if layer_kind(layer) is None:
            raise CheckpointError(f"pruning mask {key!r} is on a {type(layer).__name__}, which cannot be pruned")
        ref = getattr(layer, mask_target(layer))
        if tuple(value.shape) != tuple(ref.shape):
            raise CheckpointError(f"pruning mask {key!r} has shape {tuple(value.shape)}, the layer's weight "
                                  f"{tuple(ref.shape)}")
        attach(layer, MASK_NAME, PruningMask(value.to(ref.device)))
        n += 1
    return n


def sparsity_report(model: nn.Module, layer_types: Sequence[str] = KINDS) -> Dict[str, Any]:
    """Per layer and in total: weights, zero effective weights, masked weights, skippable operations.

    ``{"layers": [{"name", "kind", "weights", "zeros", "masked", "sparsity", "skipped_ops"}...],
    "by_kind": {kind: {...}}, "total": {...}}``; ``sparsity`` = zeros / weights; ``skipped_ops`` =
    fraction of the layer's weight operations that can be skipped (always 0 for adders).
    """
    rows = []
    for name, layer in select_layers(model, layer_types).items():
        w = effective_weight(layer)
        mask = get_mask(layer)
        n = w.numel()
        zeros = int((w == 0).sum())
        rows.append({"name": name, "kind": layer_kind(layer), "weights": n, "zeros": zeros,
                     "masked": 0 if mask is None else n - int(mask.sum()),
                     "sparsity": zeros / max(n, 1),
                     "skipped_ops": int(skipped_ops_mask(layer).sum()) / max(n, 1)})

    def total(rs: List[Dict[str, Any]]) -> Dict[str, Any]:
        n = sum(r["weights"] for r in rs)
        z = sum(r["zeros"] for r in rs)
        skipped = sum(r["skipped_ops"] * r["weights"] for r in rs)
        return {"weights": n, "zeros": z, "masked": sum(r["masked"] for r in rs), "sparsity": z / max(n, 1),
                "skipped_ops": skipped / max(n, 1)}

    kinds = sorted({r["kind"] for r in rows}, key=KINDS.index)
    return {"layers": rows, "by_kind": {k: total([r for r in rows if r["kind"] == k]) for k in kinds},
            "total": total(rows)}


def format_sparsity_report(report: Mapping[str, Any]) -> str:
    """A plain-text table of :func:`sparsity_report`."""
    lines = [f"{'layer':<40} {'kind':<7} {'weights':>10} {'zeros':>10} {'sparsity':>9} {'skip ops':>9}"]
    for r in report["layers"]:
        lines.append(f"{r['name']:<40} {r['kind']:<7} {r['weights']:>10} {r['zeros']:>10} "
                     f"{100 * r['sparsity']:>8.2f}% {100 * r['skipped_ops']:>8.2f}%")
    for k, t in report["by_kind"].items():
        lines.append(f"{'[' + k + ']':<40} {'':<7} {t['weights']:>10} {t['zeros']:>10} "
                     f"{100 * t['sparsity']:>8.2f}% {100 * t['skipped_ops']:>8.2f}%")
    t = report["total"]
    lines.append(f"{'total':<40} {'':<7} {t['weights']:>10} {t['zeros']:>10} {100 * t['sparsity']:>8.2f}% "
                 f"{100 * t['skipped_ops']:>8.2f}%")
    return "\n".join(lines)
