"""The scored-run layout, defined once.

::

    RUN/meta.json              model, tokenizer, template, max_length, dataset source and
                               hash, row counts, skipped rows, versions, timings, status
    RUN/examples.parquet       one row per example (written when scoring completes)
    RUN/tokens/part-*.parquet  one row per token, whole examples per part
    RUN/vocab.parquet          token_id -> text piece, for top-k alternatives

Every file is written under a temporary name and renamed into place, so a
killed writer leaves only whole files.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from infosft.errors import InfosftError

META = "meta.json"
EXAMPLES = "examples.parquet"
TOKENS_DIR = "tokens"
VOCAB = "vocab.parquet"
TOP_K = 5

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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, ensure_ascii=False).encode())


def atomic_write_parquet(df: pl.DataFrame, path: Path, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        df.write_parquet(tmp, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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

    def exists(self) -> bool:
        return self.meta_path.exists()

    def meta(self) -> dict[str, Any]:
        if not self.meta_path.exists():
            raise InfosftError(f"{self.path}: not a scored run (no {META})")
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InfosftError(f"{self.meta_path}: unreadable ({e})") from None

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_json(self.meta_path, meta)

    def part_paths(self) -> list[Path]:
        return sorted(self.tokens_dir.glob("part-*.parquet"))

    def part_path(self, rank: int, index: int) -> Path:
        return self.tokens_dir / f"part-{rank:03d}-{index:06d}.parquet"

    def write_part(self, df: pl.DataFrame, rank: int, index: int) -> Path:
        path = self.part_path(rank, index)
        atomic_write_parquet(df, path)
        return path

    def remove_partial_files(self) -> None:
        """Temporary files a killed writer left behind."""
        for tmp in self.path.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def scan_tokens(self) -> pl.LazyFrame:
        """All token rows, lazily. Raises if the run has no parts yet."""
        if not self.part_paths():
            raise InfosftError(f"{self.path}: no scored tokens yet")
        return pl.scan_parquet(self.tokens_dir / "*.parquet")

    def read_examples(self) -> pl.DataFrame:
        if not self.examples_path.exists():
            status = self.meta().get("status")
            raise InfosftError(f"{self.path}: scoring is not complete (status {status!r}); "
                               "finish it with `infosft score ... --resume`")
        return pl.read_parquet(self.examples_path)

    def read_vocab(self) -> pl.DataFrame:
        return pl.read_parquet(self.vocab_path)

    def require_complete(self) -> dict[str, Any]:
        meta = self.meta()
        if meta.get("status") != "complete":
            raise InfosftError(f"{self.path}: scoring is not complete (status "
                               f"{meta.get('status')!r}); finish it with --resume")
        return meta
