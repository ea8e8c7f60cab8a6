"""Background jobs: a CLI subprocess per job, a JSON record and a log file per job in
``WORKSPACE/jobs/``. The UI only launches, reads and cancels:

* state comes from the run's ``meta.json`` (``status`` running / complete) and the
  scorer's ``RUN/progress-*.json`` (``done_tokens``, ``total_tokens``, ``elapsed_s``,
  ``eta_s``), so it survives an app restart;
* a process that is gone while its run is not complete has failed: its log tail
  says why;
* Cancel sends SIGTERM to the job's process group (the run's whole parts stay, so
  ``infosft score --resume`` can finish it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from analysis.store import Run, atomic_write_json
from app import workspace
from infosft.errors import InfosftError

PART_TOKENS = 8192  # finer parts than the CLI default: more frequent progress updates


@dataclass
class Job:
    id: str
    name: str
    kind: str
    argv: list[str]
    pid: int
    run_dir: str
    log: str
    created_at: float
    cancelled: bool = False
    returncode: int | None = None

    @property
    def record_path(self) -> Path:
        return Path(self.log).with_suffix(".json")

    def save(self) -> None:
        atomic_write_json(self.record_path, asdict(self))


def score_argv(source: str, run_dir: Path, *, model: str | None = None,
               max_length: int = 2048, fields: dict[str, str] | None = None,
               limit: int | None = None, split: str = "train",
               no_template: bool = False) -> list[str]:
    """The ``infosft score`` command line (an argument list, never a shell string)."""
    argv = [sys.executable, "-m", "app.cli", "score", str(source), "--out", str(run_dir),
            "--max-length", str(int(max_length)), "--part-tokens", str(PART_TOKENS),
            "--split", split, "--quiet"]
    if model:
        argv += ["--model", model]
    for k, v in (fields or {}).items():
        argv += ["--field", f"{k}={v}"]
    if limit:
        argv += ["--limit", str(int(limit))]
    if no_template:
        argv.append("--no-template")
    return argv


def launch(name: str, argv: list[str], run_dir: Path, kind: str = "score") -> Job:
    """Start ``argv`` in its own process group, output to ``jobs/ID.log``."""
    jobs = workspace.subdir("jobs")
    job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    log = jobs / f"{job_id}.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(workspace.ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=workspace.ROOT, env=env,
                                start_new_session=True)
    job = Job(job_id, name, kind, list(argv), proc.pid, str(run_dir), str(log), time.time())
    job.save()
    return job


def launch_score(name: str, source: str, **options: Any) -> Job:
    """Validate the run name and start scoring ``source`` into ``WORKSPACE/runs/NAME``."""
    run_dir = workspace.inside(workspace.subdir("runs"), name, "run name")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise InfosftError(f"a run named {name!r} already exists; choose another name")
    return launch(name, score_argv(source, run_dir, **options), run_dir)


def list_jobs(limit: int = 20) -> list[Job]:
    """The most recent jobs first (unreadable records are skipped)."""
    out = []
    for p in sorted(workspace.subdir("jobs").glob("*.json"), reverse=True)[:limit]:
        try:
            out.append(Job(**json.loads(p.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return out


def load(job_id: str) -> Job:
    """A job's current record (e.g. after another session cancelled it)."""
    path = workspace.inside(workspace.subdir("jobs"), f"{job_id}.json", "job id")
    try:
        return Job(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise InfosftError(f"job {job_id}: unreadable record ({e})") from None


def alive(job: Job) -> bool:
    """Whether the job's process still runs (reaping it, and keeping its exit code, if
    it is our child)."""
    try:
        pid, status = os.waitpid(job.pid, os.WNOHANG)
        if pid == job.pid:
            job.returncode = os.waitstatus_to_exitcode(status)
            job.save()
            return False
    except ChildProcessError:  # not our child (app restarted) or already reaped
        pass
    try:
        os.kill(job.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited child nobody has reaped yet is a zombie, i.e. finished
        stat = Path(f"/proc/{job.pid}/stat").read_text()
        return stat.rsplit(") ", 1)[-1][:1] != "Z"
    except OSError:
        return True  # no /proc (macOS): trust kill(0)


def log_tail(job: Job, lines: int = 15) -> str:
    try:
        text = Path(job.log).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _error_line(tail: str) -> str:
    """The CLI's one-line error if there is one, else the last line of the log."""
    lines = tail.splitlines()
    errs = [l for l in lines if l.startswith("infosft: error:")]
    return (errs[-1].removeprefix("infosft: error:").strip() if errs else
            (lines[-1] if lines else "the job stopped without output"))


def status(job: Job) -> dict[str, Any]:
    """``state`` (starting | running | complete | failed | cancelled), progress
    (``done``, ``total``, ``fraction``, ``eta_s``, ``elapsed_s``) and, for a failed job,
    ``message`` and ``log``."""
    run = Run(job.run_dir)
    meta_status = None
    if run.exists():
        try:
            meta_status = run.meta().get("status")
        except InfosftError:
            meta_status = None
    out: dict[str, Any] = {"state": "starting", "done": 0, "total": None, "fraction": 0.0,
                           "eta_s": None, "elapsed_s": time.time() - job.created_at}
    progress = sorted(Path(job.run_dir).glob("progress-*.json")) if run.path.is_dir() else []
    if progress:
        try:
            p = [json.loads(f.read_text()) for f in progress]
            out["done"] = sum(x["done_tokens"] for x in p)
            out["total"] = sum(x["total_tokens"] for x in p)
            etas = [x["eta_s"] for x in p if x.get("eta_s") is not None]
            out["eta_s"] = max(etas) if etas else None
            out["fraction"] = out["done"] / out["total"] if out["total"] else 0.0
        except (OSError, ValueError, KeyError):
            pass  # being rewritten; the next poll reads it
    if meta_status == "complete":
        return {**out, "state": "complete", "fraction": 1.0, "eta_s": 0}
    running = alive(job)
    if job.cancelled:
        return {**out, "state": "cancelled" if not running else "cancelling"}
    if running:
        return {**out, "state": "running" if meta_status == "running" else "starting"}
    tail = log_tail(job)
    return {**out, "state": "failed", "message": _error_line(tail), "log": tail}


def cancel(job: Job) -> None:
    """SIGTERM to the job's process group; the record remembers it was cancelled."""
    job.cancelled = True
    job.save()
    try:
        os.killpg(job.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
