"""A dataset preview for the scoring form: the first rows, the detected format and
field mapping, and whether those rows fit a (possibly user-edited) mapping.

A preview costs memory in proportion to what it shows, not to the file: a local file
is read only up to its first :data:`HEAD_BYTES` (text) or its first rows (Parquet,
after the metadata says how much they decompress to), and cells are cut to
:data:`MAX_CELL` characters for display. A file that would exceed this (a 15 KB
Parquet file can hold a 500 MB string) gets a one-line problem instead of rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from infosft import records as rec
from infosft.data import RecordError, detect_format, normalize
from infosft.errors import InputError
from infosft.records import read_records

HEAD_BYTES = 8 << 20   # text formats: the rows must start within the first 8 MB
MAX_DECODE = 64 << 20  # Parquet: what the first rows may decompress to
MAX_COLUMNS = 200      # Parquet: columns read (the rest are named, not read)
MAX_CELL = 2000        # characters of a cell shown


@dataclass
class Preview:
    """``rows``: the first records as a frame (nested values as JSON text, long cells
    cut); ``columns`` of the first record; ``kind`` / ``fields``: the detected (or
    mapped) format; ``problems``: one line per preview row that does not fit the mapping,
    or why there are no rows."""

    source: str
    rows: pl.DataFrame
    columns: list[str]
    kind: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


class TooLarge(InputError):
    """The first rows would not fit the preview's memory: a message, not an error."""


def _too_large(out: rec.RawRecords, what: str) -> TooLarge:
    return TooLarge(f"{what}; too large to preview", file=out.source)


def _cell(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_CELL else f"{text[:MAX_CELL]}… ({len(text):,} characters)"


def head_records(source: str, n: int, split: str = "train") -> rec.RawRecords:
    """The first ``n`` records of ``source``: :func:`read_records` for what is small
    (and for hub names and dataset directories), the first :data:`HEAD_BYTES` of a
    larger text file, and the first rows of a Parquet file whose metadata allows them.

    Raises:
        TooLarge: the first rows would not fit the preview's memory.
        InputError: the source cannot be read.
    """
    path = Path(source)
    kind = rec.FILE_SUFFIXES.get(path.suffix.lower()) if path.is_file() else None
    if kind is None or (kind != "parquet" and path.stat().st_size <= HEAD_BYTES):
        # a directory, hub name, unsupported type or a text file that fits: the reader
        # the scorer uses, with all its checks (a Parquet file that fits may be a bomb)
        return read_records(source, limit=n, split=split)
    out = rec.RawRecords(source, kind, "", [], unit="line" if kind == "jsonl" else "row")
    if kind == "parquet":
        out.rows = list(enumerate(_parquet_head(path, n, out), start=1))
    else:
        with open(path, "rb") as f:
            data = f.read(HEAD_BYTES + 1)
        if len(data) > HEAD_BYTES and kind == "json":  # an array cut anywhere
            return _json_head(data[:HEAD_BYTES], n, out)
        if len(data) > HEAD_BYTES:  # cut: keep whole lines only
            data = data[:HEAD_BYTES]
            data = data[:data.rfind(b"\n") + 1]
            if not data.strip():
                raise _too_large(out, f"the first record is longer than "
                                 f"{HEAD_BYTES >> 20} MB")
        rec.parse_into(out, data, limit=n)
    if not out.rows:
        raise out.error("the dataset has no rows")
    return out


def _json_head(data: bytes, n: int, out: rec.RawRecords) -> rec.RawRecords:
    """The first objects of a JSON array (or JSON Lines) cut at :data:`HEAD_BYTES`."""
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not text.startswith("["):  # JSON Lines in a .json file
        out.kind, out.unit = "jsonl", "line"
        return rec.parse_into(out, data, limit=n)
    decoder, i = json.JSONDecoder(), 1
    while len(out.rows) < n:
        while i < len(text) and text[i] in ", \t\r\n":
            i += 1
        if i >= len(text) or text[i] == "]":
            break
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            break  # the cut: what came before is the preview
        if not isinstance(obj, dict):
            raise out.error(f"expected a JSON object, got {type(obj).__name__}",
                            len(out.rows) + 1)
        out.rows.append((len(out.rows) + 1, obj))
    if not out.rows:
        raise _too_large(out, f"the first record is longer than {HEAD_BYTES >> 20} MB")
    return out


def _parquet_head(path: Path, n: int, out: rec.RawRecords) -> list[dict[str, Any]]:
    """The first ``n`` rows, refused when the metadata says the row group they are in
    would decompress to more than :data:`MAX_DECODE` for them (sizes are taken as
    spread evenly over a row group's rows)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
        meta = pf.metadata
        names = pf.schema_arrow.names[:MAX_COLUMNS]
        if meta.num_row_groups == 0 or meta.num_rows == 0:
            return []
        group = meta.row_group(0)
        share = min(1.0, n / max(group.num_rows, 1))
        need = share * sum(group.column(j).total_uncompressed_size  # leaves of read columns
                           for j in range(group.num_columns)
                           if pf.schema.column(j).path.split(".")[0] in names)
    except Exception as e:  # pyarrow raises several error types for corrupt files
        raise out.error(f"not a readable Parquet file ({type(e).__name__})") from None
    if need > MAX_DECODE:
        raise _too_large(out, f"its first {min(n, group.num_rows)} rows decompress to "
                         f"{need / 2**20:,.0f} MB (a preview reads at most "
                         f"{MAX_DECODE >> 20} MB)")
    try:
        batch = next(pf.iter_batches(batch_size=n, columns=names, use_threads=False), None)
    except Exception as e:  # noqa: BLE001 - corrupt pages
        raise out.error(f"not a readable Parquet file ({type(e).__name__})") from None
    return batch.to_pylist()[:n] if batch is not None else []


def preview(source: str, *, n: int = 5, split: str = "train",
            fields: dict[str, str] | None = None) -> Preview:
    """Read the first ``n`` rows of ``source`` and check them against the format.

    A file too large to preview gives no rows and its reason in ``problems``.

    Raises:
        InputError: the source cannot be read (one line naming file and row).
    """
    try:
        raw = head_records(source, n, split)
    except TooLarge as e:
        return Preview(source, pl.DataFrame(), [], problems=[str(e)])
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
    for (row, record) in raw.rows:
        try:
            normalize(record, fmt)
        except RecordError as e:
            out.problems.append(f"{raw.unit} {row}, field {e.field!r}: {e.reason}")
    return out
