"""Atomic file writes, the one way infosft puts a file in place.

A file is written under a hidden temporary name in its final directory, flushed to disk
(``fsync``), given the permissions a plain ``open()`` would give (mode 0666 less the
umask, not ``mkstemp``'s owner-only 0600), renamed over the final name, and the directory
entry is flushed too. A reader therefore sees the old file or the new one, never half of
one, even after a power cut; a killed writer leaves only a ``.NAME.*.tmp`` file, which
:func:`remove_temp_files` cleans up.

A full disk surfaces as an ``OSError`` naming the final file, whatever library did the
writing (polars, for one, wraps ENOSPC in its own error type).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEMP_GLOB = ".*.tmp"


def umask() -> int:
    """The process umask, read without changing it (``os.umask`` must set it to read it,
    which would race with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _disk_full(e: BaseException) -> bool:
    text = str(e)
    return "No space left" in text or "os error 28" in text or getattr(e, "errno", None) == errno.ENOSPC


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Put a file at ``path`` atomically: ``write(tmp)`` writes the content to ``tmp``.

    Returns ``path``. Raises ``OSError`` (ENOSPC, naming ``path``) when the disk is full;
    any other error from ``write`` propagates. The temporary file never outlives a failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if _disk_full(e) and not (isinstance(e, OSError) and e.filename):
            raise OSError(errno.ENOSPC, "no space left on the device", str(path)) from None
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8"))


def usual_permissions(directory: str | Path) -> None:
    """Give every file and folder under ``directory`` the permissions a plain ``open()`` /
    ``mkdir()`` would (0666 / 0777 less the umask). For what libraries write their own way:
    safetensors writes owner-only 0600 files, ``mkdtemp`` makes 0700 folders, so a model
    saved by ``save_pretrained`` could not be read by another user or service."""
    directory = Path(directory)
    mask = umask()
    for path in (directory, *directory.rglob("*")):
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def remove_temp_files(directory: str | Path, recursive: bool = True) -> int:
    """Delete the temporary files killed writers left in ``directory``; how many.

    Only call this while holding the directory's lock (:mod:`infosft.runlock`): a live
    writer's temporary file looks the same.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    found = directory.rglob(TEMP_GLOB) if recursive else directory.glob(TEMP_GLOB)
    n = 0
    for tmp in found:
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            n += 1
    return n
