"""Before/after evaluation of finished training runs: what a fine-tune learned and what
it forgot.

For a training run ``RUN`` (``config.yaml``, ``status.json`` saying finished, the
model in ``final/``), two data sets are scored under the base model and under the
tuned one:

* the task set: held-out examples of the training task (``RUN/data/eval.jsonl``, the
  run's eval split, or a file the user gives), with the training run's fields,
  max_length and template, so the tokens are the ones training saw;
* the prior-capability set: things the base model already does well (the bundled
  ``sample_data/prior.jsonl``, plus any user files).

Layout, next to the training run's own files::

    RUN/eval/base-task/  tuned-task/  base-prior/  tuned-prior/   ordinary scored runs
    RUN/eval/kl-prior.parquet     example_id, position, kl: KL(base || tuned) per prior target
    RUN/eval/accuracy.parquet     greedy answers on a few math examples (math data only)
    RUN/eval/accuracy-prior.parquet  the same on the prior set, when it is math: forgetting
                                  as answers lost (right before, wrong after)
    RUN/eval/report.json          the numbers, the settings, status running | complete | failed
    RUN/eval/progress.json        stage, done, total, fraction, eta_s (while it runs)
    RUN/eval/data/prior.jsonl     the prior sets combined (only when there are several)

Numbers (all token-level means over every target token of a set, like the loss):
``learned`` = tuned - base of mean NLL (negative: learned) and of mean q on the task
set; ``forgot`` = tuned - base of mean NLL on the prior set (positive: forgot) and
the mean per-token KL(base || tuned) there.

Base scores of the same data under the same base model are copied from a sibling
run's evaluation instead of being recomputed (runs compared in one plot usually share
both), and so are the base model's greedy answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import polars as pl

from infosft.analysis.accuracy import (accuracy_items, accuracy_summary, greedy_generate, prompt_ids,
                               stop_ids, with_answers)
from infosft.analysis.delta import check_same_tokens, set_numbers
from infosft.analysis.kl import KL_SCHEMA, joint_kl, kl_summary
from infosft.analysis.score import ScoreConfig, load_examples, versions, score_dataset
from infosft.analysis.store import Run, atomic_write_parquet, old_targets
from infosft import process, runlock
from infosft import train_status as ts
from infosft.bundled import PRIOR
from infosft.atomic import atomic_write_bytes, atomic_write_json
from infosft.data import RecordError, detect_format, normalize
from infosft.configs import option
from infosft.errors import InfosftError, InputError
from infosft.records import read_records

DEFAULT_PRIOR = PRIOR

EVAL = "eval"
REPORT = "report.json"
PROGRESS = "progress.json"
KL_FILE = "kl-prior.parquet"
ACCURACY = "accuracy.parquet"
PRIOR_ACCURACY = "accuracy-prior.parquet"
SETS = ("task", "prior")
# What a saved model or LoRA adapter holds its weights in (sharded ones have an index).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")
WHO = ("base", "tuned")


def scored_name(who: str, which: str) -> str:
    """The name of one scored run of an evaluation: ``base-task``, ``tuned-prior``, ..."""
    if who not in WHO or which not in SETS:
        raise ValueError(f"no scored run {who!r}-{which!r}: who in {WHO}, which in {SETS}")
    return f"{who}-{which}"


SCORED = tuple(scored_name(who, s) for s in SETS for who in WHO)  # base-task, tuned-task, ...
#: Relative cost of one generated token against one scored token (a decode step uses
#: the model far less efficiently than a batched forward); only for the ETA.
GEN_COST = 3.0
TRAINING_KEYS = ("scheme", "C", "P", "threshold", "direction", "mode", "lora", "data", "model",
                 "max_length", "seed")


@dataclass
class EvalConfig:
    """Settings of an evaluation (recorded in the report); the fields' help is
    ``infosft eval --help``."""

    runs: list[str] = option([], "finished training run directories", positional=True,
                             cli=dict(nargs="*", metavar="RUN"))
    task_data: str | None = option(None, "held-out task data (default: RUN/data/eval.jsonl)")
    prior_data: list[str] = option([], "more prior-capability data, besides the bundled "
                                   "prior set (repeatable)",
                                   cli=dict(action="append", metavar="FILE"))
    default_prior: bool = option(True, "include the bundled prior set (sample_data/"
                                 "prior.jsonl; --no-default-prior leaves it out)")
    accuracy_limit: int = option(20, "math task data: greedy answers on this many "
                                 "examples (0: none)")
    max_new_tokens: int = option(256, "tokens per greedy answer")
    limit: int | None = option(None, "use only the first N rows of each data file")
    overwrite: bool = option(False, "replace an existing RUN/eval")
    device: str | None = option(None, "cpu, cuda, mps (default: best available)")
    dtype: str | None = option(None, "float32, bfloat16 (default: bf16 on CUDA, fp32 "
                               "elsewhere)")
    token_budget: int | None = option(None, "padded tokens per scoring batch (default: as "
                                      "infosft score)")
    gen_batch_size: int = option(8, "greedy answers generated together")


# --- the training run ----------------------------------------------------------------

@dataclass
class TrainingRun:
    """A finished training run directory."""

    path: Path
    config: dict[str, Any]
    status: dict[str, Any]

    @property
    def base_model(self) -> str | None:
        """The base model as training got it (None: the embedded default)."""
        return self.config.get("model") or None

    @property
    def final(self) -> Path:
        return self.path / ts.FINAL

    @property
    def eval_dir(self) -> Path:
        return eval_dir(self.path)

    def training(self) -> dict[str, Any]:
        """The training settings that tell runs apart (scheme, knobs, mode, lora, ...)."""
        return {k: self.config.get(k) for k in TRAINING_KEYS}


def eval_dir(run_dir: str | Path) -> Path:
    """``RUN/eval``: the evaluation of the training run ``run_dir``."""
    return Path(run_dir) / EVAL


def scored_pair(run_dir: str | Path, which: str) -> tuple[Run, Run]:
    """The base and the tuned scored run of set ``which`` (``task`` or ``prior``) in the
    evaluation of the training run ``run_dir``."""
    d = eval_dir(run_dir)
    return Run(d / scored_name("base", which)), Run(d / scored_name("tuned", which))


def check_config(config: dict[str, Any], path: Path) -> None:
    """The settings evaluation takes from a training config have usable types."""
    ml = config.get("max_length")
    if ml is not None and (not isinstance(ml, int) or isinstance(ml, bool) or ml < 2):
        raise InfosftError(f"{path}: field 'max_length': expected an integer >= 2, got {ml!r}")
    fields = config.get("fields")
    if fields is not None and not (isinstance(fields, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in fields.items())):
        raise InfosftError(f"{path}: field 'fields': expected a mapping NAME: COLUMN, "
                           f"got {fields!r}")
    ut = config.get("use_template")
    if ut is not None and not isinstance(ut, bool):
        raise InfosftError(f"{path}: field 'use_template': expected true or false, got {ut!r}")
    model = config.get("model")
    if model is not None and not isinstance(model, str):
        raise InfosftError(f"{path}: field 'model': expected a path or id, got {model!r}")


def check_settings(cfg: EvalConfig) -> None:
    """One-line errors for evaluation settings out of range."""
    if cfg.accuracy_limit < 0:
        raise InfosftError(f"--accuracy-limit must be >= 0, got {cfg.accuracy_limit}")
    if cfg.max_new_tokens < 1:
        raise InfosftError(f"--max-new-tokens must be >= 1, got {cfg.max_new_tokens}")
    if cfg.limit is not None and cfg.limit < 1:
        raise InfosftError(f"--limit must be >= 1, got {cfg.limit}")
    if cfg.device is not None:
        from infosft.models import check_device

        check_device(cfg.device)


def open_training_run(path: str | Path) -> TrainingRun:
    """A finished training run, or a one-line error saying why it cannot be evaluated."""
    from infosft.train_status import read_status

    p = Path(path)
    if not p.is_dir():
        raise InfosftError(f"{p}: no such training run directory")
    config = ts.read_run_config(p)
    status = read_status(p)
    state = status.get("state")
    if state != "finished":
        hint = f" ({status['error']})" if status.get("error") else ""
        raise InfosftError(f"{p}: training is not finished (state {state!r}{hint}); "
                           "evaluate it once status.json says finished")
    check_config(config, p / ts.CONFIG)
    run = TrainingRun(p, config, status)
    if not run.final.is_dir():
        raise InfosftError(f"{p}: no final model ({run.final} is missing)")
    if not any((run.final / name).is_file() for name in WEIGHT_FILES):
        raise InfosftError(f"{run.final}: no model weights in it (no model.safetensors or "
                           "adapter_model.safetensors); train the run again")
    return run


def is_finished(path: str | Path) -> bool:
    """Whether a directory is a training run that finished with a final model that can
    be evaluated (see :func:`open_training_run`)."""
    try:
        open_training_run(path)
    except InfosftError:
        return False
    return True


def task_source(run: TrainingRun, task_data: str | None) -> str:
    """The held-out task data: the given file, else the run's eval split, else its
    ``eval_data`` setting."""
    if task_data:
        return str(task_data)
    split = run.path / ts.EVAL_DATA
    if split.is_file():
        return str(split)
    if run.config.get("eval_data"):
        return str(run.config["eval_data"])
    raise InfosftError(f"{run.path}: no held-out task data ({ts.EVAL_DATA} is missing: train "
                       "with an eval split, or pass --task-data FILE)")


def prior_sources(cfg: EvalConfig) -> list[str]:
    out = ([str(DEFAULT_PRIOR)] if cfg.default_prior else []) + [str(p) for p in cfg.prior_data]
    if not out:
        raise InfosftError("no prior-capability data: keep the bundled set or give --prior-data")
    return out


def combine_prior(sources: list[str], out: Path, limit: int | None) -> Path:
    """Several prior sets as one JSONL of conversations (or of texts): each record
    normalized (so sets of different formats combine), with ``prior_source`` and
    ``prior_row`` saying where it came from. At most ``limit`` rows of each set."""
    rows, kinds = [], set()
    for src in sources:
        raw = read_records(src, limit=limit)
        fmt = detect_format(dict.fromkeys(k for _, r in raw.rows for k in r), None, raw.source)
        kinds.add("text" if fmt.kind == "text" else "messages")
        for row, record in raw.rows:
            try:
                content = normalize(record, fmt)
            except RecordError as e:
                raise InputError(e.reason, file=raw.source, row=row, field=e.field,
                                 unit=raw.unit) from None
            key = "text" if isinstance(content, str) else "messages"
            rows.append({key: content, "prior_source": src, "prior_row": row})
    if len(kinds) > 1:
        raise InfosftError(f"the prior-capability sets mix plain text and conversations "
                           f"({', '.join(sources)}); evaluate them in separate runs")
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_bytes(out, text.encode("utf-8"))
    return out


# --- progress --------------------------------------------------------------------------

class Progress:
    """``RUN/eval/progress.json``: the stage, its done/total and when each stage started
    and how long each finished one took, for the app's progress bar and ETA. Each stage
    has a weight (its cost in scored-token units), so the overall fraction moves at a
    roughly even pace; the ETA comes from measured times only (see :func:`read_progress`)."""

    def __init__(self, path: Path, weights: dict[str, float]):
        self.path, self.weights = path, {k: float(v) for k, v in weights.items()}
        self.t0 = time.time()
        self.completed: list[str] = []
        self.stage_started: dict[str, float] = {}
        self.stage_seconds: dict[str, float] = {}
        self._last, self._ended = 0.0, self.t0

    def update(self, stage: str, done: float = 0, total: float | None = None,
               force: bool = False) -> None:
        now = time.time()
        # stages run back to back: one starts when the last ended (its first update may
        # come only with its first measured batch), even when this write is skipped
        self.stage_started.setdefault(stage, self._ended)
        if not force and now - self._last < 0.5:
            return  # at most two writes a second
        self._last = now
        atomic_write_json(self.path, {
            "stage": stage, "stages": list(self.weights), "weights": self.weights,
            "completed": self.completed, "done": done, "total": total,
            "started_at": self.t0, "updated_at": now, "stage_started_at": self.stage_started,
            "stage_seconds": self.stage_seconds})

    def finish(self, stage: str) -> None:
        now = time.time()
        self.stage_seconds[stage] = now - self.stage_started.setdefault(stage, self._ended)
        self._ended = now
        self.completed.append(stage)
        self.update(stage, 1, 1, force=True)


#: What each stage does, as the progress bar names it.
STAGE_LABELS = {
    "base-task": "scoring the task set (base model)",
    "tuned-task": "scoring the task set (tuned model)",
    "base-prior": "scoring the prior set (base model)",
    "tuned-prior": "scoring the prior set (tuned model)",
    "kl-prior": "KL(base || tuned) on the prior set",
    "accuracy-base": "greedy answers (base model)",
    "accuracy-tuned": "greedy answers (tuned model)",
    "prior-accuracy-base": "greedy answers on the prior set (base model)",
    "prior-accuracy-tuned": "greedy answers on the prior set (tuned model)",
}


def _stage_kind(stage: str) -> str:
    """Stages whose cost per weight unit is alike: generation or forward passes."""
    return "generate" if "accuracy" in stage else "forward"


def _measured(eval_dir: Path, p: dict[str, Any], stage: str) -> tuple[float, float, float, float] | None:
    """The current stage's last measurement ``(done, total, seconds it took, when)``:
    the scorer's own progress files for a scoring stage, the writer's for the rest;
    None before its first measurable step."""
    if stage in SCORED:
        sp = Run(eval_dir / stage).read_progress()
        if sp is None or sp["done_tokens"] <= 0 or not sp["total_tokens"]:
            return None
        return sp["done_tokens"], sp["total_tokens"], sp["elapsed_s"], sp["updated"]
    done, total = p.get("done") or 0, p.get("total")
    start = (p.get("stage_started_at") or {}).get(stage)
    if done <= 0 or not total or start is None:
        return None
    return done, total, p.get("updated_at", start) - start, p.get("updated_at", start)


def _scored(run_dir: Path) -> bool:
    """Whether a scored run has all its tokens (its meta says complete)."""
    try:
        return Run(run_dir).meta().get("status") == "complete"
    except (InfosftError, OSError, ValueError):
        return False


def read_progress(eval_dir: str | Path) -> dict[str, Any] | None:
    """The progress of a running evaluation: ``stage`` (what it does, in words),
    ``done``, ``total``, ``fraction`` (0..1 over all stages, by weight), ``elapsed_s``,
    ``eta_s``; None before it starts. During a scoring stage, done/total are the scored
    run's tokens (:meth:`Run.read_progress`).

    The ETA is measured, never guessed: the current stage's remaining work at its own
    measured rate, counted down from the moment of that measurement (so between two
    measurements it falls with the clock instead of growing with it), plus each later
    stage's weight at the seconds per weight unit that finished stages of its kind
    (generation or forward passes) took, else of any kind, else the current stage's.
    None (with the stage named ``... (starting)``) while nothing has been measured yet.
    """
    eval_dir = Path(eval_dir)
    try:
        p = json.loads((eval_dir / PROGRESS).read_text())
    except (OSError, ValueError):
        return None
    now = time.time()
    stage, done, total = p.get("stage"), p.get("done") or 0, p.get("total")
    completed = p.get("completed", [])
    weights = p.get("weights") or {}
    running = stage not in completed
    meas = _measured(eval_dir, p, stage) if running else None
    # a scorer that has written its last part removes its progress files while it
    # finalizes the run: that stage is not starting again, it is ending
    ending = running and meas is None and stage in SCORED and _scored(eval_dir / stage)
    if stage in SCORED and running:
        done, total = (meas[0], meas[1]) if meas else (1, 1) if ending else (0, None)
    all_w = sum(weights.values()) or 1.0
    w_done = sum(weights.get(s, 0) for s in completed)
    if running and total:
        w_done += weights.get(stage, 0) * min(done / total, 1.0)
    fraction = min(w_done / all_w, 1.0)
    elapsed = now - p.get("started_at", now)

    seconds = p.get("stage_seconds") or {}

    def rate(kinds: set[str]) -> float | None:
        """Seconds per weight unit that the finished stages of these kinds took."""
        took = [(weights.get(s, 0), seconds[s]) for s in completed
                if s in seconds and _stage_kind(s) in kinds and weights.get(s, 0) > 0]
        w = sum(w for w, _ in took)
        return sum(t for _, t in took) / w if w > 0 else None

    own = None  # the current stage's seconds per weight unit
    if meas and weights.get(stage, 0) > 0:
        own = meas[2] / meas[0] * meas[1] / weights[stage]

    def per_weight(s: str) -> float | None:
        kind = _stage_kind(s)
        return (rate({kind}) or (own if _stage_kind(stage) == kind else None)
                or rate({"forward", "generate"}) or own)

    eta: float | None = 0.0
    if running:
        if meas:
            d, t, took, when = meas
            eta = max(took / d * (t - d) - (now - when), 0.0)
        elif weights.get(stage, 0) > 0 and not ending:
            r = per_weight(stage)
            start = (p.get("stage_started_at") or {}).get(stage, now)
            eta = None if r is None else max(weights[stage] * r - (now - start), 0.0)
    for s in weights:
        if eta is None:
            break
        if s in completed or s == stage or weights[s] <= 0:
            continue
        r = per_weight(s)
        eta = None if r is None else eta + weights[s] * r
    label = STAGE_LABELS.get(stage, stage)
    if running and meas is None and not ending and stage is not None:
        label = f"{label} (starting)"
    return {"stage": label, "done": done, "total": total, "fraction": fraction,
            "elapsed_s": elapsed, "eta_s": eta}


# --- reuse of base scores ----------------------------------------------------------------

def _jsonish(x: Any) -> Any:
    return json.loads(json.dumps(x))


def reusable_scores(cfg: ScoreConfig, content_hash: str, candidates: list[Path]) -> Path | None:
    """A complete scored run among ``candidates`` with the same settings (all but the
    source path) and the same data content, scored by the same model in the same dtype."""
    from infosft.models import default_model_dir, pick_device, pick_dtype

    dtype = str(pick_dtype(pick_device(cfg.device), cfg.dtype)).split(".")[-1]
    revision = None
    if cfg.model in (None, "", "default"):
        revision = f"sha256:{default_model_dir()[1]}"
    for c in candidates:
        try:
            meta = Run(c).meta()
        except InfosftError:
            continue
        if meta.get("status") != "complete" or not Run(c).examples_path.exists():
            continue
        if old_targets(meta):  # its is_target is not today's: score afresh instead
            continue
        old = meta.get("config", {})
        if any(old.get(k) != _jsonish(getattr(cfg, k)) for k in ScoreConfig.RESULT_FIELDS
               if k != "source"):
            continue
        model = meta.get("model", {})
        if (meta.get("dataset", {}).get("content_hash") != content_hash
                or model.get("dtype") != dtype
                or (revision and model.get("revision") != revision)):
            continue
        return Path(c)
    return None


def sibling_evals(run: TrainingRun, others: list[Path]) -> list[Path]:
    """Evaluation directories that may hold reusable base scores: the other runs of this
    invocation and the training runs next to this one."""
    found = [eval_dir(o) for o in others]
    parent = run.path.parent
    if parent.is_dir():
        found += sorted(eval_dir(p) for p in parent.iterdir() if p.is_dir())
    me = run.eval_dir.resolve()
    # an evaluation another process is writing (or clearing) now is no source to copy
    return [p for p in dict.fromkeys(found)
            if p.is_dir() and p.resolve() != me and not _held_by_another(p.parent)]


# --- the evaluation --------------------------------------------------------------------

def _held_by_another(run_dir: Path) -> bool:
    """Whether another process holds the lock of ``run_dir`` (training or evaluating it)."""
    return (runlock.is_locked(run_dir)
            and (runlock.holder(run_dir) or {}).get("pid") != os.getpid())


def check_eval_dir(run: TrainingRun, overwrite: bool) -> None:
    """Raise unless ``RUN/eval`` may be (re)written: absent or empty, left by a failed or
    killed evaluation, or complete and ``overwrite`` given. Never while another process
    holds the run's lock (evaluating or training it)."""
    if _held_by_another(run.path):
        raise InfosftError(f"{run.path} is in use by another infosft process (pid "
                           f"{(runlock.holder(run.path) or {}).get('pid')}); wait for it to "
                           "end or stop it")
    d = run.eval_dir
    if not d.exists() or not any(d.iterdir()):
        return
    if not ((d / REPORT).exists() or (d / PROGRESS).exists()):
        raise InfosftError(f"{d} exists and is not an evaluation; refusing to overwrite it")
    try:
        old = json.loads((d / REPORT).read_text())
    except (OSError, ValueError):
        old = {}
    pid = old.get("pid")
    # (a writer from before run locks: identified by pid and start time, see infosft.process)
    if (old.get("status") == "running" and pid != os.getpid()
            and process.alive(pid, old.get("started"), old.get("host"))):
        raise InfosftError(f"{run.path} is being evaluated right now (pid {pid})")
    if old.get("status") == "complete" and not overwrite:
        raise InfosftError(f"{d} already exists; use --overwrite to evaluate again")


