"""``shiftadd energy``: operation counts and estimated hardware energy of a zoo model.

Examples::

    shiftadd energy --model resnet20 --op shiftadd --platform fpga --format fix32
    shiftadd energy --model vgg-small --op adder --training --json
    shiftadd energy --model resnet20 --all-ops --platform asic --format fp32 --plot families.png
    shiftadd energy --show-table --platform fpga
    shiftadd energy --model transformer-seq -O preset=multiplication-free --tokens 30 --training

Sequence models (``transformer-seq``) are counted on one sentence pair of ``--tokens`` source and
target tokens (``--input-shape S,T`` for different lengths; default 30, the sentence of the
ShiftAddNAS energy figures) over a vocabulary of ``-O vocab_size=N`` (default 8000); the report
adds the energy per sentence and per target token.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional, Tuple

from shiftadd.errors import UserError
from shiftadd.nn.families import op_help


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``energy`` sub-command."""
    p = subparsers.add_parser(
        "energy", help="count operations and estimate the hardware energy of a model",
        description="Count a zoo model's multiplications, additions, shifts, |.| and comparisons per layer and "
                    "price them with an energy table (45 nm ASIC, ZC706 FPGA or your own YAML file).",
        epilog="Tables and counting rules: docs/energy.md.")
    p.add_argument("--model", default=None, help="architecture (see `shiftadd models`), e.g. resnet20, vgg-small")
    p.add_argument("--op", default="conv", help=op_help("conv"))
    p.add_argument("--platform", default="asic45nm",
                   help="asic45nm (alias asic), fpga_zc706 (alias fpga) or a YAML table file (default asic45nm)")
    p.add_argument("--format", dest="fmt", default="fp32", help="number format: fp32, fp16 (ASIC), fix32, fix16, fix8")
    p.add_argument("--grad-format", dest="grad_fmt", default=None,
                   help="number format of the backward pass and update (default: --format)")
    p.add_argument("--training", action="store_true", help="one training step instead of one forward pass")
    p.add_argument("--batch-size", type=int, default=1, help="samples per forward pass / training step (default 1)")
    p.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="shape of one sample (default from the model: 3,32,32 for CIFAR models; S,T source and "
                        "target tokens for sequence models)")
    p.add_argument("--tokens", type=int, default=None, metavar="N",
                   help="sequence models: source and target sentence length in tokens (default 30)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the model's)")
    p.add_argument("--model-option", "-O", dest="model_options", action="append", default=[], metavar="KEY=VALUE",
                   help="architecture/layer option, e.g. grad_mode=sign, keep_first_last=false, weight_bits=4")
    p.add_argument("--memory", default="sram", help="memory level of the data-movement estimate: rf, sram, dram "
                                                    "or none (default sram)")
    p.add_argument("--optimizer", default=None, help="optimizer update counted in a training step: sgd, adam "
                                                     "or none (default sgd; adam for sequence models)")
    p.add_argument("--baseline-op", default="conv",
                   help="compare with the same architecture in this family (default conv; 'none' to skip)")
    p.add_argument("--all-ops", action="store_true",
                   help="one summary row per operator family instead of a per-layer table")
    p.add_argument("--min-share", type=float, default=0.0,
                   help="hide layers below this fraction of the total in the table (e.g. 0.005)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="write a stacked bar chart (per layer; per family with --all-ops)")
    p.add_argument("--show-table", action="store_true", help="print the platform's energy table with sources")
    p.set_defaults(func=run)


def _parse_shape(text: str) -> Tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise UserError(f"--input-shape must be comma-separated integers like 3,32,32, got {text!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise UserError(f"--input-shape must be positive integers like 3,32,32, got {text!r}")
    return shape


def _parse_options(items: List[str]) -> Dict[str, Any]:
    import yaml

    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--model-option must be KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


#: Vocabulary size of a sequence model when ``-O vocab_size`` is not given (the Multi30k joint vocabulary).
DEFAULT_VOCAB = 8000
#: Sentence length of the energy figures of ShiftAddNAS (tokens per side).
DEFAULT_TOKENS = 30


def _sentence_lengths(args: argparse.Namespace) -> Tuple[int, int]:
    """(source, target) tokens of the counted sentence pair."""
    if args.tokens is not None and args.input_shape:
        raise UserError("give --tokens N or --input-shape S,T, not both")
    if args.input_shape:
        shape = _parse_shape(args.input_shape)
        if len(shape) != 2:
            raise UserError(f"--input-shape of a sequence model is S,T (source, target tokens), got {args.input_shape!r}")
        return shape[0], shape[1]
    n = DEFAULT_TOKENS if args.tokens is None else args.tokens
    if n < 1:
        raise UserError(f"--tokens must be >= 1, got {n}")
    return n, n


def _per_sentence(prof: Any, pair: Tuple[int, int], batch: int) -> Dict[str, Any]:
    """Energy of one sentence pair and per target token (the profile covers ``batch`` pairs)."""
    per = {"per_sentence_pj": prof.compute_pj / batch, "per_sentence_memory_pj": prof.memory_pj / batch}
    per.update({"per_token_pj": per["per_sentence_pj"] / pair[1],
                "per_token_memory_pj": per["per_sentence_memory_pj"] / pair[1],
                "source_tokens": pair[0], "target_tokens": pair[1]})
    return per


def default_input_shape(model: str) -> Optional[Tuple[int, ...]]:
    """The per-sample input shape of zoo architecture ``model`` (None if it declares none)."""
    from shiftadd.models import model_info

    return model_info(model).input_shape


def _resolve_model(name: str) -> str:
    from shiftadd.models import resolve_model_name

    try:
        return resolve_model_name(name)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _check_op(op: str) -> None:
    from shiftadd.nn.families import get_family

    try:
        get_family(op)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _build(model: str, op: str, num_classes: Optional[int], options: Dict[str, Any]):
    from shiftadd.models import create

    _check_op(op)
    kw = dict(options)
    if num_classes is not None:
        kw["num_classes"] = num_classes
    try:
        return create(model, op=op, **kw)
    except (TypeError, ValueError) as exc:
        raise UserError(f"cannot build {model} with op={op}: {exc}") from None


def _show_table(platform: str, as_json: bool) -> int:
    from shiftadd.energy.costs import load_table

    t = load_table(platform)
    if as_json:
        print(json.dumps(t.as_dict(), indent=2))
        return 0
    print(f"{t.name}: {t.description}")
    for op, per in t.ops.items():
        for f, e in per.items():
            print(f"  {op:6s} {f:6s} {e.value_pj:>9.4g} pJ  {'ESTIMATE ' if e.estimate else ''}{e.source}")
    for lvl, e in t.memory.items():
        print(f"  memory {lvl:6s} {e.value_pj:>9.4g} pJ per {e.word_bits} bits  "
              f"{'ESTIMATE ' if e.estimate else ''}{e.source}")
    if t.op_aliases:
        print("  priced as: " + ", ".join(f"{a} = {b}" for a, b in t.op_aliases.items()))
    ratios = []
    for fmt in ("fix32", "fp32"):
        if fmt in t.formats:
            try:
                ratios.append(f"{fmt}: mult/add {t.ratio('mult', 'add', fmt):.3g}x, "
                              f"mult/shift {t.ratio('mult', 'shift', fmt):.3g}x")
            except UserError:
                pass
    if ratios:
        print("  ratios: " + "; ".join(ratios))
    return 0


def run(args: argparse.Namespace) -> int:
    """Handler of ``shiftadd energy``."""
    from shiftadd.energy.costs import load_table
    from shiftadd.energy import OPTIMIZER_OPS, count_ops
    from shiftadd.energy.profile import evaluate, format_energy
    from shiftadd.nn.families import family_names

    if args.plot:
        from shiftadd.paths import check_output_file

        check_output_file(args.plot, "--plot")
    table = load_table(args.platform)  # validates the platform first
    table.format(args.fmt)
    if args.grad_fmt:
        table.format(args.grad_fmt)
    if args.show_table:
        return _show_table(args.platform, args.json)
    if not args.model:
        raise UserError("--model is required (e.g. --model resnet20); see `shiftadd models`")
    model_name = _resolve_model(args.model)
    _check_op(args.op)
    baseline_op = None if str(args.baseline_op).lower() == "none" else args.baseline_op
    if baseline_op is not None and baseline_op not in family_names():
        raise UserError(f"unknown --baseline-op {baseline_op!r}; choose one of: {', '.join(family_names())} or none")
    from shiftadd.models import model_info

    sequence = model_info(model_name).task == "translation"
    if args.optimizer is None:
        args.optimizer = "adam" if sequence else "sgd"
    memory = None if str(args.memory).lower() == "none" else args.memory
    if memory is not None:
        table.memory_pj_per_bit(memory)
    optimizer = None if str(args.optimizer).lower() == "none" else args.optimizer.lower()
    if optimizer is not None and optimizer not in OPTIMIZER_OPS:
        raise UserError(f"unknown --optimizer {args.optimizer!r}; choose one of: {', '.join(OPTIMIZER_OPS)}, none")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    if args.min_share < 0 or args.min_share >= 1:
        raise UserError("--min-share must be in [0, 1)")
    options = _parse_options(args.model_options)
    pair: Optional[Tuple[int, int]] = None
    if sequence:
        pair = _sentence_lengths(args)
        options.setdefault("vocab_size", DEFAULT_VOCAB)
        sample: Optional[Tuple[int, ...]] = (pair[0] + pair[1],)
    elif args.tokens is not None:
        raise UserError("--tokens applies to sequence models (transformer-seq) only")
    elif args.input_shape:
        sample = _parse_shape(args.input_shape)
    else:
        sample = default_input_shape(model_name)
        if sample is None:
            raise UserError(f"no default input shape for {model_name}; give --input-shape C,H,W")
    shape = (args.batch_size,) + sample

    def run_op(op: str):
        model = _build(model_name, op, args.num_classes, options)
        example = None
        if pair is not None:
            from shiftadd.models.transformer import example_pair

            model, example = model.packed(pair[0]), example_pair(int(options["vocab_size"]), *pair)
        try:
            counts = count_ops(model, shape, optimizer=optimizer, example_input=example)
        except RuntimeError as exc:
            raise UserError(f"{model_name} does not run on input shape {sample}: {str(exc).splitlines()[0]}") from None
        return evaluate(counts, table, args.fmt, args.training, memory, args.grad_fmt,
                        label=f"{model_name}/{op}")

    if args.all_ops:
        ops = family_names()
        profiles = [run_op(op) for op in ops]
        base = profiles[ops.index(baseline_op or "conv")]
        if args.json:
            print(json.dumps([{**{k: v for k, v in p.as_dict().items() if k != "layers"},
                               "saving_vs_baseline": p.saving(base),
                               "saving_vs_baseline_with_memory": p.saving(base, True)} for p in profiles], indent=2))
        else:
            scope = "one training step" if args.training else "one forward pass"
            print(f"{model_name}, {scope} (batch {args.batch_size}) on {table.name}, {profiles[0].fmt}; "
                  f"data movement at {memory or 'none'}")
            head = ("op", "mult", "add", "shift", "abs", "cmp", "compute", "memory", "saving", "saving+mem")
            rows = []
            from shiftadd.energy.profile import format_count
            for p in profiles:
                c = p.op_counts()
                rows.append((p.label.split("/")[-1],) + tuple(format_count(c.get(o, 0)) for o in head[1:6])
                            + (format_energy(p.compute_pj), format_energy(p.memory_pj),
                               f"{100 * p.saving(base):.1f}%", f"{100 * p.saving(base, True):.1f}%"))
            widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
            for i, r in enumerate([head] + rows):
                print("  ".join(c.ljust(widths[j]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(r)))
                if i == 0:
                    print("  ".join("-" * w for w in widths))
            print(f"saving = 1 - energy / energy of op={base.label.split('/')[-1]}")
        if args.plot:
            from shiftadd.energy.plot import plot_comparison

            scope = "training step" if args.training else "inference"
            path = plot_comparison(profiles, args.plot, f"{model_name}: {scope} energy by operator family, "
                                                        f"{table.name} {profiles[0].fmt}")
            print(f"plot: {path}", file=sys.stderr if args.json else sys.stdout)
        return 0

    prof = run_op(args.op)
    base = run_op(baseline_op) if baseline_op is not None and baseline_op != args.op else None
    if args.json:
        out = prof.as_dict()
        if pair is not None:
            out.update(_per_sentence(prof, pair, args.batch_size))
        if base is not None:
            out["baseline"] = {k: v for k, v in base.as_dict().items() if k != "layers"}
            out["saving_vs_baseline"] = prof.saving(base)
            out["saving_vs_baseline_with_memory"] = prof.saving(base, True)
        print(json.dumps(out, indent=2))
    else:
        print(prof.format_table(base, args.min_share))
        if pair is not None:
            per = _per_sentence(prof, pair, args.batch_size)
            print(f"per sentence ({pair[0]} source + {pair[1]} target tokens): {format_energy(per['per_sentence_pj'])} "
                  f"compute + {format_energy(per['per_sentence_memory_pj'])} memory; per target token: "
                  f"{format_energy(per['per_token_pj'])} compute + {format_energy(per['per_token_memory_pj'])} memory")
    if args.plot:
        from shiftadd.energy.plot import plot_profile

        path = plot_profile(prof, args.plot)
        print(f"plot: {path}", file=sys.stderr if args.json else sys.stdout)
    return 0
