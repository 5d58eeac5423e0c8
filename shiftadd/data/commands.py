"""``shiftadd data``: list the datasets, or load one (filling the cache) and describe it."""
from __future__ import annotations

import argparse
import time

from shiftadd.data.cache import cache_dir
from shiftadd.data.registry import DATASETS, load_dataset


def add_dataset_arguments(parser: argparse.ArgumentParser, default: str = "embedded") -> None:
    """Add ``--dataset``, ``--data-dir`` and ``--subset`` (as used by :func:`load_dataset`) to ``parser``."""
    parser.add_argument("--dataset", default=default, choices=list(DATASETS),
                        help=f"dataset name (default: {default}, shipped with the package)")
    parser.add_argument("--data-dir", default=None,
                        help="folder or .tar.gz holding the dataset (not needed for 'embedded')")
    parser.add_argument("--subset", type=int, default=None,
                        help="use a fixed class-balanced subset of this many training images")


def _list(args: argparse.Namespace) -> int:
    for name, text in DATASETS.items():
        print(f"{name:10s} {text}")
    print(f"cache: {cache_dir()}")
    return 0


def _info(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    train, test = load_dataset(args.dataset, args.data_dir, subset=args.subset, seed=args.seed)
    seconds = time.perf_counter() - start
    c, h, w = train.images.shape[1:]
    print(f"{args.dataset}: {len(train)} train + {len(test)} test images, {c}x{h}x{w}, "
          f"{train.num_classes} classes, loaded in {seconds:.2f} s")
    print("classes: " + ", ".join(train.classes[:20]) + (" ..." if train.num_classes > 20 else ""))
    print("mean: " + ", ".join(f"{m:.4f}" for m in train.mean) + "   std: " + ", ".join(f"{s:.4f}" for s in train.std))
    return 0


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add the ``data`` command (``data list``, ``data info``)."""
    parser = subparsers.add_parser("data", help="list datasets, or load one (filling the cache) and describe it")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    p_list = sub.add_parser("list", help="the dataset names and the cache folder")
    p_list.set_defaults(func=_list)
    p_info = sub.add_parser("info", help="load a dataset (decoding and caching it once) and print its shape, "
                                         "classes, mean/std and load time")
    add_dataset_arguments(p_info)
    p_info.add_argument("--seed", type=int, default=0, help="seed of the subset choice")
    p_info.set_defaults(func=_info)
