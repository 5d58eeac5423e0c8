"""``shiftadd nas``: train a supernet, search it under an energy budget, show an architecture.

Examples::

    shiftadd nas supernet --out runs/super --depth 20 --mode heterogeneous --epochs 30
    shiftadd nas search runs/super --energy-budget 40 --platform asic45nm --format fp32 --save-arch found.yaml
    shiftadd nas search runs/super --multi-objective --trials 200 --storage runs/super/study.log
    shiftadd nas show found.yaml --platform fpga_zc706 --format fix32
    shiftadd train --model hybrid-resnet20 -O arch=found.yaml

Transformers (Multi30k En->De, the trainer's translation task)::

    shiftadd nas supernet --space transformer --out runs/st --epochs 30
    shiftadd nas search runs/st --energy-budget 400 --save-arch found.yaml     # uJ per 30-token sentence
    shiftadd nas show found.yaml --vocab-size 8000
    shiftadd train --task translation --model transformer-seq -O arch=found.yaml
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any, Dict

from shiftadd.errors import UserError
from shiftadd.nas.transformer_space import DECODER_BLOCKS, ENCODER_BLOCKS


def _kv(text: str):
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError:
        return key, value


def _energy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--platform", default="asic45nm", help="energy table: asic45nm, fpga_zc706 or a YAML file")
    p.add_argument("--format", dest="fmt", default="fp32", help="number format: fp32, fp16, fix32, fix16, fix8")
    p.add_argument("--memory", default="sram", help="memory level of the data-movement estimate (rf, sram, dram, none)")


def register(subparsers) -> None:
    nas = subparsers.add_parser("nas", help="hybrid architecture search (ShiftAddNAS): supernet, search, show",
                                description=__doc__.splitlines()[0])
    sub = nas.add_subparsers(dest="nas_command", metavar="NAS_COMMAND", parser_class=type(nas))
    sub.required = True

    p = sub.add_parser("supernet", help="train a weight-sharing supernet with the trainer (resumable)")
    p.add_argument("--space", default="resnet", choices=("resnet", "transformer"),
                   help="resnet (CIFAR hybrid ResNets, default) or transformer (SuperTransformer on Multi30k)")
    p.add_argument("--out", help="run directory (checkpoints, metrics, nas.json)")
    p.add_argument("--resume", metavar="OUT", help="continue the supernet run saved in OUT")
    p.add_argument("--depth", type=int, default=20, help="CIFAR ResNet depth 6n+2 (default 20)")
    p.add_argument("--mode", default="heterogeneous", help="weight sharing: separate, shared, heterogeneous")
    p.add_argument("--ops", default="conv,adder,shift-ps,shiftadd", help="operator choices per block")
    p.add_argument("--widths", default="0.5,0.75,1.0", help="inner-width multipliers per block")
    p.add_argument("--base-width", type=int, default=16, help="channels of the first stage (default 16)")
    p.add_argument("--attention", action="store_true",
                   help="add a multi-head self-attention choice to the stride-1 blocks of the last stage")
    p.add_argument("--sandwich", action="store_true", help="also train the widest and narrowest path each step")
    p.add_argument("--reg-weight", type=float, default=0.05, help="weight of the Laplace regulariser")
    p.add_argument("--val-size", type=int, default=5000, help="training images held out for scoring candidates")
    t = p.add_argument_group("--space transformer (HAT dimensions scaled to Multi30k; lists are comma-separated)")
    t.add_argument("--embed-dims", default="256,384,512")
    t.add_argument("--ffn-dims", default="512,1024,2048")
    t.add_argument("--heads", default="4,8")
    t.add_argument("--encoder-layers", type=int, default=6)
    t.add_argument("--decoder-layers", default="1,2,3,4,5,6")
    t.add_argument("--encoder-blocks", default=",".join(ENCODER_BLOCKS))
    t.add_argument("--decoder-blocks", default=",".join(DECODER_BLOCKS))
    t.add_argument("--layer-ops", default="conv",
                   help="families of each layer's FFN and projections: conv, or conv,shift-ps (shift-layer FFN)")
    t.add_argument("--no-glu", dest="glu", action="store_false", help="no GLU gate in the lightweight blocks")
    t.add_argument("--kernel-sizes", default="3,7,15,31,31,31", help="lightweight kernel of layer 1, 2, ...")
    t.add_argument("--vocab-size", type=int, default=None, help="joint subword vocabulary (default 8000)")
    t.add_argument("--max-tokens", type=int, default=None, help="padded tokens per batch side (default 4096)")
    t.add_argument("--val-split", type=int, default=None, metavar="N",
                   help="first N validation pairs for the per-epoch BLEU of the largest path")
    p.add_argument("--dataset", default=None, help="cifar10 (resnet) / multi30k (transformer)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--subset", type=int, default=None, help="subset of the training set first")
    p.add_argument("--recipe", default=None, help="default shiftaddnet (resnet) / transformer")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0, help="seeds training, path sampling and the validation split")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.add_argument("--train-option", "-T", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                   help="any other training configuration key (see `shiftadd train --help`)")
    p.set_defaults(func=_cmd_supernet)

    p = sub.add_parser("search", help="search a trained supernet under an energy budget (resumable)")
    p.add_argument("run", help="supernet run directory (from `shiftadd nas supernet`)")
    p.add_argument("--energy-budget", type=float, default=None, metavar="UJ",
                   help="inference energy budget per image (transformer: per sentence), in microjoules")
    _energy_args(p)
    p.add_argument("--max-params", type=int, default=None, help="parameter budget")
    p.add_argument("--max-latency", type=float, default=None, metavar="MS",
                   help="transformer: predicted CPU latency budget per sentence (needs --latency-model)")
    p.add_argument("--latency-model", default=None, metavar="FILE.json", help="from `shiftadd nas latency`")
    p.add_argument("--population", type=int, default=50)
    p.add_argument("--parents", type=int, default=10)
    p.add_argument("--mutations", type=int, default=25)
    p.add_argument("--crossovers", type=int, default=25)
    p.add_argument("--generations", type=int, default=20)
    p.add_argument("--mutate-prob", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-images", type=int, default=None, help="score on a balanced subset of the validation split")
    p.add_argument("--val-sentences", type=int, default=None,
                   help="transformer: score on the first N pairs of the Multi30k validation split")
    p.add_argument("--tokens", type=int, default=30, help="transformer: energy of a sentence of N (+N) tokens")
    p.add_argument("--max-tokens", type=int, default=4096, help="transformer: padded tokens per scoring batch")
    p.add_argument("--recal-images", type=int, default=1024, help="training images for BatchNorm recalibration")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    n = p.add_argument_group("narrowing the space: a subset of the supernet's own choices, e.g. a search restricted to "
                             "multiplication-based or multiplication-free blocks over the same supernet "
                             "(comma-separated lists)")
    n.add_argument("--ops", default=None, help="resnet: operator choices per block")
    n.add_argument("--widths", default=None, help="resnet: width multipliers")
    for flag in ("--encoder-blocks", "--decoder-blocks", "--layer-ops", "--embed-dims", "--ffn-dims", "--heads",
                 "--decoder-layers"):
        n.add_argument(flag, default=None, help="transformer: " + flag[2:].replace("-", " "))
    p.add_argument("--out", default=None, help="search state JSON (default RUN/search-<budget>.json; a narrowed "
                                               "space adds -sub<hash of the space>)")
    p.add_argument("--save-arch", default=None, metavar="ARCH.yaml", help="write the best architecture here")
    p.add_argument("--stop-after", type=int, default=None, metavar="N", help="stop after N generations (resumable)")
    p.add_argument("--multi-objective", action="store_true", help="NSGA-II (Optuna): the accuracy-energy Pareto front")
    p.add_argument("--trials", type=int, default=200, help="multi-objective: trials of the study")
    p.add_argument("--storage", default=None,
                   help="multi-objective: Optuna storage shared by workers (sqlite:///f.db or a journal file)")
    p.add_argument("--study-name", default="shiftadd-nas")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("latency", help="transformer: measure the CPU latency of sampled sub-networks, fit a predictor")
    p.add_argument("run", help="SuperTransformer run directory (its space and vocabulary)")
    p.add_argument("--samples", type=int, default=40, help="architectures to measure (a quarter held out)")
    p.add_argument("--tokens", type=int, default=30, help="translate N source tokens into N target tokens")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per architecture (the fastest counts)")
    p.add_argument("--ridge", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads while measuring (default 1)")
    p.add_argument("--out", default=None, help="predictor JSON (default RUN/latency-<tokens>tok.json)")
    p.set_defaults(func=_cmd_latency)

    p = sub.add_parser("show", help="per-block table of an architecture: operator, energy share")
    p.add_argument("arch", help="architecture YAML/JSON file")
    _energy_args(p)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--base-width", type=int, default=16, help="channels of the first stage (default 16)")
    p.add_argument("--vocab-size", type=int, default=8000, help="transformer: vocabulary of the output projection")
    p.add_argument("--tokens", type=int, default=30, help="transformer: energy of a sentence of N (+N) tokens")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_show)


def _space_from_args(args):
    from shiftadd.nas.space import SearchSpace, parse_list

    return SearchSpace(args.depth, parse_list(args.ops), parse_list(args.widths, float), args.base_width,
                       args.attention)


def _transformer_space_from_args(args):
    from shiftadd.nas.space import parse_list
    from shiftadd.nas.transformer_space import TransformerSearchSpace

    return TransformerSearchSpace(parse_list(args.embed_dims, int), parse_list(args.ffn_dims, int),
                                  parse_list(args.heads, int), args.encoder_layers,
                                  parse_list(args.decoder_layers, int), parse_list(args.encoder_blocks),
                                  parse_list(args.decoder_blocks), parse_list(args.layer_ops), args.glu,
                                  parse_list(args.kernel_sizes, int))


def _resume_config(args):
    from shiftadd.train.checkpoint import load_checkpoint_meta
    from shiftadd.train.config import config_from_dict

    config = config_from_dict(load_checkpoint_meta(args.resume)["config"])
    for k in ("epochs", "threads", "progress"):
        if getattr(args, k) is not None:
            setattr(config, k, getattr(args, k))
    if args.device != "auto":
        config.device = args.device
    return config


def _run_values(args, model: str, options: Dict[str, Any], dataset: str) -> Dict[str, Any]:
    values: Dict[str, Any] = dict(args.train_option)
    values.update(model=model, model_options=options, dataset=dataset, data_dir=args.data_dir, subset=args.subset,
                  seed=args.seed, device=args.device)
    for k in ("epochs", "batch_size", "lr", "threads", "progress"):
        if getattr(args, k) is not None:
            values[k] = getattr(args, k)
    if not sys.stderr.isatty() and args.progress is None:
        values["progress"] = False
    return values


def _cmd_supernet_transformer(args) -> int:
    """The SuperTransformer, trained by the trainer's translation task (validation: the largest path)."""
    from shiftadd.train import TrainingDiverged, make_config, train

    if args.resume:
        out, config = args.resume, _resume_config(args)
        if _read_settings(out).get("space", {}).get("kind") != "transformer":
            raise UserError(f"{out} holds a ResNet supernet run; resume it without --space transformer")
    else:
        if not args.out:
            raise UserError("give --out DIR for a new supernet run (or --resume DIR)")
        out = args.out
        space = _transformer_space_from_args(args)
        values = _run_values(args, "supertransformer", {"space": space.as_dict(), "seed": args.seed},
                             args.dataset or "multi30k")
        for k in ("vocab_size", "max_tokens", "val_split"):
            if getattr(args, k) is not None:
                values[k] = getattr(args, k)
        values["task"] = "translation"
        config = make_config(args.recipe or "transformer", values)
        os.makedirs(out, exist_ok=True)
        _write_settings(out, {"space": space.as_dict()})
    try:
        train(config, out, resume=bool(args.resume))
    except TrainingDiverged as exc:
        raise UserError(str(exc)) from None
    return 0


