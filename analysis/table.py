"""The Examples table: per-example statistics under a scheme, filtered and sorted."""

from __future__ import annotations

import polars as pl

from infosft.analysis.example_bins import ExampleBins
from infosft.analysis.stats import Targets, example_table

COLUMNS = ("example_id", "n_tokens", "n_target", "truncated", "mean_q", "min_q",
           "mean_weight", "zero_weight_share", "preview")
SORTABLE = ("example_id", "mean_q", "min_q", "mean_weight", "zero_weight_share", "n_tokens",
            "n_target")


def examples_view(targets: Targets | ExampleBins, examples: pl.DataFrame, scheme: str, knobs: dict, *,
                  search: str = "", truncated_only: bool = False,
                  mean_q: tuple[float, float] = (0.0, 1.0), sort_by: str = "example_id",
                  descending: bool = False, preview_chars: int = 160) -> pl.DataFrame:
    """:func:`analysis.stats.example_table` cut to :data:`COLUMNS`, with a case-insensitive
    literal text search over the record, a truncated-only filter and a mean-q range.

    ``targets``: the run's tokens, or for a large run its :class:`ExampleBins` (the weight
    columns then within :meth:`ExampleBins.bound` of the exact ones, null for a scheme
    that needs the tokens)."""
    if sort_by not in SORTABLE:
        raise ValueError(f"cannot sort by {sort_by!r}; choose one of {', '.join(SORTABLE)}")
    table = (targets.example_table(examples, scheme, **knobs)
             if isinstance(targets, ExampleBins) else
             example_table(targets, examples, scheme, **knobs))
    cond = pl.col("mean_q").is_between(*mean_q) | pl.col("mean_q").is_null()
    if truncated_only:
        cond &= pl.col("truncated")
    if search.strip():
        cond &= pl.col("record").str.to_lowercase().str.contains(search.strip().lower(),
                                                                  literal=True)
    return (table.filter(cond)
            .with_columns(pl.col("record").str.slice(0, preview_chars).alias("preview"))
            .select(COLUMNS).sort(sort_by, descending=descending, nulls_last=True))
