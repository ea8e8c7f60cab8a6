"""The status and metrics files of a training run directory: written by the trainer,
read by anyone (the CLI, the app's Train page).

Layout of a run directory ``RUN``::

    RUN/config.yaml                    the resolved TrainConfig
    RUN/status.json                    see STATUS_FIELDS; rewritten atomically
    RUN/metrics.jsonl                  one JSON object per logging step (and per evaluation)
    RUN/train.log                      transformers' and infosft's log messages
    RUN/checkpoints/checkpoint-N/      Hugging Face Trainer checkpoints (resumable)
    RUN/final/                         the final model (full model or LoRA adapter) + tokenizer,
                                       with infosft_model.json = {"base_model", "adapter"}
    RUN/data/eval.jsonl                held-out raw records of the eval split (raw datasets only)

A training metrics line carries ``step``, ``epoch``, ``loss``, ``learning_rate``,
``grad_norm``, ``tokens_per_s``, ``mean_weight``, ``zero_weight_share``, ``time``;
an evaluation line carries ``step``, ``epoch``, ``eval_loss``, ``time`` and no ``loss``.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

STATES = ("queued", "running", "stopping", "stopped", "finished", "failed")
ACTIVE_STATES = ("queued", "running", "stopping")
STATUS_FIELDS = ("state", "step", "total_steps", "epoch", "elapsed_s", "eta_s", "pid", "host",
                 "started_at", "updated_at", "error", "last_checkpoint", "final_model",
                 "resumable")

STATUS = "status.json"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
LOG = "train.log"
CHECKPOINTS = "checkpoints"
FINAL = "final"
MODEL_INFO = "infosft_model.json"
EVAL_DATA = "data/eval.jsonl"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old or the new file, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; these files are for every reader
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_raw_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / STATUS).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_status(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``RUN/status.json`` (atomically) and stamp ``updated_at``.

    Returns the merged status. Only one process (the trainer) writes a run's status.
    """
    run_dir = Path(run_dir)
    unknown = sorted(set(fields) - set(STATUS_FIELDS))
    if unknown:
        raise ValueError(f"unknown status field {unknown[0]!r}")
    if "state" in fields and fields["state"] not in STATES:
        raise ValueError(f"unknown state {fields['state']!r}: one of {', '.join(STATES)}")
    status = {k: None for k in STATUS_FIELDS} | _read_raw_status(run_dir) | fields
    status["updated_at"] = time.time()
    atomic_write_text(run_dir / STATUS, json.dumps(status, indent=1) + "\n")
    return status


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # it exited just now, or there is no procfs (macOS: trust os.kill)
        return not Path("/proc").is_dir()
    # The state letter follows the parenthesized command name, which may contain spaces.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """``RUN/status.json`` with every field of STATUS_FIELDS present (None when unknown).

    A run that claims to be active while its process is gone (killed, crashed, machine
    rebooted) is reported as ``failed`` with an explanatory ``error`` and ``resumable``
    set when a checkpoint exists. Processes on another host cannot be checked and are
    taken at their word.
    """
    run_dir = Path(run_dir)
    status = {k: None for k in STATUS_FIELDS} | _read_raw_status(run_dir)
    pid = status.get("pid")
    if (status.get("state") in ACTIVE_STATES and isinstance(pid, int)
            and status.get("host") in (None, socket.gethostname()) and not pid_alive(pid)):
        ckpt = last_checkpoint(run_dir)
        status.update(state="failed", eta_s=None,
                      error=f"the training process (pid {pid}) died without finishing",
                      last_checkpoint=str(ckpt) if ckpt else None, resumable=ckpt is not None)
    if status.get("resumable") is None:
        status["resumable"] = False
    return status


def append_metrics(run_dir: str | Path, obj: dict[str, Any]) -> None:
    """Append one JSON line to ``RUN/metrics.jsonl`` (one write call, flushed)."""
    path = Path(run_dir) / METRICS
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(obj, allow_nan=True) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All metrics lines; a line being written (or cut by a kill) is skipped."""
    try:
        text = (Path(run_dir) / METRICS).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def checkpoint_step(path: Path) -> int | None:
    """N of a ``checkpoint-N`` directory name, else None."""
    prefix, _, n = path.name.partition("-")
    return int(n) if prefix == "checkpoint" and n.isdigit() else None


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, or None.

    A checkpoint is complete once the Trainer wrote ``trainer_state.json`` (it does so
    after the model, optimizer and scheduler), so one cut short by a kill is ignored.
    """
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    done = [(checkpoint_step(p), p) for p in root.iterdir()
            if checkpoint_step(p) is not None and (p / "trainer_state.json").is_file()]
    return max(done)[1] if done else None


def truncate_metrics(run_dir: str | Path, max_step: int | None) -> None:
    """Drop metrics lines after ``max_step`` (and any torn line), atomically: a resumed run
    re-logs the steps after its checkpoint, which must not appear twice."""
    path = Path(run_dir) / METRICS
    if max_step is None or not path.exists():
        return
    kept = [m for m in read_metrics(run_dir) if not m.get("step", 0) > max_step]
    atomic_write_text(path, "".join(json.dumps(m) + "\n" for m in kept))
