"""Per-example numbers of a large run without holding its tokens: each example's target
tokens as coarse histograms (:class:`ExampleBins`), for the Examples table, the Token
view's offsets and Export's filter count.

Up to three axes, each a per-example histogram (CSR) beside the run's fine histogram on
the same axis: logit q (every run), ``entropy_top20`` (a run scored with it) and the
excess ``logp_ref - logp`` (a run scored with a reference), so the schemes of q alone,
those of H_top20 alone (EAFT) and excess over the run have per-example numbers within
stated bounds, and excess within each example exact ones (an example keeps
``ceil(keep * m)`` of its m tokens with an excess). A user's scheme of other fields, or
of several, needs the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from infosft.analysis import cache
from infosft.analysis.cells import (BIN_EDGES_Z, BIN_HALF, BIN_WIDTH, H_MAX, H_MIN, h_bin,
                                    h_edges, logp_of_z, z_bin, z_edges)
from infosft.analysis.stats import Targets, missing_reason, weights
from infosft.analysis.store import Run
from infosft.errors import InfosftError
from infosft.schemes import get as get_scheme
from infosft.weights import resolve_knobs

#: The coarse per-example grid in q: unions of ``EX_BIN_FINE`` bins of the fine grid
#: (width 0.27 in logit q; the q bands' edges 0.1 and 0.9 are bin edges),
#: ``2 * EX_BIN_HALF`` of them over logit q in [-15.4, 15.4], one bin each for everything
#: below and above, and :data:`EX_NULL_BIN` for a target without a logp (weight 0).
EX_BIN_FINE = 112
EX_BIN_HALF = 56
EX_NULL_BIN = 2 * EX_BIN_HALF + 2
EX_BINS = EX_NULL_BIN + 1
#: The coarse bin of each fine bin.
FINE_TO_COARSE = (np.clip((np.arange(2 * BIN_HALF) - BIN_HALF) // EX_BIN_FINE + EX_BIN_HALF,
                          -1, 2 * EX_BIN_HALF) + 1).astype(np.int64)
#: The entropy axis: ``EXH_FINE`` fine bins log-spaced over [H_MIN, ln 20] (fine bin 0
#: below H_MIN, the last for a target without H or logp), ``EXH_PER`` of them a coarse
#: bin (each coarse bin spans a factor 1.28 in H).
EXH_FINE = 1024
EXH_PER = 32
EXH_NULL_BIN = EXH_FINE // EXH_PER + 1
EXH_BINS = EXH_NULL_BIN + 1
FINE_H_TO_COARSE = np.r_[0, (np.arange(EXH_FINE) // EXH_PER) + 1, EXH_NULL_BIN].astype(np.int64)
#: The excess axis: ``EXD_FINE`` fine bins of width ``EXD_WIDTH`` over [-EXD_HALF *
#: EXD_WIDTH, EXD_HALF * EXD_WIDTH] (the end bins open), ``EXD_PER`` of them a coarse bin
#: (0.05 nats), and a null bin for a target without a finite excess.
EXD_WIDTH, EXD_HALF, EXD_PER = 0.01, 500, 5
EXD_FINE = 2 * EXD_HALF
EXD_NULL_BIN = EXD_FINE // EXD_PER
EXD_BINS = EXD_NULL_BIN + 1
FINE_D_TO_COARSE = (np.arange(EXD_FINE) // EXD_PER).astype(np.int64)
#: Bump when what :meth:`ExampleBins.from_run` builds changes for the same inputs (the
#: binning's constants are part of the cache key already).
CACHE_VERSION = 2
#: Draws of ProFit random's generator made at a time (bounded memory at any run size).
DRAW_CHUNK = 1 << 22
#: Occupied per-example bins summed at a time (:meth:`Axis.sums`).
SUM_CHUNK = 1 << 19


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


@dataclass
class Axis:
    """One axis' per-example histograms (CSR: example ``i``'s occupied coarse bins are
    ``bins[indptr[i]:indptr[i + 1]]``, with ``counts`` tokens each) and the run's fine
    histogram on it (``fine_count``; ``fine_sum``: the sum of the axis' value per fine
    bin, where the cell means are kept)."""

    indptr: np.ndarray
    bins: np.ndarray
    counts: np.ndarray
    fine_count: np.ndarray
    fine_sum: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.indptr, self.bins, self.counts, self.fine_count))

    def sums(self, table: np.ndarray) -> np.ndarray:
        """``(n_examples, k)``: per example the sum over its bins of count *
        ``table[bin]``, ~``SUM_CHUNK`` occupied bins at a time (memory bounded by a
        chunk, not the run)."""
        n = len(self.indptr) - 1
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


class _Builder:
    """One axis' per-example histograms, part by part (see :meth:`ExampleBins.from_run`)."""

    def __init__(self, n_fine: int, to_coarse: np.ndarray, n_bins: int):
        self.fine = np.zeros(n_fine)
        self.fine_sum = np.zeros(n_fine)
        self.to_coarse, self.n_bins = to_coarse, n_bins
        self.per_row, self.bins, self.counts = [], [], []

    def add(self, row: np.ndarray, n_rows: int, fine: np.ndarray,
            value: np.ndarray | None = None) -> np.ndarray:
        """Add a part: each token's example row and fine bin (-1: the null coarse bin,
        not in the fine histogram); returns the tokens per row."""
        ok = fine >= 0
        self.fine += np.bincount(fine[ok], minlength=len(self.fine))
        if value is not None:
            self.fine_sum += np.bincount(fine[ok], weights=np.nan_to_num(value[ok]),
                                         minlength=len(self.fine))
        c = np.where(ok, self.to_coarse[np.maximum(fine, 0)], self.n_bins - 1)
        dense = np.bincount(row * self.n_bins + c, minlength=n_rows * self.n_bins).reshape(
            n_rows, self.n_bins)
        r, b = np.nonzero(dense)
        self.per_row.append(np.bincount(r, minlength=n_rows))
        self.bins.append(b.astype(np.uint8))
        self.counts.append(dense[r, b].astype(np.uint32))
        return dense.sum(axis=1)

    def axis(self, order: np.ndarray) -> Axis:
        """The axis, its examples in ``order`` (parts of several ranks hold them out of
        order)."""
        per_row = np.concatenate(self.per_row) if self.per_row else np.zeros(0, np.int64)
        b = np.concatenate(self.bins) if self.bins else np.zeros(0, np.uint8)
        c = np.concatenate(self.counts) if self.counts else np.zeros(0, np.uint32)
        self.bins, self.counts = [], []
        if not np.array_equal(order, np.arange(len(order))):
            starts = np.r_[0, np.cumsum(per_row)[:-1]]
            new_starts = np.r_[0, np.cumsum(per_row[order])[:-1]]
            gather = (np.repeat(starts[order] - new_starts, per_row[order])
                      + np.arange(len(b)))
            b, c, per_row = b[gather], c[gather], per_row[order]
        if not len(c) or c.max() < 2 ** 16:
            c = c.astype(np.uint16)
        return Axis(np.r_[0, np.cumsum(per_row)], b, c, self.fine, self.fine_sum)


