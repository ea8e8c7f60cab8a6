"""Reading training runs for the UI: one row per run directory (state, config, final
metrics) and one long frame of every run's logged metrics, for plotting and comparing.

A training run directory is laid out by :mod:`infosft.train_status` (``config.yaml``,
``status.json``, ``metrics.jsonl``, ...). The per-run work here is reading those small
files; everything over the metrics lines is polars expressions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import polars as pl

from infosft import train_status as ts
from infosft.errors import InfosftError
from infosft.weights import resolve_knobs

METRIC_SCHEMA = {"step": pl.Int64, "epoch": pl.Float64, "loss": pl.Float64,
                 "learning_rate": pl.Float64, "grad_norm": pl.Float64,
                 "tokens_per_s": pl.Float64, "mean_weight": pl.Float64,
                 "zero_weight_share": pl.Float64, "weight_share_low": pl.Float64,
                 "weight_share_medium": pl.Float64, "weight_share_high": pl.Float64,
                 "eval_loss": pl.Float64, "time": pl.Float64}

RUN_SCHEMA = {"name": pl.String, "path": pl.String, "state": pl.String, "scheme": pl.String,
              "knobs": pl.String, "mode": pl.String, "lora": pl.Boolean, "model": pl.String,
              "data": pl.String, "step": pl.Int64, "total_steps": pl.Int64,
              "started_at": pl.Float64, "error": pl.String, "resumable": pl.Boolean,
              "final_model": pl.String}

def is_train_run(path: Path) -> bool:
    """Whether ``path`` looks like a training run directory (config or status written)."""
    return path.is_dir() and ts.is_run(path)


def find_train_runs(roots: Iterable[str | Path]) -> list[Path]:
    """Every training run directory directly inside ``roots`` (sorted by name)."""
    found = []
    for root in map(Path, roots):
        if root.is_dir():
            found += sorted(p for p in root.iterdir() if is_train_run(p))
    return found


def config_of(run_dir: str | Path) -> dict[str, Any]:
    """``RUN/config.yaml`` as a dict; ``{}`` when missing or unreadable (a run that
    failed before writing it still lists; a damaged one too)."""
    try:
        return ts.read_run_config(run_dir)
    except InfosftError:
        return {}


def knobs_of(cfg: dict[str, Any]) -> dict[str, Any]:
    """The chosen scheme's canonical knobs from a config, as the trainer resolves them
    (InfoSFT's C also when only P was given); ``{}`` when they do not resolve. P is
    dropped (it restates C), and ProFit's seed unless the direction is ``random``."""
    try:
        knobs = resolve_knobs(str(cfg.get("scheme")), **{
            k: cfg.get(k) for k in ("C", "P", "threshold", "direction", "seed")})
    except (ValueError, TypeError):
        return {}
    knobs.pop("P", None)
    if knobs.get("direction") not in (None, "random"):
        knobs.pop("seed", None)
    return knobs


def format_knobs(knobs: dict[str, Any]) -> str:
    """``C=2.587`` / ``threshold=0.1, direction=higher`` (empty for knob-less schemes)."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in knobs.items())


def train_run_row(run_dir: Path) -> dict[str, Any]:
    """One run's status and configuration (missing files give nulls, never an error)."""
    cfg, status = config_of(run_dir), ts.read_status(run_dir)
    return {"name": run_dir.name, "path": str(run_dir),
            "state": status.get("state") or "queued",
            "scheme": cfg.get("scheme"), "knobs": format_knobs(knobs_of(cfg)),
            "mode": cfg.get("mode"), "lora": cfg.get("lora"),
            "model": cfg.get("model") or ("default" if cfg else None),
            "data": cfg.get("data"), "step": status.get("step"),
            "total_steps": status.get("total_steps"),
            # a run that died before writing its status: the directory's age instead
            "started_at": status.get("started_at") or run_dir.stat().st_mtime,
            "error": status.get("error"), "resumable": bool(status.get("resumable")),
            "final_model": status.get("final_model")}


def metrics_frame(run_dirs: Iterable[str | Path]) -> pl.DataFrame:
    """Every logged line of every run, long: ``run`` (name), ``path`` and the columns of
    :data:`METRIC_SCHEMA` (training lines have ``loss``, evaluation lines ``eval_loss``),
    sorted by run and step."""
    frames = []
    for d in map(Path, run_dirs):
        # a value of the wrong type (a damaged or hand-edited line) reads as null
        lines = [{k: v for k, v in m.items() if k in METRIC_SCHEMA and _is_number(v)}
                 for m in ts.read_metrics(d)]
        if lines:
            frames.append(pl.DataFrame(lines, schema=METRIC_SCHEMA, strict=False)
                          .with_columns(run=pl.lit(d.name), path=pl.lit(str(d))))
    empty = pl.DataFrame(schema={"run": pl.String, "path": pl.String, **METRIC_SCHEMA})
    return (pl.concat([empty, *frames], how="diagonal_relaxed")
            .select(empty.columns).sort("path", "step", maintain_order=True))


def q_drift(run_dir: str | Path) -> pl.DataFrame:
    """How the q of the supervised tokens moved during a run: per logged training step
    and q bin, ``step``, ``q_low``, ``q_high`` (the bin's edges) and ``share`` (the bin's
    share of that step's supervised tokens). Empty for runs logged before the histogram
    was (or lines whose ``q_hist`` is damaged)."""
    from infosft.loss import Q_BINS

    rows = []
    for m in ts.read_metrics(run_dir):
        hist, step = m.get("q_hist"), m.get("step")
        if ("loss" not in m or not _is_number(step) or not isinstance(hist, list)
                or len(hist) != Q_BINS or not all(_is_number(c) and c >= 0 for c in hist)):
            continue
        total = sum(hist)
        rows += [(int(step), i / Q_BINS, (i + 1) / Q_BINS, c / total)
                 for i, c in enumerate(hist) if total > 0]
    return pl.DataFrame(rows, schema={"step": pl.Int64, "q_low": pl.Float64,
                                      "q_high": pl.Float64, "share": pl.Float64}, orient="row")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def final_metrics(metrics: pl.DataFrame) -> pl.DataFrame:
    """Per run ``path``: the last logged ``loss``, ``eval_loss`` and ``mean_weight``."""
    return metrics.group_by("path").agg(
        pl.col(c).drop_nulls().last().alias(f"final_{c}")
        for c in ("loss", "eval_loss", "mean_weight"))


def list_train_runs(roots: str | Path | Iterable[str | Path]) -> pl.DataFrame:
    """One row per training run directory inside ``roots``, newest first: ``name``,
    ``path``, ``state``, ``scheme``, ``knobs``, ``mode``, ``lora``, ``model``, ``data``,
    ``step``, ``total_steps``, ``progress`` ("3/10"), ``final_loss``,
    ``final_eval_loss``, ``final_mean_weight``, ``created`` (datetime), ``error``,
    ``resumable``, ``final_model``."""
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    dirs = find_train_runs(roots)
    runs = pl.DataFrame([train_run_row(d) for d in dirs], schema=RUN_SCHEMA, strict=False)
    finals = final_metrics(metrics_frame(dirs))
    return (runs.join(finals, on="path", how="left")
            .with_columns(
                progress=pl.format("{}/{}", pl.col("step").fill_null(0),
                                   pl.col("total_steps").cast(pl.String).fill_null("?")),
                created=pl.from_epoch(pl.col("started_at"), time_unit="s")
                .dt.replace_time_zone("UTC").dt.round("1s"))
            .sort("created", descending=True, nulls_last=True)
            .select("name", "state", "scheme", "knobs", "mode", "lora", "progress",
                    "final_loss", "final_eval_loss", "final_mean_weight", "created",
                    "model", "data", "step", "total_steps", "error", "resumable",
                    "final_model", "path"))


def tail_lines(path: str | Path, lines: int = 30, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a (possibly large, growing) text file; ``""`` if missing."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    rows = text.rstrip().splitlines()
    if size > max_bytes:
        rows = rows[1:]  # the first one is cut
    return "\n".join(rows[-lines:])