def _cmd_supernet(args) -> int:
    if args.space == "transformer" or (args.resume and _read_settings(args.resume).get("space", {}).get("kind")
                                       == "transformer"):
        return _cmd_supernet_transformer(args)
    args.dataset = args.dataset or "cifar10"
    args.recipe = args.recipe or "shiftaddnet"
    from shiftadd.data import load_dataset
    from shiftadd.nas.scoring import validation_split
    from shiftadd.nas.supernet import SHARING_MODES
    from shiftadd.train import TrainingDiverged, make_config, train

    if args.resume:
        out = args.resume
        settings = _read_settings(out)
        config = _resume_config(args)
    else:
        if not args.out:
            raise UserError("give --out DIR for a new supernet run (or --resume DIR)")
        out = args.out
        if args.mode not in SHARING_MODES:
            raise UserError(f"unknown sharing mode {args.mode!r}; choose one of: {', '.join(SHARING_MODES)}")
        space = _space_from_args(args)
        options = {"mode": args.mode, "ops": list(space.ops), "widths": list(space.widths),
                   "width": space.base_width, "sandwich": args.sandwich, "seed": args.seed,
                   "reg_weight": args.reg_weight, "attention": space.attention}
        values = _run_values(args, f"supernet-resnet{space.depth}", options, args.dataset)
        config = make_config(args.recipe, values)
        settings = {"space": space.as_dict(), "mode": args.mode, "val_size": args.val_size, "split_seed": args.seed}
    train_set, _ = load_dataset(config.dataset, data_dir=config.data_dir, subset=config.subset, seed=config.seed)
    train_part, val_part = validation_split(train_set, int(settings["val_size"]), int(settings["split_seed"]))
    if not args.resume:
        os.makedirs(out, exist_ok=True)
        _write_settings(out, settings)
    try:  # the held-out validation slice stands in for the test set: the supernet never sees test images
        train(config, out, resume=bool(args.resume), data=(train_part, val_part))
    except TrainingDiverged as exc:
        raise UserError(str(exc)) from None
    return 0


