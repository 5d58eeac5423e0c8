"""Train and evaluate several operator families of a model side by side (used by ``shiftadd demo``)."""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from shiftadd.errors import UserError
from shiftadd.train.config import make_config

#: What ``shiftadd demo`` compares: a small CIFAR-style ResNet in four operator families.
DEMO_VARIANTS: Tuple[Tuple[str, str], ...] = (
    ("resnet8", "conv"), ("resnet8", "adder"), ("resnet8", "shift-ps"), ("resnet8", "shiftadd"))

ModelOp = Union[Tuple[str, str], str]


def _parse(entry: ModelOp) -> Tuple[str, str]:
    if isinstance(entry, str):
        if ":" not in entry:
            raise UserError(f"expected 'model:op', got {entry!r}")
        model, op = entry.split(":", 1)
        return model, op
    if isinstance(entry, (tuple, list)) and len(entry) == 2:
        return str(entry[0]), str(entry[1])
    raise UserError(f"expected a (model, op) pair or 'model:op', got {entry!r}")


def compare(models_ops: Iterable[ModelOp] = DEMO_VARIANTS, dataset: str = "embedded", epochs: int = 10, *,
            data_dir: Optional[str] = None, subset: Optional[int] = None, batch_size: int = 64,
            recipe: str = "shiftaddnet", seed: int = 0, threads: Optional[int] = 1, out: Optional[str] = None,
            progress: bool = False, log: Optional[Callable[[str], None]] = None, plot: Optional[str] = None,
            model_options: Optional[Dict[str, Any]] = None, **overrides: Any) -> List[Dict[str, Any]]:
    """Train every ``(model, op)`` of ``models_ops`` with the same data, recipe and seed; return one row each.

    Each row holds ``model, op, test_acc, test_loss, train_acc, train_loss, params, train_seconds,
    total_seconds, epochs, history``. ``out`` (optional) keeps each run's checkpoint, metrics and curves
    in ``out/<model>-<op>``; ``plot`` (optional) writes a side-by-side PNG. Extra keyword arguments
    override recipe fields (``lr``, ``schedule``, ``test_subset``, ...). The data set is loaded once.

    The defaults are ``shiftadd demo``'s: ResNet-8 (16/32/64 channels) as conv, adder, shift-ps and
    shiftadd on the embedded 2,000/1,000-image CIFAR-10 subset, 10 epochs of batch 64. ``threads=1``
    by default: on a CPU shared with other work, more torch threads can be ten times slower.
    """
    from shiftadd.train.loop import train
    from shiftadd.train.task import load_data

    log = log or print
    pairs = [_parse(e) for e in models_ops]
    if not pairs:
        raise UserError("nothing to compare: give at least one (model, op)")
    base = dict(dataset=dataset, data_dir=data_dir, subset=subset, epochs=epochs, batch_size=batch_size,
                seed=seed, threads=threads, progress=progress, model_options=dict(model_options or {}))
    base.update(overrides)
    configs = [make_config(recipe, model=m, op=o, **base) for m, o in pairs]
    data = load_data(configs[0])
    rows: List[Dict[str, Any]] = []
    for cfg in configs:
        run_out = os.path.join(out, f"{cfg.model}-{cfg.op}") if out else None
        t0 = time.time()
        res = train(cfg, run_out, data=data, log=log)
        final = res.final
        rows.append({"model": cfg.model, "op": cfg.op, "test_acc": final["test_acc"], "test_loss": final["test_loss"],
                     "train_acc": final["train_acc"], "train_loss": final["train_loss"], "params": res.params,
                     "train_seconds": res.train_seconds, "total_seconds": time.time() - t0, "epochs": cfg.epochs,
                     "history": res.history})
    if plot:
        from shiftadd.train.plots import plot_comparison

        plot_comparison(rows, plot, title=f"{dataset}: {epochs} epochs, batch {batch_size}, seed {seed}")
    return rows


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    """A Markdown table of :func:`compare` rows (accuracy, loss, parameters, training time)."""
    header = "| model | op | test acc | test loss | train acc | params | train time |"
    lines = [header, "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['op']} | {100 * r['test_acc']:.2f}% | {r['test_loss']:.4f} | "
                     f"{100 * r['train_acc']:.2f}% | {r['params']:,} | {r['train_seconds']:.1f} s |")
    return "\n".join(lines)
