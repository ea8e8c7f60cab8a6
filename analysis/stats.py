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
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from infosft.analysis.store import Run
from infosft.weights import BAND_NAMES, resolve_knobs, token_weights
from infosft.weights import Q_BANDS as BANDS


def load_targets(run: str | Path | Run) -> pl.DataFrame:
    """Target tokens of a run: ``example_id`` (i32), ``position`` (i32), ``logp`` (f32),
    sorted by example and position."""
    run = run if isinstance(run, Run) else Run(run)
    return run.collect(run.scan_tokens().filter(pl.col("is_target"))
                       .select("example_id", "position", "logp")
                       .sort("example_id", "position"))


def weights(logp: np.ndarray | pl.Series, scheme: str, **knobs: Any) -> np.ndarray:
    """Weights ``(n,)`` float32 of target log-probs ``(n,)`` under a scheme (nulls/NaN -> 0)."""
    arr = np.ascontiguousarray(logp.to_numpy() if isinstance(logp, pl.Series) else logp,
                               dtype=np.float32)
    with warnings.catch_warnings():
        # polars hands out read-only views; token_weights only reads its input, so the
        # zero-copy tensor is safe (a copy would double the memory of a 100M-token run)
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        w = token_weights(torch.from_numpy(arr), scheme, **knobs).numpy()
    nan = np.isnan(arr)
    return np.where(nan, np.float32(0), w) if nan.any() else w


def band_index(q: np.ndarray, bands: tuple[float, float] = BANDS) -> np.ndarray:
    """0 / 1 / 2 for low / medium / high q, shape of ``q``."""
    return np.searchsorted(np.asarray(bands), q, side="right").astype(np.int8)


class Targets:
    """A run's target tokens with everything that does not depend on the scheme
    precomputed (q bands, histogram bins, example boundaries), so a knob change costs
    one weight pass plus a few ``bincount`` / ``reduceat`` reductions.

    Args:
        example_id: ``(n,)`` sorted example ids.
        logp: ``(n,)`` target log-probs.
    """

    def __init__(self, example_id: np.ndarray, logp: np.ndarray,
                 bands: tuple[float, float] = BANDS):
        self.logp = np.ascontiguousarray(logp, dtype=np.float32)
        self.example_id = np.asarray(example_id)
        self.bands = bands
        self.band = band_index(np.exp(self.logp), bands)
        change = np.flatnonzero(np.diff(self.example_id)) + 1
        self.ex_starts = np.r_[0, change] if len(self.logp) else np.array([], dtype=np.int64)
        self.ex_ids = self.example_id[self.ex_starts]
        self.ex_counts = np.diff(np.r_[self.ex_starts, len(self.logp)])
        self._bins: dict[tuple, np.ndarray] = {}

    @classmethod
    def from_frame(cls, df: pl.DataFrame, bands: tuple[float, float] = BANDS) -> "Targets":
        """From :func:`load_targets`' frame (must be sorted by example_id)."""
        return cls(df["example_id"].to_numpy(), df["logp"].to_numpy(), bands)

    @classmethod
    def from_run(cls, run: str | Path | Run) -> "Targets":
        return cls.from_frame(load_targets(run))

    def __len__(self) -> int:
        return len(self.logp)

    def weights(self, scheme: str, **knobs: Any) -> np.ndarray:
        return weights(self.logp, scheme, **knobs)

    def summary(self, scheme: str, w: np.ndarray | None = None, **knobs: Any) -> dict[str, Any]:
        """See :func:`scheme_summary`; pass ``w`` to reuse weights already computed."""
        w = self.weights(scheme, **knobs) if w is None else w
        n = len(w)
        w64 = w.astype(np.float64)
        total, total_sq = w64.sum(), np.dot(w64, w64)
        by_band = np.bincount(self.band, weights=w64, minlength=3)
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

    def histogram(self, *, bins: int = 50, log_x: bool = False, w: np.ndarray | None = None,
                  min_log10: float = -6.0) -> pl.DataFrame:
        """See :func:`q_histogram`."""
        key = (bins, log_x, min_log10)
        if key not in self._bins:
            if log_x:
                pos = (np.maximum(self.logp / np.log(10), min_log10) - min_log10) / -min_log10
            else:
                pos = np.exp(self.logp)
            self._bins[key] = np.clip((pos * bins).astype(np.int64), 0, bins - 1)
        idx = self._bins[key]
        edges = np.logspace(min_log10, 0, bins + 1) if log_x else np.linspace(0, 1, bins + 1)
        out = {"lo": edges[:-1], "hi": edges[1:], "count": np.bincount(idx, minlength=bins)}
        if w is not None:
            out["weight"] = np.bincount(idx, weights=w, minlength=bins)
        return pl.DataFrame(out)

    def per_example(self, w: np.ndarray) -> pl.DataFrame:
        """``example_id``, ``mean_weight``, ``zero_weight_share`` for weights ``w (n,)``."""
        if not len(w):
            return pl.DataFrame(schema={"example_id": pl.Int32, "mean_weight": pl.Float64,
                                        "zero_weight_share": pl.Float64})
        sums = np.add.reduceat(w.astype(np.float64), self.ex_starts)
        zeros = np.add.reduceat((w == 0).astype(np.int32), self.ex_starts)
        return pl.DataFrame({"example_id": self.ex_ids.astype(np.int32),
                             "mean_weight": sums / self.ex_counts,
                             "zero_weight_share": zeros / self.ex_counts})


def _as_targets(logp: np.ndarray | pl.Series, bands=BANDS) -> Targets:
    arr = logp.to_numpy() if isinstance(logp, pl.Series) else np.asarray(logp)
    return Targets(np.zeros(len(arr), dtype=np.int32), arr, bands)


def scheme_summary(logp: np.ndarray | pl.Series, scheme: str,
                   bands: tuple[float, float] = BANDS, **knobs: Any) -> dict[str, Any]:
    """What a scheme does to a set of target tokens.

    Returns:
        ``scheme``, ``knobs`` (resolved), ``n_targets``, ``mean_weight``,
        ``share_nonzero`` (tokens with w > 0), ``effective_tokens`` ((sum w)^2 / sum w^2),
        ``effective_share`` (effective_tokens / n_targets), and ``weight_share_low`` /
        ``_medium`` / ``_high``: the share of total weight on each q band.
    """
    return _as_targets(logp, bands).summary(scheme, **knobs)


def q_histogram(logp: np.ndarray | pl.Series, *, bins: int = 50, log_x: bool = False,
                w: np.ndarray | None = None, min_log10: float = -6.0) -> pl.DataFrame:
    """Histogram of q = exp(logp): ``lo``, ``hi``, ``count`` and, with ``w``, ``weight``
    (sum of weights per bin). Linear bins cover [0, 1]; log bins cover
    [10**min_log10, 1] with smaller q folded into the first bin."""
    return _as_targets(logp).histogram(bins=bins, log_x=log_x, w=w, min_log10=min_log10)


def example_table(targets: pl.DataFrame | Targets, examples: pl.DataFrame, scheme: str,
                  **knobs: Any) -> pl.DataFrame:
    """Per-example view under a scheme: the columns of ``examples.parquet`` plus
    ``mean_weight`` and ``zero_weight_share`` (share of the example's targets with w = 0)."""
    t = targets if isinstance(targets, Targets) else Targets.from_frame(targets)
    per = t.per_example(t.weights(scheme, **knobs))
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