def _load_models(run: TrainingRun, cfg: EvalConfig) -> dict[str, tuple]:
    """The base and the tuned model, each loaded once for the whole evaluation:
    ``who -> (model, tokenizer, ModelInfo)``. Loaded before an old evaluation is
    replaced, so a model that cannot load fails while the old one is still there."""
    from infosft.models import load_model
    from infosft.train_run import one_line

    out = {}
    for who, name in zip(WHO, (run.base_model, str(run.final))):
        try:
            out[who] = load_model(name, device=cfg.device, dtype=cfg.dtype)
        except InfosftError:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged model file: one line naming it
            raise InfosftError(f"cannot load model {name or 'default'}: {one_line(e)}") from None
    return out


def _check_tokenizers(base_tok, tuned_tok, run: TrainingRun) -> None:
    if base_tok.get_vocab() != tuned_tok.get_vocab():
        raise InfosftError(f"{run.final}: its tokenizer differs from the base model's; "
                           "the before/after comparison needs the same tokens")


def _say(show: bool, msg: str) -> None:
    if show:
        print(msg, flush=True)


def evaluate_run(path: str | Path, cfg: EvalConfig, *, others: list[Path] | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Evaluate one finished training run into ``RUN/eval`` (see the module docstring).

    The run's lock (:mod:`infosft.runlock`) is held throughout: the run itself, not only
    ``RUN/eval``, because evaluation reads ``RUN/final``, which a ``train --overwrite``
    of the same directory would delete. The data are read and tokenized before any model
    is loaded, so bad input fails fast with one line, and a previous evaluation is
    cleared only once everything has loaded. ``others``: further run directories whose
    base scores may be reused. Returns the report (also written to ``RUN/eval/report.json``).
    """
    check_settings(cfg)
    run = open_training_run(path)
    with runlock.RunLock(run.path, "evaluating it"):
        return _evaluate_locked(run, cfg, others or [], progress)


def _evaluate_locked(run: TrainingRun, cfg: EvalConfig, others: list[Path],
                     progress: bool) -> dict[str, Any]:
    from infosft.models import load_tokenizer

    check_eval_dir(run, cfg.overwrite)
    base_name, tuned_name = run.base_model, str(run.final)
    base_tok = load_tokenizer(base_name)
    _check_tokenizers(base_tok, load_tokenizer(tuned_name), run)
    with tempfile.TemporaryDirectory(prefix="infosft-eval-") as staging:
        sets = _prepare_sets(run, cfg, base_tok, Path(staging))
        loaded = _load_models(run, cfg)  # before anything is cleared
        eval_dir = run.eval_dir
        eval_dir.mkdir(exist_ok=True)
        runlock.clear_dir(eval_dir)
        if sets.staged is not None:
            atomic_write_bytes(sets.sources["prior"], sets.staged.read_bytes())
    started = time.time()
    report: dict[str, Any] = {
        "status": "running", "run": str(run.path), "name": run.path.name,
        "training": run.training(), "base_model": base_name or "default",
        "tuned_model": tuned_name, "settings": _jsonish(asdict(cfg)), **process.current(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions()}
    atomic_write_json(eval_dir / REPORT, report)
    try:
        _evaluate(run, cfg, eval_dir, base_tok, report, others, progress, sets, loaded)
    except BaseException as e:
        report.update(status="failed", error=(str(e).splitlines() or [type(e).__name__])[0]
                      if not isinstance(e, KeyboardInterrupt) else "interrupted")
        atomic_write_json(eval_dir / REPORT, report)
        raise
    report.update(status="complete", seconds=time.time() - started,
                  completed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    atomic_write_json(eval_dir / REPORT, report)
    (eval_dir / PROGRESS).unlink(missing_ok=True)
    return report


def _score_cfg(run: TrainingRun, cfg: EvalConfig, source: str, out: Path, model: str | None,
               *, task: bool, limit: int | None) -> ScoreConfig:
    c = run.config
    return ScoreConfig(source=source, out=str(out), model=model,
                       max_length=int(c.get("max_length") or 2048), limit=limit,
                       fields=(c.get("fields") or None) if task else None,
                       use_template=c.get("use_template") is not False,
                       device=cfg.device, dtype=cfg.dtype, token_budget=cfg.token_budget,
                       part_tokens=8192)  # finer parts: more frequent progress updates


@dataclass
class _Sets:
    """The task and prior sets, read and tokenized, with the score configs of the four
    scored runs."""

    sources: dict[str, str]
    prepared: dict[str, tuple]          # set -> (RawRecords, RecordFormat, examples)
    score_cfgs: dict[str, ScoreConfig]  # base-task, tuned-task, base-prior, tuned-prior
    staged: Path | None = None          # the combined prior set, until it moves to sources


def _prepare_sets(run: TrainingRun, cfg: EvalConfig, tokenizer, staging: Path) -> _Sets:
    """Read and tokenize both sets (bad rows fail here, before any model is loaded),
    writing nothing into ``RUN/eval``: several prior sets are combined in ``staging``."""
    eval_dir = run.eval_dir
    priors = prior_sources(cfg)
    prior_src, prior_limit, staged = priors[0], cfg.limit, None
    if len(priors) > 1:  # the limit then applies per file, inside combine_prior
        staged = combine_prior(priors, staging / "prior.jsonl", cfg.limit)
        prior_src, prior_limit = str(eval_dir / "data" / "prior.jsonl"), None
    sources = {"task": task_source(run, cfg.task_data), "prior": prior_src}
    limits = {"task": cfg.limit, "prior": prior_limit}
    prepared, score_cfgs = {}, {}
    for s in SETS:
        for who, model in zip(WHO, (run.base_model, str(run.final))):
            name = scored_name(who, s)
            score_cfgs[name] = _score_cfg(run, cfg, sources[s], eval_dir / name, model,
                                          task=s == "task", limit=limits[s])
        read_from = str(staged) if s == "prior" and staged else sources[s]
        prepared[s] = load_examples(replace(score_cfgs[scored_name("base", s)],
                                            source=read_from),
                                    tokenizer, [])
    return _Sets(sources, prepared, score_cfgs, staged)


def _reusable_base(run: TrainingRun, sets: _Sets, others: list[Path]) -> dict[str, Path]:
    """``base-task`` / ``base-prior`` -> a sibling's identical scored run, where one exists."""
    candidates = sibling_evals(run, others)
    out = {}
    for s in SETS:
        name = scored_name("base", s)
        src = reusable_scores(sets.score_cfgs[name], sets.prepared[s][0].content_hash,
                              [d / name for d in candidates])
        if src is not None:
            out[name] = src
    return out


def _accuracy_skipped(examples, fmt, style: str | None, items: pl.DataFrame, limit: int,
                      max_length: int, which: str) -> str | None:
    """Why greedy answers were not checked on a set (``which``: ``task`` or ``prior``),
    in one user-facing line; None when they were (``items`` not empty)."""
    from infosft.analysis.accuracy import reference_text
    from infosft.analysis.answers import usable_reference

    name, are = ("the task data", "are") if which == "task" else ("the prior set", "is")
    if items.height:
        return None
    if limit <= 0:
        return "not asked for (accuracy limit 0)"
    if style is None:
        if fmt.kind == "text":
            return f"{name} {are} plain text, with no reference answers to check"
        return (f"{name} {are} not math with final answers (too few references end in "
                "'#### N' or with a number)")
    refs = [reference_text(ex, fmt) for ex in examples]
    answered = [ex for ex, r in zip(examples, refs) if r is not None and usable_reference(r, style)]
    if answered and all(ex.tokens.truncated for ex in answered):
        n = len(answered)
        return (f"every one of the {n} {'held-out' if which == 'task' else 'prior'} example"
                f"{'s' if n != 1 else ''} with an answer was cut at max_length {max_length} "
                "before its answer")
    return f"no example of {name} states a final answer"


def _evaluate(run: TrainingRun, cfg: EvalConfig, eval_dir: Path, tokenizer,
              report: dict[str, Any], others: list[Path], show: bool, sets: _Sets,
              loaded: dict[str, tuple]) -> None:
    """Every step on the models loaded once (``loaded``: ``who -> (model, tokenizer,
    info)``): the four scored runs, KL, greedy answers."""
    task_examples, prior_examples = sets.prepared["task"][2], sets.prepared["prior"][2]
    report["task"] = {"source": sets.sources["task"], "examples": len(task_examples)}
    report["prior"] = {"sources": prior_sources(cfg), "scored_source": sets.sources["prior"],
                       "examples": len(prior_examples)}
    style, items = accuracy_items(task_examples, sets.prepared["task"][1], cfg.accuracy_limit)
    prior_style, prior_items = accuracy_items(prior_examples, sets.prepared["prior"][1],
                                              cfg.accuracy_limit)
    if not prior_style:
        prior_items = prior_items.clear()
    max_length = sets.score_cfgs[scored_name("base", "task")].max_length
    skipped = {"accuracy": _accuracy_skipped(task_examples, sets.prepared["task"][1], style,
                                             items, cfg.accuracy_limit, max_length, "task"),
               "prior_accuracy": _accuracy_skipped(prior_examples, sets.prepared["prior"][1],
                                                   prior_style, prior_items, cfg.accuracy_limit,
                                                   max_length, "prior")}
    # every measure left out says why: a bare None in the table read as a bug
    report["skipped"] = {k: v for k, v in skipped.items() if v is not None}
    acc_settings = {"style": style, "limit": cfg.accuracy_limit,
                    "max_new_tokens": cfg.max_new_tokens}
    reused = _reusable_base(run, sets, others)
    base_answers = _reusable_answers(reused.get(scored_name("base", "task")), acc_settings, items)

    n_tok = {s: sum(ex.tokens.n_tokens for ex in sets.prepared[s][2]) for s in SETS}
    gen = items.height * cfg.max_new_tokens * GEN_COST
    prior_gen = prior_items.height * cfg.max_new_tokens * GEN_COST
    weights = {name: 0.0 if name in reused else n_tok[name.split("-")[1]] for name in SCORED}
    weights |= {"kl-prior": 2.0 * n_tok["prior"],
                "accuracy-base": 0.0 if base_answers is not None else gen,
                "accuracy-tuned": gen, "prior-accuracy-base": prior_gen,
                "prior-accuracy-tuned": prior_gen}
    prog = Progress(eval_dir / PROGRESS, weights)

    for name in SCORED:
        prog.update(name, force=True)
        if name in reused:
            _say(show, f"{run.path.name}: {name}: reusing {reused[name]}")
            shutil.copytree(reused[name], eval_dir / name)
        else:
            _say(show, f"{run.path.name}: scoring {name}")
            score_dataset(sets.score_cfgs[name], progress=show,
                          loaded=loaded[name.split("-")[0]])
        prog.finish(name)
    for s in SETS:
        check_same_tokens(*scored_pair(run.path, s))

    models = {who: loaded[who][0] for who in WHO}
    report["models"] = {who: loaded[who][2].as_dict() for who in WHO}

    _say(show, f"{run.path.name}: KL(base || tuned) on the prior set")
    with _bar(show, n_tok["prior"], "kl", "tok") as bar:
        kl = joint_kl(models["base"], models["tuned"], tokenizer, prior_examples,
                      token_budget=cfg.token_budget,
                      on_batch=_tick(bar, lambda d, t: prog.update("kl-prior", d, t)))
    atomic_write_parquet(kl, eval_dir / KL_FILE)
    prog.finish("kl-prior")

    if style and items.height:
        _answer_both(run, models, tokenizer, task_examples, items, cfg, prog, show, "accuracy",
                     "", eval_dir / ACCURACY,
                     {"base": base_answers} if base_answers is not None else {})
    if prior_items.height:  # forgetting as answers lost: the same greedy check on the prior set
        _answer_both(run, models, tokenizer, prior_examples, prior_items, cfg, prog, show,
                     "prior-accuracy", " on the prior set", eval_dir / PRIOR_ACCURACY, {})
    else:
        prog.finish("prior-accuracy-base")
        prog.finish("prior-accuracy-tuned")
    models.clear()
    loaded.clear()
    for key, value in report_numbers(eval_dir).items():
        report[key] = {**report.get(key, {}), **value}
    report["accuracy"] = ({**accuracy_summary(pl.read_parquet(eval_dir / ACCURACY)), **acc_settings}
                          if (eval_dir / ACCURACY).exists() else None)
    report["prior_accuracy"] = (
        {**accuracy_summary(pl.read_parquet(eval_dir / PRIOR_ACCURACY)), "style": prior_style,
         "limit": cfg.accuracy_limit, "max_new_tokens": cfg.max_new_tokens}
        if (eval_dir / PRIOR_ACCURACY).exists() else None)
    report["reused"] = {k: str(v) for k, v in reused.items()}
    if base_answers is not None:
        report["reused"]["accuracy-base"] = str(reused[scored_name("base", "task")].parent / ACCURACY)


def _answer_both(run: TrainingRun, models: dict, tokenizer, examples, items: pl.DataFrame,
                 cfg: EvalConfig, prog: Progress, show: bool, stage: str, where: str,
                 path: Path, outputs: dict[str, list[str]]) -> None:
    """Greedy answers of the base and the tuned model (those not in ``outputs`` already),
    checked against the references, into ``path``; progress stages ``{stage}-{who}``."""
    for who in ("base", "tuned"):
        name = f"{stage}-{who}"
        if who not in outputs:
            _say(show, f"{run.path.name}: greedy answers of the {who} model{where} "
                 f"({items.height} examples)")
            with _bar(show, items.height, name, "ex") as bar:
                outputs[who] = _answers(models[who], tokenizer, examples, items, cfg,
                                        _tick(bar, lambda d, t, st=name: prog.update(st, d, t)))
        prog.finish(name)
    acc = with_answers(with_answers(items, outputs["base"], "base"), outputs["tuned"], "tuned")
    atomic_write_parquet(acc, path)


def _answers(model, tokenizer, examples, items: pl.DataFrame, cfg: EvalConfig,
             on_batch: Callable[[int, int], None]) -> list[str]:
    """Greedy answers of ``model`` to the examples listed in ``items``."""
    by_id = {ex.example_id: ex for ex in examples}
    prompts = [prompt_ids(by_id[i]) for i in items["example_id"].to_list()]
    return greedy_generate(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                           stop=stop_ids(examples, tokenizer), batch_size=cfg.gen_batch_size,
                           on_batch=on_batch)


def _reusable_answers(base_task: Path | None, settings: dict, items: pl.DataFrame
                      ) -> list[str] | None:
    """The base model's greedy answers from the evaluation the base scores came from,
    when it answered the same examples with the same settings."""
    if base_task is None or not items.height:
        return None
    src = base_task.parent
    try:
        old = json.loads((src / REPORT).read_text())
        acc = pl.read_parquet(src / ACCURACY)
    except (OSError, ValueError, pl.exceptions.PolarsError):
        return None
    old_settings = {k: (old.get("accuracy") or {}).get(k) for k in settings}
    if old.get("status") != "complete" or old_settings != settings:
        return None
    if acc["example_id"].to_list() != items["example_id"].to_list():
        return None
    return acc["base_output"].to_list()


class _bar:
    """A tqdm bar (or nothing when quiet), as a context manager."""

    def __init__(self, show: bool, total: int, desc: str, unit: str):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not show)

    def __enter__(self):
        return self.bar

    def __exit__(self, *exc):
        self.bar.close()


