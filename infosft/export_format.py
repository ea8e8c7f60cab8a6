"""The export format (a weighted dataset written by ``infosft export``), defined once.

::

    FILE.parquet | FILE.jsonl   one row per example: the record's fields plus input_ids,
                                labels (unshifted, IGNORE_INDEX off-target) and weights
                                (0 off-target), all of one length
    FILE.meta.json              the metadata (scheme, knobs, run, model, dataset, ...), for
                                both formats; a curated export (``--where``) adds
                                ``filter`` (where, mode, matched, of), others lack it
    Parquet key ``infosft``     the same metadata inside a Parquet file (it travels with
                                the data, so it wins over the sidecar)

:mod:`infosft.analysis.export` builds the rows and writes them through
:func:`write_export`; training (:mod:`infosft.train`) and the app read the metadata
through :func:`read_meta` / :func:`require_meta`. Nothing else spells the key, the
sidecar's name or the columns.

Both files are written atomically (:mod:`infosft.atomic`), the sidecar first and put
back if the data fails, so a failed export leaves the previous pair as it was. Each
temporary file is flocked while it is written, and an export removes only the dead
temporary files of its own target (ones it can lock).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infosft.atomic import TEMP_GLOB, atomic_write
from infosft.errors import InfosftError

try:
    import fcntl
except ImportError:  # Windows: no flock; leftover temporary files stay
    fcntl = None

META_KEY = "infosft"           # the Parquet key-value metadata key
SIDECAR_SUFFIX = ".meta.json"  # FILE.parquet -> FILE.parquet.meta.json
COLUMNS = ("input_ids", "labels", "weights")
FORMATS = {".parquet": "parquet", ".jsonl": "jsonl"}


def file_format(path: str | Path) -> str | None:
    """``parquet`` or ``jsonl`` by the file's suffix; None for any other file."""
    return FORMATS.get(Path(path).suffix.lower())


def sidecar(path: str | Path) -> Path:
    """The metadata file next to an export."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def has_columns(record: dict[str, Any]) -> bool:
    """Whether a record carries the token columns of an export."""
    return all(c in record for c in COLUMNS)


def parquet_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """The key-value metadata to write into an export's Parquet file."""
    return {META_KEY: json.dumps(meta)}


# ---------------------------------------------------------------- writing

def write_export(out: str | Path, meta: dict[str, Any], write_data: Callable[[Path], None]
                 ) -> Path:
    """Put an export in place: the sidecar holding ``meta``, then the data, which
    ``write_data(tmp)`` writes to a temporary file (a Parquet file with
    :func:`parquet_metadata` in it, or JSONL). Returns ``out``."""
    out = Path(out)
    _remove_dead_temps(out)
    # Two files, renamed one after the other. The sidecar goes first and is put back if
    # the data fails, so a failed export leaves the old pair as it was (a .jsonl has no
    # other metadata: new data under the old sidecar would mislabel its weights).
    side = sidecar(out)
    old_side = side.read_bytes() if side.is_file() else None
    _write_locked(side, lambda tmp: tmp.write_text(
        json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8"))
    try:
        _write_locked(out, write_data)
    except BaseException:
        if old_side is None:
            side.unlink(missing_ok=True)
        else:
            _write_locked(side, lambda tmp: tmp.write_bytes(old_side))
        raise
    return out


# Leftover temporary files. An export killed mid-write leaves ``.NAME.XXXXXXXX.tmp`` next
# to its target, and the directory is the user's (not a run directory with a lock), so
# another export of the same name may be writing there right now. A writer therefore
# holds an flock on its temporary file until the file is renamed into place, and the
# cleaner deletes only the temporary files of this target and its sidecar whose flock it
# can take: their writer is gone (the kernel drops a dead process's locks).

def _write_locked(path: Path, write: Callable[[Path], None]) -> None:
    """:func:`infosft.atomic.atomic_write`, holding an flock on the temporary file until
    it is in place (the lock stays with the file through the rename)."""
    held: list[int] = []

    def locked(tmp: Path) -> None:
        held.append(os.open(tmp, os.O_RDWR))
        if fcntl is not None:
            fcntl.flock(held[-1], fcntl.LOCK_EX)
        write(tmp)

    try:
        atomic_write(path, locked)
    finally:
        for fd in held:
            os.close(fd)


def _remove_dead_temps(out: Path) -> None:
    if fcntl is None or not out.parent.is_dir():
        return
    # mkstemp's random part has no dot, so ".w.parquet.*" never matches another target's
    # (".w.parquet.x.parquet.*") and the sidecar's only match its own pattern.
    mine = [re.compile(re.escape(f".{name}.") + r"[^.]+\.tmp") for name in
            (out.name, sidecar(out).name)]
    for tmp in out.parent.glob(TEMP_GLOB):
        if not any(p.fullmatch(tmp.name) for p in mine):
            continue
        try:
            fd = os.open(tmp, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # a live export is writing it
        finally:
            os.close(fd)


# ---------------------------------------------------------------- reading

def read_meta(path: str | Path) -> dict[str, Any] | None:
    """Scheme, knobs and provenance of an export: the Parquet key, else the sidecar; None
    when neither exists. Metadata that cannot be parsed is a one-line error naming the
    file."""
    path = Path(path)
    if file_format(path) == "parquet" and path.is_file():
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            kv = pq.read_metadata(path).metadata or {}
        except (OSError, ValueError, pa.ArrowException) as e:
            raise InfosftError(f"{path}: not a readable Parquet file ({e})") from None
        if META_KEY.encode() in kv:
            return _meta_object(path, kv[META_KEY.encode()], f"Parquet key {META_KEY!r}")
    side = sidecar(path)
    if not side.is_file():
        return None
    try:
        text = side.read_bytes()
    except OSError as e:
        raise InfosftError(f"{side}: unreadable ({e.strerror or e})") from None
    return _meta_object(side, text, "")


def require_meta(path: str | Path) -> dict[str, Any]:
    """:func:`read_meta`, for a file that must be an export."""
    meta = read_meta(path)
    if meta is None:
        raise InfosftError(f"{path}: not an infosft export (no scheme metadata)")
    return meta


def _meta_object(path: Path, raw: bytes, where: str) -> dict[str, Any]:
    place = f"{path}" + (f", {where}" if where else "")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8
        raise InfosftError(f"{place}: damaged export metadata ({type(e).__name__}); "
                           "export it again") from None
    if not isinstance(meta, dict):
        raise InfosftError(f"{place}: damaged export metadata (not a JSON object); "
                           "export it again")
    return meta
