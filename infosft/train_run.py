"""The training run directory around a run: checks before anything is written
(``check_run_dir``, ``check_inputs_outside``, ``check_resume_source``), the files a new
run starts with (``start_run_files``), ``final/infosft_model.json``, and the run's log
(``attach_log``: the console, then ``train.log``). The layout itself is
:mod:`infosft.train_status`."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from infosft import process, runlock
from infosft import train_status as ts
from infosft.atomic import atomic_write_text
from infosft.errors import InfosftError
from infosft.train_config import TrainConfig, dump, first_change
from infosft.train_data import TrainData


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> Path | None:
    """Check the run directory (its lock held); the checkpoint to resume from.

    Deletes nothing: an ``overwrite`` clears the old run only once the new one's data and
    model have loaded (:func:`train`), and only if it is a training run, so a typo in
    ``--out`` cannot empty a directory of other files.
    """
    if resume:
        if not (run_dir / ts.CONFIG).is_file():
            raise InfosftError(f"{run_dir}: no training run to resume (no {ts.CONFIG})")
        status = ts.read_status(run_dir)
        if status["state"] in ts.ACTIVE_STATES:
            raise InfosftError(f"{run_dir}: the run is still {status['state']} "
                               f"(pid {status['pid']} on {status['host']})")
        if status["state"] == "finished":
            raise InfosftError(f"{run_dir}: the run has already finished")
        ckpt = ts.last_checkpoint(run_dir)
        if ckpt is None:
            raise InfosftError(f"{run_dir}: no complete checkpoint to resume from; start "
                               "over with --overwrite")
        return ckpt
    if runlock.is_empty(run_dir):
        return None
    if not overwrite:
        raise InfosftError(f"{run_dir} already exists; use --resume to continue it or "
                           "--overwrite to replace it")
    if not ts.is_run(run_dir):
        raise InfosftError(f"{run_dir} exists and is not a training run; refusing to "
                           "overwrite it (choose another --out)")
    status = ts.read_status(run_dir)
    if status["state"] in ts.ACTIVE_STATES:
        raise InfosftError(f"{run_dir}: cannot overwrite a run that is still "
                           f"{status['state']} (pid {status['pid']})")
    return None


def check_inputs_outside(cfg: TrainConfig, run_dir: Path) -> None:
    """The data and the model must not lie inside the run that ``--overwrite`` replaces:
    they would be deleted under the new run (``--model RUN/final`` would even become its
    own base model)."""
    if runlock.is_empty(run_dir):
        return  # nothing there to delete
    root = run_dir.resolve()
    for name in ("data", "eval_data", "model"):
        value = getattr(cfg, name)
        if value and Path(value).exists() and Path(value).resolve().is_relative_to(root):
            raise InfosftError(f"config field {name!r}: {value} lies inside {run_dir}, which "
                               "--overwrite would delete; copy it elsewhere first")


class _OneLine(logging.Formatter):
    """The message alone: tracebacks go to train.log, not the console."""

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


def attach_log(run_dir: Path | None) -> list[tuple[logging.Logger, logging.Handler]]:
    """infosft's messages on stdout (``run_dir`` None), or in train.log with
    transformers' messages (once the run directory is the new run's)."""
    ours = logging.getLogger("infosft")
    ours.setLevel(logging.INFO)
    if run_dir is None:
        stdout = logging.StreamHandler(sys.stdout)
        stdout.setFormatter(_OneLine("%(message)s"))
        attached = [(ours, stdout)]
    else:
        file_handler = logging.FileHandler(run_dir / ts.LOG, encoding="utf-8")
        file_handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        attached = [(ours, file_handler), (logging.getLogger("transformers"), file_handler)]
    for logger, handler in attached:
        logger.addHandler(handler)
    return attached


def detach_log(attached) -> None:
    for logger, handler in attached:
        logger.removeHandler(handler)
    for handler in {h for _, h in attached}:
        handler.close()


def one_line(e: BaseException) -> str:
    if isinstance(e, InfosftError):
        return str(e)
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def write_model_info(final: Path, cfg: TrainConfig, knobs: dict[str, Any]) -> None:
    """``final/infosft_model.json``: what :func:`infosft.models.load_model` needs to rebuild
    the model, plus how it was trained."""
    base = cfg.model
    if base is not None and Path(base).exists():
        base = str(Path(base).resolve())  # a relative path would break when loaded elsewhere
    atomic_write_text(final / ts.MODEL_INFO, json.dumps({
        "base_model": base, "adapter": cfg.lora, "scheme": cfg.scheme, "knobs": knobs,
        "mode": cfg.mode, "data": cfg.data}, indent=1) + "\n")


def start_run_files(cfg: TrainConfig, run_dir: Path, ckpt: Path | None,
                     previous: dict[str, Any], data: TrainData) -> None:
    """config.yaml, a ``queued`` status naming this process, data/source.json and the
    held-out records: the run directory is now the new run's."""
    dump(cfg, run_dir / ts.CONFIG)
    if ckpt is not None:
        ts.truncate_metrics(run_dir, ts.checkpoint_step(ckpt))
    ts.write_status(run_dir, state="queued", **process.current(),
                    started_at=previous.get("started_at") or time.time(), error=None,
                    step=previous.get("step") or 0, total_steps=previous.get("total_steps"),
                    epoch=previous.get("epoch"), elapsed_s=previous.get("elapsed_s"),
                    eta_s=None)
    atomic_write_text(run_dir / ts.SOURCE, json.dumps(data.source, indent=1, default=str) + "\n")
    if data.eval_records:
        atomic_write_text(run_dir / ts.EVAL_DATA, "".join(
            json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in data.eval_records))


def check_resume_source(run_dir: Path, source: dict[str, Any]) -> None:
    """A resumed run must see the data and settings it started with (same order, same
    examples, same result-affecting config): data compared by content, not by the path's
    spelling; a hand-edited ``config.yaml`` is caught against what the run recorded."""
    path = run_dir / ts.SOURCE
    if not path.is_file():
        return  # a run from before provenance was recorded: nothing to compare
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        before = None
    if not isinstance(before, dict):
        raise InfosftError(f"{path}: damaged, cannot tell whether the data changed; delete "
                           "it to resume without that check")

    def facts(src: dict[str, Any]) -> dict[str, Any]:
        eval_data = src.get("eval_data")
        return {"content_hash": src.get("content_hash"),
                "train_examples": src.get("train_examples"),
                "eval_examples": src.get("eval_examples"),
                "eval_data content_hash": eval_data.get("content_hash")
                if isinstance(eval_data, dict) else None}

    was, now = facts(before), facts(source)
    for key, value in now.items():
        if was[key] != value:
            raise InfosftError(f"--resume: the data changed since the run started ({key} "
                               f"{was[key]} -> {value}); start a new run")
    config = before.get("config")
    name = first_change(config if isinstance(config, dict) else {}, source["config"])
    if name is not None:
        raise InfosftError(f"--resume: {run_dir / ts.CONFIG} was edited since the run "
                           f"started: {name!r} was {before['config'][name]!r}, now "
                           f"{source['config'][name]!r}; restore it or start a new run")
