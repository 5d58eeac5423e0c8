"""Checks of output locations, done before any work so that a bad path fails at once, not after training."""
from __future__ import annotations

import os

from shiftadd.errors import UserError


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_output_dir(path: str, flag: str) -> None:
    """Raise UserError unless ``path`` is (or can be created as) a writable directory; creates nothing."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a file, not a directory; choose a folder")
    base = _nearest_existing(path)
    if not os.path.isdir(base):
        raise UserError(f"{flag} {path}: {base} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: permission denied: {base} is not writable")


def check_output_file(path: str, flag: str, *, create_parent: bool = False) -> None:
    """Raise UserError unless a file can be written at ``path`` (its folder must exist unless
    ``create_parent``); creates nothing."""
    if os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not create_parent and not os.path.isdir(parent):
        raise UserError(f"{flag} {path}: the folder {parent} does not exist; create it first")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise UserError(f"{flag} {path}: permission denied: the file is not writable")
        return
    check_output_dir(parent, flag)


def check_readable(path: str) -> None:
    """Raise UserError("permission denied: PATH") when ``path`` exists but cannot be read (or entered)."""
    if os.path.exists(path):
        mode = os.R_OK | (os.X_OK if os.path.isdir(path) else 0)
        if not os.access(path, mode):
            raise UserError(f"permission denied: {path}")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(parent) and not os.access(parent, os.X_OK):
        raise UserError(f"permission denied: {parent}")


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` with the process umask applied (what ``open()`` would give a new file)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask
