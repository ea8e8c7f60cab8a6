"""A command's outcome file: how a finished ``infosft`` command tells whoever launched
it that it ended, and why it failed, without anyone reading its log.

``infosft --status-file FILE COMMAND ...`` writes ``FILE`` (JSON, atomically) when the
command ends, however it ends short of being killed::

    {"command": "score", "returncode": 2, "error": "data.jsonl, row 3: ...",
     "pid": 123, "started_at": 1764...., "ended_at": 1764....}

``error`` is the one line the CLI printed (None on success). A process killed outright
(SIGKILL, the OOM killer, a power cut) writes nothing: no file once the process is gone
means exactly that, and a reader says so rather than guessing from the log.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from infosft.atomic import atomic_write_json


def write_outcome(path: str | Path, command: str, returncode: int, error: str | None,
                  started_at: float) -> None:
    atomic_write_json(path, {"command": command, "returncode": int(returncode),
                             "error": error, "pid": os.getpid(), "started_at": started_at,
                             "ended_at": time.time()})


def read_outcome(path: str | Path) -> dict[str, Any] | None:
    """The outcome in ``path``, or None when the command has not ended (or was killed
    before it could say anything). A damaged file reads as None too: it was written
    atomically, so damage means someone else wrote it."""
    try:
        out = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return out if isinstance(out, dict) and isinstance(out.get("returncode"), int) else None
