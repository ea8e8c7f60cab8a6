"""Listing scored runs (for a run picker): one row of metadata per run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import polars as pl

from infosft.analysis.store import Run
from infosft.errors import InfosftError

COLUMNS = {"name": pl.String, "path": pl.String, "status": pl.String, "model": pl.String,
           "dataset": pl.String, "examples": pl.Int64, "target_tokens": pl.Int64,
           "created_at": pl.String}


def scored_run_row(path: Path) -> dict:
    """One run's metadata; an unreadable run gets status ``unreadable`` instead of raising."""
    row = {"name": path.name, "path": str(path), "status": "unreadable", "model": None,
           "dataset": None, "examples": None, "target_tokens": None, "created_at": None}
    try:
        meta = Run(path).meta()
    except InfosftError:
        return row
    # A hand-edited meta.json may hold anything: a field of the wrong type is left out
    # rather than failing the whole list.
    def section(key):
        return meta.get(key) if isinstance(meta.get(key), dict) else {}

    def typed(value, kind):
        return value if isinstance(value, kind) and not isinstance(value, bool) else None

    counts = section("counts")
    row.update(status=str(meta.get("status")), model=typed(section("model").get("name"), str),
               dataset=typed(section("dataset").get("source"), str),
               examples=typed(counts.get("examples"), int),
               target_tokens=typed(counts.get("target_tokens"), int),
               created_at=typed(meta.get("created_at"), str))
    return row


def list_runs(paths: Iterable[Path], parents: Iterable[Path] = ()) -> pl.DataFrame:
    """Runs at ``paths`` plus every run directory directly inside ``parents``."""
    found = [Path(p) for p in paths if Run(p).exists()]
    for parent in parents:
        if Path(parent).is_dir():
            found += sorted(p for p in Path(parent).iterdir() if p.is_dir() and Run(p).exists())
    return pl.DataFrame([scored_run_row(p) for p in found], schema=COLUMNS)


def scoring_summary(path: str | Path) -> dict:
    """What a finished scoring produced, for its job card: ``examples``, ``tokens``,
    ``target_tokens``, ``seconds``, ``tokens_per_s`` (from ``meta.json``) and ``mean_q``
    (the mean probability of the target tokens under the model: one scan of the run).
    Missing or unreadable values are None."""
    out = dict.fromkeys(("examples", "tokens", "target_tokens", "seconds", "tokens_per_s",
                         "mean_q"))
    run = Run(path)
    try:
        meta = run.meta()
        counts = run.counts()
        out.update(examples=counts.get("examples"), tokens=counts.get("tokens"),
                   target_tokens=counts.get("target_tokens"),
                   seconds=meta.get("scoring_seconds"), tokens_per_s=meta.get("tokens_per_s"))
        if out["target_tokens"]:
            out["mean_q"] = run.collect(run.scan_tokens().filter(pl.col("is_target")).select(
                pl.col("logp").cast(pl.Float64).exp().mean())).item()
    except InfosftError:
        pass
    return out
