"""The status and metrics files of a training run directory: written by the trainer,
read by anyone (the CLI, the app's Train page).

Layout of a run directory ``RUN``::

    RUN/config.yaml                    the resolved TrainConfig
    RUN/status.json                    STORED_FIELDS; rewritten atomically
    RUN/metrics.jsonl                  one JSON object per logging step (and per evaluation)
    RUN/train.log                      transformers' and infosft's log messages
    RUN/checkpoints/checkpoint-N/      Hugging Face Trainer checkpoints (resumable)
    RUN/final/                         the final model (full model or LoRA adapter) + tokenizer,
                                       with infosft_model.json = {"base_model", "adapter"}
    RUN/data/eval.jsonl                held-out raw records of the eval split (raw datasets only)
    RUN/data/source.json               data provenance and the result-affecting config
    RUN/.lock                          exists while the trainer holds it (infosft.runlock)

A training metrics line carries ``step``, ``epoch``, ``loss``, ``learning_rate``,
``grad_norm``, ``tokens_per_s``, ``mean_weight``, ``zero_weight_share``, ``time``;
an evaluation line carries ``step``, ``epoch``, ``eval_loss``, ``time`` and no ``loss``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from infosft import process
from infosft.atomic import atomic_write_text
from infosft.errors import InfosftError

STATES = ("queued", "running", "stopping", "stopped", "finished", "failed")
ACTIVE_STATES = ("queued", "running", "stopping")
STORED_FIELDS = ("state", "step", "total_steps", "epoch", "elapsed_s", "eta_s", "pid", "host",
                 "started", "started_at", "updated_at", "error")
# What read_status derives from the directory (checkpoints/, final/) instead of storing:
# status.json cannot disagree with the files. Older status files that store them still
# read; their stored values are not used.
DERIVED_FIELDS = ("last_checkpoint", "final_model", "resumable")
STATUS_FIELDS = STORED_FIELDS + DERIVED_FIELDS  # what read_status returns
# The type each field must have to be believed: a damaged or hand-edited status.json
# reads as "unknown" (None) field by field instead of breaking its readers.
_NUM = (int, float)
FIELD_TYPES = {"state": str, "step": int, "total_steps": int, "epoch": _NUM,
               "elapsed_s": _NUM, "eta_s": _NUM, "pid": int, "host": str, "started": _NUM,
               "started_at": _NUM, "updated_at": _NUM, "error": str}

STATUS = "status.json"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
LOG = "train.log"
CHECKPOINTS = "checkpoints"
FINAL = "final"
MODEL_INFO = "infosft_model.json"
EVAL_DATA = "data/eval.jsonl"
SOURCE = "data/source.json"


def is_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` is a training run directory (the trainer wrote its config or
    status), as opposed to any other directory a mistyped ``--out`` may name."""
    return (Path(run_dir) / STATUS).is_file() or (Path(run_dir) / CONFIG).is_file()


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """``RUN/config.yaml`` as a dict (keys unchecked: :func:`infosft.train_config.load_config`
    checks them); one-line errors for a directory that is not a training run (no config)
    and for a malformed file (:func:`infosft.configs.read_config_file`). The one reader
    of a run's config: the app lists runs with it, evaluation and resume require it."""
    from infosft.configs import read_config_file

    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise InfosftError(f"{Path(run_dir)}: not a training run (no {CONFIG})")
    return read_config_file(path)


def read_model_info(model_dir: str | Path) -> dict[str, Any] | None:
    """``MODEL_INFO`` of a trained model directory (a run's ``final/``, written by
    :func:`infosft.train.write_model_info`): ``base_model``, ``adapter``, how it was
    trained; None when the directory has none (any other model)."""
    path = Path(model_dir) / MODEL_INFO
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise InfosftError(f"{path}: unreadable ({type(e).__name__}); train the run "
                           "again") from None
    if not isinstance(info, dict):
        raise InfosftError(f"{path}: unreadable (not a JSON object); train the run again")
    return info


