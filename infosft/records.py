"""Reading raw records from a file or a Hugging Face dataset, with row numbers.

Local JSONL/JSON/CSV files are parsed here line by line rather than through
``datasets``, because a bad row must be reported by its line number and, with
``skip_invalid``, skipped without losing the rest. Parquet goes through polars,
dataset directories and hub names through ``datasets``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infosft.errors import InputError

FILE_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
                 ".parquet": "parquet"}


@dataclass
class RawRecords:
    """Rows of a source. ``rows[i]`` is ``(row_number, record)``; row numbers are 1-based
    (the line number for JSONL) so messages match what an editor shows."""

    source: str
    kind: str                      # jsonl | json | csv | parquet | hf
    content_hash: str
    rows: list[tuple[int, dict[str, Any]]]
    unit: str = "row"              # "line" for JSONL
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def error(self, reason: str, row: int | None = None, field: str | None = None) -> InputError:
        return InputError(reason, file=self.source, row=row, field=field, unit=self.unit)


def read_records(source: str | Path, *, limit: int | None = None, skip_invalid: bool = False,
                 split: str = "train") -> RawRecords:
    """Read the records of ``source``: a local file, a dataset directory or a hub name.

    Rows that cannot be parsed raise :class:`InputError` (file, row), or with
    ``skip_invalid`` are listed in ``skipped`` as ``{"row": n, "reason": ...}``.
    ``limit`` keeps the first ``limit`` parsed rows.
    """
    path = Path(source)
    if path.is_file():
        kind = FILE_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise InputError(f"unsupported file type {path.suffix!r}; use one of "
                             f"{', '.join(sorted(FILE_SUFFIXES))}", file=str(source))
        data = path.read_bytes()
        if not data.strip():
            raise InputError("the file is empty", file=str(source))
        if kind != "parquet" and data.startswith((b"\xff\xfe", b"\xfe\xff")):
            # (Excel's "Unicode text"): every byte would be a UTF-8 error of its own.
            raise InputError("UTF-16 text (it starts with a UTF-16 byte-order mark); save it "
                             "as UTF-8", file=str(source))
        out = RawRecords(str(source), kind, hashlib.sha256(data).hexdigest(), [],
                         unit="line" if kind == "jsonl" else "row")
        parse_into(out, data, skip_invalid, limit)
    elif path.is_dir() or not path.suffix:
        out = _read_hf(str(source), split, limit)
    else:
        raise InputError("no such file or dataset", file=str(source))
    if not out.rows:
        raise out.error("no valid rows" if out.skipped else "the dataset has no rows")
    return out


def parse_into(out: RawRecords, data: bytes, skip_invalid: bool = False,
               limit: int | None = None) -> RawRecords:
    """Parse the bytes of a file of kind ``out.kind`` (jsonl, json, csv, parquet) into
    ``out.rows``, with the checks :func:`read_records` makes (also for a head of a file
    cut at whole lines, as the app's preview reads)."""
    {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv,
     "parquet": _read_parquet}[out.kind](data, out, skip_invalid, limit)
    return out


def _reject(out: RawRecords, skip_invalid: bool, reason: str, row: int, field: str | None = None):
    if not skip_invalid:
        raise out.error(reason, row, field)
    out.skipped.append({"row": row, "field": field, "reason": reason})


def _full(out: RawRecords, limit: int | None) -> bool:
    return limit is not None and len(out.rows) >= limit


def _loads(text: str):
    """``json.loads``, with what it raises besides JSONDecodeError as one: nesting deeper
    than Python's recursion limit, integers of more than 4300 digits (a ValueError)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None
    except ValueError:
        raise json.JSONDecodeError("a number with too many digits", text, 0) from None


def _read_jsonl(data: bytes, out: RawRecords, skip_invalid: bool, limit: int | None) -> None:
    # One line at a time (not data.split: a second copy of the whole file at once).
    for lineno, raw in enumerate(io.BytesIO(data), start=1):
        if _full(out, limit):
            return
        if not raw.strip():
            continue
        try:
            # A byte-order mark on any line: files concatenated with cat keep theirs.
            obj = _loads(raw.decode("utf-8").removeprefix("\ufeff"))
        except UnicodeDecodeError as e:
            _reject(out, skip_invalid, f"not valid UTF-8 (byte {e.start})", lineno)
            continue
        except json.JSONDecodeError as e:
            where = f" at column {e.colno}" if e.pos else ""
            _reject(out, skip_invalid, f"malformed JSON ({e.msg}{where})", lineno)
            continue
        if not isinstance(obj, dict):
            _reject(out, skip_invalid, f"expected a JSON object, got {type(obj).__name__}", lineno)
            continue
        out.rows.append((lineno, obj))


def _decode(data: bytes, out: RawRecords) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(f"not valid UTF-8 (byte {e.start})", file=out.source, row=line,
                         unit="line") from None


def _read_json(data: bytes, out: RawRecords, skip_invalid: bool, limit: int | None) -> None:
    text = _decode(data, out)
    try:
        obj = _loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON Lines in a .json file
            out.kind, out.unit = "jsonl", "line"
            return _read_jsonl(data, out, skip_invalid, limit)
        if not e.pos:  # nested too deeply: no position to name
            raise out.error(f"malformed JSON ({e.msg})") from None
        raise InputError(f"malformed JSON ({e.msg} at column {e.colno})", file=out.source,
                         row=e.lineno, unit="line") from None
    if isinstance(obj, dict):  # one record, as a one-line JSON Lines file would be
        obj = [obj]
    if not isinstance(obj, list):
        raise out.error(f"expected a JSON array of objects (or JSON Lines), got "
                        f"{type(obj).__name__}")
    for i, rec in enumerate(obj, start=1):
        if _full(out, limit):
            return
        if isinstance(rec, dict):
            out.rows.append((i, rec))
        else:
            _reject(out, skip_invalid, f"expected a JSON object, got {type(rec).__name__}", i)


def _read_csv(data: bytes, out: RawRecords, skip_invalid: bool, limit: int | None) -> None:
    # surrogateescape keeps undecodable bytes as lone surrogates, so a bad byte is the
    # error of the row (and field) that holds it, not of the whole file.
    text = data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    # csv refuses cells over 128 KiB by default: a long response is valid data. (The limit
    # is process-wide, hence restored.)
    old_limit = csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    try:
        header = reader.fieldnames or []
        dup = next((c for i, c in enumerate(header) if c in header[:i]), None)
        if dup is not None:  # DictReader would keep the last column of that name only
            raise out.error("duplicate column name in the header", field=dup)
        for i, rec in enumerate(reader, start=1):
            if _full(out, limit):
                return
            if None in rec:
                _reject(out, skip_invalid, "more values than header columns", i)
                continue
            bad = next((k for k, v in rec.items() if _has_surrogate(k) or _has_surrogate(v)),
                       None)
            if bad is not None:
                _reject(out, skip_invalid, "not valid UTF-8", i, bad.encode(
                    "utf-8", errors="backslashreplace").decode())
                continue
            out.rows.append((i, rec))
    except csv.Error as e:
        raise out.error(f"malformed CSV ({e})", reader.line_num) from None
    finally:
        csv.field_size_limit(old_limit)


def _has_surrogate(s: str | None) -> bool:
    return s is not None and any("\udc80" <= c <= "\udcff" for c in s)


def _read_parquet(data: bytes, out: RawRecords, skip_invalid: bool, limit: int | None) -> None:
    import polars as pl

    try:
        df = pl.read_parquet(io.BytesIO(data), n_rows=limit)
    except Exception as e:  # polars raises several error types for corrupt files
        raise out.error(f"not a readable Parquet file ({type(e).__name__})") from None
    out.rows.extend(enumerate(df.to_dicts(), start=1))


def _root_cause(e: BaseException) -> str:
    """The first line of the innermost error of a chain (datasets wraps the one that names
    the bad file in a generic 'An error occurred while generating the dataset')."""
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _read_hf(name: str, split: str, limit: int | None) -> RawRecords:
    try:
        import datasets
    except ImportError:
        raise InputError("reading Hugging Face datasets needs `pip install datasets`",
                         file=name) from None
    # The CLI's errors are one line: no progress bars, and datasets' own log lines are
    # kept back (the last error among them names the bad file, so it becomes the reason).
    datasets.disable_progress_bars()
    with _captured_log("datasets") as logged:
        try:
            return _load_hf(datasets, name, split, limit)
        except InputError:
            raise
        except Exception as e:  # hub / filesystem errors come in many types
            reason = logged[-1] if logged else _root_cause(e)
            raise InputError(f"cannot load dataset: {reason}", file=name) from None


@contextlib.contextmanager
def _captured_log(name: str):
    """Collect the first lines of ``name``'s error log records instead of printing
    them (its warnings are dropped)."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.ERROR:
                lines.append((record.getMessage().strip() or record.levelname).splitlines()[0])

    logger = logging.getLogger(name)
    saved = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [Keep()], False
    try:
        yield lines
    finally:
        logger.handlers, logger.propagate = saved


def _load_hf(datasets, name: str, split: str, limit: int | None) -> RawRecords:
    path = Path(name)
    if (path / "dataset_info.json").exists() or (path / "state.json").exists() or (
            path / "dataset_dict.json").exists():
        ds = datasets.load_from_disk(name)
    else:
        ds = datasets.load_dataset(name, split=split)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise InputError(f"no split {split!r} (splits: {', '.join(ds)})", file=name)
        ds = ds[split]
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    rows = list(enumerate(ds.to_list(), start=1))
    return RawRecords(name, "hf", ds._fingerprint, rows)
