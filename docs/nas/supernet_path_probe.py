"""Probe of supernet training (docs/nas.md, Results): which path-sampling schemes let a ResNet-20 supernet learn.

    [LR=0.1] [STEPS=100] [WARMUP=0] [ETA=0.2] [CLIP=c] [SHARE=separate] python supernet_path_probe.py PATHS

PATHS: an operator (``conv``, ``adder``, ...: every block that operator, width 1.0, a fixed path);
``randop`` (a random operator per block each step); ``randblock`` (conv or adder per block each step);
``convshift`` (conv or shift-ps per block); ``path`` (all-conv or all-adder, drawn per step); ``one``
(conv everywhere, block 4 conv or adder per step); ``fixedmix`` (one random mix kept for every step);
``randwidth`` (conv, random widths); ``fair`` (FairNAS strict fairness: four random-op paths per step in
which every block runs each operator once, gradients averaged); ``supernet`` (the supernet's own uniform sampling). SGD momentum 0.9,
weight decay 1e-4, batch 64 of the embedded CIFAR-10 training images, linear warm-up over WARMUP steps,
AdderNet's adaptive LR (ETA=0: off), optional gradient clipping (CLIP). Prints the mean training loss of
each 20 steps.
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from shiftadd.data import BatchLoader, load_dataset
from shiftadd.nas import Architecture, BlockChoice, SearchSpace, Supernet
from shiftadd.optim import scale_adder_gradients

FAMILIES = ["conv", "adder", "shift-ps", "shiftadd"]


def path_for(paths: str, step: int, n: int) -> Architecture:
    rng = np.random.default_rng(step)
    widths = [1.0] * n
    if paths == "randop":
        ops = [str(rng.choice(FAMILIES)) for _ in range(n)]
    elif paths == "randblock":
        ops = [str(rng.choice(["conv", "adder"])) for _ in range(n)]
    elif paths == "convshift":
        ops = [str(rng.choice(["conv", "shift-ps"])) for _ in range(n)]
    elif paths == "path":
        ops = [str(rng.choice(["conv", "adder"]))] * n
    elif paths == "one":
        ops = ["conv"] * n
        ops[4] = str(rng.choice(["conv", "adder"]))
    elif paths == "fixedmix":
        ops = [str(op) for op in np.random.default_rng(123).choice(FAMILIES, n)]
    elif paths == "randwidth":
        ops, widths = ["conv"] * n, [float(rng.choice([0.5, 0.75, 1.0])) for _ in range(n)]
    else:
        ops = [paths] * n
    return Architecture(tuple(BlockChoice(o, w) for o, w in zip(ops, widths)))


def main(paths: str) -> None:
    torch.set_num_threads(1)
    env = os.environ
    lr, steps, warmup = float(env.get("LR", "0.1")), int(env.get("STEPS", "100")), int(env.get("WARMUP", "0"))
    eta, clip = float(env.get("ETA", "0.2")), env.get("CLIP")
    train, _ = load_dataset("embedded")
    space = SearchSpace(depth=20)
    torch.manual_seed(0)
    net = Supernet(space, mode=env.get("SHARE", "separate")).train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    loader = BatchLoader(train, 64, shuffle=True)
    losses, step, epoch = [], 0, 0
    while step < steps:
        loader.set_epoch(epoch)
        epoch += 1
        for x, y in loader:
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warmup) if warmup else lr
            opt.zero_grad()
            if paths == "fair":
                rng = np.random.default_rng(step)
                perms = [rng.permutation(FAMILIES) for _ in range(space.num_blocks)]
                loss = 0.0
                for k in range(len(FAMILIES)):
                    arch = Architecture(tuple(BlockChoice(str(p[k]), 1.0) for p in perms))
                    part = F.cross_entropy(net.run_path(x, arch), y) / len(FAMILIES)
                    part.backward()
                    loss += part.detach()
            else:
                out = net(x) if paths == "supernet" else net.run_path(x, path_for(paths, step, space.num_blocks))
                loss = F.cross_entropy(out, y)
                loss.backward()
            if eta:
                scale_adder_gradients(net, eta)
            if clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), float(clip))
            opt.step()
            losses.append(loss.item())
            step += 1
            if step >= steps:
                break
    means = [np.mean(losses[i:i + 20]) for i in range(0, len(losses), 20)]
    print(paths, env.get("SHARE", "separate"), f"lr {lr} warmup {warmup}:", " ".join(f"{m:.3f}" for m in means))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "supernet")
