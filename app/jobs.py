"""Background jobs: a CLI subprocess per job, a JSON record and a log file per job in
``WORKSPACE/jobs/``. The UI only launches, reads and cancels:

* state comes from the run's ``meta.json`` (``status`` running / complete) and the
  scorer's progress files (:meth:`infosft.analysis.store.Run.read_progress`: tokens done
  and to do, an ETA), so it survives an app restart;
* a job runs ``infosft --status-file jobs/ID.outcome COMMAND --config jobs/ID.yaml``:
  the app writes the command's config file (the same fields as the command's flags,
  :mod:`infosft.configs`) and the command writes its outcome (:mod:`infosft.outcome`):
  a process that is gone while its run is not complete has failed, and its outcome
  file says why (no outcome file: it was killed before it could say);
* Cancel sends SIGTERM to the job's process group (the run's whole parts stay, so
  ``infosft score --resume`` can finish it);
* a job's process is its pid *and* start time (:mod:`infosft.process`): once it is gone
  the kernel may give its pid to a stranger, who must neither look like the job nor get
  its signals. Records from before start times were stored are checked by pid alone.

Training jobs (kind ``train``) write ``WORKSPACE/trainings/NAME``; their state comes
from :func:`infosft.train_status.read_status` (the trainer's ``status.json``), and the
job record only fills in what happened before the trainer wrote it (a CLI error).

Evaluation jobs (kind ``eval``) run ``infosft eval``; their runs are the ``runs`` of
the job's config file, and their state comes from each run's ``RUN/eval/report.json``
and ``RUN/eval/progress.json``.

The latest job per run directory is found through a pointer file
(``jobs/by-target/KIND-HASH``, :func:`latest_job`), not by reading every record.
"""

from __future__ import annotations

import hashlib
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

from infosft.analysis.store import Run, atomic_write_json
from infosft.app import workspace
from infosft import process
from infosft import train_status as ts
from infosft.atomic import atomic_write_text
from infosft.configs import read_config_file, write_config
from infosft.errors import InfosftError
from infosft.outcome import read_outcome

PART_TOKENS = 8192  # finer parts than the CLI default: more frequent progress updates
# A job's files in WORKSPACE/jobs/: ID.json (the record), ID.log (its output), ID.yaml
# (the config its command reads), ID.outcome (what the command says when it ends).
RECORD, LOG, CONFIG, OUTCOME = ".json", ".log", ".yaml", ".outcome"
BY_TARGET = "by-target"  # jobs/by-target/KIND-HASH: the id of the latest job per run dir


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
    started: float | None = None  # the process's start time: with pid, its identity
    host: str | None = None

    @property
    def record_path(self) -> Path:
        return Path(self.log).with_suffix(RECORD)

    @property
    def config_path(self) -> Path:
        """The config file the job's command runs with (``--config``)."""
        return Path(self.log).with_suffix(CONFIG)

    @property
    def outcome_path(self) -> Path:
        """Where the command writes its outcome (``--status-file``)."""
        return Path(self.log).with_suffix(OUTCOME)

    def save(self) -> None:
        atomic_write_json(self.record_path, asdict(self))


def score_config(source: str, run_dir: Path, *, model: str | None = None,
                 max_length: int = 2048, fields: dict[str, str] | None = None,
                 limit: int | None = None, split: str = "train",
                 no_template: bool = False) -> dict[str, Any]:
    """The ``infosft score`` config of a scoring job, checked as the command will check
    it; local paths absolute (:func:`app.workspace.local_path`)."""
    from infosft.analysis.score import ScoreConfig
    from infosft.configs import build

    values = {"source": workspace.local_path(str(source)), "out": str(run_dir),
              "model": workspace.local_path(model), "max_length": int(max_length),
              "fields": fields or None, "limit": int(limit) if limit else None,
              "split": split, "use_template": not no_template, "part_tokens": PART_TOKENS}
    build(ScoreConfig, values).check()
    return values


def new_job_log() -> Path:
    """``jobs/ID.log`` for a new job id (time-sortable, unique); the job's other files
    share its stem."""
    job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    return workspace.subdir(workspace.JOBS) / f"{job_id}{LOG}"