def _read_settings(run: str) -> Dict[str, Any]:
    path = os.path.join(run, "nas.json")
    if not os.path.isfile(path):
        raise UserError(f"{run!r} is not a supernet run of `shiftadd nas supernet` (no nas.json)")
    with open(path) as f:
        return json.load(f)


def _write_settings(run: str, settings: Dict[str, Any]) -> None:
    path = os.path.join(run, "nas.json")
    if os.path.isfile(path) and _read_settings(run) != settings:
        raise UserError(f"{run} already holds a supernet run with other settings; use --resume or another --out")
    with open(path, "w") as f:
        json.dump(settings, f, indent=1)


def _cmd_search(args) -> int:
    import torch

    from shiftadd.nas.energy_table import EnergyLookup
    from shiftadd.nas.scoring import SubnetScorer, load_supernet, split_data

    if args.threads:
        torch.set_num_threads(args.threads)
    supernet, settings, config = load_supernet(args.run, args.device)
    space = _narrowed_space(args, supernet.space)
    memory = None if str(args.memory).lower() in ("none", "off", "") else args.memory
    budget = "none" if args.energy_budget is None else f"{args.energy_budget:g}uJ"
    if space is not supernet.space:
        budget += "-sub" + hashlib.sha1(json.dumps(space.as_dict(), sort_keys=True).encode()).hexdigest()[:8]
        print(f"searching the narrowed space {space.as_dict()}")
    if settings.get("space", {}).get("kind") == "transformer":
        scorer, lookup = _transformer_scoring(args, supernet, config, memory)
        lookup = lookup.narrowed(space)
        lookup.check_budget(args.energy_budget)
        return _search(args, space, scorer, lookup, budget)
    train_part, val_part, _ = split_data(settings, config)
    if args.val_images is not None and args.val_images < len(val_part.labels):
        val_part = val_part.balanced_subset(args.val_images, args.seed)
    size = int(train_part.images.shape[-1])
    suffix = f"{args.platform}-{args.fmt}-{memory}-{size}".replace(os.sep, "_")
    lookup = EnergyLookup.cached(os.path.join(args.run, f"energy-{suffix}.json"), supernet.space, args.platform,
                                 args.fmt, memory, size, int(train_part.images.shape[1]), supernet.num_classes)
    lookup = lookup.narrowed(space)
    lookup.check_budget(args.energy_budget)
    scorer = SubnetScorer(supernet, val_part, train_part, args.recal_images, args.batch_size, args.device, args.seed)
    return _search(args, space, scorer, lookup, budget)


