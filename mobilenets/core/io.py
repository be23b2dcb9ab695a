"""Atomic file writes: a crash or Ctrl-C never leaves a half-written file under the real name,
and a power cut never leaves the real name pointing at data that did not reach the disk."""
from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path

from .errors import MobileNetsError

# What atomic_path names its temporary files: ".NAME." + mkstemp's 8 random characters + ".tmp".
TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError as e:
        # Some file systems cannot sync a directory; the file itself is on disk by then.
        if not (directory and e.errno in (errno.EINVAL, errno.ENOTSUP)):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success it is synced and renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # After the writer: mkstemp's 0600, or a writer that makes its own file (safetensors
        # does, 0600), would make results unreadable to others.
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_path(path.parent, directory=True)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_writable(path: str | os.PathLike) -> Path:
    """Refuse, before any work, an output path that cannot be written: a folder, a parent that
    is a file, or a folder without write permission (tried with a real temporary file, since
    permission bits do not tell about read-only mounts or ACLs). Creates missing parent folders
    as `atomic_path` would."""
    path = Path(path)
    if path.is_dir():
        raise MobileNetsError(f"{path}: is a folder; expected an output file name")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise MobileNetsError(f"{path}: cannot be written ({blocking} is a file, not a folder)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise MobileNetsError(f"{path}: cannot be written ({e.strerror or type(e).__name__} "
                              f"in {path.parent})") from None
    os.close(fd)
    os.unlink(probe)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed atomic writes left in `directory` (not below it);
    only safe while no other process writes there. Returns what was removed."""
    removed = []
    for p in sorted(Path(directory).glob(".*.tmp")):
        if TEMP_NAME.fullmatch(p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