def launch(name: str, command: str, run_dir: Path, kind: str = "score", *,
           config: dict[str, Any] | None = None, args: list[str] | tuple = ()) -> Job:
    """Start ``infosft --status-file jobs/ID.outcome COMMAND [--config jobs/ID.yaml] ARGS``;
    ``config`` is written to the config file first."""
    log = new_job_log()
    argv = [sys.executable, "-m", "infosft", "--status-file", str(log.with_suffix(OUTCOME)),
            command]
    if config is not None:
        argv += ["--config", str(write_config(config, log.with_suffix(CONFIG)))]
    return start(name, argv + list(args), run_dir, kind, log=log)


def start(name: str, argv: list[str], run_dir: Path, kind: str = "score", *,
          log: Path | None = None) -> Job:
    """Start ``argv`` (an argument list, never a shell string) in its own process group,
    in the workspace, output to ``jobs/ID.log``; record the job and point its run
    directory's :func:`latest_job` at it."""
    log = log or new_job_log()
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=workspace.workspace_dir(),
                                start_new_session=True)
    _CHILDREN[proc.pid] = proc
    job = Job(log.stem, name, kind, list(argv), proc.pid, str(run_dir), str(log), time.time(),
              started=process.start_time(proc.pid), host=process.current()["host"])
    job.save()
    pointer = _pointer(kind, run_dir)
    pointer.parent.mkdir(exist_ok=True)
    atomic_write_text(pointer, job.id)
    return job


def _pointer(kind: str, run_dir: str | Path) -> Path:
    digest = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:24]
    return workspace.subdir(workspace.JOBS) / BY_TARGET / f"{kind}-{digest}"


def latest_job(run_dir: str | Path, kind: str) -> Job | None:
    """The latest job of ``kind`` launched into ``run_dir`` (None: none from this app,
    e.g. a run started from the CLI): one pointer file read, whatever the number of jobs."""
    try:
        job_id = _pointer(kind, run_dir).read_text().strip()
        return load(job_id)
    except (OSError, InfosftError):
        return None


def launch_score(name: str, source: str, **options: Any) -> Job:
    """Validate the run name and start scoring ``source`` into ``WORKSPACE/runs/NAME``."""
    run_dir = workspace.inside(workspace.subdir(workspace.RUNS), name, "run name")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise InfosftError(f"a run named {name!r} already exists; choose another name")
    return launch(name, "score", run_dir, config=score_config(source, run_dir, **options),
                  args=["--quiet"])