def _tick(bar, update: Callable[[int, int], None]) -> Callable[[int, int], None]:
    def on_batch(done: int, total: int) -> None:
        bar.n = done
        bar.refresh()
        update(done, total)
    return on_batch


def report_numbers(eval_dir: str | Path) -> dict[str, Any]:
    """The learned / forgot numbers from the four scored runs and the KL file.

    Returns ``task`` and ``prior`` (each ``base`` / ``tuned`` with ``mean_nll``, ``mean_q``,
    ``target_tokens``), ``learned`` (``delta_nll``, ``delta_q``) and ``forgot``
    (``delta_nll``, ``mean_kl``, ``median_kl``, ``p95_kl``).
    """
    d = Path(eval_dir)
    nums = {name: set_numbers(Run(d / name)) for name in SCORED}
    kl = pl.read_parquet(d / KL_FILE) if (d / KL_FILE).exists() else pl.DataFrame(schema=KL_SCHEMA)
    ks = kl_summary(kl)
    out: dict[str, Any] = {}
    for s in SETS:
        out[s] = {who: nums[scored_name(who, s)] for who in WHO}
    t, p = out["task"], out["prior"]
    out["learned"] = {"delta_nll": t["tuned"]["mean_nll"] - t["base"]["mean_nll"],
                      "delta_q": t["tuned"]["mean_q"] - t["base"]["mean_q"]}
    out["forgot"] = {"delta_nll": p["tuned"]["mean_nll"] - p["base"]["mean_nll"],
                     "mean_kl": ks["mean_kl"], "median_kl": ks["median_kl"],
                     "p95_kl": ks["p95_kl"]}
    return out


