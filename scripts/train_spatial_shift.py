"""Short CPU training of a spatial-shift network on CIFAR-10, for docs/spatial_shift.md.

Plain SGD (momentum 0.9, Nesterov off), linear warm-up then cosine decay over a fixed number of
steps, random crop + flip, channels_last memory format. The loss adds the sparse-shift L1
penalty ``model.regularization_loss()`` (zero when the model has no sparse shift layer). After
training: test accuracy on the 10,000 test images; for sparse shift layers also the sparsity
per layer, and the accuracy after removing the all-zero shift layers and freezing the rest to
integer shifts (it must not change).

    python scripts/train_spatial_shift.py --model shiftresnet20 --expansion 3 --epochs 1 \
        --data /work/shared/data/cifar10-jpeg.tar.gz --out runs/srn20-e3.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import shiftadd.models.shiftnet  # noqa: E402,F401  (registers the models)
from shiftadd.data import BatchLoader, load_dataset  # noqa: E402
from shiftadd.models import create, resolve_model_name  # noqa: E402
from shiftadd.nn.spatial_shift import (  # noqa: E402
    ActiveShift, SparseShift, freeze_sparse_shifts, remove_zero_shift_layers, shift_sparsity_report,
    total_shift_sparsity)


@torch.no_grad()
def evaluate(model, data, batch_size: int = 500) -> float:
    model.eval()
    correct = n = 0
    for x, y in BatchLoader(data, batch_size):
        out = model(x.contiguous(memory_format=torch.channels_last))
        correct += int((out.argmax(1) == y).sum())
        n += len(y)
    return correct / n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shiftresnet20")
    p.add_argument("--op", default="conv")
    p.add_argument("--expansion", type=float, default=3)
    p.add_argument("--shift", default=None, help="grouped, active or sparse (model default if omitted)")
    p.add_argument("--l1", type=float, default=5e-4, help="sparse-shift penalty lambda")
    p.add_argument("--data", default="/work/shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--shift-lr", type=float, default=None, help="learning rate of shift parameters (default lr)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=None, help="stop training early after this many minutes")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    a.model = resolve_model_name(a.model)  # canonical spelling (fe_net -> fe-net)
    options = {} if a.model.startswith("resnet") else {"expansion": a.expansion}
    if a.shift is not None:
        options["shift"] = a.shift
    if (a.shift == "sparse") or (a.model == "fe-net" and a.shift in (None, "sparse")):
        options["shift_options"] = {"l1": a.l1}
    model = create(a.model, op=a.op, **options).to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    shift_params = [m.shift for m in model.modules() if isinstance(m, (SparseShift, ActiveShift))]
    ids = {id(q) for q in shift_params}
    decay = [q for q in model.parameters() if id(q) not in ids and q.dim() > 1]
    no_decay = [q for q in model.parameters() if id(q) not in ids and q.dim() <= 1]
    groups = [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if shift_params:  # the L1 penalty is their regulariser: no weight decay
        groups.append({"params": shift_params, "weight_decay": 0.0, "lr": a.shift_lr or a.lr})
    for g in groups:
        g["base_lr"] = g.get("lr", a.lr)
    opt = torch.optim.SGD(groups, lr=a.lr, momentum=0.9)

    t0 = time.time()
    train, test = load_dataset("folder", a.data)
    load_s = time.time() - t0
    loader = BatchLoader(train, a.batch_size, shuffle=True, augment=True, seed=a.seed, drop_last=True)
    steps_per_epoch = len(train) // a.batch_size
    total = max(1, int(round(a.epochs * steps_per_epoch)))
    print(f"{a.model} e={a.expansion} op={a.op} shift={options.get('shift', 'default')}: {params} parameters, "
          f"{total} steps of {a.batch_size} ({a.epochs:g} epochs), data loaded in {load_s:.0f}s", flush=True)

    step, epoch, stopped_early = 0, 0, False
    t_start = time.time()
    run_loss = run_acc = 0.0
    model.train()
    while step < total and not stopped_early:
        loader.set_epoch(epoch)
        for x, y in loader:
            if step >= total:
                break
            if a.max_minutes is not None and time.time() - t_start > 60 * a.max_minutes:
                stopped_early = True
                break
            f = (step + 1) / a.warmup_steps if step < a.warmup_steps else \
                0.5 * (1 + math.cos(math.pi * (step - a.warmup_steps) / max(1, total - a.warmup_steps)))
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * f
            out = model(x.contiguous(memory_format=torch.channels_last))
            ce = F.cross_entropy(out, y)
            loss = ce + model.regularization_loss() if hasattr(model, "regularization_loss") else ce
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run_loss = 0.98 * run_loss + 0.02 * ce.item() if step else ce.item()
            run_acc = 0.98 * run_acc + 0.02 * float((out.argmax(1) == y).float().mean()) if step else 0.1
            step += 1
            if step % 50 == 0 or step == total:
                el = time.time() - t_start
                extra = ""
                if any(isinstance(m, SparseShift) for m in model.modules()):
                    extra = f"  shift sparsity {100 * total_shift_sparsity(model):.1f}%"
                print(f"step {step}/{total}  loss {run_loss:.3f}  acc {100 * run_acc:.1f}%  "
                      f"{el / 60:.1f} min  {step * a.batch_size / el:.0f} img/s{extra}", flush=True)
        epoch += 1
    train_s = time.time() - t_start

    acc = evaluate(model, test)
    result = {"model": a.model, "op": a.op, "expansion": a.expansion, "shift": options.get("shift", "default"),
              "params": params, "steps": step, "planned_steps": total, "batch_size": a.batch_size,
              "images_seen": step * a.batch_size, "epochs": step * a.batch_size / len(train),
              "stopped_early": stopped_early, "lr": a.lr, "weight_decay": a.weight_decay, "seed": a.seed,
              "threads": a.threads, "train_minutes": train_s / 60, "test_acc": acc}
    if any(isinstance(m, SparseShift) for m in model.modules()):
        result["l1"] = a.l1
        result["sparsity_per_layer"] = shift_sparsity_report(model)
        result["sparsity"] = total_shift_sparsity(model)
        removed = remove_zero_shift_layers(model)
        freeze_sparse_shifts(model)
        result["removed_layers"] = removed
        result["test_acc_after_removal"] = evaluate(model, test)
    print(json.dumps({k: v for k, v in result.items() if k != "sparsity_per_layer"}, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
