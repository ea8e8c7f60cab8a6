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
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from infosft.analysis.cells import Grid, cells
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
    scheme a token's weight is a function of its own fields in, selections that
    :meth:`~infosft.schemes.Scheme.on_histogram` can do, and (a run with ``logp_ref``)
    those ranked within each example (:meth:`~infosft.schemes.Scheme.on_ranks`: on its
    rank cells). ``short``: the app's caption
    (``EAFT needs entropy_top20: rescore the run``)."""
    s = get_scheme(scheme)
    for name in s.extra_fields:
        if name not in fields:
            brief, full = FIELD_ADVICE.get(name, ("rescore the run", "rescore it"))
            return (f"{s.label} needs {name}: {brief}" if short else
                    f"scheme {scheme!r} needs each target token's {name}, which this run "
                    f"does not have: {full}")
    k = resolve_knobs(scheme, **(knobs or {}))
    if binned and not s.on_histogram(k) and not (s.on_ranks(k) and "logp_ref" in fields):
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


_TABLES_LOCK = threading.Lock()


class Targets:
    """A run's target tokens with everything that does not depend on the scheme
    precomputed (q bands, histogram bins, example boundaries), so a knob change costs
    one weight pass plus a few ``bincount`` / ``reduceat`` reductions.

    A *binned* Targets (:meth:`binned`) holds the cells of a joint histogram instead of
    the tokens (:mod:`analysis.cells`: logit q, crossed with the fields a scheme reads): ``logp``
    and :attr:`fields` are each cell's means and ``count`` how many tokens fall in it, so
    memory and the cost of a knob change do not grow with the run; its numbers are within
    :meth:`bounds` of the exact ones. A run's binned Targets are its cells of logit q
    alone; a scheme that reads other fields is weighed on the cells of those fields, and
    a selection within each example on the rank cells (:meth:`over`, built on first use:
    one joint grid of every field would have ~900k cells at 10M target tokens, and a knob
    move would cost ~0.35 s). A selection (excess) weighs a cell by the share of its
    tokens it keeps. Per-example numbers need the tokens, or for a large run
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
    #: the run a binned Targets was built from, to build the other tables of
    #: :meth:`over` (None: tokens, or one of those tables)
    _run: Run | None = None

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
        self._tables: dict[Grid, Targets] = {}
        self._over: dict[tuple[str, str], Targets] = {}

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
    def binned(cls, run: str | Path | Run, grid: Grid | None = None) -> "Targets":
        """The run's target tokens as the cells of ``grid`` (default: logit q alone; see
        the class and :mod:`analysis.cells`), built part by part: memory bounded by a
        part of the run and the cells, not the run. A scheme that reads more than q is
        weighed on the cells of the fields it reads (:meth:`over`), built on first use."""
        run = run if isinstance(run, Run) else Run(run)
        grid = Grid.of(()) if grid is None else grid
        t = cls.of_cells(cells(run, grid), grid, run.token_fields())
        t._run = run
        return t

    @classmethod
    def of_cells(cls, frame: pl.DataFrame, grid: Grid, run_fields: tuple[str, ...]
                 ) -> "Targets":
        """A binned Targets from :func:`analysis.cells.cells`' frame (one group's); the
        rank cells' fields are their u bins' edges (``rank_lo``, ``rank_hi``)."""
        key, logp, count = (frame[c].to_numpy() for c in ("key", "logp", "count"))
        fields = (dict(zip(("rank_lo", "rank_hi"), grid.u_edges(key))) if grid.ranked else
                  {f: frame[f].fill_null(np.nan).to_numpy() for f in grid.fields})
        if "logp_ref" in fields:
            # rows by excess, largest first (as the selection computes it, from float32
            # means): its sort on every knob move then runs on sorted data (215k cells:
            # 34 ms -> 7 ms)
            d = (fields["logp_ref"].astype(np.float32).astype(np.float64)
                 - logp.astype(np.float32).astype(np.float64))
            perm = np.argsort(-np.where(np.isfinite(d), d, -np.inf), kind="stable")
            key, logp, count = key[perm], logp[perm], count[perm]
            fields = {f: v[perm] for f, v in fields.items()}
        t = cls(np.zeros(len(key), dtype=np.int32), logp, count=count, fields=fields)
        t.grid, t.cell_key, t.run_fields = grid, key, tuple(run_fields)
        return t

    def grid_for(self, scheme: str, knobs: dict[str, Any] | None = None) -> Grid:
        """The cell grid that weighs ``scheme`` with ``knobs``: of the fields its weight
        reads (logit q alone for the schemes of q: the finest), or the rank cells for a
        selection within each example (excess, per=example)."""
        s = get_scheme(scheme)
        if s.on_ranks(resolve_knobs(scheme, **(knobs or {}))):
            return Grid((), ranked=True)
        return Grid.of(s.extra_fields)

    def over(self, scheme: str, knobs: dict[str, Any] | None = None) -> "Targets":
        """What weighs ``scheme`` with ``knobs``: these tokens or cells, or for a binned
        run the cells of :meth:`grid_for`, built (or read from the run's cache) on first
        use and kept. Weights ``w`` that a method takes (:meth:`summary`,
        :meth:`histogram`, :meth:`mass`) must be of the same Targets; those that take a
        scheme (:meth:`weights`, :meth:`summary`, :meth:`bounds`) choose it themselves."""
        if self._run is None:
            return self
        memo = self._memo(scheme, knobs)
        if memo in self._over:
            return self._over[memo]
        if self.missing(scheme, knobs=knobs) or (grid := self.grid_for(scheme, knobs)) == self.grid:
            out = self
        else:
            with _TABLES_LOCK:  # two app sessions asking at once build it once
                if grid not in self._tables:
                    self._tables[grid] = Targets.binned(self._run, grid)
                    self._tables[grid]._run = None  # a table weighs its own schemes only
                out = self._tables[grid]
        if len(self._over) > 256:  # one entry per knob value a slider passed through
            self._over.clear()
        self._over[memo] = out
        return out

    @staticmethod
    def _memo(scheme: str, knobs: dict[str, Any] | None) -> tuple[str, str]:
        """:meth:`over`'s memo key: it is asked ~40 times a knob move."""
        return scheme, repr(sorted((knobs or {}).items()))

    def pending(self, scheme: str, knobs: dict[str, Any] | None = None) -> bool:
        """Whether :meth:`over` would build a table for ``scheme`` (a pass over the run
        or a cache read): the app shows a spinner for it."""
        return (self._run is not None and self._memo(scheme, knobs) not in self._over
                and not self.missing(scheme, knobs=knobs)
                and self.grid_for(scheme, knobs) not in (self.grid, *self._tables))

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
        why = missing_reason(scheme, have, binned=self.is_binned, short=short, knobs=knobs)
        if why is None and self.is_binned and self._run is None \
                and self.grid_for(scheme, knobs) != self.grid:
            return (f"these are the cells of {self.grid}, which do not carry {scheme!r} "
                    "(the run's own Targets.over picks the table that does)")
        return why

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
        over all of these tokens: the whole run for a run's Targets. Of :meth:`over`'s
        Targets (for a binned run, the cells of the fields the scheme reads)."""
        if (t := self.over(scheme, knobs)) is not self:
            return t.weights(scheme, **knobs)
        if self.is_binned and self._random(scheme, knobs):
            # per-token draws mean nothing per bin: a bin keeps 1 - tau of its tokens
            keep = 1.0 - resolve_knobs(scheme, **knobs)["threshold"]
            return np.full(len(self.logp), keep, dtype=np.float32)
        self.require(scheme, knobs)
        s = get_scheme(scheme)
        fields = {n: self.fields[n] for n in (
            ("rank_lo", "rank_hi") if self.is_binned and self.grid.ranked else s.extra_fields)}
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
        """See :func:`scheme_summary`; pass ``w`` to reuse weights already computed (of
        :meth:`over`'s Targets)."""
        if (t := self.over(scheme, knobs)) is not self:
            return t.summary(scheme, w, **knobs)
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
        expectation. One within each example (the rank cells) is exact where keep is a
        bin edge; otherwise each token of the bin straddling keep is kept or not.
        ``effective_tokens`` = S^2 / Q follows by interval arithmetic."""
        if (t := self.over(scheme, knobs)) is not self:
            return t.bounds(scheme, **knobs)
        if self.is_binned and self.grid.ranked:  # w in {0, 1} per token: S = Q = kept
            w = self.weights(scheme, **knobs)
            n = self.count.sum()
            lo, hi = float(self.count @ (w >= 1)), float(self.count @ (w > 0))
            return {"mean_weight": (lo / n, hi / n), "share_nonzero": (lo / n, hi / n),
                    "effective_tokens": (lo, hi)}
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


#: Up to this many target tokens ``infosft stats`` loads every token by default (exact);
#: above, it summarizes the run's cells (:meth:`Targets.binned`: memory and time flat in
#: the run's size, mean weight, share with w > 0 and effective tokens within 1%). Every
#: target token costs ~100 bytes loaded: 20M is ~2 GB. The app loads tokens up to it too
#: for what its histograms cannot do (``INFOSFT_TOKENS_UP_TO``).
EXACT_UP_TO = 20_000_000
BINNED_LINE = ("(from the run's histogram of cells, within 1% of the exact values; "
               "--exact loads every token)")


def summary_targets(run: Run, scheme: str, knobs: dict[str, Any],
                    binned: bool | None = None) -> Targets:
    """What ``infosft stats`` summarizes: the run's tokens, or (``binned``; None: above
    :data:`EXACT_UP_TO` target tokens) its cells. Raises :class:`InfosftError` naming the
    run when they cannot be weighted by ``scheme`` with ``knobs``."""
    if binned is None:
        n = run.counts().get("target_tokens")
        binned = isinstance(n, int) and n > EXACT_UP_TO
    fields = run.token_fields()
    why = missing_reason(scheme, fields, binned=binned, knobs=knobs)
    if why:  # a ranking within each example: the tokens can, the cells cannot
        tokens_can = binned and missing_reason(scheme, fields, knobs=knobs) is None
        raise InfosftError(f"{run.path}: {why}"
                           + ("; --exact loads every token" if tokens_can else ""))
    return Targets.binned(run) if binned else Targets.from_frame(load_targets(run))


def run_summary(run: str | Path, scheme: str, *, binned: bool | None = None,
                **knobs: Any) -> dict[str, Any]:
    """Everything ``infosft stats`` prints, as a dict (``binned``: see
    :func:`summary_targets`)."""
    r = Run(run)
    meta = r.require_complete()
    resolve_knobs(scheme, **knobs)  # a bad knob or scheme fails before the tokens are read
    targets = summary_targets(r, scheme, knobs, binned)
    return {"run": str(r.path), "model": meta["model"]["name"],
            "dataset": meta["dataset"]["source"], "counts": meta["counts"],
            "binned": targets.is_binned, "q": targets.q_facts(),
            "scheme": targets.summary(scheme, **knobs)}


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
    if s.get("binned"):
        lines.append(BINNED_LINE)
    return "\n".join(lines)
