"""A synthetic scored run with the real layout (meta, examples, token parts with top-k,
vocab), for benchmarks and tests of the app at scale without running a model.

q is drawn from a mix like real SFT data: half near-certain tokens, half a long tail.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl

from infosft.analysis.store import OPTIONAL_TOKEN_SCHEMA, TOKEN_SCHEMA, Run, atomic_write_parquet

VOCAB = 1000


def _q(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.where(rng.random(n) < 0.5, rng.beta(20, 1, n), rng.beta(1, 2, n))


def make_run(path: str | Path, *, n_examples: int = 5000, prompt_tokens: int = 70,
             target_tokens: int = 250, part_examples: int = 1000, seed: int = 0,
             fields: tuple[str, ...] | list[str] = (),
             sources: tuple[str, ...] | list[str] = ()) -> Run:
    """Write a complete run of ``n_examples`` examples, each ``prompt_tokens`` prompt
    tokens followed by ``target_tokens`` targets (so ``n_examples * target_tokens``
    target tokens in all).

    ``fields``: optional per-token columns to write too (:data:`OPTIONAL_TOKEN_SCHEMA`,
    null on prompt tokens): ``entropy_top20`` in [0, ln 20], lower where q is high (a
    confident model), and ``logp_ref``, a reference model's logp near the token's own.

    ``sources``: a ``source`` field in each record, spread unevenly over these names (a
    mixture to break the run down by)."""
    unknown = sorted(set(fields) - set(OPTIONAL_TOKEN_SCHEMA))
    if unknown:
        raise ValueError(f"unknown optional field {unknown[0]!r}; fields are "
                         f"{', '.join(OPTIONAL_TOKEN_SCHEMA)}")
    rng = np.random.default_rng(seed)
    run = Run(path)
    run.path.mkdir(parents=True, exist_ok=True)
    per = prompt_tokens + target_tokens
    stats = []
    for part, start in enumerate(range(0, n_examples, part_examples)):
        n_ex = min(part_examples, n_examples - start)
        n = n_ex * per
        ex = np.repeat(np.arange(start, start + n_ex, dtype=np.int32), per)
        pos = np.tile(np.arange(per, dtype=np.int32), n_ex)
        is_t = pos >= prompt_tokens
        logp = np.log(np.clip(_q(rng, n), 1e-9, 1)).astype(np.float32)
        ids = rng.integers(0, VOCAB, n, dtype=np.int32)
        top_ids = rng.integers(0, VOCAB, (n, 5), dtype=np.int32)
        top_lp = np.sort(np.log(rng.dirichlet(np.ones(6), n)[:, :5]), axis=1)[:, ::-1]
        df = pl.DataFrame({
            "example_id": ex, "position": pos, "token_id": ids,
            "token": pl.Series([f" t{i}" for i in range(VOCAB)])[ids],
            "is_target": is_t,
            "logp": np.where(is_t, logp, np.nan).astype(np.float32),
            "entropy": np.where(is_t, rng.random(n) * 3, np.nan).astype(np.float32),
            "rank": np.where(is_t, rng.integers(1, 20, n), 0).astype(np.int32),
            "top_ids": pl.Series(top_ids).cast(pl.List(pl.Int32)),
            "top_logps": pl.Series(top_lp.astype(np.float32)).cast(pl.List(pl.Float32)),
        }).with_columns(
            pl.col("logp").fill_nan(None), pl.col("entropy").fill_nan(None),
            *[pl.when(pl.col("is_target")).then(pl.col(c)).otherwise(None).alias(c)
              for c in ("rank", "top_ids", "top_logps")],
        ).cast(TOKEN_SCHEMA)
        extra = {}
        q = np.exp(logp.astype(np.float64))
        for name in OPTIONAL_TOKEN_SCHEMA:  # drawn in one order, so a field's values
            if name == "entropy_top20":     # do not depend on which others are written
                v = np.log(20) * np.clip((1 - q) * rng.beta(2, 2, n) * 1.6, 0, 1)
            else:
                v = np.minimum(logp + rng.normal(0, 0.5, n), 0)
            if name in fields:
                extra[name] = pl.Series(name, np.where(is_t, v, np.nan), dtype=pl.Float32)
        if extra:
            df = df.with_columns(*[s.fill_nan(None) for s in extra.values()])
        run.write_part(df, 0, part)
        qc = pl.col("logp").exp()
        stats.append(df.group_by("example_id").agg(
            pl.col("is_target").sum().cast(pl.Int32).alias("n_target"),
            pl.col("logp").mean().alias("mean_logp"), pl.col("logp").min().alias("min_logp"),
            qc.mean().alias("mean_q"), qc.min().alias("min_q"),
            pl.col("entropy").mean().alias("mean_entropy"),
            (pl.col("rank") == 1).mean().alias("top1_share")))
    per_ex = pl.concat(stats)
    ids = np.arange(n_examples, dtype=np.int32)
    examples = pl.DataFrame({
        "example_id": ids, "source_row": ids + 1,
        "n_tokens": np.full(n_examples, per, dtype=np.int32),
        "truncated": np.zeros(n_examples, dtype=bool),
        "text": [f"synthetic example {i}" for i in ids],
        "record": [json.dumps({"prompt": f"question {i}", "response": f"answer {i}",
                               **({"source": sources[i * 7 % 11 % len(sources)]}
                                  if sources else {})})
                   for i in ids],
    }).join(per_ex, on="example_id").sort("example_id")
    atomic_write_parquet(examples, run.examples_path)
    atomic_write_parquet(pl.DataFrame({"token_id": np.arange(VOCAB, dtype=np.int32),
                                       "token": [f" t{i}" for i in range(VOCAB)]}),
                         run.vocab_path)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    run.write_meta({
        "status": "complete", "created_at": now, "completed_at": now,
        "model": {"name": "synthetic"}, "dataset": {"source": "synthetic", "kind": "synthetic"},
        "max_length": per, "template": {"used": False},
        "counts": {"examples": n_examples, "skipped": 0, "tokens": n_examples * per,
                   "target_tokens": n_examples * target_tokens, "truncated": 0}})
    return run
