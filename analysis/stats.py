"""Statistics of a scored run under a weighting scheme, built for a live slider.

The target log-probs are loaded once (``load_targets``; ~8 bytes a token) and
every scheme-dependent number is then one vectorized pass: the weights come from
``infosft.weights.token_weights`` (the only copy of the formulas) and the
aggregates from numpy reductions and polars group-bys, never a Python loop
over tokens. Recomputing everything for a new C on 10 million tokens takes
~0.2 s on 2 CPU cores (``benchmarks/bench_stats.py``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from analysis.store import Run
from infosft.weights import resolve_knobs, token_weights

#: q band edges: low q < 0.1 <= medium < 0.9 <= high. 0.1 is ProFit's default tau;
#: q > 0.9 is "the base model already knows this token".
BANDS = (0.1, 0.9)
BAND_NAMES = ("low", "medium", "high")


def load_targets(run: str | Path | Run) -> pl.DataFrame:
    """Target tokens of a run: ``example_id`` (i32), ``position`` (i32), ``logp`` (f32),
    sorted by example and position. Load once per run and pass it around."""
    run = run if isinstance(run, Run) else Run(run)
    return (run.scan_tokens().filter(pl.col("is_target"))
            .select("example_id", "position", "logp")
            .sort("example_id", "position").collect())


def weights(logp: np.ndarray | pl.Series, scheme: str, **knobs: Any) -> np.ndarray:
    """Weights ``(n,)`` float32 of target log-probs ``(n,)`` under a scheme (nulls/NaN -> 0)."""
    arr = np.ascontiguousarray(logp.to_numpy() if isinstance(logp, pl.Series) else logp,
                               dtype=np.float32)
    w = token_weights(torch.from_numpy(arr), scheme, **knobs).numpy()
    nan = np.isnan(arr)
    return np.where(nan, np.float32(0), w) if nan.any() else w


def band_index(q: np.ndarray, bands: tuple[float, float] = BANDS) -> np.ndarray:
    """0 / 1 / 2 for low / medium / high q, shape of ``q``."""
    return np.searchsorted(np.asarray(bands), q, side="right").astype(np.int8)


def scheme_summary(logp: np.ndarray | pl.Series, scheme: str,
                   bands: tuple[float, float] = BANDS, **knobs: Any) -> dict[str, Any]:
    """What a scheme does to a set of target tokens.

    Returns:
        ``scheme``, ``knobs`` (resolved), ``n_targets``, ``mean_weight``,
        ``share_nonzero`` (tokens with w > 0), ``effective_tokens`` ((sum w)^2 / sum w^2),
        ``effective_share`` (effective_tokens / n_targets), and ``weight_share_low`` /
        ``_medium`` / ``_high``: the share of total weight on each q band.
    """
    arr = logp.to_numpy() if isinstance(logp, pl.Series) else np.asarray(logp)
    w = weights(arr, scheme, **knobs).astype(np.float64)
    n = len(w)
    total, total_sq = w.sum(), np.dot(w, w)
    by_band = np.bincount(band_index(np.exp(arr), bands), weights=w, minlength=3)
    out = {
        "scheme": scheme, "knobs": resolve_knobs(scheme, **knobs), "n_targets": n,
        "mean_weight": total / n if n else math.nan,
        "share_nonzero": float(np.count_nonzero(w)) / n if n else math.nan,
        "effective_tokens": total * total / total_sq if total_sq > 0 else 0.0,
    }
    out["effective_share"] = out["effective_tokens"] / n if n else math.nan
    for name, value in zip(BAND_NAMES, by_band):
        out[f"weight_share_{name}"] = value / total if total > 0 else 0.0
    return out


def q_histogram(logp: np.ndarray | pl.Series, *, bins: int = 50, log_x: bool = False,
                w: np.ndarray | None = None, min_log10: float = -6.0) -> pl.DataFrame:
    """Histogram of q = exp(logp): ``lo``, ``hi``, ``count`` and, with ``w``, ``weight``
    (sum of weights per bin). Linear bins cover [0, 1]; log bins cover
    [10**min_log10, 1] with smaller q folded into the first bin."""
    arr = logp.to_numpy() if isinstance(logp, pl.Series) else np.asarray(logp)
    if log_x:
        edges = np.logspace(min_log10, 0, bins + 1)
        pos = (np.maximum(arr / np.log(10), min_log10) - min_log10) / -min_log10
    else:
        edges = np.linspace(0, 1, bins + 1)
        pos = np.exp(arr)
    idx = np.clip((pos * bins).astype(np.int64), 0, bins - 1)
    out = {"lo": edges[:-1], "hi": edges[1:], "count": np.bincount(idx, minlength=bins)}
    if w is not None:
        out["weight"] = np.bincount(idx, weights=w, minlength=bins)
    return pl.DataFrame(out)


def example_table(targets: pl.DataFrame, examples: pl.DataFrame, scheme: str,
                  **knobs: Any) -> pl.DataFrame:
    """Per-example view under a scheme: the columns of ``examples.parquet`` plus
    ``mean_weight`` and ``zero_weight_share`` (share of the example's targets with w = 0)."""
    w = weights(targets["logp"], scheme, **knobs)
    per = (targets.select("example_id").with_columns(w=pl.Series(w))
           .group_by("example_id").agg(pl.col("w").mean().alias("mean_weight"),
                                       (pl.col("w") == 0).mean().alias("zero_weight_share")))
    return examples.join(per, on="example_id", how="left").sort("example_id")


def q_summary(logp: np.ndarray | pl.Series) -> dict[str, float]:
    """Scheme-free facts about target tokens: mean / median q, share of q > 0.9 and q < 0.1."""
    arr = logp.to_numpy() if isinstance(logp, pl.Series) else np.asarray(logp)
    q = np.exp(arr.astype(np.float64))
    return {"mean_q": float(q.mean()), "median_q": float(np.median(q)),
            "mean_nll": float(-arr.mean()), "share_q_above_0.9": float((q > 0.9).mean()),
            "share_q_below_0.1": float((q < 0.1).mean())}


def run_summary(run: str | Path, scheme: str, **knobs: Any) -> dict[str, Any]:
    """Everything ``infosft stats`` prints, as a dict."""
    r = Run(run)
    meta = r.require_complete()
    targets = load_targets(r)
    return {"run": str(r.path), "model": meta["model"]["name"],
            "dataset": meta["dataset"]["source"], "counts": meta["counts"],
            "q": q_summary(targets["logp"]),
            "scheme": scheme_summary(targets["logp"], scheme, **knobs)}


def format_summary(s: dict[str, Any]) -> str:
    """A short human-readable text of :func:`run_summary`."""
    c, q, w = s["counts"], s["q"], s["scheme"]
    knobs = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in w["knobs"].items())
    lines = [
        f"run        {s['run']}  (model {s['model']}, data {s['dataset']})",
        f"examples   {c['examples']}  ({c['skipped']} skipped, {c['truncated']} truncated)",
        f"tokens     {c['tokens']}  ({c['target_tokens']} targets)",
        f"q          mean {q['mean_q']:.3f}, median {q['median_q']:.3f}; "
        f"{q['share_q_above_0.9']:.1%} of targets have q > 0.9, "
        f"{q['share_q_below_0.1']:.1%} have q < 0.1",
        f"scheme     {w['scheme']}" + (f" ({knobs})" if knobs else ""),
        f"weights    mean {w['mean_weight']:.3f}; {w['share_nonzero']:.1%} of targets have w > 0; "
        f"effective tokens {w['effective_tokens']:.0f} ({w['effective_share']:.1%})",
        f"weight on  low q (<{BANDS[0]}) {w['weight_share_low']:.1%}, "
        f"medium {w['weight_share_medium']:.1%}, high q (>={BANDS[1]}) "
        f"{w['weight_share_high']:.1%}",
    ]
    return "\n".join(lines)