def list_jobs(limit: int = 20, kind: str | None = "score") -> list[Job]:
    """The most recent jobs of ``kind`` (None: every kind) first; unreadable records are
    skipped. Scoring is the default: the Data page's panel shows token progress."""
    out = []
    for p in sorted(workspace.subdir(workspace.JOBS).glob(f"*{RECORD}"), reverse=True):
        if len(out) >= limit:
            break
        try:
            job = Job(**json.loads(p.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if kind is None or job.kind == kind:
            out.append(job)
    return out


def load(job_id: str) -> Job:
    """A job's current record (e.g. after another session cancelled it)."""
    path = workspace.inside(workspace.subdir(workspace.JOBS), f"{job_id}{RECORD}", "job id")
    try:
        return Job(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise InfosftError(f"job {job_id}: unreadable record ({e})") from None


def alive(job: Job) -> bool:
    """Whether the job's process still runs (reaping it, and keeping its exit code, if
    it is our child)."""
    if job.returncode is not None:  # reaped already: its pid may be anyone's by now
        return False
    ours = process.on_this_host(job.host)
    if ours and _reap(job):
        return False
    if process.alive(job.pid, job.started, job.host):
        return True
    if ours:  # it ended between the two looks: reap it now, so its exit code is known
        _reap(job)
    return False


#: pid -> Popen of the jobs this process started. Held so that the Popen is never
#: garbage-collected while its child runs: CPython then queues it for
#: ``subprocess._cleanup``, which reaps it at the next ``Popen`` anywhere in the process,
#: and its exit code (the signal that killed it) would be lost to us.
_CHILDREN: dict[int, subprocess.Popen] = {}


def _reap(job: Job) -> bool:
    """Collect the exit code of an ended child of ours (into ``job.returncode``)."""
    proc = _CHILDREN.get(job.pid)
    if proc is not None:
        if proc.poll() is None:
            return False
        del _CHILDREN[job.pid]
        job.returncode = proc.returncode
    else:
        try:
            pid, status = os.waitpid(job.pid, os.WNOHANG)
        except ChildProcessError:  # not our child (app restarted) or already reaped
            return False
        if pid != job.pid:
            return False
        job.returncode = os.waitstatus_to_exitcode(status)
    job.save()
    return True


def log_tail(job: Job, lines: int = 15) -> str:
    try:
        text = Path(job.log).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def outcome(job: Job) -> dict[str, Any] | None:
    """What the job's command said when it ended (:mod:`infosft.outcome`), or None."""
    return read_outcome(job.outcome_path)


def failure(job: Job) -> str:
    """Why an ended job failed, from its outcome file: the command's one-line error, or
    what is known when the process was killed before it could write one."""
    o = outcome(job)
    if o is not None and o.get("error"):
        return o["error"]
    if o is not None:
        return f"the command ended with exit code {o['returncode']}"
    rc = job.returncode
    if rc is not None and rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"the process was killed ({name}) before it could report; see its log"
    return "the process ended without reporting an outcome (killed?); see its log"


def status(job: Job) -> dict[str, Any]:
    """``state`` (starting | running | complete | failed | cancelled), progress
    (``stage``: what the scorer does, in words; ``done``, ``total`` (None before scoring
    starts), ``fraction``, ``eta_s``, ``elapsed_s``) and, for a failed job,
    ``message`` and ``log``. A training job answers :func:`train_status` instead."""
    if job.kind == "train":
        return train_status(job.run_dir)
    if job.kind == "eval":
        return eval_status(job)
    run = Run(job.run_dir)
    meta_status = None
    if run.exists():
        try:
            meta_status = run.meta().get("status")
        except InfosftError:
            meta_status = None
    out: dict[str, Any] = {"state": "starting", "done": 0, "total": None, "fraction": 0.0,
                           "eta_s": None, "elapsed_s": time.time() - job.created_at,
                           "stage": "starting"}
    if (p := run.read_progress()) is not None:  # None: not started, or being rewritten
        out.update(stage=p["stage"], done=p["done_tokens"], total=p["total_tokens"] or None,
                   eta_s=p["eta_s"],
                   fraction=p["done_tokens"] / p["total_tokens"] if p["total_tokens"] else 0.0)
    if meta_status == "complete":
        return {**out, "state": "complete", "fraction": 1.0, "eta_s": 0}
    running = alive(job)
    if job.cancelled:
        return {**out, "state": "cancelled" if not running else "cancelling"}
    if running:
        return {**out, "state": "running" if meta_status == "running" else "starting"}
    return {**out, "state": "failed", "message": failure(job), "log": log_tail(job)}


def cancel(job: Job) -> None:
    """SIGTERM to the job's process group, if its process is still the job's; the record
    remembers it was cancelled."""
    job.cancelled = True
    job.save()
    if job.returncode is None:
        try:
            process.terminate(job.pid, job.started, job.host, group=True)
        except PermissionError:
            pass


# --- training jobs ----------------------------------------------------------------------

#: The training options the app's forms pass (TrainConfig fields, one value each).
TRAIN_OPTIONS = ("model", "reference", "lr", "max_steps", "epochs", "batch_size", "grad_accum",
                 "eval_steps", "max_length", "eval_split", "logging_steps", "save_steps",
                 "limit", "split")


def train_values(data: str, out: Path, *, scheme: str | None = "infosft",
                 knobs: dict[str, Any] | None = None, mode: str | None = "online",
                 lora: bool = True, fields: dict[str, str] | None = None,
                 no_template: bool = False, **options: Any) -> dict[str, Any]:
    """The TrainConfig values of a form: ``knobs`` as :meth:`analysis.tune.Settings.knobs`
    gives them, ``options`` among :data:`TRAIN_OPTIONS` (None or "" leaves the default);
    local paths made absolute (:func:`app.workspace.local_path`)."""
    unknown = sorted(set(options) - set(TRAIN_OPTIONS))
    if unknown:
        raise TypeError(f"unknown training option {unknown[0]!r}")
    from infosft.train_config import knob_values

    values = {"data": workspace.local_path(str(data)), "out": str(out), "scheme": scheme,
              "mode": mode, "lora": lora, "fields": fields or None,
              "use_template": not no_template, **knob_values(knobs), **options}
    for key in ("model", "reference"):
        if values.get(key):
            values[key] = workspace.local_path(values[key])
    return {k: v for k, v in values.items() if v not in (None, "")}


def train_config(data: str, out: Path, **options: Any):
    """The resolved, validated TrainConfig of a form (a bad value is a one-line error now,
    not a failed job later): what the job's config file holds."""
    from infosft.train_config import resolve

    return resolve(train_values(data, out, **options))


def check_train_options(data: str, out: Path, **options: Any) -> None:
    """Validate a form's training options exactly as the trainer will."""
    train_config(data, out, **options)


def launch_train(name: str, data: str, **options: Any) -> Job:
    """Validate the run name and start training into ``WORKSPACE/trainings/NAME``.

    An existing name is an error, never an overwrite."""
    from infosft.train_config import as_dict

    run_dir = workspace.inside(workspace.subdir(workspace.TRAININGS), name, "run name")
    starting = train_job(run_dir)  # launched, but the trainer has not made the folder yet
    if run_dir.exists() or (starting is not None and alive(starting)):
        raise InfosftError(f"a training run named {name!r} already exists; choose another name")
    cfg = train_config(data, run_dir, **options)
    return launch(name, "train", run_dir, kind="train", config=as_dict(cfg))


def train_job(run_dir: str | Path) -> Job | None:
    """The latest job that trains into ``run_dir`` (None for runs started outside the
    app, e.g. from the CLI)."""
    return latest_job(run_dir, "train")


def train_status(run_dir: str | Path) -> dict[str, Any]:
    """The trainer's ``status.json`` (see :mod:`infosft.train_status`) plus ``fraction``,
    ``message`` (the error line) and ``log`` (the tail of the job's output).

    Before the trainer writes a status, the job record tells: ``queued`` while its
    process lives, ``stopped`` if it was stopped, else ``failed`` with the CLI's error."""
    run_dir = Path(run_dir)
    out = ts.read_status(run_dir)
    job = train_job(run_dir)
    running = job is not None and alive(job)  # also reaps a finished child
    tail = log_tail(job) if job is not None else ""
    said = outcome(job) if job is not None and not running else None
    if out["state"] is None:
        out["state"] = ("queued" if running else "stopped" if job and job.cancelled else
                        "failed" if job else "unknown")
    elif running and job.created_at > (out.get("updated_at") or 0):
        out["state"] = "queued"  # resumed: the new process has not rewritten the status yet
    if running and job.cancelled and out["state"] in ("queued", "running"):
        out["state"] = "stopping"  # Stop was sent: say so now, not when the step ends
    if out["state"] == "failed" and job is not None and (
            (said and said.get("error")) or not out["error"]):
        # the command's own one-line reason beats the trainer's "the process died"
        out["error"] = failure(job)
    total, step = out.get("total_steps"), out.get("step") or 0
    out["fraction"] = (1.0 if out["state"] == "finished" else
                       min(step / total, 1.0) if total else 0.0)
    out["message"], out["log"] = out["error"], tail
    return out


def stop_train(run_dir: str | Path) -> None:
    """SIGTERM to the training's process group (the trainer saves a checkpoint and ends
    ``stopped``, resumable). A run started outside the app gets SIGTERM to its pid only:
    its process group may be the user's shell."""
    job = train_job(run_dir)
    if job is not None and alive(job):
        cancel(job)
        return
    st = ts.read_status(run_dir)
    if (st["state"] not in ts.ACTIVE_STATES or not process.on_this_host(st.get("host"))
            or not process.terminate(st.get("pid"), st.get("started"), st.get("host"))):
        raise InfosftError(f"{Path(run_dir).name}: not running here, nothing to stop")


def resume_train(run_dir: str | Path) -> Job:
    """Continue a stopped or failed run from its last checkpoint, as a new job."""
    run_dir = Path(run_dir)
    st = train_status(run_dir)
    if st["state"] in ts.ACTIVE_STATES:
        raise InfosftError(f"{run_dir.name} is still {st['state']}")
    if not st.get("resumable"):
        raise InfosftError(f"{run_dir.name} has no checkpoint to resume from")
    # the stored config.yaml is the run's config; the CLI reads it from --out
    return launch(run_dir.name, "train", run_dir, kind="train",
                  args=["--out", str(run_dir), "--resume"])


# --- evaluation jobs --------------------------------------------------------------------

def eval_config(run_dirs: list[str | Path], *, task_data: str | None = None,
                prior_data: list[str] | None = None, accuracy_limit: int = 20,
                max_new_tokens: int = 256, limit: int | None = None,
                overwrite: bool = False) -> dict[str, Any]:
    """The ``infosft eval`` config of an evaluation job, checked as the command will;
    local paths absolute (:func:`app.workspace.local_path`)."""
    from infosft.analysis.evaluate import EvalConfig, check_settings
    from infosft.configs import build

    values = {"runs": [workspace.local_path(str(d)) for d in run_dirs],
              "task_data": workspace.local_path(task_data),
              "prior_data": [workspace.local_path(p) for p in prior_data or []],
              "accuracy_limit": int(accuracy_limit), "max_new_tokens": int(max_new_tokens),
              "limit": int(limit) if limit else None, "overwrite": bool(overwrite)}
    check_settings(build(EvalConfig, values))
    return values


def launch_eval(run_dirs: list[str | Path], **options: Any) -> Job:
    """Check the runs (finished; not evaluated yet unless ``overwrite``) and start one job
    that evaluates them one after the other. The job's ``run_dir`` is the first run."""
    from infosft.analysis.evaluate import check_eval_dir, open_training_run

    if not run_dirs:
        raise InfosftError("choose at least one finished training run to evaluate")
    for d in run_dirs:
        check_eval_dir(open_training_run(d), bool(options.get("overwrite")))
    name = Path(run_dirs[0]).name + (f" (+{len(run_dirs) - 1})" if len(run_dirs) > 1 else "")
    return launch(f"eval {name}", "eval", Path(run_dirs[0]), kind="eval",
                  config=eval_config(run_dirs, **options), args=["--quiet"])


def job_runs(job: Job) -> list[Path]:
    """The run directories of an evaluation job: the ``runs`` of its config file."""
    try:
        runs = read_config_file(job.config_path).get("runs")
    except InfosftError:  # a record from before config files, or a damaged one
        return []
    return [Path(r) for r in runs] if isinstance(runs, list) else []


def eval_status(job: Job) -> dict[str, Any]:
    """An evaluation job's ``state``, ``fraction`` over all its runs, ``stage`` (run and
    step), ``eta_s`` and, for a failed job, ``message`` and ``log``. Reports older than
    the job (a previous evaluation being replaced) do not count."""
    from infosft.analysis.evaluate import eval_dir, read_progress, report_path

    runs = job_runs(job)
    out: dict[str, Any] = {"state": "starting", "done": 0, "total": len(runs), "fraction": 0.0,
                           "eta_s": None, "elapsed_s": time.time() - job.created_at,
                           "stage": None}
    fractions, errors = [], []
    for r in runs:
        report_file = report_path(r)
        try:
            fresh = report_file.stat().st_mtime >= job.created_at - 1
            report = json.loads(report_file.read_text()) if fresh else None
        except (OSError, ValueError):
            report = None
        st = (report or {}).get("status")
        if st == "complete":
            out["done"] += 1
            fractions.append(1.0)
            continue
        if st == "failed":
            errors.append(f"{r.name}: {report.get('error')}")
        prog = read_progress(eval_dir(r)) if st == "running" else None
        fractions.append(prog["fraction"] if prog else 0.0)
        if prog and out["stage"] is None:
            out["stage"] = f"{r.name}: {prog['stage']}"
            out["eta_s"] = prog["eta_s"]
    out["fraction"] = sum(fractions) / len(fractions) if fractions else 0.0
    if runs and out["done"] == len(runs):
        return {**out, "state": "complete", "fraction": 1.0, "eta_s": 0}
    running = alive(job)
    if job.cancelled:
        return {**out, "state": "cancelling" if running else "cancelled"}
    if running:
        return {**out, "state": "running" if out["stage"] else "starting"}
    return {**out, "state": "failed", "message": errors[0] if errors else failure(job),
            "log": log_tail(job)}