def _narrowed_space(args, space):
    """The supernet's space narrowed by the search's --ops/--widths or --encoder-blocks/... flags."""
    from shiftadd.nas.space import parse_list, restrict_space

    transformer = getattr(space, "kind", None) == "transformer"
    flags = {"ops": ("ops", str, False), "widths": ("widths", float, False),
             "encoder_blocks": ("encoder_blocks", str, True), "decoder_blocks": ("decoder_blocks", str, True),
             "layer_ops": ("ops", str, True), "embed_dims": ("embed_dims", int, True),
             "ffn_dims": ("ffn_dims", int, True), "heads": ("heads", int, True),
             "decoder_layers": ("decoder_layers", int, True)}
    choices = {}
    for flag, (field_name, kind, for_transformer) in flags.items():
        text = getattr(args, flag, None)
        if text is None:
            continue
        if for_transformer != transformer:
            raise UserError(f"--{flag.replace('_', '-')} narrows a {'Transformer' if for_transformer else 'ResNet'} "
                            f"space; {args.run} is a {'Transformer' if transformer else 'ResNet'} supernet run")
        choices[field_name] = parse_list(text, kind)
    return restrict_space(space, **choices) if choices else space


def _transformer_scoring(args, supernet, config, memory):
    """(validation-loss scorer, energy lookup) of a SuperTransformer run: the Multi30k validation split
    (first ``--val-sentences`` pairs) encoded with the run's own vocabulary; never the test split."""
    from shiftadd.nas.scoring import TranslationLossScorer
    from shiftadd.nas.transformer_energy import TransformerEnergyLookup
    from shiftadd.train.checkpoint import load_checkpoint_meta
    from shiftadd.train.translation import TranslationTask, tokenizer_from_meta

    if args.tokens < 1 or args.max_tokens < 1:
        raise UserError("--tokens and --max-tokens must be positive")
    tok = tokenizer_from_meta(load_checkpoint_meta(args.run), args.run)
    val = TranslationTask().load_split(config, "val", tok, args.val_sentences)
    scorer = TranslationLossScorer(supernet, val.data, args.max_tokens, args.device)
    suffix = f"{args.platform}-{args.fmt}-{memory}-{args.tokens}tok".replace(os.sep, "_")
    lookup = TransformerEnergyLookup.cached(os.path.join(args.run, f"energy-{suffix}.json"), supernet.space,
                                            supernet.vocab_size, args.tokens, args.platform, args.fmt, memory)
    return scorer, lookup


