"""How sure a sweep's numbers are: percentile-bootstrap intervals over examples.

Every learned / forgot measure of an evaluation is a mean over examples of one set, each
example seen by both models (a paired design), so one resampling of the examples moves
both sides together:

* accuracy change: the mean of ``tuned_correct - base_correct`` (each -1, 0 or 1);
* share of prior answers lost: the mean of ``base_correct and not tuned_correct``;
* fall of the task NLL and prior KL: token means, so a ratio of sums, per example
  ``sum of the token values / its target tokens``, resampled by example (tokens of one
  example are not independent draws).

The resampling is seeded, so a report is reproducible. Spread over seeds (several
training runs of one grid point) is a different thing, kept apart in the sweep's
``points`` (:mod:`analysis.sweep`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from infosft.analysis import evaluate as ev
from infosft.analysis.delta import joined_targets
from infosft.analysis.store import Run

N_BOOT = 2000
LEVEL = 0.95
_CHUNK = 250  # resamples per block: bounds memory at _CHUNK x n examples


def bootstrap_ci(values, weights=None, *, n_boot: int = N_BOOT, level: float = LEVEL,
                 seed: int = 0) -> tuple[float, float]:
    """The ``level`` percentile interval of ``sum(values) / sum(weights)`` (the mean when
    ``weights`` is None) over ``n_boot`` resamples of the examples with replacement.

    ``values`` and ``weights`` are ``(N,)``, one entry per example.

    >>> bootstrap_ci([2.0, 2.0, 2.0])
    (2.0, 2.0)
    >>> low, high = bootstrap_ci([0.0, 1.0] * 50)
    >>> 0.39 < low < 0.5 < high < 0.61
    True
    """
    v = np.asarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    if v.shape != w.shape or v.ndim != 1 or not v.size:
        raise ValueError(f"bootstrap_ci: values {v.shape} and weights {w.shape} must be "
                         "the same non-empty 1-d shape")
    rng = np.random.default_rng(seed)
    stats = []
    for start in range(0, n_boot, _CHUNK):
        idx = rng.integers(0, v.size, size=(min(_CHUNK, n_boot - start), v.size))
        num, den = v[idx].sum(axis=1), w[idx].sum(axis=1)
        stats.append(np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0))
    s = np.concatenate(stats)
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(s, [tail, 100 - tail])
    return float(low), float(high)


def interval(value: float, values, weights=None) -> dict[str, float]:
    """``{"value", "low", "high"}``: the measured value and its bootstrap interval."""
    low, high = bootstrap_ci(values, weights)
    return {"value": float(value), "low": low, "high": high}


def accuracy_intervals(path: Path) -> dict[str, dict[str, float]] | None:
    """From an evaluation's answers file (``accuracy*.parquet``): ``delta`` (tuned − base
    share correct) and ``lost_share`` (share right before, wrong after), each with its
    interval; None without answers."""
    if not path.exists():
        return None
    frame = pl.read_parquet(path, columns=["base_correct", "tuned_correct"])
    if not frame.height:
        return None
    base = frame["base_correct"].cast(pl.Float64).to_numpy()
    tuned = frame["tuned_correct"].cast(pl.Float64).to_numpy()
    lost = base * (1 - tuned)
    return {"delta": interval(float((tuned - base).mean()), tuned - base),
            "lost_share": interval(float(lost.mean()), lost)}


def nll_fall_interval(eval_dir: Path) -> dict[str, float] | None:
    """The fall of the task NLL (base − tuned, per target token) with its interval."""
    base, tuned = (Run(eval_dir / ev.scored_name(who, "task")) for who in ev.WHO)
    per = (joined_targets(base, tuned).group_by("example_id")
           .agg(pl.col("delta").cast(pl.Float64).sum().alias("sum"), pl.len().alias("n"))
           .collect())
    if not per.height:
        return None
    s, n = per["sum"].to_numpy(), per["n"].to_numpy().astype(np.float64)
    return interval(s.sum() / n.sum(), s, n)


def kl_interval(eval_dir: Path) -> dict[str, float] | None:
    """The mean per-token KL(base || tuned) on the prior set with its interval."""
    path = eval_dir / ev.KL_FILE
    if not path.exists():
        return None
    per = (pl.read_parquet(path).group_by("example_id")
           .agg(pl.col("kl").cast(pl.Float64).sum().alias("sum"), pl.len().alias("n")))
    if not per.height:
        return None
    s, n = per["sum"].to_numpy(), per["n"].to_numpy().astype(np.float64)
    return interval(s.sum() / n.sum(), s, n)


def outcome_intervals(run_dir: str | Path, report: dict[str, Any]) -> dict[str, Any]:
    """``learned`` and ``forgot`` of a complete evaluation, each ``{"value", "low",
    "high"}``, and the measures they are: accuracy where answers were checked (task
    accuracy change; share of prior answers lost), else task NLL fall and prior KL.

    The values equal the report's own numbers; the intervals come from the per-example
    files of ``RUN/eval/``.
    """
    eval_dir = ev.eval_dir(run_dir)
    acc, prior = report.get("accuracy"), report.get("prior_accuracy")
    task = accuracy_intervals(eval_dir / ev.ACCURACY) if acc and acc.get("n") else None
    if task:
        learned, lm = task["delta"], "task accuracy change"
    else:
        learned, lm = nll_fall_interval(eval_dir), "task NLL fall"
    lost = (accuracy_intervals(eval_dir / ev.PRIOR_ACCURACY)
            if prior and prior.get("n") else None)
    if lost:
        forgot, fm = lost["lost_share"], "share of prior answers lost"
    else:
        forgot, fm = kl_interval(eval_dir), "prior KL(base||tuned)"
    return {"learned": learned, "forgot": forgot, "learned_measure": lm, "forgot_measure": fm}
