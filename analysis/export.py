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

Curation (``--where``): an export of only the examples that match a filter over
example-level fields (:func:`parse_where`, :func:`filter_fields`, :func:`example_fields`,
:func:`match_examples`), recorded as ``filter`` in the metadata.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from infosft.analysis.stats import Targets, missing_reason, weights
from infosft.analysis.store import Run
from infosft import __version__
from infosft.data import IGNORE_INDEX, TARGET_RULE
from infosft.errors import InfosftError
from infosft.export_format import (COLUMNS, file_format, parquet_metadata, require_meta,
                                   sidecar, write_export)
from infosft.schemes import get as get_scheme
from infosft.weights import resolve_knobs


def require_scheme(run: Run, scheme: str) -> None:
    """A one-line :class:`InfosftError` naming the run, the missing field and what to do,
    unless ``run`` has every per-token field ``scheme`` reads."""
    why = missing_reason(scheme, run.token_fields())
    if why is not None:
        raise InfosftError(f"{run.path}: {why}")


def read_export_meta(path: str | Path) -> dict[str, Any]:
    """Scheme, knobs and provenance of an exported dataset (an error if it is none)."""
    return require_meta(path)


def weighted_frame(run: Run, scheme: str, **knobs: Any) -> pl.DataFrame:
    """``example_id``, ``input_ids``, ``labels``, ``weights`` (lists, aligned by position).

    The weights come from the fields the scheme reads (EAFT's ``entropy_top20``, excess'
    ``logp_ref``); a run without them is a one-line :class:`InfosftError` saying what to
    do (rescore, ``--reference``)."""
    require_scheme(run, scheme)
    needs = get_scheme(scheme).extra_fields
    tokens = run.collect(run.scan_tokens()
                         .select("example_id", "position", "token_id", "is_target", "logp",
                                 *needs)
                         .sort("example_id", "position"))
    # Weights of the targets alone, in load_targets' order, so ProFit's seeded random
    # drop (and excess' ranking over the run) matches what `stats` and the app preview.
    is_target = tokens["is_target"].to_numpy()
    w = np.zeros(tokens.height, dtype=np.float32)
    fields = {n: tokens[n].cast(pl.Float32).fill_null(np.nan).to_numpy()[is_target]
              for n in needs}
    w[is_target] = weights(tokens["logp"].to_numpy()[is_target], scheme, fields=fields,
                           example=tokens["example_id"].to_numpy()[is_target], **knobs)
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
                    overwrite: bool = False, where: Sequence[str] | None = None,
                    drop: bool = False, **knobs: Any) -> Path:
    """Write the weighted dataset of a complete run to ``out`` (.parquet or .jsonl).

    ``where``: filter expressions (:func:`parse_where`, ANDed) over the example fields
    (:func:`filter_fields`; the scheme-dependent ones under ``scheme`` and ``knobs``):
    only the examples that match are written, or with ``drop`` only those that do not.
    The metadata then records it as ``filter``: ``where``, ``mode`` (keep | drop),
    ``matched`` and ``of`` (examples in the run); ``n_examples`` and ``n_targets`` count
    what was written. Without ``where`` the export is the whole run, as before."""
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
    if drop and not where:
        raise InfosftError("--drop needs a --where filter: it drops the examples that match")
    resolved = resolve_knobs(scheme, **knobs)
    meta = run.require_current_targets()
    require_scheme(run, scheme)
    examples = run.read_examples()
    curated = None
    if where:
        examples, curated = _curate(run, examples, where, drop, scheme, knobs)
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
    if curated is not None:
        # what was written, not the run: a reader must not take the subset for the whole
        info["n_targets"] = int((table["labels"].explode() != IGNORE_INDEX).sum())
        info["filter"] = curated
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


# ---------------------------------------------------------------- curation: --where

#: Per-example fields that depend on the scheme and its knobs, computed from the same
#: token weights the export writes: ``weight_mass`` is the example's mean target weight
#: (sum of w over its target tokens / its target count), ``zero_weight_share`` the share
#: of its target tokens with w = 0. An example with no target tokens has neither.
SCHEME_FIELDS = ("weight_mass", "zero_weight_share")
OPS = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
       "==": np.equal, "!=": np.not_equal}
WHERE_HELP = ("FIELD OP VALUE, OP one of < <= > >= == !=, VALUE a number or true/false; "
              "join conditions with `and` (repeated filters are ANDed too)")

# The whole grammar: condition := FIELD OP VALUE; expression := condition (and condition)*.
# Longest operators first, so "<=" is not read as "<" followed by "=0.1".
_CONDITION = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*([^\s]+)\s*")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?inf")
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)


class Condition(NamedTuple):
    """One parsed comparison: ``field op value`` (value a float or a bool)."""
    field: str
    op: str
    value: float | bool

    def __str__(self) -> str:
        v = str(self.value).lower() if isinstance(self.value, bool) else f"{self.value:g}"
        return f"{self.field}{self.op}{v}"