def _cmd_latency(args) -> int:
    import torch

    from shiftadd.nas.latency import fit_latency_predictor
    from shiftadd.nas.scoring import load_supernet
    from shiftadd.nas.supertransformer import SuperTransformer

    if args.threads < 1 or args.repeats < 1 or args.tokens < 1:
        raise UserError("--threads, --repeats and --tokens must be positive")
    torch.set_num_threads(args.threads)
    supernet, _, _ = load_supernet(args.run, "cpu")
    if not isinstance(supernet, SuperTransformer):
        raise UserError(f"{args.run} is a ResNet supernet run; latency prediction is for --space transformer")
    pred = fit_latency_predictor(supernet.space, supernet.vocab_size, args.samples, args.tokens, args.repeats,
                                 args.seed, args.ridge)
    out = args.out or os.path.join(args.run, f"latency-{args.tokens}tok.json")
    pred.save(out)
    h, t = pred.report["held_out"], pred.report["train"]
    print(f"latency predictor written to {out}: held-out error {h['mae_ms']:.2f} ms mean absolute, "
          f"{100 * h['mape']:.1f}% mean / {100 * h['max_ape']:.1f}% max relative over {h['n']} architectures "
          f"(fit: {100 * t['mape']:.1f}% mean over {t['n']})")
    return 0