def evaluate_runs(paths: list[str | Path], cfg: EvalConfig, *, progress: bool = True
                  ) -> list[dict[str, Any]]:
    """Evaluate several training runs one after the other. All are checked (finished,
    not evaluated yet unless ``overwrite``, see :func:`check_eval_dir`) before the first
    starts, so a typo in the third name does not surface an hour later."""
    check_settings(cfg)
    unique: dict[Path, str | Path] = {}  # a run named twice would meet its own lock
    for p in paths:
        unique.setdefault(Path(p).resolve(), p)
    paths = list(unique.values())
    runs = [open_training_run(p) for p in paths]
    for r in runs:
        check_eval_dir(r, cfg.overwrite)
    with contextlib.ExitStack() as locks:  # all runs locked up front, held to the end
        for r in runs:
            locks.enter_context(runlock.RunLock(r.path, "evaluating it"))
        return [_evaluate_locked(r, cfg, [o.path for o in runs if o is not r], progress)
                for r in runs]


# --- reading reports ------------------------------------------------------------------

def report_path(run_dir: str | Path) -> Path:
    """``RUN/eval/report.json``."""
    return eval_dir(run_dir) / REPORT


def read_report(run_dir: str | Path) -> dict[str, Any] | None:
    """``RUN/eval/report.json``, or None when the run was never evaluated."""
    path = report_path(run_dir)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as e:
        raise InfosftError(f"{path}: unreadable ({type(e).__name__})") from None
    if not isinstance(report, dict):
        raise InfosftError(f"{path}: unreadable (not a JSON object)")
    return report


