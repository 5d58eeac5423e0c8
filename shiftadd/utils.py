"""Small helpers shared across the package: int-or-tuple arguments, name filters, submodule replacement,
file hashing and atomic writes."""
from __future__ import annotations

import fnmatch
import json
import os
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

import torch.nn as nn

IntOrTuple = Union[int, Sequence[int]]
Patterns = Union[None, str, Iterable[str]]


def as_tuple(value: IntOrTuple, n: int, name: str = "value", minimum: Optional[int] = None) -> Tuple[int, ...]:
    """``value`` as an n-tuple of ints: an int is repeated n times, a sequence must have n entries.

    Raises ValueError naming ``name`` for a string, a wrong length or an entry below ``minimum``.
    """
    if isinstance(value, str):
        raise ValueError(f"{name} must be an int or a tuple of {n} ints, got the string {value!r}")
    t = (int(value),) * n if isinstance(value, int) else tuple(int(v) for v in value)
    if len(t) != n:
        raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    if minimum is not None and any(v < minimum for v in t):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return t


def pair(value: IntOrTuple, name: str = "value") -> Tuple[int, int]:
    """``value`` as a pair of ints (an int is used for both)."""
    return as_tuple(value, 2, name)  # type: ignore[return-value]


def as_patterns(patterns: Patterns) -> List[str]:
    """None -> [], one pattern -> [it], an iterable -> a list."""
    if patterns is None:
        return []
    return [patterns] if isinstance(patterns, str) else list(patterns)


def name_matches(name: str, include: Patterns = None, exclude: Patterns = None) -> bool:
    """True when ``name`` matches one ``include`` fnmatch pattern (or there are none) and no ``exclude`` one.

    Patterns are case-sensitive and apply to the whole dotted module name (``"layer1.*"``).
    """
    inc, exc = as_patterns(include), as_patterns(exclude)
    if inc and not any(fnmatch.fnmatchcase(name, p) for p in inc):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in exc)


def replace_module(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` in place of ``root``'s submodule ``name`` (dotted, as in ``named_modules()``; Sequential
    indices are names like ``"features.3"``). Returns the root, or ``new`` itself when ``name`` is ``""``."""
    if name == "":
        return new
    root.set_submodule(name, new, strict=True)
    return root


__all__ = ["IntOrTuple", "Patterns", "as_tuple", "pair", "as_patterns", "name_matches", "replace_module", "sha256_file",
           "atomic_write_text", "atomic_write_json"]


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: Union[str, "os.PathLike[str]"], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file of this process, then ``os.replace``: readers
    (and an interrupted run) see the old file or the new one, never a half-written one, and two processes
    writing the same file at once cannot interleave."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Union[str, "os.PathLike[str]"], data: Any, indent: Optional[int] = 1) -> None:
    """:func:`atomic_write_text` of ``data`` as JSON."""
    atomic_write_text(path, json.dumps(data, indent=indent))
