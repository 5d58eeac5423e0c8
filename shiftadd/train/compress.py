"""Fixed-point training, pruning, freezing and fine-tuning inside ``shiftadd train``.

The configuration fields ``quant``, ``quant_types``, ``prune``/``prune_*``, ``freeze`` and
``init_from`` (see :class:`~shiftadd.train.config.TrainConfig`) act on the freshly built model in a
fixed order, the same for a new run, a resumed run and ``shiftadd eval``:

1. pruning masks found in the state to load are attached (:func:`shiftadd.prune.restore_masks`),
   then the state is loaded — a fine-tuning start point (``init_from``) or a checkpoint;
2. ``freeze`` (DeepShift: sign and/or shift of bit-shift layers stop learning), and only for a new
   run ``prune`` (magnitude or random pruning to the target ratio; masks already there stay);
3. ``quant``: fixed-point quantizers (QAT) on the selected layer types (they add no state).

During training the trainer calls :func:`shiftadd.prune.apply_masks` after every optimizer step so pruned
parameters stay exactly zero.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from shiftadd.errors import CheckpointError, UserError

#: Settings a fine-tuning run (``init_from``) takes from the run it starts from unless given.
INHERITED = ("model", "op", "model_options", "dataset", "data_dir", "subset", "test_subset", "val_split",
             "augment",
             "batch_size", "test_batch_size", "recipe", "optimizer", "momentum", "nesterov", "weight_decay",
             "adaptive_eta", "shift_param_groups", "shift_lr", "bn_recalibration", "seed", "quant", "quant_types",
             "freeze")


#: ``init_from`` of a fine-tuning run that starts from shipped pretrained weights: ``pretrained:NAME``.
PRETRAINED_PREFIX = "pretrained:"


def _pretrained_name(init_from: str) -> Optional[str]:
    return init_from[len(PRETRAINED_PREFIX):] if init_from.startswith(PRETRAINED_PREFIX) else None


def inherited_settings(run: str) -> Dict[str, Any]:
    """The :data:`INHERITED` settings of the run saved in ``run`` (a fine-tuning run's defaults); for
    ``pretrained:NAME``, the architecture, operator, options, dataset and recipe of its model card."""
    name = _pretrained_name(run)
    if name is not None:
        from shiftadd.models.pretrained import load_card

        card = load_card(name)
        settings = {"model": card.model, "op": card.op, "model_options": dict(card.model_options),
                    "dataset": card.dataset}
        return {**settings, "recipe": card.recipe} if card.recipe else settings
    from shiftadd.train.checkpoint import load_checkpoint_meta

    saved = load_checkpoint_meta(run)["config"]
    return {k: saved[k] for k in INHERITED if k in saved}


def start_state(init_from: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """``(state_dict, description)`` a fine-tuning run starts from: a run's checkpoint or, for
    ``pretrained:NAME``, the SHA-256-checked shipped weights."""
    name = _pretrained_name(init_from)
    if name is not None:
        from shiftadd.models.pretrained import load_state_dict

        return dict(load_state_dict(name)[1]), f"the pretrained weights {name!r}"
    from shiftadd.train.checkpoint import load_checkpoint

    return dict(load_checkpoint(init_from).model_state), f"the run in {init_from}"


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Attach the pruning masks of ``state`` to ``model``, then load ``state`` (strict)."""
    from shiftadd.prune import restore_masks

    try:
        restore_masks(model, state)
        model.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{what} does not match the model: {str(exc).splitlines()[0]}") from None


def prepare_model(model: nn.Module, config: Any, state: Optional[Mapping[str, torch.Tensor]] = None,
                  new_run: bool = True, what: str = "checkpoint") -> Dict[str, Any]:
    """Load ``state`` (with its masks) and apply ``config``'s freeze/prune (new runs) and quantizers.

    Returns a summary ``{"pruned": sparsity report or None, "quantized": number of quantized layers,
    "frozen": number of frozen parameters}``.
    """
    from shiftadd import prune as P
    from shiftadd import quant as Q

    if state is not None:
        load_state(model, state, what)
    summary: Dict[str, Any] = {"pruned": None, "quantized": 0, "frozen": 0}
    try:
        if config.freeze:
            summary["frozen"] = Q.freeze(model, sign="sign" in config.freeze, shift="shift" in config.freeze)
        if new_run and config.prune:
            summary["pruned"] = P.prune(model, config.prune, method=config.prune_method, scope=config.prune_scope,
                                        layer_types=config.prune_types, seed=config.seed)
        if config.quant:
            summary["quantized"] = len(Q.quantize_model(model, config.quant, layer_types=config.quant_types))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return summary
