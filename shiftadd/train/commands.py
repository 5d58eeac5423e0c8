"""``shiftadd models``, ``shiftadd train`` and ``shiftadd eval``."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict

from shiftadd.errors import UserError
from shiftadd.nn.families import op_help

# flag name -> config key, for flags that map one-to-one
_DIRECT = ("model", "op", "dataset", "data_dir", "subset", "test_subset", "val_split", "epochs", "batch_size", "test_batch_size", "lr",
           "momentum", "weight_decay", "optimizer", "schedule", "seed", "device", "workers", "threads",
           "label_smoothing", "grad_clip", "max_loss", "warmup_epochs", "shift_lr", "gamma", "bn_recalibration",
           "quant", "quant_types", "init_from", "prune", "prune_method", "prune_scope", "prune_types", "freeze",
           "task", "src_lang", "tgt_lang", "vocab_size", "max_tokens", "warmup_steps", "beam", "length_penalty",
           "amp")


def _model_option(text: str):
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    if not key.isidentifier():
        raise argparse.ArgumentTypeError(f"bad option name {key!r}")
    try:
        return key, yaml.safe_load(value) if value else None
    except yaml.YAMLError:
        return key, value


def _milestones(text: str):
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions, got {text!r}") from None


def _names(text: str):
    return [v.strip() for v in text.split(",") if v.strip()]


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def register(subparsers) -> None:
    """Add the ``models``, ``train`` and ``eval`` sub-commands."""
    S = argparse.SUPPRESS
    p = subparsers.add_parser("models", help="list architectures and operator families")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_models)

    p = subparsers.add_parser(
        "train", help="train a model (checkpoints, metrics.jsonl and curves.png in --out)",
        description="Train a zoo model. Settings come from the recipe, then --config FILE.yaml, then flags. "
                    "Run under `torchrun --nproc_per_node N` for data-parallel training.")
    g = p.add_argument_group("what to train")
    g.add_argument("--model", default=S, help="architecture (see `shiftadd models`), default resnet20")
    g.add_argument("--op", default=S, help=op_help())
    g.add_argument("--model-option", "-O", dest="model_option", action="append", type=_model_option, default=S,
                   metavar="KEY=VALUE", help="architecture/layer option, e.g. keep_first_last=false, weight_bits=4")
    g.add_argument("--expansion", type=int, default=S,
                   help="expansion of shift-based models (shiftresnet*, fe-net); same as -O expansion=N")
    g.add_argument("--task", default=S, help="classification (default) or translation (recipe transformer, "
                                             "dataset multi30k, model transformer-seq)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=S, help="cifar10, cifar100, mnist, folder or embedded (default cifar10)")
    g.add_argument("--data-dir", dest="data_dir", default=S, help="where the data set lives")
    g.add_argument("--subset", type=_positive_int, default=S, help="train on a class-balanced subset of N images")
    g.add_argument("--test-subset", dest="test_subset", type=_positive_int, default=S,
                   help="evaluate on a class-balanced subset of N test images")
    g.add_argument("--val-split", dest="val_split", type=_positive_int, default=S, metavar="N",
                   help="hold out a class-balanced slice of N training images for validation: per-epoch "
                        "evaluation and the best checkpoint (OUT/best) use it; the test split is evaluated "
                        "only once, at the end")
    g.add_argument("--augment", dest="augment", action="store_true", default=S, help="random crop + flip")
    g.add_argument("--no-augment", dest="augment", action="store_false", default=S, help="no augmentation")
    g = p.add_argument_group("translation (--task translation)")
    g.add_argument("--src-lang", dest="src_lang", default=S, help="source language (default en)")
    g.add_argument("--tgt-lang", dest="tgt_lang", default=S, help="target language (default de)")
    g.add_argument("--vocab-size", dest="vocab_size", type=_positive_int, default=S,
                   help="joint subword vocabulary size (default 8000)")
    g.add_argument("--max-tokens", dest="max_tokens", type=_positive_int, default=S,
                   help="padded tokens per side of a training batch (default 4096)")
    g.add_argument("--warmup-steps", dest="warmup_steps", type=int, default=S,
                   help="inverse-sqrt schedule: warm-up optimizer steps")
    g.add_argument("--beam", type=_positive_int, default=S, help="beam width of the final test BLEU (default 5)")
    g.add_argument("--length-penalty", dest="length_penalty", type=float, default=S,
                   help="beam search: score / length ** penalty (default 1.0)")
    g = p.add_argument_group("recipe (every field can be overridden)")
    g.add_argument("--recipe", default=S, help="addernet, shiftaddnet (default) or deepshift")
    g.add_argument("--config", default=S, metavar="FILE.yaml", help="YAML file of configuration keys")
    g.add_argument("--epochs", type=_positive_int, default=S)
    g.add_argument("--batch-size", dest="batch_size", type=_positive_int, default=S,
                   help="global batch size (split over processes)")
    g.add_argument("--test-batch-size", dest="test_batch_size", type=_positive_int, default=S)
    g.add_argument("--lr", type=float, default=S, help="initial learning rate")
    g.add_argument("--momentum", type=float, default=S)
    g.add_argument("--weight-decay", dest="weight_decay", type=float, default=S)
    g.add_argument("--optimizer", default=S, help="sgd, adam or radam")
    g.add_argument("--schedule", default=S, help="cosine, step or constant")
    g.add_argument("--milestones", type=_milestones, default=S,
                   help="step schedule: fractions of the epochs, e.g. 0.5,0.75")
    g.add_argument("--gamma", type=float, default=S, help="step schedule decay factor")
    g.add_argument("--warmup-epochs", dest="warmup_epochs", type=int, default=S)
    g.add_argument("--eta", dest="adaptive_eta", type=float, default=S,
                   help="AdderNet adaptive learning-rate coefficient (0 turns it off; default 0.2)")
    g.add_argument("--shift-lr", dest="shift_lr", type=float, default=S,
                   help="learning rate of the DeepShift-PS shift/sign parameters (their own group, no weight decay)")
    g.add_argument("--bn-recalibration", dest="bn_recalibration", type=int, default=S, metavar="IMAGES",
                   help="re-estimate BatchNorm statistics on this many training images before each evaluation "
                        "(default: 1024 for models with adder layers, else 0)")
    g.add_argument("--label-smoothing", dest="label_smoothing", type=float, default=S)
    g.add_argument("--grad-clip", dest="grad_clip", type=float, default=S)
    g.add_argument("--max-loss", dest="max_loss", type=float, default=S,
                   help="stop when the loss exceeds this (or is NaN); default 1e4")
    g = p.add_argument_group("fixed point, pruning, freezing, fine-tuning")
    g.add_argument("--quant", default=S, metavar="PRESET",
                   help="fixed-point training: fix32, fix16, fix8 (n-bit weights/activations, 8-bit errors and "
                        "weight gradients, ShiftAddNet) or fixN")
    g.add_argument("--quant-types", dest="quant_types", type=_names, default=S, metavar="TYPES",
                   help="layer types to quantize, comma-separated (default adder,shift,conv,linear)")
    g.add_argument("--init-from", dest="init_from", default=S, metavar="RUN",
                   help="start from the weights (and pruning masks) of a run; its model, op, data, batch, "
                        "optimizer type and quantization are the defaults (learning rate and epochs are not); "
                        "pretrained:NAME starts from shipped weights (`shiftadd eval --list-pretrained`)")
    g.add_argument("--prune", type=float, default=S, metavar="RATIO",
                   help="prune this fraction of the weights before training (e.g. with --init-from: fine-tuning)")
    g.add_argument("--prune-method", dest="prune_method", default=S, help="magnitude (default) or random")
    g.add_argument("--prune-scope", dest="prune_scope", default=S, help="global (default) or layer")
    g.add_argument("--prune-types", dest="prune_types", type=_names, default=S, metavar="TYPES",
                   help="layer types to prune, comma-separated (default adder,shift)")
    g.add_argument("--freeze", type=_names, default=S, metavar="PARTS",
                   help="DeepShift: freeze sign and/or shift of the bit-shift layers, e.g. --freeze sign")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=S)
    g.add_argument("--device", default=S, help="auto (default), cpu, cuda or cuda:N")
    g.add_argument("--amp", default=S, metavar="MODE",
                   help="mixed precision: off (default), bf16 or fp16 (autocast forward and loss; fp16 with a "
                        "gradient scaler); adder layers compute in float32 either way. Cannot change on --resume")
    g.add_argument("--workers", type=int, default=S, help="background threads preparing batches (default 0)")
    g.add_argument("--threads", type=_positive_int, default=S, help="torch CPU threads")
    g.add_argument("--out", default=S, help="run directory (default runs/<model>-<op>-<dataset>)")
    g.add_argument("--resume", default=S, metavar="OUT", help="continue the run saved in OUT")
    g.add_argument("--tensorboard", action="store_true", default=S, help="also log to OUT/tensorboard")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=S,
                   help="no live progress bar (one line per epoch)")
    p.set_defaults(func=_cmd_train)

    p = subparsers.add_parser("eval", help="evaluate a checkpoint (or shipped pretrained weights) on its test set")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="run directory (or its checkpoint.json)")
    what.add_argument("--pretrained", metavar="NAME", help="shipped pretrained weights (see --list-pretrained)")
    what.add_argument("--list-pretrained", dest="list_pretrained", action="store_true",
                      help="list the pretrained weights found (package and $SHIFTADD_WEIGHTS) with their cards")
    p.add_argument("--dataset", default=None,
                   help="--pretrained: evaluate on this data set instead of the card's (e.g. embedded: no download)")
    p.add_argument("--best", action="store_true",
                   help="evaluate the run's best-validation model (runs trained with --val-split)")
    p.add_argument("--data-dir", dest="data_dir", default=None, help="where the data set lives now")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.add_argument("--batch-size", dest="batch_size", type=_positive_int, default=None)
    p.add_argument("--test-subset", dest="test_subset", type=int, default=None, metavar="N",
                   help="evaluate on a class-balanced subset of N test images (0: the whole test set; "
                        "default: what the run used)")
    p.add_argument("--split", default=None, help="translation runs: test (test-2016, default) or val")
    p.add_argument("--beam", type=_positive_int, default=None,
                   help="translation runs: beam width (default: the run's beam for test, greedy for val)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_eval)


def _cmd_models(args) -> int:
    from shiftadd.models import list_models, model_info
    from shiftadd.nn.families import families

    models = []
    for name in list_models():
        info = model_info(name)
        models.append({"name": name, "description": info.description,
                       "input_shape": list(info.input_shape) if info.input_shape else None,
                       "aliases": list(info.aliases), "num_classes": info.num_classes, "paper": info.paper})
    ops = [{"name": f.name, "description": f.description, "multiplication_free": f.multiplication_free,
            "has_adder": f.has_adder, "has_shift": f.has_shift, "paper": f.paper} for f in families()]
    if args.json:
        print(json.dumps({"models": models, "ops": ops}, indent=1))
        return 0
    print("operator families (--op):")
    _print_table(["name", "mult-free", "description"],
                 [[o["name"], "yes" if o["multiplication_free"] else "no", o["description"]] for o in ops])
    print("architectures (--model):")
    _print_table(["name", "input", "aliases", "description"],
                 [[m["name"], "x".join(map(str, m["input_shape"] or [])) or "?", ",".join(m["aliases"]) or "-",
                   m["description"]] for m in models])
    return 0


def _print_table(head, rows) -> None:
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head) - 1)]
    for r in [head] + rows:
        print("  " + "  ".join(f"{c:<{w}}" for c, w in zip(r, widths)) + "  " + str(r[-1]))


def _overrides(args) -> Dict[str, Any]:
    given = vars(args)
    out: Dict[str, Any] = {}
    for key in _DIRECT:
        if key in given:
            out[key] = given[key]
    for key in ("augment", "adaptive_eta", "milestones", "tensorboard", "progress"):
        if key in given:
            out[key] = given[key]
    if "model_option" in given:
        out["model_options"] = dict(given["model_option"])
    if "expansion" in given:
        out.setdefault("model_options", {})["expansion"] = given["expansion"]
    return out


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _requested(given: Dict[str, Any]) -> Dict[str, Any]:
    """The settings the command line asks for explicitly: the --config file, then the flags (and --recipe)."""
    from shiftadd.train.config import coerce_values, load_config_file

    values: Dict[str, Any] = load_config_file(given["config"]) if "config" in given else {}
    flags = coerce_values(_overrides(argparse.Namespace(**given)))
    options = dict(values.get("model_options", {}))
    options.update(flags.pop("model_options", {}))
    values.update(flags)
    if options:
        values["model_options"] = options
    if given.get("recipe"):
        values["recipe"] = given["recipe"]
    return values


def _resumed_config(run: str, requested: Dict[str, Any]):
    """The saved configuration of ``run`` with the resumable settings of ``requested``; any other
    setting must equal the saved one (re-running the same command with --resume is fine)."""
    from shiftadd.train.checkpoint import load_checkpoint_meta
    from shiftadd.train.config import config_from_dict
    from shiftadd.train.loop import RESUMABLE_OVERRIDES

    saved = config_from_dict(load_checkpoint_meta(run)["config"])
    changes = []
    for key, new in requested.items():
        if key in RESUMABLE_OVERRIDES:
            setattr(saved, key, new)
        elif key == "model_options":  # only the options given are compared (others may be inherited)
            changes += [(f"-O {k}", saved.model_options.get(k), v) for k, v in new.items()
                        if saved.model_options.get(k) != v]
        elif getattr(saved, key) != new:
            changes.append((_flag(key), getattr(saved, key), new))
    if changes:
        name, old, new = changes[0]
        raise UserError(f"{name} cannot change when resuming: the run in {run} has {old!r}, this command "
                        f"gives {new!r}; only {', '.join(_flag(k) for k in RESUMABLE_OVERRIDES)} can change")
    return saved


def _cmd_train(args) -> int:
    from shiftadd.train.config import make_config
    from shiftadd.train.loop import TrainingDiverged, train

    given = vars(args)
    values = _requested(given)
    if "resume" in given:
        run = given["resume"]
        if os.path.isfile(run) and os.path.basename(run) == "checkpoint.json":  # as eval accepts it
            run = os.path.dirname(run) or "."
        if "out" in given and os.path.abspath(given["out"]) != os.path.abspath(run):
            raise UserError("--resume OUT continues OUT in place; do not pass a different --out")
        config, out, resume = _resumed_config(run, values), run, True
    else:
        init_from = values.get("init_from")
        if init_from:  # fine-tuning: the start run's model, data and optimizer unless given
            from shiftadd.train.compress import inherited_settings

            inherited = inherited_settings(init_from)
            options = {**inherited.get("model_options", {}), **values.get("model_options", {})}
            values = {**inherited, **values}
            if options:
                values["model_options"] = options
        config = make_config(values.pop("recipe", None), values)
        out = given.get("out") or os.path.join("runs", f"{config.model}-{config.op}-{config.dataset}")
        resume = False
    try:
        result = train(config, out, resume=resume)
    except TrainingDiverged as exc:
        print(f"shiftadd train: stopped: {exc}", file=sys.stderr)
        return 1
    if result.extra.get("rank", 0) != 0:
        return 0
    final = result.results["final"]
    if result.config.task == "translation":
        best = result.results.get("best", final)
        print(f"done: test BLEU {final['test_bleu']:.2f} (beam {result.config.beam}) after {final['epoch']} epochs; "
              f"best validation BLEU {best['val_bleu']:.2f} after epoch {best['epoch']}: test BLEU "
              f"{best['test_bleu']:.2f}; run saved in {out}")
        return 0
    print(f"done: test accuracy {100 * final['test_acc']:.2f}%, test loss {final['test_loss']:.4f} after "
          f"{final['epoch']} epochs; run saved in {out}")
    best = result.results.get("best")
    if best is not None and best["epoch"] != final["epoch"]:
        print(f"best validation accuracy {100 * best['val_acc']:.2f}% after epoch {best['epoch']}: test accuracy "
              f"{100 * best['test_acc']:.2f}%; that model is saved in {os.path.join(out, 'best')}")
    return 0


def _cmd_eval(args) -> int:
    from shiftadd.train.runs import best_checkpoint_path, evaluate_checkpoint

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.test_subset is not None and args.test_subset < 0:
        raise UserError(f"--test-subset must be >= 0, got {args.test_subset}")
    if args.list_pretrained or args.pretrained:
        return _eval_pretrained(args)
    if args.dataset is not None:
        raise UserError("--dataset applies to --pretrained only (a run evaluates on its own data set)")
    path = best_checkpoint_path(args.checkpoint) if args.best else args.checkpoint
    if _is_translation_run(path):
        return _eval_translation(args, path)
    if args.split is not None or args.beam is not None:
        raise UserError("--split and --beam apply to translation runs only")
    res = evaluate_checkpoint(path, data_dir=args.data_dir, device=args.device,
                              batch_size=args.batch_size, test_subset=args.test_subset)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['model']} ({res['op']}) after {res['epoch']} epochs on {res['dataset']} test set "
              f"({res['n']} images): accuracy {100 * res['acc']:.2f}%  loss {res['loss']:.4f}")
    return 0

def _eval_pretrained(args) -> int:
    from shiftadd.models.pretrained import list_pretrained, load_card
    from shiftadd.train.runs import evaluate_pretrained

    if args.list_pretrained:
        cards = [load_card(n) for n in list_pretrained()]
        if args.json:
            print(json.dumps([c.to_json() for c in cards]))
            return 0
        if not cards:
            print("no pretrained weights found (package weights/ folder and $SHIFTADD_WEIGHTS)")
        for c in cards:
            test = "-" if c.test_acc is None else f"{100 * c.test_acc:.2f}%"
            print(f"{c.name}: {c.model} ({c.op}) on {c.dataset}, test accuracy {test}, {c.epochs or 0:g} epochs")
        return 0
    if args.best or args.split is not None or args.beam is not None:
        raise UserError("--best, --split and --beam apply to --checkpoint runs only")
    if args.test_subset is not None and args.test_subset < 0:
        raise UserError(f"--test-subset must be >= 0, got {args.test_subset}")
    res = evaluate_pretrained(args.pretrained, dataset=args.dataset, data_dir=args.data_dir, device=args.device,
                              batch_size=args.batch_size, test_subset=args.test_subset)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['name']}: {res['model']} ({res['op']}) on {res['dataset']} test set ({res['n']} images): "
              f"accuracy {100 * res['acc']:.2f}%  loss {res['loss']:.4f}")
    return 0


def _is_translation_run(path: str) -> bool:
    from shiftadd.train.checkpoint import load_checkpoint_meta

    return (load_checkpoint_meta(path).get("config") or {}).get("task") == "translation"


def _eval_translation(args, path: str) -> int:
    from shiftadd.train.translation import evaluate_translation_run

    res = evaluate_translation_run(path, args.split or "test", beam=args.beam, data_dir=args.data_dir,
                                   device=args.device, limit=args.test_subset or None)
    if args.json:
        print(json.dumps(res))
    else:
        decoding = "greedy" if res["beam"] == 1 else f"beam {res['beam']}, length penalty {res['length_penalty']}"
        print(f"{res['model']} ({res['preset']}) after {res['epoch']} epochs, Multi30k {res['pair']} {res['split']} "
              f"({res['n']} sentences, {decoding}): BLEU {res['bleu']:.2f}  loss {res['loss']:.4f} per token")
    return 0