def parse_where(expr: str, fields: Mapping[str, str] | None = None) -> list[Condition]:
    """The conditions of one filter expression, checked against ``fields`` (name ->
    ``"number"`` or ``"bool"``, as :func:`filter_fields` gives) when given. No eval():
    a regular grammar, and anything else is a one-line :class:`InfosftError` naming the
    expression (and, for a field, listing the fields).

    >>> parse_where("min_q<0.01")
    [Condition(field='min_q', op='<', value=0.01)]
    >>> parse_where(" weight_mass <= 5e-2 and truncated==FALSE ")
    [Condition(field='weight_mass', op='<=', value=0.05), Condition(field='truncated', op='==', value=False)]
    >>> [str(c) for c in parse_where("n_target>=10 and mean_q!=1")]
    ['n_target>=10', 'mean_q!=1']
    >>> parse_where("min_q=0.01")
    Traceback (most recent call last):
    ...
    infosft.errors.InfosftError: bad filter 'min_q=0.01': write FIELD OP VALUE, OP one of < <= > >= == !=, VALUE a number or true/false; join conditions with `and` (repeated filters are ANDed too)
    >>> parse_where("min_qq<0.01", {"min_q": "number", "truncated": "bool"})
    Traceback (most recent call last):
    ...
    infosft.errors.InfosftError: unknown field 'min_qq' in filter 'min_qq<0.01': fields are min_q, truncated
    >>> parse_where("truncated<1", {"min_q": "number", "truncated": "bool"})
    Traceback (most recent call last):
    ...
    infosft.errors.InfosftError: bad filter 'truncated<1': truncated is true/false; compare it with == or != true/false
    """
    if not isinstance(expr, str) or not expr.strip():
        raise InfosftError(f"empty filter {expr!r}: write {WHERE_HELP}")
    out = []
    for part in _AND.split(expr.strip()):
        m = _CONDITION.fullmatch(part)
        if not m:
            raise InfosftError(f"bad filter {expr!r}: write {WHERE_HELP}")
        field, op, raw = m.groups()
        if raw.lower() in ("true", "false"):
            value: float | bool = raw.lower() == "true"
        elif _NUMBER.fullmatch(raw):
            value = float(raw)
        else:
            raise InfosftError(f"bad filter {expr!r}: {raw!r} is not a number or true/false")
        if fields is not None:
            kind = fields.get(field)
            if kind is None:
                raise InfosftError(f"unknown field {field!r} in filter {expr!r}: fields are "
                                   f"{', '.join(fields)}")
            if kind == "bool" and (op not in ("==", "!=") or not isinstance(value, bool)):
                raise InfosftError(f"bad filter {expr!r}: {field} is true/false; compare it "
                                   "with == or != true/false")
            if kind == "number" and isinstance(value, bool):
                raise InfosftError(f"bad filter {expr!r}: {field} is a number; compare it "
                                   "with a number")
        out.append(Condition(field, op, value))
    return out


def filter_fields(examples: pl.DataFrame) -> dict[str, str]:
    """The fields a filter may name: the examples table's numeric and bool columns
    (``n_target``, ``min_q``, ``truncated``, ...) and :data:`SCHEME_FIELDS`, each
    ``"number"`` or ``"bool"``."""
    out = {c: "bool" if dt == pl.Boolean else "number" for c, dt in examples.schema.items()
           if dt == pl.Boolean or dt.is_numeric()}
    out.update(dict.fromkeys(SCHEME_FIELDS, "number"))
    return out


def example_fields(examples: pl.DataFrame, targets: Targets, scheme: str,
                   **knobs: Any) -> pl.DataFrame:
    """``examples`` (one row per example) with :data:`SCHEME_FIELDS` added: Float64,
    null for an example without target tokens. ``targets`` must be the run's tokens
    (``Targets.from_run``), not its histogram: the weights are the export's, token for
    token (ProFit's random drop included: same array, same seed)."""
    per = targets.per_example(targets.weights(scheme, **knobs)).rename(
        {"mean_weight": "weight_mass"})
    return examples.join(per.select("example_id", *SCHEME_FIELDS), on="example_id",
                         how="left", maintain_order="left")


def match_examples(table: pl.DataFrame, where: Sequence[str]) -> np.ndarray:
    """Bool mask ``(table.height,)``: the rows (of :func:`example_fields`) that meet every
    condition of every expression in ``where``. A missing value (null, NaN: an example
    without target tokens has no ``weight_mass``) meets no condition, ``!=`` included."""
    fields = filter_fields(table)
    mask = np.ones(table.height, dtype=bool)
    for expr in where:
        for c in parse_where(expr, fields):
            col = table[c.field]
            valid = col.is_not_null().to_numpy()
            if fields[c.field] == "bool":
                values = col.fill_null(False).to_numpy().astype(bool)
            else:
                values = col.cast(pl.Float64).fill_null(np.nan).to_numpy()
                valid &= ~np.isnan(values)
            mask &= valid & OPS[c.op](values, c.value)
    return mask


def _curate(run: Run, examples: pl.DataFrame, where: Sequence[str], drop: bool,
            scheme: str, knobs: dict[str, Any]) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The examples a filter keeps and the record of it for the metadata."""
    where = [where] if isinstance(where, str) else list(where)
    fields = filter_fields(examples)
    for expr in where:
        parse_where(expr, fields)  # syntax and fields first: no token load for a typo
    table = example_fields(examples, Targets.from_run(run), scheme, **knobs)
    matched = match_examples(table, where)
    keep = ~matched if drop else matched
    shown = " and ".join(where)
    if not keep.any():
        raise InfosftError(
            f"every example matches {shown!r} ({examples.height}); dropping them leaves "
            "nothing to export" if drop else
            f"no example matches {shown!r} (0 of {examples.height}); nothing to export")
    record = {"where": where, "mode": "drop" if drop else "keep",
              "matched": int(matched.sum()), "of": examples.height}
    return examples.filter(pl.Series(keep)), record
