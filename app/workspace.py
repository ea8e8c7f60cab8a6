"""The app's workspace: where uploads, scored runs, exports and job records live.

``INFOSFT_WORKSPACE`` (set by ``infosft app --workspace``) or ``./workspace``. Names
the user types become single path components inside it, validated so that they
cannot escape it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from infosft.atomic import atomic_write_bytes
from infosft.bundled import SAMPLE_DATA, SAMPLE_RUN  # noqa: F401  (the app's defaults)
from infosft.errors import InfosftError

#: the workspace's folders, named here only
RUNS, TRAININGS, SWEEPS, EXPORTS, JOBS, UPLOADS = (
    "runs", "trainings", "sweeps", "exports", "jobs", "uploads")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def workspace_dir() -> Path:
    """The workspace directory (created on first use)."""
    path = Path(os.environ.get("INFOSFT_WORKSPACE") or "workspace").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def local_path(text: str | None) -> str | None:
    """What the user typed as a data or model path, made absolute against the app's
    working directory (where ``infosft app`` was started) when it names something there;
    a hub name (or nothing) unchanged. Jobs run in the workspace and an app restarted
    elsewhere reads their records: a relative path would name another file."""
    if not text:
        return text
    path = Path(text).expanduser()
    return str(path.resolve()) if path.exists() else text


def within(path: Path) -> Path:
    """``path`` resolved, if it is the workspace or inside it; else :class:`InfosftError`.
    A folder of the workspace replaced by a symlink must not carry writes elsewhere."""
    root, real = workspace_dir(), Path(path).resolve()
    if real != root and root not in real.parents:
        raise InfosftError(f"{path} leads outside the workspace (to {real}); remove the "
                           "link or choose another --workspace")
    return real


def subdir(kind: str) -> Path:
    """``WORKSPACE/kind`` (runs, exports, uploads, jobs, trainings), created on first use;
    refused when it leads outside the workspace."""
    path = within(workspace_dir() / kind)  # checked before mkdir follows a link
    path.mkdir(parents=True, exist_ok=True)
    return path


def safe_name(name: str, what: str = "name") -> str:
    """``name`` if it is one harmless path component: letters, digits, ``.``, ``_``,
    ``-``, starting with a letter or digit, no ``..``; raises :class:`InfosftError`."""
    name = (name or "").strip()
    if not _NAME.match(name) or ".." in name:
        raise InfosftError(f"{what} {name!r} is not allowed: use letters, digits, '.', '_' "
                           "or '-' (no path separators, no '..')")
    return name


def inside(parent: Path, name: str, what: str = "name") -> Path:
    """``parent / name`` after validating ``name`` (and checking the result really is
    inside ``parent``, and inside the workspace)."""
    path = (parent / safe_name(name, what)).resolve()
    if path.parent != parent.resolve():
        raise InfosftError(f"{what} {name!r} would leave {parent}")
    return within(path)


def save_upload(name: str, data: bytes) -> Path:
    """Store an uploaded file as ``uploads/HASH/NAME`` (HASH: 12 hex digits of its
    SHA-256): the same content is the same file (its mtime, the preview cache key,
    stays put however often the page reruns), and another file of the same name never
    replaces it, so the runs scored from an upload keep naming what they read."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name).lstrip("._") or "upload"
    folder = inside(subdir(UPLOADS), hashlib.sha256(data).hexdigest()[:12], "upload")
    path = inside(folder, stem[:100], "file name")
    if not (path.is_file() and path.stat().st_size == len(data)):
        atomic_write_bytes(path, data)  # (a reader sees no half-written upload)
    return path
