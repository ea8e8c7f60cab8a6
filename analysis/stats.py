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

from infosft.analysis.cells import BIN_EDGES_Z, BIN_HALF, BIN_WIDTH, Grid, cells  # noqa: F401
from infosft.analysis.cells import logp_of_z as _logp_of_z
from infosft.analysis.store import OPTIONAL_TOKEN_SCHEMA, Run
from infosft.errors import InfosftError
from infosft.schemes import BUILTIN, get as get_scheme
from infosft.weights import BAND_NAMES, resolve_knobs, token_weights
from infosft.weights import Q_BANDS as BANDS

#: What to do to give a run each optional per-token field a scheme may need.
FIELD_ADVICE = {
    "entropy_top20": ("rescore the run", "rescore it with this version of `infosft score`"),
    "logp_ref": ("rescore the run with --reference MODEL",
                 "rescore it with `infosft score --reference MODEL`"),
}


def load_targets(run: str | Path | Run) -> pl.DataFrame:
    """Target tokens of a run: ``example_id`` (i32), ``position`` (i32), ``logp`` (f32)
    and the optional per-token fields the run has (``entropy_top20``, ``logp_ref``: f32,
    :meth:`Run.token_fields`), sorted by example and position."""
    run = run if isinstance(run, Run) else Run(run)
    return run.collect(run.scan_tokens().filter(pl.col("is_target"))
                       .select("example_id", "position", "logp", *run.token_fields())
                       .sort("example_id", "position"))


def missing_reason(scheme: str, fields: Any = (), *, binned: bool = False,
                   short: bool = False, knobs: dict[str, Any] | None = None) -> str | None:
    """Why a run with the optional per-token ``fields`` (names) cannot be weighted by
    ``scheme`` (with ``knobs``; default: its defaults), in one line naming what to do;
    None when it can. A *binned* run (a histogram of its tokens' fields) supports every
    scheme a token's weight is a function of its own fields in, and selections that
    :meth:`~infosft.schemes.Scheme.on_histogram` can do. ``short``: the app's caption
    (``EAFT needs entropy_top20: rescore the run``)."""
    s = get_scheme(scheme)
    for name in s.extra_fields:
        if name not in fields:
            brief, full = FIELD_ADVICE.get(name, ("rescore the run", "rescore it"))
            return (f"{s.label} needs {name}: {brief}" if short else
                    f"scheme {scheme!r} needs each target token's {name}, which this run "
                    f"does not have: {full}")
    if binned and not s.on_histogram(resolve_knobs(scheme, **(knobs or {}))):
        return (f"{s.label} with these knobs needs the run's tokens (this large run is "
                "summarized as a histogram)" if short else
                f"scheme {scheme!r} with these knobs ranks tokens within a set it cannot "
                "see in a histogram: it needs the run's tokens (this run is binned)")
    return None


def weights(logp: np.ndarray | pl.Series, scheme: str, *,
            fields: dict[str, np.ndarray] | None = None, example: np.ndarray | None = None,
            **knobs: Any) -> np.ndarray:
    """Weights ``(n,)`` float32 of target log-probs ``(n,)`` under a scheme (nulls/NaN -> 0).

    ``fields``: the other per-token fields (``entropy_top20``, ``logp_ref``), each ``(n,)``;
    ``example``: ``(n,)`` example ids (for a scheme that ranks within each example). A
    token whose weight comes out NaN (a field missing on it) weighs 0."""
    arr = np.ascontiguousarray(logp.to_numpy() if isinstance(logp, pl.Series) else logp,
                               dtype=np.float32)
    with warnings.catch_warnings():
        # polars hands out read-only views; token_weights only reads its input, so the
        # zero-copy tensor is safe (a copy would double the memory of a 100M-token run)
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        extra = {name: torch.from_numpy(np.ascontiguousarray(
            v.to_numpy() if isinstance(v, pl.Series) else v, dtype=np.float32))
            for name, v in (fields or {}).items()}
        if example is not None:
            extra["example"] = torch.from_numpy(np.ascontiguousarray(example))
        w = token_weights(torch.from_numpy(arr), scheme, fields=extra, **knobs).numpy()
    nan = np.isnan(arr) | np.isnan(w)
    return np.where(nan, np.float32(0), w) if nan.any() else w


