"""``shiftadd export``: a trained run -> a standalone integer C library (model.h, model.c).

The run's model is calibrated on ``--calib`` training images (no augmentation), lowered to the
integer reference network (:mod:`shiftadd.export.intnet`) and written as C99. With ``--verify N``
the C is compiled with the host compiler and run on N test images: its logits must equal the
PyTorch integer model's bit for bit, and the float / integer / C accuracies are reported.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict

from shiftadd.errors import UserError


def register(subparsers) -> None:
    """Add the ``export`` sub-command."""
    p = subparsers.add_parser(
        "export", help="export a trained run to standalone integer C (model.h/model.c, no float, no malloc)",
        description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="run directory of the trained model")
    p.add_argument("--format", default="c", help="output format (only 'c')")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for model.h, model.c and export.json")
    p.add_argument("--calib", type=int, default=256, metavar="N", help="calibration images (default 256)")
    p.add_argument("--bits", type=int, default=8, help="activation / weight bits, 2..8 (default 8)")
    p.add_argument("--adder-range", dest="adder_range", choices=("folded", "max"), default="folded",
                   help="what an adder layer's shared scale covers: the activations, with the weights beyond "
                        "them folded into the bias exactly (default), or max(activations, weights)")
    p.add_argument("--calibration", choices=("mse", "max"), default="mse",
                   help="activation scales: least squared error over the calibration images (default) or max-abs")
    p.add_argument("--verify", type=int, default=0, metavar="N",
                   help="compile with the host cc and check N test images bit for bit (default 0: skip)")
    p.add_argument("--data-dir", dest="data_dir", default=None, help="where the run's data set lives now")
    p.add_argument("--json", action="store_true", help="print the export report as JSON")
    p.set_defaults(func=_cmd_export)


def calibration_batch(train, n: int):
    """The first ``n`` training images, normalised, without augmentation (a float batch)."""
    from shiftadd.data import BatchLoader

    n = min(int(n), len(train))
    return next(iter(BatchLoader(train, n, shuffle=False, augment=False)))[0]


def verify_c(net, out_dir: str, images, labels) -> Dict[str, Any]:
    """Compile the C in ``out_dir`` with the host cc, run it on ``images``; compare with ``net``."""
    import torch

    from shiftadd.export import toolchain

    build = os.path.join(out_dir, "build")
    exe = toolchain.build_host(out_dir, build)
    q = net.quantize_input(images)
    res = toolchain.run_host(exe, q, build, net.num_classes)
    ref = net(q)
    c_logits = res["logits"]
    return {"images": int(len(q)), "bit_exact": bool(torch.equal(c_logits, ref)),
            "int_acc": float((ref.argmax(1) == labels).double().mean()),
            "c_acc": float((c_logits.argmax(1) == labels).double().mean()),
            "c_images_per_s": len(q) / max(res["seconds"], 1e-9)}


def _cmd_export(args) -> int:
    import torch

    from shiftadd.export import export_c
    from shiftadd.export.cgen import arena_bytes
    from shiftadd.train.runs import checkpoint_config, load_trained_model
    from shiftadd.train.task import load_data

    if args.format != "c":
        raise UserError(f"--format {args.format!r} is not supported; use --format c")
    if args.calib < 1:
        raise UserError("--calib must be a positive number of images")
    if not 2 <= args.bits <= 8:
        raise UserError(f"--bits must be in 2..8 (int8 storage), got {args.bits}")
    config = checkpoint_config(args.checkpoint, args.data_dir)
    train, test = load_data(config)
    model, _, _ = load_trained_model(args.checkpoint, "cpu", (train, test))
    net = export_c(model, calibration_batch(train, args.calib), args.out, bits=args.bits, adder_range=args.adder_range,
                   calibration=args.calibration)
    report: Dict[str, Any] = {
        "out": args.out, "model": config.model, "op": config.op, "bits": args.bits, "adder_range": args.adder_range,
        "calibration": args.calibration,
        "input_frac": net.input_frac, "logit_frac": net.logit_frac, "arena_bytes": arena_bytes(net),
        "ops": len(net.ops), "multiplications": net.multiplications(),
        "normalisation": {"mean": list(train.mean), "std": list(train.std)},
    }
    if args.verify:
        from shiftadd.data import BatchLoader

        n = min(args.verify, len(test))
        images, labels = next(iter(BatchLoader(test.subset(torch.arange(n)), n, shuffle=False, augment=False)))
        with torch.no_grad():
            predictions = torch.cat([model(part).argmax(1) for part in images.split(256)])
        float_acc = float((predictions == labels).double().mean())
        report["verify"] = {"float_acc": float_acc, **verify_c(net, args.out, images, labels)}
    with open(os.path.join(args.out, "export.json"), "w") as f:
        json.dump(report, f, indent=1)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        mult = report["multiplications"]
        print(f"wrote {args.out}/model.h, model.c: {len(net.ops)} ops, arena {report['arena_bytes']} bytes, "
              f"{mult['total']} multiplications per image ({mult['conv_mac']} in conv layers, "
              f"{mult['requant']} in requantization)")
        if "verify" in report:
            v = report["verify"]
            print(f"verified on {v['images']} test images: C == integer model bit for bit: {v['bit_exact']}; "
                  f"accuracy float {v['float_acc']:.4f}, integer {v['int_acc']:.4f}, C {v['c_acc']:.4f}")
    if "verify" in report and not report["verify"]["bit_exact"]:
        return 1
    return 0
