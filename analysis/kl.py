"""Per-token KL(base || tuned) on target positions, as a frame.

Forgetting is more than a change of the target tokens' likelihood: a fine-tune can
keep ``logp(y_t)`` and still move the rest of the next-token distribution. The KL
from the base model's distribution to the tuned model's, at every position that
predicts a target, measures that. The tensor work (both models on the same batch,
the vocabulary projections in row chunks, so at most two ``(chunk, V)`` fp32
log-softmax blocks exist at once) is ``infosft.scoring.joint_kl``; this module
makes its frame and summary.
"""

from __future__ import annotations

from typing import Callable

import polars as pl

from infosft import scoring
from infosft.data import PreparedExample

KL_SCHEMA = {"example_id": pl.Int32, "position": pl.Int32, "kl": pl.Float32}


def joint_kl(base_model, tuned_model, tokenizer, examples: list[PreparedExample], *,
             token_budget: int | None = None, head_chunk: int = 256,
             on_batch: Callable[[int, int], None] | None = None) -> pl.DataFrame:
    """Per-token KL(base || tuned) over the target tokens of ``examples``
    (:func:`infosft.scoring.joint_kl`, which says what the models must share).

    Returns:
        ``example_id`` (i32), ``position`` (i32), ``kl`` (f32), sorted.
    """
    arrays = scoring.joint_kl(base_model, tuned_model, tokenizer, examples,
                              token_budget=token_budget, head_chunk=head_chunk,
                              on_batch=on_batch)
    return pl.DataFrame(arrays, schema=KL_SCHEMA).sort("example_id", "position")


def kl_summary(kl: pl.DataFrame) -> dict[str, float | int]:
    """Token-level mean, median and 95th percentile of a KL frame, and its token count."""
    col = pl.col("kl").cast(pl.Float64)
    row = kl.select(col.mean().alias("mean_kl"), col.median().alias("median_kl"),
                    col.quantile(0.95, "linear").alias("p95_kl"),
                    pl.len().alias("target_tokens")).row(0, named=True)
    return {k: (float(v) if v is not None and k != "target_tokens" else v)
            for k, v in row.items()}