def _read_raw_status(run_dir: Path) -> dict[str, Any]:
    try:
        status = json.loads((run_dir / STATUS).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # missing, garbage, not UTF-8, a directory
        return {}
    if not isinstance(status, dict):
        return {}
    return {k: v for k, v in status.items() if k in FIELD_TYPES and _typed(v, FIELD_TYPES[k])}


def _typed(value: Any, types) -> bool:
    # bool is an int to Python, but `"step": true` is not a step; NaN is no time or count
    return isinstance(value, types) and (types is bool or not isinstance(value, bool)) and (
        not isinstance(value, float) or math.isfinite(value))


def write_status(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``RUN/status.json`` (atomically) and stamp ``updated_at``.

    Returns the merged status. Only one process (the trainer) writes a run's status.
    """
    run_dir = Path(run_dir)
    derived = sorted(set(fields) & set(DERIVED_FIELDS))
    if derived:
        raise ValueError(f"status field {derived[0]!r} is derived from the run directory "
                         "(read_status), not stored")
    unknown = sorted(set(fields) - set(STORED_FIELDS))
    if unknown:
        raise ValueError(f"unknown status field {unknown[0]!r}")
    if "state" in fields and fields["state"] not in STATES:
        raise ValueError(f"unknown state {fields['state']!r}: one of {', '.join(STATES)}")
    status = {k: None for k in STORED_FIELDS} | _read_raw_status(run_dir) | fields
    status["updated_at"] = time.time()
    atomic_write_text(run_dir / STATUS, json.dumps(status, indent=1) + "\n")
    return status


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """``RUN/status.json`` with every field of STATUS_FIELDS present (None when unknown).

    The derived fields come from the directory: ``last_checkpoint`` is
    :func:`last_checkpoint` (a path, or None), ``resumable`` says that a run that did not
    finish has one, and ``final_model`` is ``RUN/final`` once the run finished with it.

    A run that claims to be active while its process is gone (killed, crashed, machine
    rebooted) is reported as ``failed`` with an explanatory ``error`` (resumable when a
    checkpoint exists). The process is identified by pid and start time
    (:mod:`infosft.process`), so a stranger that inherited the pid does not keep a dead
    run "running"; files written before start times were stored are checked by pid.
    Processes on another host cannot be checked and are taken at their word. Fields of
    the wrong type (a damaged file) read as None.
    """
    run_dir = Path(run_dir)
    status = {k: None for k in STORED_FIELDS} | _read_raw_status(run_dir)
    pid = status.get("pid")
    if (status.get("state") in ACTIVE_STATES and pid is not None  # no pid: cannot tell
            and not process.alive(pid, status.get("started"), status.get("host"))):
        status.update(state="failed", eta_s=None,
                      error=f"the training process (pid {pid}) died without finishing")
    if status.get("state") not in STATES:
        status["state"] = None
    state, ckpt, final = status["state"], last_checkpoint(run_dir), run_dir / FINAL
    status["last_checkpoint"] = str(ckpt) if ckpt else None
    status["resumable"] = state not in (None, "finished") and ckpt is not None
    status["final_model"] = str(final) if state == "finished" and final.is_dir() else None
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
    after the model, optimizer and scheduler), so one cut short by a kill is ignored. The
    Trainer writes that file in place, not atomically: a kill during that write leaves
    a torn file, which does not count either (resuming from it would fail every time).
    """
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    done = [(checkpoint_step(p), p) for p in root.iterdir()
            if checkpoint_step(p) is not None and _complete(p)]
    return max(done)[1] if done else None


def _complete(checkpoint: Path) -> bool:
    try:
        return isinstance(json.loads((checkpoint / "trainer_state.json").read_bytes()), dict)
    except (OSError, ValueError):
        return False


def truncate_metrics(run_dir: str | Path, max_step: int | None) -> None:
    """Drop metrics lines after ``max_step`` (and any torn line), atomically: a resumed run
    re-logs the steps after its checkpoint, which must not appear twice."""
    path = Path(run_dir) / METRICS
    if max_step is None or not path.exists():
        return
    # a line without an integer step (hand-edited, damaged) cannot be placed: dropped
    kept = [m for m in read_metrics(run_dir) if _typed(m.get("step"), int)
            and m["step"] <= max_step]
    atomic_write_text(path, "".join(json.dumps(m) + "\n" for m in kept))
