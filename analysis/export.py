"""Exporting a scored run as a weighted dataset for training.

One row per example: the original record fields plus ``input_ids``, ``labels``
(unshifted, -100 on non-targets) and ``weights`` (0 on non-targets), all of the
same length. Load it with ``datasets.load_dataset("parquet", data_files=PATH)``
(or ``"json"`` for JSONL). The scheme, knobs and provenance are stored in the
Parquet key-value metadata and, for both formats, in a sidecar file: the format's
names, its writer and its reader are :mod:`infosft.export_format`'s.

The labels are the scored run's targets, made by the rule TRL's SFTTrainer supervises
(``infosft.data.TARGET_RULE``, recorded as ``targets``), so the weights line up with
TRL's labels token for token. A run scored under an older rule is refused: rescore it.

Both files are written atomically, so a failed export (``--overwrite`` included) leaves
the previous one as it was.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from infosft.analysis.stats import weights
from infosft.analysis.store import Run
from infosft import __version__
from infosft.data import IGNORE_INDEX, TARGET_RULE
from infosft.errors import InfosftError
from infosft.export_format import (COLUMNS, file_format, parquet_metadata, require_meta,
                                   sidecar, write_export)
from infosft.weights import resolve_knobs



def read_export_meta(path: str | Path) -> dict[str, Any]:
    """Scheme, knobs and provenance of an exported dataset (an error if it is none)."""
    return require_meta(path)


def weighted_frame(run: Run, scheme: str, **knobs: Any) -> pl.DataFrame:
    """``example_id``, ``input_ids``, ``labels``, ``weights`` (lists, aligned by position)."""
    tokens = run.collect(run.scan_tokens()
                         .select("example_id", "position", "token_id", "is_target", "logp")
                         .sort("example_id", "position"))
    # Weights of the targets alone, in load_targets' order, so ProFit's seeded random
    # drop matches what `stats` and the app preview.
    is_target = tokens["is_target"].to_numpy()
    w = np.zeros(tokens.height, dtype=np.float32)
    w[is_target] = weights(tokens["logp"].to_numpy()[is_target], scheme, **knobs)
    tgt = pl.col("is_target")
    return (tokens.with_columns(w=pl.Series(w))
            .group_by("example_id", maintain_order=True)
            .agg(pl.col("token_id").alias("input_ids"),
                 pl.when(tgt).then(pl.col("token_id")).otherwise(IGNORE_INDEX).alias("labels"),
                 pl.when(tgt).then(pl.col("w")).otherwise(0.0).cast(pl.Float32).alias("weights")))


def _record_columns(examples: pl.DataFrame) -> pl.DataFrame:
    """The original record fields as columns (names clashing with ours get ``_original``)."""
    records = [json.loads(r) for r in examples["record"]]
    names = dict.fromkeys(k for r in records for k in r)
    df = pl.DataFrame([_field_column(n, [r.get(n) for r in records]) for n in names])
    return df.rename({c: f"{c}_original" for c in df.columns if c in COLUMNS + ("example_id",)})


def _field_column(name: str, values: list) -> pl.Series:
    """One record field as a column of the type its values share; a field whose values
    share none (a number in one record, a list in another), or that only a 128-bit
    integer holds (which Arrow readers such as ``datasets`` cannot load), becomes JSON
    text. polars would otherwise fail, or quietly convert values (to text, or by the
    first record's type), so the check is that every value comes back as it went in."""
    try:
        col = pl.DataFrame([{name: v} for v in values], infer_schema_length=None).to_series()
        if not _wide_int(col.dtype) and _no_nulls(col.to_list()) == _no_nulls(values):
            return col
    except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError):
        pass
    return pl.Series(name, [None if v is None else json.dumps(v, ensure_ascii=False)
                            for v in values], dtype=pl.String)


def _no_nulls(value: Any) -> Any:
    """``value`` without null struct fields (a struct column has every record's keys)."""
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_no_nulls(v) for v in value]
    return value


def _wide_int(dtype: pl.DataType) -> bool:
    if dtype in (pl.Int128, pl.UInt128):
        return True
    inner, fields = getattr(dtype, "inner", None), getattr(dtype, "fields", None) or ()
    return (inner is not None and _wide_int(inner)) or any(_wide_int(f.dtype) for f in fields)


def export_weighted(run_dir: str | Path, out: str | Path, scheme: str, *,
                    overwrite: bool = False, **knobs: Any) -> Path:
    """Write the weighted dataset of a complete run to ``out`` (.parquet or .jsonl)."""
    run, out = Run(run_dir), Path(out)
    fmt = file_format(out)
    if fmt is None:
        raise InfosftError(f"{out}: choose a .parquet or .jsonl output file")
    if _is_run_file(run, out):
        raise InfosftError(f"{out} is a file of the run {run.path}; choose another --out")
    for path in (out, sidecar(out)):
        if path.is_dir():
            raise InfosftError(f"{path} is a directory; choose another file name for --out")
    if out.parent.exists() and not out.parent.is_dir():
        raise InfosftError(f"{out.parent} is not a directory; choose another --out")
    if out.exists() and not overwrite:
        raise InfosftError(f"{out} already exists; use --overwrite to replace it")
    resolved = resolve_knobs(scheme, **knobs)
    meta = run.require_current_targets()
    examples = run.read_examples()
    frame = weighted_frame(run, scheme, **knobs)
    table = pl.concat([examples.select("example_id", "source_row"), _record_columns(examples)],
                      how="horizontal").join(frame, on="example_id", how="inner")
    info = {
        "scheme": scheme, "knobs": resolved, "run": str(run.path), "model": meta["model"],
        "dataset": meta["dataset"], "max_length": meta["max_length"],
        "template_used": meta["template"]["used"], "targets": TARGET_RULE,
        "n_examples": table.height,
        "n_targets": meta["counts"]["target_tokens"], "infosft_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if fmt == "parquet":
        return write_export(out, info, lambda tmp: table.write_parquet(
            tmp, metadata=parquet_metadata(info)))
    return write_export(out, info, table.write_ndjson)


def _is_run_file(run: Run, out: Path) -> bool:
    """Whether ``out`` would replace one of the run's own files (its examples table, a
    token part: --overwrite would destroy the run being exported)."""
    out = out.resolve()
    return (out in (run.examples_path.resolve(), run.vocab_path.resolve())
            or out.parent == run.tokens_dir.resolve())
