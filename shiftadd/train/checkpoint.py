"""Checkpoints that cannot execute code when loaded.

A checkpoint directory holds

* ``state-NNNN.safetensors``: the model and optimizer tensors and the torch/CUDA/numpy RNG
  tensors (safetensors stores raw tensors only, no pickle);
* ``checkpoint.json``: the configuration, completed epochs, metrics history, scheduler state,
  the non-tensor parts of the optimizer and RNG states, and the SHA-256 of the tensor file.

Both files are written to a temporary name and moved into place with ``os.replace``; the JSON
file is replaced last, so it always names a complete tensor file: an interrupted save leaves the
previous checkpoint intact.
"""
from __future__ import annotations

import glob
import json
import os
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from shiftadd.errors import CheckpointError, UserError
from shiftadd.paths import check_readable, umask_mode
from shiftadd.utils import atomic_write_text, sha256_file

FORMAT = "shiftadd-checkpoint"
VERSION = 1
META_NAME = "checkpoint.json"


# --------------------------------------------------------------------------- RNG states
def get_rng_state() -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(tensors, json) capturing the python, numpy, torch and CUDA random generators."""
    tensors: Dict[str, torch.Tensor] = {"torch": torch.get_rng_state().clone()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s.clone()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py_version, py_state, py_gauss = random.getstate()
    meta = {"numpy": [name, int(pos), int(has_gauss), float(cached)],
            "python": [py_version, list(py_state), py_gauss]}
    return tensors, meta


def set_rng_state(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
    """Restore the generators captured by :func:`get_rng_state`."""
    torch.set_rng_state(tensors["torch"].to(torch.uint8).cpu())
    cuda = sorted(k for k in tensors if k.startswith("cuda."))
    if cuda and torch.cuda.is_available():
        states = [tensors[k].to(torch.uint8).cpu() for k in cuda]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    py_version, py_state, py_gauss = meta["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))


# --------------------------------------------------------------------------- optimizer state
def _split_optimizer_state(state: Dict[str, Any]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, Dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars, "indices": [str(i) for i in state["state"]]}


def _join_optimizer_state(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> Dict[str, Any]:
    state: Dict[int, Dict[str, Any]] = {}
    for idx in meta["indices"]:
        state[int(idx)] = dict(meta["scalars"].get(idx, {}))
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------- files
def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(out_dir: str, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer],
                    meta: Dict[str, Any], rng: Optional[List[Tuple[Dict[str, torch.Tensor], Dict[str, Any]]]] = None
                    ) -> str:
    """Write model/optimizer/RNG state and ``meta`` (must hold ``epoch``) atomically; returns the JSON path.

    ``rng`` is one :func:`get_rng_state` result per data-parallel rank (rank 0 first).
    """
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    tensors: Dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous().clone()
    opt_meta = None
    if optimizer is not None:
        opt_tensors, opt_meta = _split_optimizer_state(optimizer.state_dict())
        for k, v in opt_tensors.items():
            tensors[f"optim.{k}"] = v.detach().cpu().contiguous().clone()
    rng_meta = []
    for rank, (rt, rm) in enumerate(rng or []):
        for k, v in rt.items():
            tensors[f"rng.{rank}.{k}"] = v.detach().cpu().contiguous().clone()
        rng_meta.append(rm)
    epoch = int(meta["epoch"])
    name = f"state-{epoch:04d}.safetensors"
    final = os.path.join(out_dir, name)
    tmp = f"{final}.tmp-{os.getpid()}"
    save_file(tensors, tmp, metadata={"format": FORMAT, "version": str(VERSION)})
    os.chmod(tmp, umask_mode())  # safetensors creates 0600; others may evaluate a shared run
    _fsync(tmp)
    os.replace(tmp, final)
    doc = dict(meta)
    doc.update({"format": FORMAT, "version": VERSION, "tensors": name, "sha256": sha256_file(final),
                "optimizer": opt_meta, "rng": rng_meta})
    meta_path = os.path.join(out_dir, META_NAME)
    atomic_write_text(meta_path, json.dumps(doc, indent=1, sort_keys=True))
    for old in glob.glob(os.path.join(out_dir, "state-*.safetensors")):
        if os.path.basename(old) != name:
            try:
                os.remove(old)
            except OSError:
                pass
    return meta_path


@dataclass
class Checkpoint:
    """A loaded checkpoint: its JSON document and tensors grouped by purpose."""

    path: str
    meta: Dict[str, Any]
    model_state: Dict[str, torch.Tensor]
    optimizer_state: Optional[Dict[str, Any]]
    rng: List[Tuple[Dict[str, torch.Tensor], Dict[str, Any]]]

    @property
    def epoch(self) -> int:
        return int(self.meta["epoch"])


def _check_readable(path: str) -> None:
    try:
        check_readable(path)
    except UserError as exc:
        raise CheckpointError(str(exc)) from None


def resolve_checkpoint_path(path: str) -> str:
    """Accept a run directory or its ``checkpoint.json``; return the JSON path or raise CheckpointError."""
    _check_readable(path)
    if os.path.isdir(path):
        meta_path = os.path.join(path, META_NAME)
        if not os.path.isfile(meta_path):
            _check_readable(meta_path)
            raise CheckpointError(f"no checkpoint in {path} (missing {META_NAME})")
        _check_readable(meta_path)
        return meta_path
    if os.path.isfile(path):
        return path
    raise CheckpointError(f"checkpoint not found: {path}")


def load_checkpoint_meta(path: str) -> Dict[str, Any]:
    """The JSON half of a checkpoint (configuration, history, epoch, ...), checked but without reading
    the tensors; raise CheckpointError if it is unusable."""
    meta_path = resolve_checkpoint_path(path)
    try:
        with open(meta_path, "r", encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read checkpoint {meta_path}: {exc.__class__.__name__}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a shiftadd checkpoint")
    if int(meta.get("version", -1)) > VERSION:
        raise CheckpointError(f"{meta_path} has format version {meta.get('version')}, newer than this shiftadd")
    return meta


def _target_device(map_location: Union[str, torch.device]) -> torch.device:
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError):
        raise CheckpointError(f"cannot load a checkpoint onto {map_location!r}: not a device name "
                              "(use 'cpu', 'cuda' or 'cuda:N')") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"cannot load a checkpoint onto {map_location!r}: CUDA is not available here "
                              "(use map_location='cpu')")
    return device


#: device types safetensors loads onto directly
_SAFETENSORS_DEVICES = ("cpu", "cuda")


def load_checkpoint(path: str, map_location: Union[str, torch.device] = "cpu") -> Checkpoint:
    """Load and verify a checkpoint (directory or JSON file); raise CheckpointError if it is unusable.

    The tensors are stored without a device (saved from CPU copies), so a checkpoint written on any
    device loads onto ``map_location`` (a device or its name; "cpu" by default): safetensors reads
    them straight onto a CPU or CUDA device; other devices (``meta``, ``mps``) get CPU tensors moved
    there. The optimizer state is loaded onto the same device.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    device = _target_device(map_location)
    meta_path = resolve_checkpoint_path(path)
    meta = load_checkpoint_meta(meta_path)
    tensor_path = os.path.join(os.path.dirname(meta_path), str(meta.get("tensors", "")))
    _check_readable(tensor_path)
    if not os.path.isfile(tensor_path):
        raise CheckpointError(f"checkpoint tensors missing: {tensor_path}")
    if meta.get("sha256") and sha256_file(tensor_path) != meta["sha256"]:
        raise CheckpointError(f"checkpoint tensors are corrupt (checksum mismatch): {tensor_path}")
    try:
        tensors = load_file(tensor_path, device=str(device) if device.type in _SAFETENSORS_DEVICES else "cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read checkpoint tensors {tensor_path}: {exc}") from None
    if device.type not in _SAFETENSORS_DEVICES:
        tensors = {k: v.to(device) for k, v in tensors.items()}
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    opt_state = None
    if meta.get("optimizer") is not None:
        opt_tensors = {k[len("optim."):]: v for k, v in tensors.items() if k.startswith("optim.")}
        opt_state = _join_optimizer_state(opt_tensors, meta["optimizer"])
    rng = []
    for rank, rm in enumerate(meta.get("rng") or []):
        prefix = f"rng.{rank}."
        rng.append(({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, rm))
    return Checkpoint(meta_path, meta, model_state, opt_state, rng)