def _search(args, space, scorer, lookup, budget: str) -> int:
    """The evolutionary (or NSGA-II) search of either space; prints and saves the best architecture."""
    from shiftadd.nas.search import EvolutionConfig, evolutionary_search, pareto_search

    latency = None
    if args.max_latency is not None or args.latency_model:
        from shiftadd.nas.latency import LatencyPredictor

        if not args.latency_model or args.max_latency is None:
            raise UserError("give both --max-latency MS and --latency-model FILE")
        if getattr(space, "kind", None) != "transformer":
            raise UserError("--max-latency applies to Transformer supernet runs")
        if args.multi_objective:
            raise UserError("--max-latency works with the evolutionary search, not --multi-objective")
        latency = LatencyPredictor.load(args.latency_model, space)
    if args.multi_objective:
        result = pareto_search(space, scorer, lookup, args.trials, args.seed, args.storage, args.study_name,
                               args.energy_budget, args.population)
        out = args.out or os.path.join(args.run, f"pareto-{budget}.json")
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
        for row in result["pareto_front"]:
            print(f"{row['score']:.4f}  {row['energy_uj']:.4g} uJ  {space.from_key(row['arch'])}")
        print(f"Pareto front of {len(result['pareto_front'])} architectures written to {out}")
        best = max(result["pareto_front"], key=lambda r: r["score"]) if result["pareto_front"] else None
    else:
        cfg = EvolutionConfig(args.population, args.parents, args.mutations, args.crossovers, args.generations,
                              args.mutate_prob, args.energy_budget, args.max_params, args.seed,
                              max_latency_ms=args.max_latency)
        if args.max_latency is not None:
            budget += f"-{args.max_latency:g}ms"
        out = args.out or os.path.join(args.run, f"search-{budget}.json")
        state = evolutionary_search(space, scorer, lookup, cfg, out, args.stop_after, latency=latency)
        best = state.get("best")
        if best is None:
            print(f"stopped after generation {state['generation']}; continue with the same command")
            return 0
        print(f"best: {space.from_key(best['arch'])}  score {best['score']:.4f}  "
              f"{best['energy_uj']:.4g} uJ  {best['params']:,} parameters"
              + (f"  {latency(space.from_key(best['arch'])):.3g} ms predicted" if latency is not None else "")
              + f" (state in {out})")
    if best is not None and args.save_arch:
        space.from_key(best["arch"]).save(args.save_arch)
        print(f"architecture written to {args.save_arch}")
    return 0


