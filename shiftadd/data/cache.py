"""Cache folder: archives unpacked once, decoded images stored once as uint8 arrays.

The cache lives in ``$SHIFTADD_CACHE`` or, if unset, ``~/.cache/shiftadd``:

* ``extracted/<archive>-<key>/``: the contents of a ``.tar.gz`` given as a data path,
  unpacked once (safely: only plain files and folders, no absolute paths, no ``..``).
* ``decoded/<dataset>-<key>.npz``: the decoded train/test images (uint8, N, C, H, W),
  labels, class names and mean/std of a dataset, keyed by the source path and the
  modification times (and size, for an archive) of what was read, so an edited source
  is decoded again. Written atomically; several processes (DDP ranks) starting at once
  wait on a lock file while the first one builds the entry.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Sequence

import numpy as np

from shiftadd.errors import DataError
from shiftadd.paths import umask_mode

CACHE_ENV = "SHIFTADD_CACHE"
CACHE_FORMAT = 1  # bump when the decoded layout changes
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
DECODED_KEYS = ("train_images", "train_labels", "test_images", "test_labels", "classes", "mean", "std")


def cache_dir() -> Path:
    """The cache folder: ``$SHIFTADD_CACHE`` or ``~/.cache/shiftadd``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "shiftadd"


def is_archive(path: Path) -> bool:
    """Whether ``path`` names a file this package unpacks (.tar.gz, .tgz, .tar)."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def archive_stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def key_of(*parts: object) -> str:
    """A short stable hash of ``parts`` (their ``repr``)."""
    return hashlib.sha1(repr((CACHE_FORMAT,) + parts).encode()).hexdigest()[:16]


def file_signature(path: Path) -> tuple:
    """(absolute path, size, mtime in ns) of a file."""
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def tree_signature(root: Path, dirs: Sequence[Path]) -> tuple:
    """Absolute root plus the mtimes of ``dirs``: adding, removing or renaming a file changes them."""
    return (str(root.resolve()),) + tuple((str(d.relative_to(root)), d.stat().st_mtime_ns) for d in dirs)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (POSIX ``flock``); a no-op where that is unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _share(path: Path, mode: int) -> None:
    """Give a file made by ``tempfile`` (private, 0600/0700) the usual permissions (``mode`` & ~umask)."""
    with contextlib.suppress(OSError):
        os.chmod(path, umask_mode(mode))


def _writable_cache(sub: str) -> Optional[Path]:
    folder = cache_dir() / sub
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def load_decoded(name: str, key: str) -> Optional[Dict[str, np.ndarray]]:
    """The cached arrays of ``name``/``key``, or None if absent or unreadable."""
    path = cache_dir() / "decoded" / f"{name}-{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in DECODED_KEYS}
    except Exception:  # a damaged cache entry is rebuilt, never trusted
        return None
    return arrays


def save_decoded(name: str, key: str, arrays: Dict[str, np.ndarray]) -> Optional[Path]:
    """Store ``arrays`` (the keys in ``DECODED_KEYS``) atomically; None (and a warning) if the cache is not writable."""
    folder = _writable_cache("decoded")
    if folder is None:
        warnings.warn(f"shiftadd: cache folder {cache_dir()} is not writable; decoded images are not "
                      f"cached (set {CACHE_ENV} to a writable folder)", stacklevel=3)
        return None
    path = folder / f"{name}-{key}.npz"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}-", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **{k: arrays[k] for k in DECODED_KEYS})
        _share(Path(tmp), 0o666)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        warnings.warn(f"shiftadd: could not write the cache file {path}: {exc}", stacklevel=3)
        return None
    return path


def cached_decode(name: str, key: str, build: Callable[[], Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """Return the cached arrays for ``key`` or build, store and return them (under a lock)."""
    arrays = load_decoded(name, key)
    if arrays is not None:
        return arrays
    lock_dir = _writable_cache("decoded")
    lock = file_lock(lock_dir / f".{name}-{key}.lock") if lock_dir is not None else contextlib.nullcontext()
    with lock:
        arrays = load_decoded(name, key)  # another process may have built it meanwhile
        if arrays is None:
            arrays = build()
            save_decoded(name, key, arrays)
    return arrays


def _safe_members(tar: tarfile.TarFile, archive: Path) -> Iterator[tarfile.TarInfo]:
    for member in tar:
        name = member.name
        parts = Path(name).parts
        if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise DataError(f"refusing to unpack {archive}: member {name!r} points outside the archive")
        if member.isdir() or member.isfile():
            yield member
        # links, devices and fifos are skipped: a dataset needs none of them


def extract_archive(archive: Path) -> Path:
    """Unpack ``archive`` once into the cache folder and return that folder.

    The folder is ``<cache>/extracted/<name>-<key>`` with ``key`` from the archive's path,
    size and mtime; it is reused while the archive is unchanged.
    """
    folder = _writable_cache("extracted")
    if folder is None:
        raise DataError(f"cannot unpack {archive}: the cache folder {cache_dir()} is not writable "
                        f"(set {CACHE_ENV} to a writable folder, or unpack the archive yourself)")
    target = folder / f"{archive_stem(archive)}-{key_of('extract', file_signature(archive))}"
    done = target / ".shiftadd-complete"
    if done.is_file():
        return target
    with file_lock(folder / f".{target.name}.lock"):
        if done.is_file():
            return target
        tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{target.name}-"))
        try:
            try:
                with tarfile.open(archive, "r:*") as tar:
                    for member in _safe_members(tar, archive):
                        dest = tmp / member.name
                        if member.isdir():
                            dest.mkdir(parents=True, exist_ok=True)
                            continue
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        src = tar.extractfile(member)
                        if src is None:
                            continue
                        with src, open(dest, "wb") as out:
                            shutil.copyfileobj(src, out)
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise DataError(f"cannot unpack {archive}: {exc} (expected a .tar.gz/.tgz/.tar archive)") from None
            (tmp / ".shiftadd-complete").write_text(str(archive.resolve()) + "\n")
            _share(tmp, 0o777)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def clear_cache() -> None:
    """Delete the whole cache folder (extracted archives and decoded images)."""
    shutil.rmtree(cache_dir(), ignore_errors=True)
