"""Numbers for docs/deploy.md: ResNet-20 (conv / adder / shift-ps / shiftadd) exported to C at 8 bits.

For each family: Cortex-M3 flash and RAM (arm-none-eabi-size, -fstack-usage), multiplications per
inference in the generated code, host single-thread images/s of the C build beside PyTorch float32,
bit-exactness of the host C and of the QEMU Cortex-M3 build against the integer reference, and the
float / integer / C accuracy. With ``--run OP=RUN`` (repeatable) the trained run's model is exported and
checked on the first ``--images`` images of its full test split (all 10,000 by default); without it the
models are untrained (BatchNorm statistics from training images, embedded CIFAR-10 images), so
accuracies are chance.

    OMP_NUM_THREADS=1 python scripts/export_numbers.py --images 200 --qemu-images 3
    OMP_NUM_THREADS=1 python scripts/export_numbers.py --run conv=results/runs/r20-conv --qemu-images 20
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
import torch.nn as nn


def recalibrate_bn(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """BatchNorm statistics from ``x`` in batches of 64 (the trainer's recalibration), then eval mode."""
    from shiftadd.train.evaluate import recalibrate_batchnorm

    batches = [(chunk, torch.zeros(len(chunk))) for chunk in x.split(64)]
    recalibrate_batchnorm(model, batches, len(x), torch.device("cpu"))
    return model.eval()


def train_briefly(model: nn.Module, train, steps: int, lr: float = 0.05) -> None:
    """Plain SGD with momentum, no augmentation: enough for a model that is clearly better than chance."""
    import torch.nn.functional as F

    from shiftadd.data import BatchLoader

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    step, epoch = 0, 0
    loader = BatchLoader(train, 64, shuffle=True, augment=False)
    while step < steps:
        loader.set_epoch(epoch)
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step >= steps:
                break
        epoch += 1
    model.eval()


def main() -> None:
    from shiftadd.data import BatchLoader, load_dataset
    from shiftadd.export import build_integer_network, toolchain as tc
    from shiftadd.export.cgen import write_c
    from shiftadd.models import create

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--ops", default="conv,adder,shift-ps,shiftadd")
    ap.add_argument("--run", action="append", default=[], metavar="OP=RUN",
                    help="export this trained run for operator OP (repeatable; replaces --ops)")
    ap.add_argument("--data-dir", default=None, help="where the runs' data set lives now")
    ap.add_argument("--images", type=int, default=None,
                    help="test images for the host check (default: 200 embedded, or the runs' whole test split)")
    ap.add_argument("--qemu-images", type=int, default=3)
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--train-steps", type=int, default=0,
                    help="first train each model this many SGD steps (batch 64) on the embedded training images")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--out", default=None, help="keep the generated folders here")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = dict(item.split("=", 1) for item in args.run)
    ops = list(runs) or [o.strip() for o in args.ops.split(",") if o.strip()]
    rows = []
    for op in ops:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        if op in runs:
            from shiftadd.train.runs import checkpoint_config, load_trained_model
            from shiftadd.train.task import load_data

            train, test = load_data(checkpoint_config(runs[op], args.data_dir))
            model = load_trained_model(runs[op], "cpu", (train, test))[0].eval()
            n = min(args.images or len(test), len(test))
            images, labels = next(iter(BatchLoader(test.subset(torch.arange(n)), n, shuffle=False, augment=False)))
        else:
            train, test = load_dataset("embedded")
            n = args.images or 200
            images, labels = next(iter(BatchLoader(test.balanced_subset(n), n, shuffle=False)))
            model = create(args.model, op=op, width=args.width)
            if args.train_steps:
                train_briefly(model, train, args.train_steps)
        train_s = time.perf_counter() - t0
        calib = next(iter(BatchLoader(train, args.calib, shuffle=False, augment=False)))[0]
        if op not in runs and not args.train_steps:
            model = recalibrate_bn(model, calib)
        model.eval()
        t0 = time.perf_counter()
        net = build_integer_network(model, calib)
        build_s = time.perf_counter() - t0
        d = os.path.join(args.out, op) if args.out else tempfile.mkdtemp(prefix=f"export_{op}_")
        write_c(net, d)
        q = net.quantize_input(images)
        ref = net(q)
        exe = tc.build_host(d, os.path.join(d, "build"))
        host = tc.run_host(exe, q, os.path.join(d, "build"), net.num_classes)
        with torch.no_grad():
            t0 = time.perf_counter()
            float_logits = torch.cat([model(b) for b in images.split(50)])
            float_s = time.perf_counter() - t0
        kernels_ips = None
        if op != "conv":  # the library's int8 adder / shift kernels (PyTorch modules, float in and out)
            import copy
            from shiftadd.export import to_integer

            int_model = to_integer(copy.deepcopy(model)).eval()
            with torch.no_grad():
                int_model(images[:2])
                t0 = time.perf_counter()
                for b in images.split(50):
                    int_model(b)
                kernels_ips = round(len(images) / (time.perf_counter() - t0), 1)
        row = {"op": op, "model": args.model, "run": runs.get(op), "train_steps": args.train_steps, "train_s": round(train_s, 1),
               "ops": len(net.ops), "build_s": round(build_s, 2),
               "host_bit_exact": bool(torch.equal(host["logits"], ref)), "images": len(q),
               "c_images_per_s": round(len(q) / host["seconds"], 1),
               "torch_float32_images_per_s": round(len(q) / float_s, 1),
               "torch_int8_kernels_images_per_s": kernels_ips,
               "float_acc": float((float_logits.argmax(1) == labels).double().mean()),
               "int_acc": float((ref.argmax(1) == labels).double().mean()),
               "c_acc": float((host["logits"].argmax(1) == labels).double().mean()),
               "multiplications": net.multiplications()}
        if tc.arm_tools_missing() is None:
            arm_dir = os.path.join(d, "arm")
            size = tc.arm_size(d, arm_dir)
            row.update(flash_bytes=size.flash, weights_and_code_text=size.text, arena_bss=size.bss,
                       stack_bytes=size.stack, ram_bytes=size.ram)
            counts = tc.multiplications_in_object(tc.compile_object(d, arm_dir, "arm"), "arm")
            row["arm_mul_instructions_in_adder_shift_functions"] = sum(
                c for f, c in counts.items() if f.endswith(("_adder", "_shift")))
            n = min(args.qemu_images, len(q))
            t0 = time.perf_counter()
            qemu_logits = tc.run_qemu(tc.build_arm(d, arm_dir), q[:n], arm_dir, net.num_classes)
            row.update(qemu_images=n, qemu_bit_exact=bool(torch.equal(qemu_logits, ref[:n])),
                       qemu_s=round(time.perf_counter() - t0, 1))
        host_counts = tc.multiplications_in_object(tc.compile_object(d, os.path.join(d, "build"), "host"))
        row["host_mul_instructions_in_adder_shift_functions"] = sum(
            c for f, c in host_counts.items() if f.endswith(("_adder", "_shift")))
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