def _cmd_show_transformer(args, data) -> int:
    from shiftadd.energy.profile import format_energy
    from shiftadd.nas.transformer_energy import TransformerEnergyLookup
    from shiftadd.nas.transformer_space import (TransformerArchitecture, TransformerSearchSpace,
                                                block_multiplication_free)

    arch = TransformerArchitecture.from_dict(data, what=f"architecture file {args.arch!r}")
    if args.vocab_size < 1 or args.tokens < 1:
        raise UserError("--vocab-size and --tokens must be positive")
    layers = [c for _, _, c in arch.layers]
    # the smallest space holding the architecture and the all-attention Transformer of the same sizes
    def values(name, extra=()):
        return tuple(dict.fromkeys(tuple(extra) + tuple(getattr(c, name) for c in layers)))

    space = TransformerSearchSpace((arch.embed_dim,), values("ffn_dim"), values("heads"), len(arch.encoder),
                                   (len(arch.decoder),), values("block", ("attention",)),
                                   values("block", ("attention",)), values("op", ("conv",)), arch.glu,
                                   arch.kernel_sizes)
    memory = None if str(args.memory).lower() in ("none", "off", "") else args.memory
    lookup = TransformerEnergyLookup(space, args.vocab_size, args.tokens, args.platform, args.fmt, memory)
    rows = lookup.breakdown(arch)
    total = lookup.energy_pj(arch)
    attention = TransformerArchitecture(arch.embed_dim, *(tuple(type(c)("attention", c.ffn_dim, c.heads, "conv")
                                                                for c in getattr(arch, s)) for s in ("encoder", "decoder")),
                                        arch.kernel_sizes, arch.glu)
    base = lookup.energy_pj(attention)
    if args.json:
        print(json.dumps({"arch": arch.as_dict(), "platform": lookup.platform, "format": args.fmt, "rows": rows,
                          "total_pj": total, "params": lookup.params(arch), "all_attention_pj": base,
                          "tokens": args.tokens, "vocab_size": args.vocab_size}, indent=1))
        return 0
    print(f"{arch}\n({lookup.platform}, {args.fmt}, memory {memory}, one sentence of {args.tokens} + {args.tokens} "
          f"tokens, vocabulary {args.vocab_size})")
    print(f"{'part':<17} {'layer':>5}  {'block':<30} {'ffn':>5} {'heads':>5}  {'linear':<8} {'mult-free':>9}  "
          f"{'energy':>10}  {'share':>6}")
    for r in rows:
        free = "yes" if r["layer"] != "-" and block_multiplication_free(r["block"], r["op"], arch.glu) else "no"
        print(f"{r['side']:<17} {r['layer']:>5}  {r['block']:<30} {r['ffn_dim']!s:>5} {r['heads']!s:>5}  "
              f"{r['op']:<8} {free:>9}  {format_energy(r['energy_pj']):>10}  {100 * r['share']:5.1f}%")
    print(f"total {format_energy(total)} ({total / 1e6:.4g} uJ) per sentence, {lookup.params(arch):,} parameters; "
          f"all-attention Transformer of the same sizes: {format_energy(base)} ({100 * (1 - total / base):.1f}% saved)")
    return 0


def _cmd_show(args) -> int:
    from shiftadd.energy.profile import format_energy
    from shiftadd.nas.arch import Architecture, read_arch_data
    from shiftadd.nas.energy_table import EnergyLookup
    from shiftadd.nas.space import ATTENTION, SearchSpace, family_properties
    from shiftadd.nas.transformer_space import is_transformer_data

    data = read_arch_data(args.arch)
    if is_transformer_data(data):
        return _cmd_show_transformer(args, data)
    arch = Architecture.from_dict(data, what=f"architecture file {args.arch!r}")
    for op in arch.ops:
        family_properties(op)
    ops = tuple(dict.fromkeys(("conv",) + tuple(op for op in arch.ops if op != ATTENTION)))
    widths = tuple(sorted({1.0} | {b.width for b in arch.blocks}))
    space = SearchSpace(arch.depth, ops, widths, args.base_width, ATTENTION in arch.ops)
    space.validate(arch)
    memory = None if str(args.memory).lower() in ("none", "off", "") else args.memory
    lookup = EnergyLookup(space, args.platform, args.fmt, memory, args.image_size, 3, args.num_classes)
    rows = lookup.breakdown(arch)
    total, conv = lookup.energy_pj(arch), lookup.energy_pj(Architecture.uniform("conv", arch.depth))
    if args.json:
        print(json.dumps({"arch": arch.as_dict(), "platform": lookup.platform, "format": args.fmt, "rows": rows,
                          "total_pj": total, "params": lookup.params(arch), "all_conv_pj": conv}, indent=1))
        return 0
    print(f"{arch}   ({lookup.platform}, {args.fmt}, memory {memory}, one {args.image_size}x{args.image_size} image)")
    print(f"{'block':<16} {'stage':>5}  {'operator':<10} {'width':>5}  {'mult-free':>9}  {'energy':>10}  {'share':>6}")
    for r in rows:
        free = "yes" if family_properties(r["op"])["multiplication_free"] and r["stage"] != "-" else "no"
        print(f"{r['block']:<16} {r['stage']:>5}  {r['op']:<10} {r['width']:>5g}  {free:>9}  "
              f"{format_energy(r['energy_pj']):>10}  {100 * r['share']:5.1f}%")
    print(f"total {format_energy(total)} ({total / 1e6:.4g} uJ), {lookup.params(arch):,} parameters; "
          f"all-conv ResNet-{arch.depth}: {format_energy(conv)} ({100 * (1 - total / conv):.1f}% saved)")
    return 0