def training_label(training: dict[str, Any]) -> str:
    """The scheme's knobs as the Train page shows them, plus the mode and LoRA, e.g.
    ``C=2.587, online, LoRA``."""
    from infosft.analysis.training import format_knobs, knobs_of

    parts = [format_knobs(knobs_of(training))]
    if training.get("mode") and training.get("scheme") not in ("sft", None):
        parts.append(str(training["mode"]))
    if training.get("lora"):
        parts.append("LoRA")
    return ", ".join(p for p in parts if p)


REPORT_COLUMNS = {
    "run": pl.String, "path": pl.String, "status": pl.String, "scheme": pl.String,
    "knobs": pl.String, "task_delta_nll": pl.Float64, "task_delta_q": pl.Float64,
    "prior_delta_nll": pl.Float64, "prior_kl": pl.Float64, "task_nll_base": pl.Float64,
    "task_nll_tuned": pl.Float64, "prior_nll_base": pl.Float64, "prior_nll_tuned": pl.Float64,
    "acc_n": pl.Int64, "acc_base": pl.Float64, "acc_tuned": pl.Float64,
    "prior_acc_n": pl.Int64, "prior_acc_base": pl.Float64, "prior_acc_tuned": pl.Float64,
    "prior_acc_lost": pl.Int64,
}