def _table(fine_count: np.ndarray, to_coarse: np.ndarray, n_bins: int, null_bin: int,
           w_lo: np.ndarray, w_hi: np.ndarray, w_c: np.ndarray, keep: np.ndarray
           ) -> np.ndarray:
    """``(n_bins, 5)``: per coarse bin the mean weight of the run's tokens in it, the
    smallest and largest weight it can hold, its share of w = 0 tokens, and whether some
    of it may weigh 0 (columns: mean, lo, hi, zero, zero_hi; zero_lo = hi == 0), from the
    weights at the occupied fine bins ``keep``'s edges and means."""
    out = np.zeros((n_bins, 5))
    out[null_bin] = (0, 0, 0, 1, 1)
    if not len(keep):
        return out
    c, cb = fine_count[keep], to_coarse[keep]
    tot = np.bincount(cb, weights=c, minlength=n_bins)
    has = tot > 0
    has[null_bin] = False
    out[has, 0] = np.bincount(cb, weights=c * w_c, minlength=n_bins)[has] / tot[has]
    out[has, 3] = np.bincount(cb, weights=c * (w_c == 0), minlength=n_bins)[has] / tot[has]
    lo, hi = np.full(n_bins, np.inf), np.full(n_bins, -np.inf)
    np.minimum.at(lo, cb, np.minimum(np.minimum(w_lo, w_hi), w_c))
    np.maximum.at(hi, cb, np.maximum(np.maximum(w_lo, w_hi), w_c))
    out[has, 1], out[has, 2] = lo[has], hi[has]
    out[has, 4] = lo[has] == 0  # some of the bin's tokens may weigh 0
    return out


