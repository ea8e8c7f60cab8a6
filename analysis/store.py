"""The scored-run layout, defined once.

::

    RUN/meta.json              model, reference model (--reference, else null), tokenizer,
                               template, target rule, max_length, dataset source and hash,
                               row counts, skipped rows, versions, timings, status
    RUN/examples.parquet       one row per example (written when scoring completes)
    RUN/tokens/part-*.parquet  one row per token, whole examples per part: TOKEN_SCHEMA,
                               then the optional OPTIONAL_TOKEN_SCHEMA columns the run has
                               (entropy_top20 since the scheme registry, logp_ref with
                               --reference), the same in every part
    RUN/vocab.parquet          token_id -> text piece, for top-k alternatives
    RUN/cache/                 derived tables, not data (:mod:`analysis.cache`): a large
                               run's cells (``cells-*.parquet``, :mod:`analysis.cells`)
                               and per-example histograms (``example-bins-*.npz``,
                               :mod:`analysis.example_bins`), each named for the parts
                               it was built from; rebuilt when they change, safe to delete
    RUN/progress-RRR.json      while scoring, per rank RRR: stage (reading the data,
                               loading or converting the model, scoring, finishing),
                               done_tokens, total_tokens, elapsed_s, eta_s (removed
                               when scoring completes)

Every file is written through :mod:`infosft.atomic` (temporary name, fsync, rename),
so a killed writer leaves only whole files. Readers check what they read: a part, the
examples table, the vocabulary or ``meta.json`` that is unreadable, of the wrong shape
or at odds with the run's counts raises one :class:`InfosftError` naming the file, never
a smaller table or a library traceback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

# atomic_write_bytes / atomic_write_json are re-exported: other modules import them from here.
from infosft.atomic import atomic_write, atomic_write_bytes, atomic_write_json  # noqa: F401
from infosft.atomic import remove_temp_files
from infosft.data import TARGET_RULE
from infosft.errors import InfosftError

META = "meta.json"
EXAMPLES = "examples.parquet"
TOKENS_DIR = "tokens"
VOCAB = "vocab.parquet"
CACHE_DIR = "cache"

TOKEN_SCHEMA = {
    "example_id": pl.Int32,
    "position": pl.Int32,
    "token_id": pl.Int32,
    "token": pl.String,
    "is_target": pl.Boolean,
    "logp": pl.Float32,          # null on non-targets
    "entropy": pl.Float32,       # null on non-targets
    "rank": pl.Int32,            # 1 = the model's top choice; null on non-targets
    "top_ids": pl.List(pl.Int32),
    "top_logps": pl.List(pl.Float32),
}
#: Per-token fields some schemes need (``infosft.schemes.FIELDS``), after the columns
#: above and in this order where a run has them; null on non-targets. A run's parts all
#: have the same ones: ``entropy_top20`` in runs scored since the scheme registry,
#: ``logp_ref`` in runs scored with ``--reference``.
OPTIONAL_TOKEN_SCHEMA = {
    "entropy_top20": pl.Float32,
    "logp_ref": pl.Float32,
}


PART_NAME = re.compile(r"part-(\d{3,})-(\d{6,})\.parquet")  # rank, index
PROGRESS_NAME = re.compile(r"progress-(\d{3,})\.json")      # rank
COUNTS = ("examples", "skipped", "tokens", "target_tokens", "truncated")
EXAMPLE_COLUMNS = ("example_id", "source_row", "n_tokens", "truncated", "text", "record")
VOCAB_COLUMNS = ("token_id", "token")

#: What reading a damaged Parquet file raises (pyarrow's errors are ValueErrors too).
READ_ERRORS = (OSError, ValueError, pl.exceptions.PolarsError, pa.ArrowException)


def atomic_write_parquet(df: pl.DataFrame, path: Path, **kwargs) -> Path:
    return atomic_write(path, lambda tmp: df.write_parquet(tmp, **kwargs))


def damaged(path: Path, reason: Any, advice: str = "rescore with --resume") -> InfosftError:
    """The one-line error for a run file that cannot be used as it is."""
    text = str(reason).strip()
    text = text.splitlines()[0] if text else type(reason).__name__
    return InfosftError(f"{path}: damaged ({text}); {advice}")


def old_targets(meta: dict[str, Any]) -> bool:
    """Whether a run's targets come from an older chat-template target rule than
    :data:`infosft.data.TARGET_RULE` (``targets`` in meta.json; runs scored before it was
    recorded left out ChatML's newline after ``<|im_end|>``). Runs without a template
    (``--no-template``, plain text) tokenize as they always did."""
    used = (meta.get("template") or {}).get("used") if isinstance(meta.get("template"),
                                                                  dict) else None
    return used is not False and meta.get("targets") != TARGET_RULE


def old_targets_error(path: Path, advice: str = "rescore it with --overwrite") -> InfosftError:
    return InfosftError(f"{path}: scored with an older target rule (chat-template targets now "
                        f"follow TRL's, the newline after the end-of-turn token included); "
                        f"{advice}")


def read_part(path: Path) -> pl.DataFrame:
    """One token part, whole; :func:`damaged` if it is unreadable or not a token part."""
    try:
        df = pl.read_parquet(path)
    except READ_ERRORS as e:
        raise damaged(path, e) from None
    _check_schema(path, df.schema)
    return df


def _check_schema(path: Path, schema) -> tuple[str, ...]:
    """The optional columns of a token part's ``schema``; :func:`damaged` if it is not one."""
    items = list(schema.items())
    base, extra = items[:len(TOKEN_SCHEMA)], [name for name, _ in items[len(TOKEN_SCHEMA):]]
    expected = [(n, OPTIONAL_TOKEN_SCHEMA[n]) for n in OPTIONAL_TOKEN_SCHEMA if n in extra]
    if base != list(TOKEN_SCHEMA.items()) or items[len(TOKEN_SCHEMA):] != expected:
        raise damaged(path, f"not a token part: columns {', '.join(schema)}")
    return tuple(extra)


# Parts already checked, per tokens directory: (stat key, parts). Readers call
# scan_tokens often (the token view, once per example); a stat of each part is cheap, a
# footer read of each part is not.
_checked: dict[Path, tuple[tuple, list[Path]]] = {}


class Run:
    """A scored-run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def meta_path(self) -> Path:
        return self.path / META

    @property
    def examples_path(self) -> Path:
        return self.path / EXAMPLES

    @property
    def tokens_dir(self) -> Path:
        return self.path / TOKENS_DIR

    @property
    def vocab_path(self) -> Path:
        return self.path / VOCAB

    @property
    def cache_dir(self) -> Path:
        return self.path / CACHE_DIR

    def exists(self) -> bool:
        return self.meta_path.is_file()

    def meta(self) -> dict[str, Any]:
        if not self.exists():
            raise InfosftError(f"{self.path}: not a scored run (no {META})")
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except OSError as e:
            raise InfosftError(f"{self.meta_path}: unreadable ({e.strerror or e})") from None
        except ValueError as e:  # bad JSON, bad UTF-8
            raise damaged(self.meta_path, e, "rescore with --overwrite") from None
        if not isinstance(meta, dict):
            raise damaged(self.meta_path, f"a JSON {type(meta).__name__}, not an object",
                          "rescore with --overwrite")
        return meta

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_json(self.meta_path, meta)

    def part_paths(self) -> list[Path]:
        """The token parts, in name order. Only names :meth:`part_path` gives count: a
        stray file (a copy such as ``part-000-000001 (1).parquet``) is not read as data."""
        return sorted(p for p in self.tokens_dir.glob("part-*.parquet")
                      if PART_NAME.fullmatch(p.name))

    def part_path(self, rank: int, index: int) -> Path:
        return self.tokens_dir / f"part-{rank:03d}-{index:06d}.parquet"

    def write_part(self, df: pl.DataFrame, rank: int, index: int) -> Path:
        path = self.part_path(rank, index)
        atomic_write_parquet(df, path)
        return path

    # --- progress files: one per scoring rank, while scoring runs ---

    def progress_path(self, rank: int) -> Path:
        return self.path / f"progress-{rank:03d}.json"

    def progress_files(self) -> list[Path]:
        """The ranks' progress files, in name order (only names :meth:`progress_path`
        gives)."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.glob("progress-*.json")
                      if PROGRESS_NAME.fullmatch(p.name))

    def write_progress(self, rank: int, done_tokens: int, total_tokens: int,
                       elapsed_s: float, stage: str = "scoring") -> None:
        """Rank ``rank``'s progress: what it is doing (``stage``, in words: "loading
        the model", "scoring", ...) and, while scoring, tokens scored of those it has to
        score, with an ETA (0 of 0 before scoring starts)."""
        atomic_write_json(self.progress_path(rank), {
            "stage": stage, "done_tokens": done_tokens, "total_tokens": total_tokens,
            "elapsed_s": elapsed_s,
            "eta_s": (elapsed_s / done_tokens * (total_tokens - done_tokens)
                      if done_tokens else None)})

    def read_progress(self) -> dict[str, Any] | None:
        """The scoring progress over all ranks: ``stage`` (the first rank's),
        ``done_tokens`` and ``total_tokens`` summed, ``elapsed_s`` and ``eta_s`` the
        slowest rank's (``eta_s`` None when no rank has one), ``updated`` (the latest
        write, epoch seconds); None when there is no progress file or one cannot be read
        as progress (removed or being replaced between listing and reading: the next
        poll reads it)."""
        try:
            ranks = [(json.loads(f.read_text(encoding="utf-8")), f.stat().st_mtime)
                     for f in self.progress_files()]
            if not ranks:
                return None
            done = sum(r["done_tokens"] for r, _ in ranks)
            total = sum(r["total_tokens"] for r, _ in ranks)
            elapsed = max(float(r["elapsed_s"]) for r, _ in ranks)
            etas = [r["eta_s"] for r, _ in ranks if r.get("eta_s") is not None]
            stage = str(ranks[0][0].get("stage") or "scoring")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return {"stage": stage, "done_tokens": done, "total_tokens": total,
                "elapsed_s": elapsed, "eta_s": max(etas) if etas else None,
                "updated": max(m for _, m in ranks)}

    def remove_progress(self) -> None:
        for p in self.progress_files():
            p.unlink(missing_ok=True)

    def remove_partial_files(self) -> None:
        """Temporary files a killed writer left behind (only under the run's lock)."""
        remove_temp_files(self.path)

    def counts(self) -> dict[str, Any]:
        """``meta.json``'s counts of a complete run, {} for a run still being scored
        (whose parts are not all there yet)."""
        meta = self.meta() if self.exists() else {}
        counts = meta.get("counts") if meta.get("status") == "complete" else None
        return counts if isinstance(counts, dict) else {}

    def parts_key(self, parts: list[Path] | None = None) -> tuple:
        """Name, size and mtime of ``meta.json`` and each part: what changes when the
        tokens do (a stat of each file, no read)."""
        parts = self.part_paths() if parts is None else parts
        return tuple((p.name, st.st_size, st.st_mtime_ns)
                     for p, st in ((p, p.stat()) for p in [self.meta_path, *parts]
                                   if p.is_file()))

    def check_parts(self) -> list[Path]:
        """The token parts, each checked from its footer (readable, token columns) and,
        in a complete run, their rows against meta.json's token count: an empty,
        truncated, foreign, missing or duplicated part raises :func:`damaged`."""
        parts = self.part_paths()
        key = self.parts_key(parts)
        hit = _checked.get(self.tokens_dir.resolve())
        if hit and hit[0] == key:
            return hit[1]
        rows, optional = 0, None
        for part in parts:
            try:
                with pq.ParquetFile(part) as f:
                    n = f.metadata.num_rows
                    schema = pl.from_arrow(f.schema_arrow.empty_table()).schema
            except READ_ERRORS as e:
                raise damaged(part, e) from None
            extra = _check_schema(part, schema)
            if optional is not None and extra != optional:
                raise damaged(part, f"columns {', '.join(extra) or 'none'} beyond the usual, "
                                    f"other parts have {', '.join(optional) or 'none'}")
            optional = extra
            rows += n
        want = self.counts().get("tokens")
        if isinstance(want, int) and rows != want:
            raise damaged(self.tokens_dir, f"{rows} token rows in {len(parts)} parts, "
                                           f"{META} counts {want}")
        _checked[self.tokens_dir.resolve()] = (key, parts)
        return parts

    def token_fields(self) -> tuple[str, ...]:
        """The optional per-token columns (:data:`OPTIONAL_TOKEN_SCHEMA`) this run has."""
        parts = self.check_parts()
        if not parts:
            return ()
        with pq.ParquetFile(parts[0]) as f:
            return _check_schema(parts[0], pl.from_arrow(f.schema_arrow.empty_table()).schema)

    def scan_tokens(self) -> pl.LazyFrame:
        """All token rows, lazily, from checked parts (:meth:`check_parts`). Raises if
        the run has no parts yet."""
        parts = self.check_parts()
        if not parts:
            raise InfosftError(f"{self.path}: no scored tokens yet")
        return pl.scan_parquet(parts)

    def collect(self, query: pl.LazyFrame, *, streaming: bool = False) -> pl.DataFrame:
        """``query`` (built on :meth:`scan_tokens`) collected (``streaming``: by polars'
        streaming engine, in memory bounded by a batch rather than the run). A part whose
        data, not only its footer, is damaged fails only here: it is found and named,
        not left to surface as a polars error."""
        try:
            return query.collect(engine="streaming") if streaming else query.collect()
        except READ_ERRORS:
            for part in self.part_paths():
                read_part(part)  # raises damaged() naming the first bad part
            raise

    def _read_table(self, path: Path, columns: tuple[str, ...]) -> pl.DataFrame:
        try:
            df = pl.read_parquet(path)
        except READ_ERRORS as e:
            raise damaged(path, e) from None
        if missing := [c for c in columns if c not in df.columns]:
            raise damaged(path, f"no column {', '.join(missing)}")
        return df

    def read_examples(self) -> pl.DataFrame:
        if not self.examples_path.exists():
            status = self.meta().get("status")
            raise InfosftError(f"{self.path}: scoring is not complete (status {status!r}); "
                               "finish it with `infosft score ... --resume`")
        df = self._read_table(self.examples_path, EXAMPLE_COLUMNS)
        want = self.counts().get("examples")
        if isinstance(want, int) and df.height != want:
            raise damaged(self.examples_path, f"{df.height} examples, {META} counts {want}")
        return df

    def read_vocab(self) -> pl.DataFrame:
        return self._read_table(self.vocab_path, VOCAB_COLUMNS)

    def require_complete(self) -> dict[str, Any]:
        """The meta of a complete run, with what its readers use (raises otherwise)."""
        meta = self.meta()
        if meta.get("status") != "complete":
            raise InfosftError(f"{self.path}: scoring is not complete (status "
                               f"{meta.get('status')!r}); finish it with --resume")
        counts = meta.get("counts") if isinstance(meta.get("counts"), dict) else {}
        missing = [f"counts.{k}" for k in COUNTS if not isinstance(counts.get(k), int)]
        missing += [k for k in ("model", "dataset", "template")
                    if not isinstance(meta.get(k), dict)]
        if missing:
            raise damaged(self.meta_path, f"no {', '.join(missing)}", "rescore with --overwrite")
        return meta

    def require_current_targets(self) -> dict[str, Any]:
        """:meth:`require_complete`, refusing a run whose target mask an older rule made
        (:func:`old_targets`): its labels would not line up with today's tokenization."""
        meta = self.require_complete()
        if old_targets(meta):
            raise old_targets_error(self.path)
        return meta
