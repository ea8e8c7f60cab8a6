"""Sweep jobs: ``infosft sweep`` in the background, into ``WORKSPACE/sweeps/NAME``.

The job record (:mod:`app.jobs`) says whether its process lives; everything else comes
from the sweep's own directory (:func:`analysis.sweep.sweep_progress`): which runs are
done, which one trains or is evaluated, how far it got. Stop sends SIGTERM to the job's
process group: the run in training saves a checkpoint and stops, and the sweep stops
after it. Resume runs ``infosft sweep --out SWEEP --resume``, which continues with the
settings the sweep was started with (its ``sweep.json``), retraining nothing finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infosft.analysis.sweep import parse_point, read_plan, sweep_progress
from infosft.app import jobs, workspace
from infosft.errors import InfosftError

KIND = "sweep"
SWEEPS = workspace.SWEEPS  # WORKSPACE/sweeps/NAME


def sweep_config(data: str, *, lora: bool = True, fields: dict[str, str] | None = None,
                 no_template: bool = False, **options: Any) -> dict[str, Any]:
    """The training settings every run of the sweep shares, as the sweep's ``--config``
    file holds them (TrainConfig fields; scheme, knobs, seed and out are per run).
    ``options`` are :data:`app.jobs.TRAIN_OPTIONS`; local paths made absolute."""
    values = jobs.train_values(data, Path("_"), scheme=None, mode=None, lora=lora,
                               fields=fields, no_template=no_template, **options)
    values.pop("out")
    return values


def sweep_args(out: Path, points: list[str], seeds: list[int], *,
               task_data: str | None = None, prior_data: list[str] | None = None,
               accuracy_limit: int = 20, max_new_tokens: int = 256,
               devices: list[str] | None = None) -> list[str]:
    """The ``infosft sweep`` arguments besides ``--config``: the sweep directory, the
    grid, the seeds, the devices and the evaluation settings (an argument list, never a
    shell string)."""
    args = ["--out", str(out)]
    for point in points:
        args += ["--scheme", point]
    args += ["--seeds", *map(str, seeds)]
    if devices:
        args += ["--devices", *devices]
    if task_data:
        args += ["--task-data", workspace.local_path(task_data)]
    for p in prior_data or []:
        args += ["--prior-data", workspace.local_path(p)]
    return args + ["--accuracy-limit", str(int(accuracy_limit)),
                   "--max-new-tokens", str(int(max_new_tokens)), "--quiet"]


def parse_grid(text: str) -> list[str]:
    """Grid points, one per line or comma-free item (``sft``, ``infosft:P=0.9``), each
    checked; a one-line error names a bad one.

    >>> parse_grid("sft\\n  infosft:P=0.9\\n\\n")
    ['sft', 'infosft:P=0.9']
    """
    points = [line.strip() for line in text.splitlines() if line.strip()]
    if not points:
        raise InfosftError("the grid is empty: give one scheme per line (e.g. sft, "
                           "infosft:P=0.9)")
    for p in points:
        parse_point(p)
    return points


def parse_seeds(text: str) -> list[int]:
    """``"0 1 2"`` -> ``[0, 1, 2]``; a one-line error otherwise.

    >>> parse_seeds("0, 1 2")
    [0, 1, 2]
    """
    try:
        seeds = [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise InfosftError(f"seeds: whole numbers separated by spaces, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise InfosftError(f"seeds: at least one, each once, got {text!r}")
    return seeds


def parse_devices(text: str) -> list[str] | None:
    """The sweep's devices box: ``"cuda:0 cuda:1"`` -> each checked as ``infosft sweep
    --devices`` checks them (one line naming a bad one); empty -> None (the default:
    one run per GPU where there are several, else one after another)."""
    from infosft.analysis.sweep_devices import check_devices

    names = text.replace(",", " ").split()
    return check_devices(names) if names else None


def launch_sweep(name: str, data: str, points: list[str], seeds: list[int],
                 **options: Any) -> jobs.Job:
    """Validate and start a sweep into ``WORKSPACE/sweeps/NAME``; an existing name is an
    error, never an overwrite."""
    out = workspace.inside(workspace.subdir(SWEEPS), name, "sweep name")
    starting = sweep_job(out)
    if out.exists() or (starting is not None and jobs.alive(starting)):
        raise InfosftError(f"a sweep named {name!r} already exists; choose another name")
    if not data:
        raise InfosftError("choose the training data first")
    evaluation = {k: options.pop(k) for k in ("task_data", "prior_data", "accuracy_limit",
                                              "max_new_tokens", "devices") if k in options}
    for point in points:  # every grid point checked as the trainer will, before the job
        scheme, knobs = parse_point(point)
        jobs.check_train_options(data, out / "runs" / "_", scheme=scheme, knobs=knobs,
                                 **options)
    return jobs.launch(name, "sweep", out, kind=KIND, config=sweep_config(data, **options),
                       args=sweep_args(out, points, seeds, **evaluation))


def list_sweeps() -> list[Path]:
    """Sweeps of the workspace, newest first: folders with a ``sweep.json``, and sweeps
    launched whose folder is not written yet."""
    root = workspace.subdir(SWEEPS)
    found = {p for p in root.iterdir() if (p / "sweep.json").is_file()}
    found |= {Path(j.run_dir) for j in jobs.list_jobs(limit=200, kind=KIND)}
    return sorted(found, key=lambda p: p.stat().st_mtime if p.exists() else float("inf"),
                  reverse=True)


def sweep_job(out: str | Path) -> jobs.Job | None:
    """The latest job that runs the sweep in ``out`` (None if started elsewhere)."""
    return jobs.latest_job(out, KIND)


def sweep_status(out: str | Path) -> dict[str, Any]:
    """:func:`analysis.sweep.sweep_progress` plus ``state``: ``starting`` (launched, no
    ``sweep.json`` yet), ``running``, ``stopping``, ``stopped``, ``finished`` or
    ``failed`` (with ``message``, the CLI's error line), and ``log`` (the job's tail)."""
    out = Path(out)
    job = sweep_job(out)
    running = job is not None and jobs.alive(job)
    tail = jobs.log_tail(job) if job is not None else ""
    try:
        prog = sweep_progress(out)
    except InfosftError:
        prog = {"runs": [], "done": 0, "total": 0, "current": None, "fraction": 0.0}
        if running:
            return {**prog, "state": "starting", "message": None, "log": tail}
        if job is None:
            raise
    finished = prog["total"] > 0 and prog["done"] == prog["total"]
    if running:
        state = "stopping" if job.cancelled else "running"
    elif finished:
        state = "finished"
    elif job is not None and job.cancelled:
        state = "stopped"
    elif job is None or (jobs.outcome(job) or {"returncode": job.returncode})["returncode"] == 0:
        state = "stopped"  # started from the CLI, or ended without finishing the grid
    else:
        state = "failed"
    message = jobs.failure(job) if state == "failed" else None
    return {**prog, "state": state, "message": message, "log": tail}


def stop_sweep(out: str | Path) -> None:
    """SIGTERM to the sweep's process group; the run in training checkpoints and stops."""
    job = sweep_job(out)
    if job is None or not jobs.alive(job):
        raise InfosftError(f"{Path(out).name}: not running from this app, nothing to stop")
    jobs.cancel(job)


def resume_sweep(out: str | Path) -> jobs.Job:
    """Continue a stopped or failed sweep with its stored settings, as a new job."""
    out = Path(out)
    read_plan(out)  # one-line error when there is nothing to resume
    st = sweep_status(out)
    if st["state"] in ("running", "stopping", "starting"):
        raise InfosftError(f"{out.name} is still {st['state']}")
    if st["state"] == "finished":
        raise InfosftError(f"{out.name} is finished: every run is trained and evaluated")
    return jobs.launch(out.name, "sweep", out, kind=KIND,
                       args=["--out", str(out), "--resume", "--quiet"])
