"""Exporting a scored run as a weighted dataset for training.

One row per example: the original record fields plus ``input_ids``, ``labels``
(unshifted, -100 on non-targets) and ``weights`` (0 on non-targets), all of the
same length. Load it with ``datasets.load_dataset("parquet", data_files=PATH)``
(or ``"json"`` for JSONL). The scheme, knobs and provenance are stored in the
Parquet key-value metadata under ``infosft`` and, for both formats, in a
``PATH.meta.json`` sidecar.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from analysis.stats import weights
from analysis.store import Run, atomic_write_bytes, atomic_write_json, atomic_write_parquet
from infosft import __version__
from infosft.errors import InfosftError
from infosft.weights import resolve_knobs

FORMATS = {".parquet": "parquet", ".jsonl": "jsonl"}
COLUMNS = ("input_ids", "labels", "weights")


def weighted_frame(run: Run, scheme: str, **knobs: Any) -> pl.DataFrame:
    """``example_id``, ``input_ids``, ``labels``, ``weights`` (lists, aligned by position)."""
    tokens = (run.scan_tokens().select("example_id", "position", "token_id", "is_target", "logp")
              .sort("example_id", "position").collect())
    # Weights of the targets alone, in load_targets' order, so ProFit's seeded random
    # drop matches what `stats` and the app preview.
    is_target = tokens["is_target"].to_numpy()
    w = np.zeros(tokens.height, dtype=np.float32)
    w[is_target] = weights(tokens["logp"].to_numpy()[is_target], scheme, **knobs)
    tgt = pl.col("is_target")
    return (tokens.with_columns(w=pl.Series(w))
            .group_by("example_id", maintain_order=True)
            .agg(pl.col("token_id").alias("input_ids"),
                 pl.when(tgt).then(pl.col("token_id")).otherwise(-100).alias("labels"),
                 pl.when(tgt).then(pl.col("w")).otherwise(0.0).cast(pl.Float32).alias("weights")))


def _record_columns(examples: pl.DataFrame) -> pl.DataFrame:
    """The original record fields as columns (names clashing with ours get ``_original``)."""
    records = [json.loads(r) for r in examples["record"]]
    df = pl.DataFrame(records, infer_schema_length=None)
    return df.rename({c: f"{c}_original" for c in df.columns if c in COLUMNS + ("example_id",)})


def export_weighted(run_dir: str | Path, out: str | Path, scheme: str, *,
                    overwrite: bool = False, **knobs: Any) -> Path:
    """Write the weighted dataset of a complete run to ``out`` (.parquet or .jsonl)."""
    run, out = Run(run_dir), Path(out)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise InfosftError(f"{out}: choose a .parquet or .jsonl output file")
    if out.exists() and not overwrite:
        raise InfosftError(f"{out} already exists; use --overwrite to replace it")
    resolved = resolve_knobs(scheme, **knobs)
    meta = run.require_complete()
    examples = run.read_examples()
    frame = weighted_frame(run, scheme, **knobs)
    table = pl.concat([examples.select("example_id", "source_row"), _record_columns(examples)],
                      how="horizontal").join(frame, on="example_id", how="inner")
    info = {
        "scheme": scheme, "knobs": resolved, "run": str(run.path), "model": meta["model"],
        "dataset": meta["dataset"], "max_length": meta["max_length"],
        "template_used": meta["template"]["used"], "n_examples": table.height,
        "n_targets": meta["counts"]["target_tokens"], "infosft_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if fmt == "parquet":
        atomic_write_parquet(table, out, metadata={"infosft": json.dumps(info)})
    else:
        atomic_write_bytes(out, table.write_ndjson().encode())
    atomic_write_json(sidecar(out), info)
    return out


def sidecar(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


def read_export_meta(path: str | Path) -> dict[str, Any]:
    """Scheme, knobs and provenance of an exported dataset."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        md = pl.read_parquet_metadata(path)
        if "infosft" in md:
            return json.loads(md["infosft"])
    if sidecar(path).exists():
        return json.loads(sidecar(path).read_text())
    raise InfosftError(f"{path}: not an infosft export (no scheme metadata)")
