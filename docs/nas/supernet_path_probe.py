"""Probe of supernet training (docs/nas.md, Results): ``[LR=0.1] [STEPS=60] [CLIP=c] [ETA=0] python supernet_path_probe.py MODE [PATHS]``.

MODE: separate | shared | heterogeneous. PATHS: an operator (every block that operator, width 1.0: a fixed
path), ``randop`` (a random operator per block each step), ``convadder`` / ``convshift`` (random between two),
``randwidth`` (conv, random widths), ``fixedmix`` (one random mix kept for every step); omitted: the
supernet's own uniform sampling. SGD momentum 0.9, batch 64 of the embedded CIFAR-10 training images,
AdderNet's adaptive LR (ETA=0: off), optional gradient clipping (CLIP); prints the loss every 10 steps.
"""
import torch, numpy as np, sys, time
import torch.nn.functional as F
torch.set_num_threads(1)
from shiftadd.nas import SearchSpace, Supernet, Architecture, BlockChoice
from shiftadd.data import load_dataset, BatchLoader
from shiftadd.optim import scale_adder_gradients
tr, te = load_dataset("embedded")
space = SearchSpace(depth=20)
torch.manual_seed(0)
net = Supernet(space, mode=sys.argv[1]).train()
opt = torch.optim.SGD(net.parameters(), lr=float(__import__("os").environ.get("LR", "0.1")), momentum=0.9, weight_decay=1e-4)
fixed = sys.argv[2] if len(sys.argv) > 2 else None
loader = BatchLoader(tr, 64, shuffle=True)
step = 0
t = time.time()
for epoch in range(100):
    loader.set_epoch(epoch)
    for x, y in loader:
        rng = np.random.default_rng(step)
        if fixed == "randop":
            out = net.run_path(x, Architecture(tuple(BlockChoice(str(rng.choice(["conv","adder","shift-ps","shiftadd"])), 1.0) for _ in range(space.num_blocks))))
        elif fixed == "fixedmix":
            r0 = np.random.default_rng(123)
            out = net.run_path(x, Architecture(tuple(BlockChoice(str(r0.choice(["conv","adder","shift-ps","shiftadd"])), 1.0) for _ in range(space.num_blocks))))
        elif fixed == "randwidth":
            out = net.run_path(x, Architecture(tuple(BlockChoice("conv", float(rng.choice([0.5,0.75,1.0]))) for _ in range(space.num_blocks))))
        elif fixed == "convshift":
            out = net.run_path(x, Architecture(tuple(BlockChoice(str(rng.choice(["conv","shift-ps"])), 1.0) for _ in range(space.num_blocks))))
        elif fixed == "convadder":
            out = net.run_path(x, Architecture(tuple(BlockChoice(str(rng.choice(["conv","adder"])), 1.0) for _ in range(space.num_blocks))))
        elif fixed:
            out = net.run_path(x, Architecture(tuple(BlockChoice(fixed, 1.0) for _ in range(space.num_blocks))))
        else:
            out = net(x)
        loss = F.cross_entropy(out, y)
        opt.zero_grad(); loss.backward(); (scale_adder_gradients(net, 0.2) if __import__("os").environ.get("ETA", "1") == "1" else None); (torch.nn.utils.clip_grad_norm_(net.parameters(), float(__import__("os").environ["CLIP"])) if "CLIP" in __import__("os").environ else None); opt.step()
        step += 1
        if step % 10 == 0:
            print(step, round(loss.item(), 3), f"max|logit| {out.abs().max().item():.1f}", f"{time.time()-t:.0f}s", flush=True)
        if step >= int(__import__("os").environ.get("STEPS", "60")): sys.exit()
