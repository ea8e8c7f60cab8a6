"""Derived tables a large run keeps in ``RUN/cache/``, so that a restarted app or a second
``infosft stats`` reads them back instead of passing over every token again: the cells
(:mod:`analysis.cells`) and the per-example histograms (:mod:`analysis.example_bins`),
each module the owner of its own files' format.

A file is ``KIND-PARTS-WHAT.EXT``: PARTS hashes the names, sizes and mtimes of
``meta.json`` and the token parts (:meth:`Run.parts_key`), WHAT everything else the table
depends on (its module's binning constants, a grid, groups). A file that cannot be read
is rebuilt; writing one removes the files of the same kind built from other parts; a
folder that cannot be written only costs the rebuild. Derived, not data: safe to delete.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Callable, TypeVar

from infosft.analysis.store import Run
from infosft.atomic import atomic_write

T = TypeVar("T")

#: Runs of more target tokens than this keep their derived tables (below, a pass takes
#: under ~0.5 s, and the bundled sample run's folder stays as installed).
CACHE_ABOVE = 1_000_000


def kept(run: Run) -> bool:
    """Whether ``run`` keeps derived tables: complete, and above :data:`CACHE_ABOVE`."""
    n = run.counts().get("target_tokens")  # {} while scoring: the parts may still change
    return isinstance(n, int) and n > CACHE_ABOVE


def path(run: Run, kind: str, what: Any, *blobs: bytes, ext: str) -> Path:
    """The file of ``kind`` for the run's current parts and ``what`` (its ``repr`` and
    ``blobs`` hashed: e.g. the groups' arrays)."""
    parts = hashlib.sha256(repr(run.parts_key()).encode()).hexdigest()[:12]
    h = hashlib.sha256(repr(what).encode())
    for b in blobs:
        h.update(b)
    return run.cache_dir / f"{kind}-{parts}-{h.hexdigest()[:12]}.{ext}"


def read(file: Path, load: Callable[[Path], T | None]) -> T | None:
    """``load(file)``, or None when there is none yet or it cannot be read (any error:
    a damaged cache is rebuilt, never trusted)."""
    if not file.is_file():
        return None
    try:
        return load(file)
    except Exception:  # noqa: BLE001 - derived data: rebuild rather than fail
        return None


def through(file: Path, load: Callable[[Path], T | None], build: Callable[[], T],
            save: Callable[[T, Path], None]) -> T:
    """The table in ``file`` (:func:`read`), or ``build()``'s, then written there
    (``save(table, tmp_path)``, :func:`write`)."""
    out = read(file, load)
    if out is None:
        out = build()
        write(file, lambda tmp: save(out, tmp))
    return out


def write(file: Path, save: Callable[[Path], None]) -> None:
    """Write ``file`` through ``save(tmp_path)`` (atomically), then remove the files of
    its kind built from other parts. An unwritable folder skips it."""
    kind, parts = re.fullmatch(r"(.+)-([0-9a-f]{12})-[0-9a-f]{12}\.\w+", file.name).groups()
    stale = re.compile(rf"{re.escape(kind)}-(?!{parts}-)[0-9a-f]{{12}}-[0-9a-f]{{12}}\.\w+")
    try:
        file.parent.mkdir(exist_ok=True)
        atomic_write(file, save)
        for old in file.parent.iterdir():
            if stale.fullmatch(old.name):
                old.unlink(missing_ok=True)
    except OSError:
        pass
