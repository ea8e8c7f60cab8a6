"""One writer per run directory: an advisory lock on ``RUN/.lock``.

Scoring, training and evaluation hold the lock of the directory they write for as long
as they write it. A second process that would write the same directory (a ``--resume``
started while the first still runs, a second job from the app) fails at once with one
line naming the holder. The lock is ``flock`` on an open file, so the kernel releases it
when its holder exits, however it exits: a killed run never leaves a stale lock.

The lock file exists only while it is held: the holder deletes it before it lets go, so
a run (or a directory the user pointed at by mistake) keeps no trace of it. Deleting a
lock file races with a process that opened it just before; :meth:`RunLock.acquire`
closes that gap by checking, once it holds the lock, that the file it locked is still
the one at the path. :func:`clear_dir` empties a directory for ``--overwrite`` but keeps
the directory and the lock.
Under torchrun only rank 0 takes the lock; the other ranks work under its hold.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from infosft import process
from infosft.errors import InfosftError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; one writer is the user's care
    fcntl = None

LOCK = ".lock"


def holder(directory: str | Path) -> dict[str, Any] | None:
    """Who holds (or last held) the lock of ``directory``: ``process.current()`` of that
    process, or None."""
    try:
        info = json.loads((Path(directory) / LOCK).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def is_locked(directory: str | Path) -> bool:
    """Whether some live process holds the lock of ``directory`` now."""
    path = Path(directory) / LOCK
    if fcntl is None or not path.is_file():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


class RunLock:
    """``with RunLock(run_dir, "scoring"):`` holds ``run_dir``'s lock (creating the
    directory) or raises :class:`InfosftError` naming the process that holds it.

    A directory this lock created (with any parents it made) is removed again on exit
    when nothing but the lock file was written to it, so a command that failed on bad
    input leaves nothing behind.
    """

    def __init__(self, directory: str | Path, what: str = "this run"):
        self.directory = Path(directory)
        self.what = what
        self._fd: int | None = None
        self._created: list[Path] = []  # directories this lock made, deepest first

    def acquire(self) -> RunLock:
        if self.directory.exists() and not self.directory.is_dir():
            raise InfosftError(f"{self.directory} exists and is not a directory")
        self._created = [p for p in (self.directory, *self.directory.parents) if not p.exists()]
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            if fcntl is None:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                who = holder(self.directory) or {}
                pid = f" (pid {who['pid']})" if isinstance(who.get("pid"), int) else ""
                raise InfosftError(f"{self.directory}: in use by another infosft process{pid}; "
                                   f"wait for it to end or stop it before {self.what}") from None
            if _same_file(fd, path):
                break
            os.close(fd)  # we locked a file its last holder had just deleted: again
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(process.current()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        # Deleted while still locked: nobody can have started writing here meanwhile.
        if self._created and _only_lock(self.directory):
            shutil.rmtree(self.directory, ignore_errors=True)
            for parent in self._created[1:]:  # and the empty parents made for it
                try:
                    parent.rmdir()
                except OSError:  # not empty (someone else wrote there) or gone
                    break
        else:
            (self.directory / LOCK).unlink(missing_ok=True)
        os.close(fd)  # releases the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _only_lock(directory: Path) -> bool:
    try:
        return [p.name for p in directory.iterdir()] == [LOCK]
    except OSError:
        return False


def is_empty(directory: str | Path) -> bool:
    """Whether ``directory`` is missing or holds nothing but its lock file."""
    directory = Path(directory)
    return not directory.exists() or all(p.name == LOCK for p in directory.iterdir())


def clear_dir(directory: str | Path) -> None:
    """Delete everything in ``directory`` but its lock file (for ``--overwrite``, while
    holding the lock: the directory and the lock stay, so no second writer can slip in)."""
    for p in Path(directory).iterdir():
        if p.name == LOCK:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