def band_index(q: np.ndarray, bands: tuple[float, float] = BANDS) -> np.ndarray:
    """0 / 1 / 2 for low / medium / high q, shape of ``q``."""
    return np.searchsorted(np.asarray(bands), q, side="right").astype(np.int8)


class Targets:
    """A run's target tokens with everything that does not depend on the scheme
    precomputed (q bands, histogram bins, example boundaries), so a knob change costs
    one weight pass plus a few ``bincount`` / ``reduceat`` reductions.

    A *binned* Targets (:meth:`binned`) holds the cells of a joint histogram instead of
    the tokens (:mod:`analysis.cells`: logit q crossed with each optional field): ``logp``
    and :attr:`fields` are each cell's means and ``count`` how many tokens fall in it, so
    memory and the cost of a knob change do not grow with the run; its numbers are within
    :meth:`bounds` of the exact ones. A selection (excess) weighs a cell by the share of
    its tokens it keeps. Per-example numbers need the tokens, or for a large run
    :class:`ExampleBins`.

    Args:
        example_id: ``(n,)`` sorted example ids.
        logp: ``(n,)`` target log-probs.
        count: ``(n,)`` multiplicities (a binned run), or None: one token each.
        fields: the run's optional per-token fields (``entropy_top20``, ``logp_ref``),
            each ``(n,)`` float32 aligned with ``logp``.
    """

    #: a binned Targets' cell grid, cell keys and the run's optional fields
    grid: Grid | None = None
    cell_key: np.ndarray | None = None
    run_fields: tuple[str, ...] = ()

    def __init__(self, example_id: np.ndarray, logp: np.ndarray,
                 bands: tuple[float, float] = BANDS, count: np.ndarray | None = None,
                 fields: dict[str, np.ndarray] | None = None):
        self.logp = np.ascontiguousarray(logp, dtype=np.float32)
        self.fields = {name: np.ascontiguousarray(v, dtype=np.float32)
                       for name, v in (fields or {}).items()}
        for name, v in self.fields.items():
            if v.shape != self.logp.shape:
                raise ValueError(f"field {name} has {v.shape[0]} values for "
                                 f"{self.logp.shape[0]} tokens")
        self.count = None if count is None else np.asarray(count, dtype=np.float64)
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
        """From :func:`load_targets`' frame (must be sorted by example_id); its optional
        per-token columns become :attr:`fields` (nulls as NaN)."""
        fields = {c: df[c].cast(pl.Float32).fill_null(np.nan).to_numpy()
                  for c in OPTIONAL_TOKEN_SCHEMA if c in df.columns}
        return cls(df["example_id"].to_numpy(), df["logp"].to_numpy(), bands, fields=fields)

    def subset(self, sl: slice | np.ndarray, count: np.ndarray | None = None) -> "Targets":
        """The tokens (cells) at ``sl`` (a slice or index array) as a Targets of their own,
        with their fields; ``count``: a binned subset's own counts (a group's tokens in
        the run's cells)."""
        t = Targets(self.example_id[sl], self.logp[sl], self.bands,
                    None if self.count is None else self.count[sl] if count is None else count,
                    {k: v[sl] for k, v in self.fields.items()})
        if self.is_binned:
            t.grid, t.cell_key, t.run_fields = self.grid, self.cell_key[sl], self.run_fields
        return t

    @classmethod
    def from_run(cls, run: str | Path | Run) -> "Targets":
        return cls.from_frame(load_targets(run))

    @classmethod
    def binned(cls, run: str | Path | Run) -> "Targets":
        """The run's target tokens as the cells of a joint histogram (see the class and
        :mod:`analysis.cells`), built by polars' streaming engine: memory bounded by a
        batch of tokens, not the run."""
        run = run if isinstance(run, Run) else Run(run)
        fields = run.token_fields()
        grid = Grid.of(fields)
        return cls.of_cells(cells(run, grid), grid, fields)

    @classmethod
    def of_cells(cls, frame: pl.DataFrame, grid: Grid, run_fields: tuple[str, ...]
                 ) -> "Targets":
        """A binned Targets from :func:`analysis.cells.cells`' frame (one group's)."""
        t = cls(np.zeros(frame.height, dtype=np.int32), frame["logp"].to_numpy(),
                count=frame["count"].to_numpy(),
                fields={f: frame[f].fill_null(np.nan).to_numpy() for f in grid.fields})
        t.grid, t.cell_key, t.run_fields = grid, frame["key"].to_numpy(), tuple(run_fields)
        return t

    def __len__(self) -> int:
        return len(self.logp) if self.count is None else int(round(self.count.sum()))

    @property
    def is_binned(self) -> bool:
        return self.count is not None

    def missing(self, scheme: str, short: bool = False,
                knobs: dict[str, Any] | None = None) -> str | None:
        """Why these tokens cannot be weighted by ``scheme`` with ``knobs``
        (:func:`missing_reason`), or None."""
        have = self.run_fields if self.is_binned else self.fields
        return missing_reason(scheme, have, binned=self.is_binned, short=short, knobs=knobs)

    def schemes(self, extra: tuple[str, ...] | list[str] = (),
                knobs: Any = None) -> list[str]:
        """The built-in schemes (and those of ``extra``, e.g. a user's ``module:function``)
        these tokens can be weighted by, in display order: those whose fields the run
        has (of a binned Targets, with the knobs ``knobs(scheme)`` gives, if given)."""
        names = list(dict.fromkeys([*BUILTIN, *extra]))
        return [s for s in names
                if self.missing(s, knobs=knobs(s) if knobs else None) is None]

    def require(self, scheme: str, knobs: dict[str, Any] | None = None) -> None:
        """:class:`InfosftError` (one line: what is missing, what to do) unless these
        tokens can be weighted by ``scheme`` with ``knobs``."""
        why = self.missing(scheme, knobs=knobs)
        if why is not None:
            raise InfosftError(why)

    @staticmethod
    def _random(scheme: str, knobs: dict[str, Any]) -> bool:
        return scheme == "profit" and resolve_knobs(scheme, **knobs)["direction"] == "random"

    def _shares(self, scheme: str, knobs: dict[str, Any]) -> bool:
        """Whether this binned Targets' weights under ``scheme`` are shares of each cell's
        tokens selected (w = 1) rather than weights: ProFit random, a selection."""
        return self.is_binned and (self._random(scheme, knobs)
                                   or not get_scheme(scheme).per_token)

    def weights(self, scheme: str, **knobs: Any) -> np.ndarray:
        """Weights ``(n,)`` of these tokens (of the bins, if binned) under ``scheme``, from
        their fields and example ids. A scheme that ranks over a set (``excess``) ranks
        over all of these tokens: the whole run for a run's Targets."""
        if self.is_binned and self._random(scheme, knobs):
            # per-token draws mean nothing per bin: a bin keeps 1 - tau of its tokens
            keep = 1.0 - resolve_knobs(scheme, **knobs)["threshold"]
            return np.full(len(self.logp), keep, dtype=np.float32)
        self.require(scheme, knobs)
        s = get_scheme(scheme)
        fields = {n: self.fields[n] for n in s.extra_fields}
        if self.is_binned and not s.per_token:
            f = {"logp": torch.from_numpy(self.logp),
                 **{n: torch.from_numpy(v) for n, v in fields.items()}}
            return s.on_counts(f, torch.from_numpy(self.count),
                               **resolve_knobs(scheme, **knobs)).numpy()
        return weights(self.logp, scheme, fields=fields,
                       example=None if s.q_only or self.is_binned else self.example_id,
                       **knobs)

    def _totals(self, w: np.ndarray) -> tuple[float, float, float, np.ndarray]:
        """Sum of w, sum of w^2, count of w > 0, and weight per q band."""
        w64 = w.astype(np.float64)
        if self.count is None:
            return (w64.sum(), float(w64 @ w64), float(np.count_nonzero(w)),
                    np.bincount(self.band, weights=w64, minlength=3))
        cw = self.count * w64
        return (cw.sum(), float(cw @ w64), float(self.count @ (w != 0)),
                np.bincount(self.band, weights=cw, minlength=3))

    def mass(self, w: np.ndarray) -> float:
        """The total weight of weights ``w (n,)`` (of a binned Targets, times the counts)."""
        return float(w.sum(dtype=np.float64) if self.count is None else self.count @ w)

    def summary(self, scheme: str, w: np.ndarray | None = None, **knobs: Any) -> dict[str, Any]:
        """See :func:`scheme_summary`; pass ``w`` to reuse weights already computed."""
        w = self.weights(scheme, **knobs) if w is None else w
        n = len(self)
        total, total_sq, nonzero, by_band = self._totals(w)
        if self._shares(scheme, knobs):
            # a share of each cell's tokens kept with w = 1 (ProFit random: in
            # expectation): the sums of w, of w^2 and of kept tokens are the kept mass
            total_sq = nonzero = total
        out = {
            "scheme": scheme, "knobs": resolve_knobs(scheme, **knobs), "n_targets": n,
            "mean_weight": total / n if n else math.nan,
            "share_nonzero": nonzero / n if n else math.nan,
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
        c = self.count
        out = {"lo": edges[:-1], "hi": edges[1:],
               "count": (np.bincount(idx, minlength=bins) if c is None else
                         np.rint(np.bincount(idx, weights=c, minlength=bins)).astype(np.int64))}
        if w is not None:
            out["weight"] = np.bincount(idx, weights=w if c is None else c * w, minlength=bins)
        return pl.DataFrame(out)

    def quantile(self, p: float) -> float:
        """The ``p`` quantile of target logp (of the bin centres, by count, if binned)."""
        if self.count is None:
            return float(np.quantile(self.logp.astype(np.float64), p))
        if "order" not in self._bins:  # cells are in key order, not logp order
            self._bins["order"] = np.argsort(self.logp, kind="stable")
        order = self._bins["order"]
        cum = np.cumsum(self.count[order])
        return float(self.logp[order[np.searchsorted(cum, p * cum[-1])]])

    def q_facts(self) -> dict[str, float]:
        """:func:`q_summary` of these tokens (of the bins, by count, if binned)."""
        if self.count is None:
            return q_summary(self.logp)
        c, lp = self.count, self.logp.astype(np.float64)
        q = np.exp(lp)
        return {"mean_q": float(np.dot(c, q) / c.sum()), "median_q": math.exp(self.quantile(0.5)),
                "mean_nll": float(-np.dot(c, lp) / c.sum()),
                "share_q_above_0.9": float(c[q > 0.9].sum() / c.sum()),
                "share_q_below_0.1": float(c[q < 0.1].sum() / c.sum())}

    def bounds(self, scheme: str, **knobs: Any) -> dict[str, tuple[float, float]]:
        """For a binned Targets: intervals that hold the exact ``mean_weight``,
        ``share_nonzero`` and ``effective_tokens`` of the tokens the bins stand for.

        Each cell's weight is taken at its means and at its corners; the smallest and
        the largest bound every token in the cell wherever the weight is monotone within
        a cell along each axis (every scheme but at InfoSFT's one peak, where the miss is
        second order in the cell's width). A selection (excess) keeps exactly as many
        tokens as on the tokens: these three numbers are exact; ProFit random's are its
        expectation. ``effective_tokens`` = S^2 / Q follows by interval arithmetic."""
        if self.count is None or self._shares(scheme, knobs):
            s = self.summary(scheme, **knobs)
            return {k: (s[k], s[k]) for k in ("mean_weight", "share_nonzero",
                                               "effective_tokens")}
        s = get_scheme(scheme)
        at = np.stack([self.weights(scheme, **knobs), *(
            weights(c["logp"], scheme, fields={n: c[n] for n in s.extra_fields}, **knobs)
            for c in self.grid.corners(self.cell_key))])
        w_lo, w_hi = at.min(axis=0).astype(np.float64), at.max(axis=0).astype(np.float64)
        c, n = self.count, self.count.sum()
        s_lo, s_hi = float(c @ w_lo), float(c @ w_hi)
        q_lo, q_hi = float(c @ (w_lo * w_lo)), float(c @ (w_hi * w_hi))
        nz_lo, nz_hi = float(c[w_lo > 0].sum()), float(c[w_hi > 0].sum())
        eff_lo = s_lo * s_lo / q_hi if q_hi > 0 else 0.0
        eff_hi = min(s_hi * s_hi / q_lo, n) if q_lo > 0 else n
        return {"mean_weight": (s_lo / n, s_hi / n), "share_nonzero": (nz_lo / n, nz_hi / n),
                "effective_tokens": (eff_lo, eff_hi)}

    def per_example(self, w: np.ndarray) -> pl.DataFrame:
        """``example_id``, ``mean_weight``, ``zero_weight_share`` for weights ``w (n,)``."""
        if self.is_binned:
            raise InfosftError("per-example numbers need the run's tokens, not its histogram")
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
    resolve_knobs(scheme, **knobs)  # a bad knob or scheme fails before the tokens are read
    missing = missing_reason(scheme, r.token_fields())
    if missing:
        raise InfosftError(f"{r.path}: {missing}")
    targets = Targets.from_frame(load_targets(r))
    return {"run": str(r.path), "model": meta["model"]["name"],
            "dataset": meta["dataset"]["source"], "counts": meta["counts"],
            "q": q_summary(targets.logp), "scheme": targets.summary(scheme, **knobs)}


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


# ---------------------------------------------------------------- per example, at scale

#: The coarse per-example grid of :class:`ExampleBins`: unions of ``EX_BIN_FINE`` bins of
#: the fine grid (width 0.27 in logit q; the q bands' edges 0.1 and 0.9 are bin edges),
#: ``2 * EX_BIN_HALF`` of them over logit q in [-15.4, 15.4], one bin each for everything
#: below and above, and :data:`EX_NULL_BIN` for a target without a logp (weight 0).
EX_BIN_FINE = 112
EX_BIN_HALF = 56
EX_NULL_BIN = 2 * EX_BIN_HALF + 2
EX_BINS = EX_NULL_BIN + 1
#: The coarse bin of each fine bin.
FINE_TO_COARSE = (np.clip((np.arange(2 * BIN_HALF) - BIN_HALF) // EX_BIN_FINE + EX_BIN_HALF,
                          -1, 2 * EX_BIN_HALF) + 1).astype(np.int64)
#: Draws of ProFit random's generator made at a time (bounded memory at any run size).
DRAW_CHUNK = 1 << 22
#: Occupied per-example bins summed at a time (:meth:`ExampleBins._sums`).
SUM_CHUNK = 1 << 19


def _fine_bins(logp: np.ndarray) -> np.ndarray:
    """The fine-grid bin of each logp (as :meth:`Targets.binned` bins them; a rounding
    error above 0 as 0, like the schemes' clamp); -1 for NaN."""
    lp = np.minimum(logp.astype(np.float64), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = lp - np.log(1 - np.exp(lp))
        idx = np.floor((z + BIN_HALF * BIN_WIDTH) / BIN_WIDTH)
    idx = np.clip(np.nan_to_num(idx, nan=0.0, posinf=2 * BIN_HALF - 1, neginf=0),
                  0, 2 * BIN_HALF - 1)
    idx[np.isnan(lp)] = -1
    return idx.astype(np.int64)


def random_draws(seed: int, start: int, stop: int) -> np.ndarray:
    """Draws ``start:stop`` (float32) of ProFit random's generator over a run's target
    array: the same numbers ``keep_mask`` draws for the whole array at once (torch's CPU
    generator yields the same stream in pieces), made ``DRAW_CHUNK`` at a time, so the
    memory does not grow with ``stop``; the time does (the draws before ``start``)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    pos, out = 0, []
    while pos < stop:
        m = min(DRAW_CHUNK, stop - pos)
        d = torch.rand(m, generator=gen).numpy()
        if pos + m > start:
            out.append(d[max(start - pos, 0):])
        pos += m
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


class ExampleBins:
    """A run's target tokens per example as a coarse histogram in logit q (:data:`EX_BINS`
    bins, CSR: for each example the bins it has tokens in and how many), plus the run's
    fine histogram (:meth:`Targets.binned`'s grid), built part by part (each part holds
    whole examples), so memory is bounded by a part while building and by examples x
    occupied bins (~40-90 a 250-token example, 3 bytes each) after: not by the tokens.

    Per-example numbers of a scheme of q alone are then one gather and sum per example:
    each bin's weight is the mean over the run's tokens in it (from the fine histogram),
    and the exact number lies between the sums of the bin's smallest and largest weight
    (:meth:`per_example`'s ``_lo`` / ``_hi`` columns). The error bound: a weight's change
    across one bin (0.27 in logit q: at most ~0.07 for DFT, ~0.1 for InfoSFT at
    C = logit 0.93); for a step (ProFit) the tokens of the one bin that straddles the
    threshold. ProFit random is exact: the run's own draws, regenerated in pieces (a
    target without a logp counts as kept; scored runs have none). Schemes that read
    more than q (EAFT, excess, a user's with other fields) need the tokens
    (:meth:`missing`)."""

    is_binned = True

    def __init__(self, ex_ids: np.ndarray, ex_counts: np.ndarray, indptr: np.ndarray,
                 bins: np.ndarray, counts: np.ndarray, fine_count: np.ndarray,
                 run_fields: tuple[str, ...] = ()):
        self.ex_ids = np.asarray(ex_ids, dtype=np.int32)
        self.ex_counts = np.asarray(ex_counts, dtype=np.int64)
        self.ex_ends = np.cumsum(self.ex_counts)
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.bins = np.asarray(bins, dtype=np.uint8)
        self.counts = counts
        self.fine_count = np.asarray(fine_count, dtype=np.float64)
        self.run_fields = tuple(run_fields)
        self._cache: dict[str, tuple[Any, pl.DataFrame]] = {}

    @classmethod
    def from_run(cls, run: str | Path | Run) -> "ExampleBins":
        run = run if isinstance(run, Run) else Run(run)
        fine = np.zeros(2 * BIN_HALF)
        ids, n, ptr, bins, counts = [], [], [], [], []
        for part in run.check_parts():
            df = run.collect(pl.scan_parquet(part).filter(pl.col("is_target"))
                             .select("example_id", pl.col("logp").cast(pl.Float32)))
            if not df.height:
                continue
            ex_ids, row = np.unique(df["example_id"].to_numpy(), return_inverse=True)
            f = _fine_bins(df["logp"].fill_null(np.nan).to_numpy())
            ok = f >= 0
            fine += np.bincount(f[ok], minlength=2 * BIN_HALF)
            c = np.where(ok, FINE_TO_COARSE[np.maximum(f, 0)], EX_NULL_BIN)
            dense = np.bincount(row * EX_BINS + c, minlength=len(ex_ids) * EX_BINS).reshape(
                len(ex_ids), EX_BINS)
            r, b = np.nonzero(dense)
            ids.append(ex_ids)
            n.append(dense.sum(axis=1))
            ptr.append(np.bincount(r, minlength=len(ex_ids)))
            bins.append(b.astype(np.uint8))
            counts.append(dense[r, b].astype(np.uint32))
        ex_ids = np.concatenate(ids) if ids else np.zeros(0, np.int32)
        per_row = np.concatenate(ptr) if ptr else np.zeros(0, np.int64)
        n_t = np.concatenate(n) if n else np.zeros(0, np.int64)
        b_all = np.concatenate(bins) if bins else np.zeros(0, np.uint8)
        c_all = np.concatenate(counts) if counts else np.zeros(0, np.uint32)
        del bins, counts
        order = np.argsort(ex_ids, kind="stable")
        if not np.array_equal(order, np.arange(len(order))):  # parts of several ranks
            starts = np.r_[0, np.cumsum(per_row)[:-1]]
            new_starts = np.r_[0, np.cumsum(per_row[order])[:-1]]
            gather = (np.repeat(starts[order] - new_starts, per_row[order])
                      + np.arange(len(b_all)))
            b_all, c_all = b_all[gather], c_all[gather]
            ex_ids, per_row, n_t = ex_ids[order], per_row[order], n_t[order]
        if len(ex_ids) > 1 and not (np.diff(ex_ids) > 0).all():
            raise InfosftError(f"{run.path}: an example's tokens are split across parts")
        if not len(c_all) or c_all.max() < 2 ** 16:
            c_all = c_all.astype(np.uint16)
        return cls(ex_ids, n_t, np.r_[0, np.cumsum(per_row)], b_all, c_all, fine,
                   run.token_fields())

    def __len__(self) -> int:
        return int(self.ex_counts.sum())

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.ex_ids, self.ex_counts, self.ex_ends, self.indptr,
                                      self.bins, self.counts, self.fine_count))

    def missing(self, scheme: str, short: bool = False) -> str | None:
        """Why the per-example numbers of ``scheme`` need the tokens (a scheme that is not
        of q alone, or a field the run lacks), or None."""
        why = missing_reason(scheme, self.run_fields, short=short)
        s = get_scheme(scheme)
        if why is None and not s.q_only:
            why = (f"{s.label} needs the run's tokens (each example is summarized as a "
                   "histogram of q)" if short else
                   f"scheme {scheme!r} is not a function of q alone: its per-example "
                   "numbers need the run's tokens, not each example's histogram of q")
        return why

    def offset(self, example_id: int) -> int:
        """Where the example's targets start in the run's target array."""
        i = int(np.searchsorted(self.ex_ids, example_id))
        return int(self.ex_ends[i] - self.ex_counts[i]) if i < len(self.ex_ids) else len(self)

    def _bin_weights(self, scheme: str, knobs: dict[str, Any]) -> np.ndarray:
        """``(EX_BINS, 5)``: per coarse bin the mean weight of the run's tokens in it, the
        smallest and largest weight it can hold, its share of w = 0 tokens, and whether
        all / none of it can be 0 (columns: mean, lo, hi, zero, zero_hi; zero_lo = hi == 0)."""
        keep = np.flatnonzero(self.fine_count)
        out = np.zeros((EX_BINS, 5))
        out[EX_NULL_BIN] = (0, 0, 0, 1, 1)
        if not len(keep):
            return out
        lo_z, hi_z = BIN_EDGES_Z[keep], BIN_EDGES_Z[keep + 1]
        lo_z[keep == 0] = -np.inf
        hi_z[keep == 2 * BIN_HALF - 1] = np.inf
        w_lo, w_hi = (weights(_logp_of_z(z).astype(np.float32), scheme, **knobs)
                      .astype(np.float64) for z in (lo_z, hi_z))
        mid = (BIN_EDGES_Z[keep] + BIN_EDGES_Z[keep + 1]) / 2  # the end bins: their centres
        w_c = weights(_logp_of_z(mid).astype(np.float32), scheme, **knobs).astype(np.float64)
        c, cb = self.fine_count[keep], FINE_TO_COARSE[keep]
        tot = np.bincount(cb, weights=c, minlength=EX_BINS)
        has = tot > 0
        out[has, 0] = np.bincount(cb, weights=c * w_c, minlength=EX_BINS)[has] / tot[has]
        out[has, 3] = np.bincount(cb, weights=c * (w_c == 0), minlength=EX_BINS)[has] / tot[has]
        lo, hi = np.full(EX_BINS, np.inf), np.full(EX_BINS, -np.inf)
        np.minimum.at(lo, cb, np.minimum(np.minimum(w_lo, w_hi), w_c))
        np.maximum.at(hi, cb, np.maximum(np.maximum(w_lo, w_hi), w_c))
        out[has, 1], out[has, 2] = lo[has], hi[has]
        out[has, 4] = lo[has] == 0  # some of the bin's tokens may weigh 0
        return out

    def _sums(self, table: np.ndarray) -> np.ndarray:
        """``(n_examples, k)``: per example the sum over its bins of count * ``table[bin]``,
        ~``SUM_CHUNK`` occupied bins at a time (memory bounded by a chunk, not the run)."""
        n = len(self.ex_ids)
        out = np.zeros((n, table.shape[1]))
        table = np.ascontiguousarray(table.T).T  # columns contiguous
        cuts = np.unique(np.r_[np.searchsorted(self.indptr[1:], np.arange(
            SUM_CHUNK, self.indptr[-1], SUM_CHUNK)), n]) if n else []
        r0 = 0
        for r1 in cuts:
            r1 = int(max(r1, r0 + 1))
            s, e = self.indptr[r0], self.indptr[r1]
            if e > s:  # a column at a time: 1-d gathers, ~3x faster than one 2-d one
                bins, counts, at = self.bins[s:e], self.counts[s:e].astype(np.float64), \
                    self.indptr[r0:r1] - s
                for k in range(table.shape[1]):
                    out[r0:r1, k] = np.add.reduceat(table[:, k][bins] * counts, at)
            r0 = r1
            if r0 >= n:
                break
        return out

    def per_example(self, scheme: str, **knobs: Any) -> pl.DataFrame | None:
        """``example_id``, ``mean_weight``, ``zero_weight_share`` (estimates) and their
        bounds ``mean_weight_lo`` / ``_hi``, ``zero_weight_share_lo`` / ``_hi`` (intervals
        that hold the exact numbers); None when ``scheme`` needs the tokens
        (:meth:`missing`). The last result is cached: a rerun with the same knobs is free."""
        key = repr((scheme, sorted(resolve_knobs(scheme, **knobs).items())))
        if key in self._cache:
            return self._cache[key]
        if Targets._random(scheme, knobs):
            k = resolve_knobs(scheme, **knobs)
            kept = self._random_kept(float(k["threshold"]), int(k["seed"]))
            mean = kept / np.maximum(self.ex_counts, 1)
            out = pl.DataFrame({"example_id": self.ex_ids, "mean_weight": mean,
                                "zero_weight_share": 1 - mean, "mean_weight_lo": mean,
                                "mean_weight_hi": mean, "zero_weight_share_lo": 1 - mean,
                                "zero_weight_share_hi": 1 - mean})
        elif self.missing(scheme) is not None:
            out = None
        else:
            t = self._bin_weights(scheme, knobs)
            zero_lo = (t[:, 2] == 0).astype(np.float64)
            sums = self._sums(np.column_stack([t[:, :4], zero_lo, t[:, 4]]))
            n = np.maximum(self.ex_counts, 1)[:, None].astype(np.float64)
            m = sums / n
            out = pl.DataFrame({"example_id": self.ex_ids, "mean_weight": m[:, 0],
                                "zero_weight_share": m[:, 3], "mean_weight_lo": m[:, 1],
                                "mean_weight_hi": m[:, 2], "zero_weight_share_lo": m[:, 4],
                                "zero_weight_share_hi": m[:, 5]})
        self._cache = {key: out}
        return out

    def _random_kept(self, tau: float, seed: int) -> np.ndarray:
        """Per example, how many of its targets ProFit random keeps: the run's draws
        (:func:`random_draws`), a chunk at a time."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        total, pos, carry = len(self), 0, 0
        at_end = np.zeros(len(self.ex_ids), dtype=np.int64)
        while pos < total:
            m = min(DRAW_CHUNK, total - pos)
            keep = ~(torch.rand(m, generator=gen) < tau).numpy()
            cs = np.cumsum(keep, dtype=np.int64) + carry
            lo, hi = np.searchsorted(self.ex_ends, [pos + 1, pos + m + 1])
            at_end[lo:hi] = cs[self.ex_ends[lo:hi] - pos - 1]
            carry, pos = int(cs[-1]), pos + m
        return np.diff(np.r_[0, at_end]).astype(np.float64)

    def example_table(self, examples: pl.DataFrame, scheme: str, **knobs: Any) -> pl.DataFrame:
        """:func:`example_table` from the bins: ``examples`` plus ``mean_weight`` and
        ``zero_weight_share`` (estimates within :meth:`per_example`'s bounds; null when
        the scheme needs the tokens)."""
        per = self.per_example(scheme, **knobs)
        if per is None:
            return examples.with_columns(pl.lit(None, pl.Float64).alias("mean_weight"),
                                         pl.lit(None, pl.Float64).alias("zero_weight_share")
                                         ).sort("example_id")
        return examples.join(per.select("example_id", "mean_weight", "zero_weight_share"),
                             on="example_id", how="left").sort("example_id")

    def bound(self, scheme: str, **knobs: Any) -> dict[str, float] | None:
        """The largest distance from an estimate to its bound, over the examples:
        ``mean_weight`` and ``zero_weight_share``; None when the scheme needs the tokens."""
        per = self.per_example(scheme, **knobs)
        if per is None:
            return None
        out = {}
        for k in ("mean_weight", "zero_weight_share"):
            if not per.height:
                out[k] = 0.0
                continue
            est = per[k].to_numpy()
            out[k] = float(max(np.max(est - per[f"{k}_lo"].to_numpy()),
                               np.max(per[f"{k}_hi"].to_numpy() - est), 0.0))
        return out