class ExampleBins:
    """A run's target tokens per example as coarse histograms (:class:`Axis`): in logit q
    (:data:`EX_BINS` bins), for a run with ``entropy_top20`` in H_top20 (:data:`EXH_BINS`),
    and for a run with ``logp_ref`` in the excess (:data:`EXD_BINS`), each beside the run's fine histogram on that axis, built part by
    part (each part holds whole examples), so memory is bounded by a part while building
    and by examples x occupied bins (~40-90 a 250-token example and axis, 3 bytes each)
    after: not by the tokens.

    Per-example numbers of a scheme of q alone (or of H_top20 alone: EAFT) are then one
    gather and sum per example: each bin's weight is the mean over the run's tokens in it
    (from the fine histogram), and the exact number lies between the sums of the bin's
    smallest and largest weight (:meth:`per_example`'s ``_lo`` / ``_hi`` columns). The
    error bound: a weight's change across one bin (0.27 in logit q: at most ~0.07 for
    DFT, ~0.1 for InfoSFT at C = logit 0.93; a factor 1.28 in H: ~0.2 x EAFT's weight at
    alpha 1); for a step (ProFit) the tokens of the one bin that straddles the threshold.
    ProFit random is exact: the run's own draws, regenerated in pieces (a target without
    a logp counts as kept; scored runs have none). Excess over the run: the share each
    fine excess bin keeps, on the run's fine histogram; the bound is the tokens of the
    coarse bin (0.05 nats) that straddles the cut. Excess within each example is exact
    (``ceil(keep * m)`` kept of the example's m tokens with an excess). A user's scheme
    of other fields, or of several, needs the tokens (:meth:`missing`)."""

    is_binned = True

    def __init__(self, ex_ids: np.ndarray, ex_counts: np.ndarray, q: Axis,
                 h: Axis | None = None, run_fields: tuple[str, ...] = (),
                 d: Axis | None = None):
        self.ex_ids = np.asarray(ex_ids, dtype=np.int32)
        self.ex_counts = np.asarray(ex_counts, dtype=np.int64)
        self.ex_ends = np.cumsum(self.ex_counts)
        self.q, self.h, self.d = q, h, d
        self.run_fields = tuple(run_fields)
        self._cache: dict[str, tuple[Any, pl.DataFrame]] = {}

    @property
    def fine_count(self) -> np.ndarray:
        """The run's fine histogram of logit q."""
        return self.q.fine_count

    @property
    def bins(self) -> np.ndarray:
        """The occupied coarse q bins, example after example."""
        return self.q.bins

    @classmethod
    def from_run(cls, run: str | Path | Run) -> "ExampleBins":
        """Built part by part; above :data:`analysis.cache.CACHE_ABOVE` target tokens kept
        in ``RUN/cache/example-bins-*.npz`` (this class' arrays, :meth:`_save`), so a
        restarted app reads them back (a pass over every token otherwise)."""
        run = run if isinstance(run, Run) else Run(run)
        if not cache.kept(run):
            return cls._build(run)
        file = cache.path(run, "example-bins", (
            CACHE_VERSION, BIN_WIDTH, BIN_HALF, EX_BIN_FINE, EX_BIN_HALF, EXH_FINE, EXH_PER,
            H_MIN, H_MAX, EXD_WIDTH, EXD_HALF, EXD_PER), ext="npz")
        return cache.through(file, cls._load, lambda: cls._build(run), cls._save)

    _AXIS = ("indptr", "bins", "counts", "fine_count", "fine_sum")

    def _save(self, path: Path) -> None:
        """Every array to an ``.npz`` (no pickles): the examples, the run's fields, and
        each axis' arrays (``q_*``; ``h_*``, ``d_*`` when the run has H_top20, logp_ref)."""
        arrays = {"ex_ids": self.ex_ids, "ex_counts": self.ex_counts,
                  "run_fields": np.array(self.run_fields, dtype=str)}
        for name, axis in (("q", self.q), ("h", self.h), ("d", self.d)):
            if axis is not None:
                arrays.update({f"{name}_{k}": getattr(axis, k) for k in self._AXIS})
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def _load(cls, path: Path) -> "ExampleBins":
        with np.load(path, allow_pickle=False) as z:
            axis = {name: Axis(**{k: z[f"{name}_{k}"] for k in cls._AXIS})
                    for name in ("q", "h", "d") if f"{name}_indptr" in z.files}
            return cls(z["ex_ids"], z["ex_counts"], axis["q"], axis.get("h"),
                       tuple(str(f) for f in z["run_fields"]), axis.get("d"))

    @classmethod
    def _build(cls, run: Run) -> "ExampleBins":
        fields = run.token_fields()
        has_h = "entropy_top20" in fields
        q = _Builder(2 * BIN_HALF, FINE_TO_COARSE, EX_BINS)
        h = _Builder(EXH_FINE + 2, FINE_H_TO_COARSE, EXH_BINS) if has_h else None
        has_d = "logp_ref" in fields
        d = _Builder(EXD_FINE, FINE_D_TO_COARSE, EXD_BINS) if has_d else None
        ids, n = [], []
        # the fine bins as the run's cells bin them (analysis.cells); -1: no logp (or H)
        ok = pl.col("logp").is_not_null() & ~pl.col("logp").is_nan()
        cols = [pl.col("example_id"),
                pl.when(ok).then(z_bin()).otherwise(-1).cast(pl.Int64).alias("q")]
        if has_h:
            cols += [pl.when(ok).then(h_bin(EXH_FINE)).otherwise(None).fill_null(-1)
                     .cast(pl.Int64).alias("h"),
                     pl.col("entropy_top20").cast(pl.Float64).fill_null(np.nan).alias("hv")]
        if has_d:  # the excess in float32, as the scheme computes it
            dv = pl.col("logp_ref").cast(pl.Float32) - pl.col("logp").cast(pl.Float32)
            dv = pl.when(dv.is_finite()).then(dv).otherwise(None).cast(pl.Float64)
            cols += [(dv / EXD_WIDTH + EXD_HALF).floor().clip(0, EXD_FINE - 1)
                     .fill_null(-1).cast(pl.Int64).alias("d"), dv.fill_null(np.nan).alias("dv")]
        for part in run.check_parts():
            df = run.collect(pl.scan_parquet(part).filter(pl.col("is_target")).select(cols))
            if not df.height:
                continue
            ex_ids, row = np.unique(df["example_id"].to_numpy(), return_inverse=True)
            ids.append(ex_ids)
            n.append(q.add(row, len(ex_ids), df["q"].to_numpy()))
            if h is not None:
                h.add(row, len(ex_ids), df["h"].to_numpy(), df["hv"].to_numpy())
            if d is not None:
                d.add(row, len(ex_ids), df["d"].to_numpy(), df["dv"].to_numpy())
        ex_ids = np.concatenate(ids) if ids else np.zeros(0, np.int32)
        n_t = np.concatenate(n) if n else np.zeros(0, np.int64)
        order = np.argsort(ex_ids, kind="stable")
        ex_ids, n_t = ex_ids[order], n_t[order]
        if len(ex_ids) > 1 and not (np.diff(ex_ids) > 0).all():
            raise InfosftError(f"{run.path}: an example's tokens are split across parts")
        return cls(ex_ids, n_t, q.axis(order), None if h is None else h.axis(order), fields,
                   None if d is None else d.axis(order))

    def __len__(self) -> int:
        return int(self.ex_counts.sum())

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.ex_ids, self.ex_counts, self.ex_ends)) + sum(
            a.nbytes for a in (self.q, self.h, self.d) if a is not None)

    def _axis_of(self, scheme: str) -> str | None:
        """Which axis a scheme's per-token weight is a function of ("q", "h"), or for
        the excess selection "d", or None."""
        s = get_scheme(scheme)
        if s.q_only:
            return "q"
        if s.per_token and set(s.needs) == {"entropy_top20"} and self.h is not None:
            return "h"
        if scheme == "excess" and self.d is not None:
            return "d"
        return None

    def missing(self, scheme: str, short: bool = False) -> str | None:
        """Why the per-example numbers of ``scheme`` need the tokens (a field the run
        lacks, or a scheme of another field or of several), or None."""
        why = missing_reason(scheme, self.run_fields, short=short)
        if why is None and self._axis_of(scheme) is None:
            s = get_scheme(scheme)
            why = (f"{s.label} needs the run's tokens (each example is summarized as "
                   "histograms of q and H_top20)" if short else
                   f"scheme {scheme!r} is neither of q alone, of H_top20 alone nor "
                   "excess: its per-example numbers need the run's tokens, not each "
                   "example's histograms")
        return why

    def offset(self, example_id: int) -> int:
        """Where the example's targets start in the run's target array."""
        i = int(np.searchsorted(self.ex_ids, example_id))
        return int(self.ex_ends[i] - self.ex_counts[i]) if i < len(self.ex_ids) else len(self)

    def _q_table(self, scheme: str, knobs: dict[str, Any]) -> np.ndarray:
        keep = np.flatnonzero(self.q.fine_count)
        mid = (BIN_EDGES_Z[keep] + BIN_EDGES_Z[keep + 1]) / 2  # the end bins: their centres
        w = [weights(lp.astype(np.float32), scheme, **knobs).astype(np.float64)
             for lp in (*z_edges(keep), logp_of_z(mid))]
        return _table(self.q.fine_count, FINE_TO_COARSE, EX_BINS, EX_NULL_BIN, *w, keep)

    def _h_table(self, scheme: str, knobs: dict[str, Any]) -> np.ndarray:
        ax = self.h
        keep = np.flatnonzero(ax.fine_count[:EXH_FINE + 1])  # the null bin weighs 0
        edges = h_edges(EXH_FINE)
        mean = ax.fine_sum[keep] / ax.fine_count[keep]
        zero = np.zeros(len(keep), dtype=np.float32)  # logp: not read by a scheme of H
        w = [weights(zero, scheme, fields={"entropy_top20": v.astype(np.float32)},
                     **knobs).astype(np.float64)
             for v in (edges[keep], edges[keep + 1], mean)]
        return _table(ax.fine_count, FINE_H_TO_COARSE, EXH_BINS, EXH_NULL_BIN, *w, keep)

    def _fine_shares(self, scheme: str, knobs: dict[str, Any]) -> np.ndarray:
        """``(EXD_FINE,)``: the share of each fine excess bin's tokens that ``scheme`` (a
        selection by excess over the run) keeps: its ``on_counts`` on the run's fine
        histogram at the bins' means (0 for an empty bin)."""
        ax = self.d
        keep = np.flatnonzero(ax.fine_count)
        out = np.zeros(EXD_FINE)
        out[keep] = get_scheme(scheme).on_counts(
            {"logp": torch.zeros(len(keep)),
             "logp_ref": torch.from_numpy(ax.fine_sum[keep] / ax.fine_count[keep]).float()},
            torch.from_numpy(ax.fine_count[keep]), **resolve_knobs(scheme, **knobs)
        ).double().numpy()
        return out

    def _d_table(self, scheme: str, knobs: dict[str, Any]) -> np.ndarray:
        """Excess over the run: each fine excess bin's share kept (:meth:`_fine_shares`),
        each token of the bin straddling the cut kept or not."""
        keep = np.flatnonzero(self.d.fine_count)
        share = self._fine_shares(scheme, knobs)[keep]
        return _table(self.d.fine_count, FINE_D_TO_COARSE, EXD_BINS, EXD_NULL_BIN,
                      (share >= 1).astype(np.float64), (share > 0).astype(np.float64),
                      share, keep)

    def excess_weights(self, excess: np.ndarray, scheme: str = "excess",
                       **knobs: Any) -> np.ndarray:
        """Weights of tokens with these ``excess`` values (float32 ``logp_ref - logp``)
        under excess over the run: 1 above the run's cut, 0 below, and in the fine bin
        (0.01 nats) that straddles it the share of its tokens kept; 0 for NaN.

        What the token view of a large run shows: one example's tokens against the cut
        of the whole run, without the run's tokens."""
        share = self._fine_shares(scheme, knobs)
        d = np.asarray(excess, dtype=np.float64)
        ok = np.isfinite(d)
        fine = np.clip(np.floor(np.where(ok, d, 0.0) / EXD_WIDTH + EXD_HALF), 0,
                       EXD_FINE - 1).astype(np.int64)
        return np.where(ok, share[fine], 0.0).astype(np.float32)

    def _kept_per_example(self, keep: float) -> np.ndarray:
        """Excess within each example: ``ceil(keep * m)`` kept of each example's m
        targets with a finite excess (as the scheme ranks them)."""
        has = np.ones((EXD_BINS, 1))
        has[EXD_NULL_BIN] = 0
        m = self.d.sums(has)[:, 0]
        return np.ceil(keep * m - 1e-9)

    def per_example(self, scheme: str, **knobs: Any) -> pl.DataFrame | None:
        """``example_id``, ``mean_weight``, ``zero_weight_share`` (estimates) and their
        bounds ``mean_weight_lo`` / ``_hi``, ``zero_weight_share_lo`` / ``_hi`` (intervals
        that hold the exact numbers); None when ``scheme`` needs the tokens
        (:meth:`missing`). The last result is cached: a rerun with the same knobs is free."""
        key = repr((scheme, sorted(resolve_knobs(scheme, **knobs).items())))
        if key in self._cache:
            return self._cache[key]
        k = resolve_knobs(scheme, **knobs)
        exact = Targets._random(scheme, knobs) or (
            self._axis_of(scheme) == "d" and k.get("per") == "example")
        if exact:
            kept = (self._random_kept(float(k["threshold"]), int(k["seed"]))
                    if scheme == "profit" else self._kept_per_example(float(k["keep"])))
            mean = kept / np.maximum(self.ex_counts, 1)
            out = pl.DataFrame({"example_id": self.ex_ids, "mean_weight": mean,
                                "zero_weight_share": 1 - mean, "mean_weight_lo": mean,
                                "mean_weight_hi": mean, "zero_weight_share_lo": 1 - mean,
                                "zero_weight_share_hi": 1 - mean})
        elif self.missing(scheme) is not None:
            out = None
        else:
            axis = self._axis_of(scheme)
            t = {"q": self._q_table, "h": self._h_table, "d": self._d_table}[axis](
                scheme, knobs)
            zero_lo = (t[:, 2] == 0).astype(np.float64)
            sums = getattr(self, axis).sums(
                np.column_stack([t[:, :4], zero_lo, t[:, 4]]))
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
        """:func:`analysis.stats.example_table` from the bins: ``examples`` plus
        ``mean_weight`` and ``zero_weight_share`` (estimates within :meth:`per_example`'s
        bounds; null when the scheme needs the tokens)."""
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
