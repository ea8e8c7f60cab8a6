"""A dataset preview for the scoring form: the first rows, the detected format and
field mapping, and whether those rows fit a (possibly user-edited) mapping."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from infosft.data import RecordError, detect_format, normalize
from infosft.errors import InputError
from infosft.records import read_records


@dataclass
class Preview:
    """``rows``: the first records as a frame (nested values as JSON text); ``columns``
    of the first record; ``kind`` / ``fields``: the detected (or mapped) format;
    ``problems``: one line per preview row that does not fit the mapping."""

    source: str
    rows: pl.DataFrame
    columns: list[str]
    kind: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _cell(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)


def preview(source: str, *, n: int = 5, split: str = "train",
            fields: dict[str, str] | None = None) -> Preview:
    """Read the first ``n`` rows of ``source`` and check them against the format.

    Raises:
        InputError: the source cannot be read (one line naming file and row).
    """
    raw = read_records(source, limit=n, split=split)
    records = [r for _, r in raw.rows]
    columns = list(records[0])
    table = pl.DataFrame([{k: _cell(v) for k, v in r.items()} for r in records],
                         infer_schema_length=None)
    out = Preview(raw.source, table, columns)
    try:
        fmt = detect_format(records[0], fields, source=raw.source)
    except InputError as e:
        out.problems.append(str(e))
        return out
    out.kind, out.fields = fmt.kind, dict(fmt.fields)
    for (row, rec) in raw.rows:
        try:
            normalize(rec, fmt)
        except RecordError as e:
            out.problems.append(f"{raw.unit} {row}, field {e.field!r}: {e.reason}")
    return out
