"""Before/after on the same tokens: two scored runs of one data set, under the base
and under the tuned model, joined on ``(example_id, position)``.

``delta = logp_tuned - logp_base`` of every target token: positive where the
fine-tune made the reference token more likely, negative where less. The means
are token-level (every target token of the set counts once, long examples weigh
more), the same convention as the training loss.
"""

from __future__ import annotations

import polars as pl

from infosft.analysis.store import Run
from infosft.errors import InfosftError

KEY = ["example_id", "position"]


def _targets(run: Run, suffix: str) -> pl.LazyFrame:
    return (run.scan_tokens().filter(pl.col("is_target"))
            .select(*KEY, "token", pl.col("logp").alias(f"logp_{suffix}")))


def joined_targets(base: Run, tuned: Run) -> pl.LazyFrame:
    """Target tokens of both runs: ``example_id``, ``position``, ``token``, ``logp_base``,
    ``logp_tuned``, ``delta`` (f64), lazily. Inner join: both runs score the same tokens."""
    t = _targets(tuned, "tuned").drop("token")
    return (_targets(base, "base").join(t, on=KEY, how="inner")
            .with_columns((pl.col("logp_tuned").cast(pl.Float64)
                           - pl.col("logp_base").cast(pl.Float64)).alias("delta")))


def check_same_tokens(base: Run, tuned: Run) -> int:
    """The number of target tokens both runs share; raises if the runs do not score
    the same target tokens (different data, tokenizer, max_length or template)."""
    counts = [r.scan_tokens().filter(pl.col("is_target")).select(pl.len()).collect().item()
              for r in (base, tuned)]
    both = joined_targets(base, tuned).select(pl.len()).collect().item()
    if not (counts[0] == counts[1] == both):
        raise InfosftError(f"{base.path} and {tuned.path} do not score the same target tokens "
                           f"({counts[0]} and {counts[1]}, {both} shared)")
    return both


def set_numbers(run: Run) -> dict[str, float | int]:
    """Token-level ``mean_nll`` (= -mean logp), ``mean_q`` (mean exp(logp)) and
    ``target_tokens`` over every target token of a scored run."""
    lp = pl.col("logp").cast(pl.Float64)
    row = (run.scan_tokens().filter(pl.col("is_target"))
           .select((-lp.mean()).alias("mean_nll"), lp.exp().mean().alias("mean_q"),
                   pl.len().alias("target_tokens")).collect().row(0, named=True))
    return {"mean_nll": float(row["mean_nll"]), "mean_q": float(row["mean_q"]),
            "target_tokens": int(row["target_tokens"])}


def example_delta(base: Run, tuned: Run, example_id: int,
                  kl: pl.DataFrame | None = None) -> pl.DataFrame:
    """Every token of one example (prompt tokens too, for context): ``position``,
    ``token``, ``is_target``, ``logp_base``, ``logp_tuned``, ``q_base``, ``q_tuned``,
    ``delta`` and ``kl`` (null where unknown: prompt tokens, or no KL frame given)."""
    ex = pl.col("example_id") == example_id
    b = base.scan_tokens().filter(ex).select(*KEY, "token", "is_target",
                                             pl.col("logp").alias("logp_base"))
    t = tuned.scan_tokens().filter(ex).select(*KEY, pl.col("logp").alias("logp_tuned"))
    df = b.join(t, on=KEY, how="left").sort("position").collect()
    if not df.height:
        raise InfosftError(f"{base.path}: no example {example_id}")
    k = (kl.filter(ex).select(*KEY, "kl") if kl is not None
         else pl.DataFrame(schema={"example_id": pl.Int32, "position": pl.Int32,
                                   "kl": pl.Float32}))
    lb, lt = pl.col("logp_base").cast(pl.Float64), pl.col("logp_tuned").cast(pl.Float64)
    return (df.join(k, on=KEY, how="left", maintain_order="left")
            .with_columns(lb.exp().alias("q_base"), lt.exp().alias("q_tuned"),
                          (lt - lb).alias("delta"))
            .select("position", "token", "is_target", "logp_base", "logp_tuned", "q_base",
                    "q_tuned", "delta", "kl"))


def example_deltas(base: Run, tuned: Run) -> pl.DataFrame:
    """Per example: ``example_id``, ``n_target``, ``mean_delta``, ``max_abs_delta``,
    sorted by ``max_abs_delta`` (the examples where something moved most first)."""
    d = pl.col("delta")
    return (joined_targets(base, tuned).group_by("example_id")
            .agg(pl.len().alias("n_target"), d.mean().alias("mean_delta"),
                 d.abs().max().alias("max_abs_delta"))
            .sort(["max_abs_delta", "example_id"], descending=[True, False]).collect())


def top_movers(base: Run, tuned: Run, n: int = 10) -> pl.DataFrame:
    """The ``n`` target tokens whose logp rose most and the ``n`` that fell most:
    ``direction`` (up / down), ``example_id``, ``position``, ``token``, ``logp_base``,
    ``logp_tuned``, ``delta``."""
    j = joined_targets(base, tuned)
    up = j.filter(pl.col("delta") > 0).top_k(n, by="delta").with_columns(
        pl.lit("up").alias("direction"))
    down = j.filter(pl.col("delta") < 0).bottom_k(n, by="delta").with_columns(
        pl.lit("down").alias("direction"))
    return (pl.concat([up.sort("delta", descending=True), down.sort("delta")]).collect()
            .select("direction", *KEY, "token", "logp_base", "logp_tuned", "delta"))


def token_movers(base: Run, tuned: Run, n: int = 10, min_count: int = 3) -> pl.DataFrame:
    """Token texts that moved most on average over their occurrences (at least
    ``min_count``): ``direction``, ``token``, ``count``, ``mean_delta``, ``total_delta``."""
    d = pl.col("delta")
    by = (joined_targets(base, tuned).group_by("token")
          .agg(pl.len().alias("count"), d.mean().alias("mean_delta"), d.sum().alias("total_delta"))
          .filter(pl.col("count") >= min_count))
    up = by.filter(pl.col("mean_delta") > 0).top_k(n, by="mean_delta")
    down = by.filter(pl.col("mean_delta") < 0).bottom_k(n, by="mean_delta")
    return pl.concat([up.sort("mean_delta", descending=True).with_columns(
                          pl.lit("up").alias("direction")),
                      down.sort("mean_delta").with_columns(pl.lit("down").alias("direction"))]
                     ).collect().select("direction", "token", "count", "mean_delta", "total_delta")