def report_row(report: dict[str, Any]) -> dict[str, Any]:
    """One table row of a report (numbers None until it is complete)."""
    tr = report.get("training") or {}
    row = {k: None for k in REPORT_COLUMNS}
    row.update(run=report.get("name"), path=report.get("run"), status=report.get("status"),
               scheme=tr.get("scheme"), knobs=training_label(tr))
    if report.get("status") == "complete":
        t, p = report["task"], report["prior"]
        acc = report.get("accuracy") or {}
        prior_acc = report.get("prior_accuracy") or {}
        row.update(task_delta_nll=report["learned"]["delta_nll"],
                   task_delta_q=report["learned"]["delta_q"],
                   prior_delta_nll=report["forgot"]["delta_nll"],
                   prior_kl=report["forgot"]["mean_kl"],
                   task_nll_base=t["base"]["mean_nll"], task_nll_tuned=t["tuned"]["mean_nll"],
                   prior_nll_base=p["base"]["mean_nll"], prior_nll_tuned=p["tuned"]["mean_nll"],
                   acc_n=acc.get("n"), acc_base=acc.get("base"), acc_tuned=acc.get("tuned"),
                   prior_acc_n=prior_acc.get("n"), prior_acc_base=prior_acc.get("base"),
                   prior_acc_tuned=prior_acc.get("tuned"), prior_acc_lost=prior_acc.get("lost"))
    return row


def report_table(reports: list[dict[str, Any]]) -> pl.DataFrame:
    """One row per evaluated run (see ``REPORT_COLUMNS``), in the given order."""
    return pl.DataFrame([report_row(r) for r in reports], schema=REPORT_COLUMNS)


def read_reports(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """The reports of the runs that have one (unreadable ones are skipped)."""
    out = []
    for d in run_dirs:
        try:
            rep = read_report(d)
        except InfosftError:
            continue
        if rep is not None:
            out.append(rep)
    return out
