"""The joint histogram ("cells") of a run's target tokens: what the statistics of a large
run are computed from, so that a knob change costs the same at any size.

A cell is a bin of z = logit(q) crossed with a bin of each optional per-token field the
run has (:data:`~analysis.store.OPTIONAL_TOKEN_SCHEMA`). It keeps how many tokens fall
in it and the mean of logp and of each field over them; a scheme's weight is taken at
those means (second-order error in the cell's width), and its values at the cell's
corners bound every token in it wherever the weight is monotone within a cell.

The axes:

- z: bins of width :data:`BIN_WIDTH` over [-Z, Z] (q from 4e-18 to 1 - 4e-18; beyond,
  the end bins), two of them merged when the run has both fields (:data:`Z_COARSE`: the
  joint grid stays small). The width divides logit(0.9), so the q bands' edges (0.1,
  0.9) are bin edges and a cell lies in one band.
- ``entropy_top20``: :data:`H_BINS` log-spaced bins from :data:`H_MIN` to ln 20 (its
  largest value), and one below.
- ``logp_ref``: bins of the excess ``logp_ref - logp`` (what Rho-1 ranks by), width
  :data:`D_WIDTH` over [-:data:`D_HALF` * D_WIDTH, D_HALF * D_WIDTH], the ends open.

Each field's axis has one more bin, for the tokens without it (they weigh 0 under a
scheme that reads it, as in the exact statistics). A grid of logit q and entropy_top20
has 47k-220k occupied cells from 100k to 100M target tokens on synthetic runs
(``benchmarks/bench_binned.py``).

A run with ``logp_ref`` has one more grid, the *rank cells* (``Grid(ranked=True)``):
z (bins of :data:`Z_RANK` fine bins) crossed with u = r / m in :data:`U_BINS` bins, r a
token's 0-based rank by excess within its example (largest first, ties in order of
position) and m the example's tokens with an excess. Excess ranked within each example
keeps a token iff u < keep, so these cells weigh it exactly wherever keep is a multiple
of 1 / U_BINS; the field grids cannot (a cell's tokens sit in many examples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from infosft.analysis import cache
from infosft.analysis.store import OPTIONAL_TOKEN_SCHEMA, Run

#: The fine z grid (~33k bins): a run without optional fields is binned on it.
BIN_WIDTH = math.log(9) / 896
BIN_HALF = 16320
BIN_EDGES_Z = BIN_WIDTH * np.arange(-BIN_HALF, BIN_HALF + 1)
#: fine z bins per z bin, by how many optional fields the run has: the joint grid stays
#: small (two fields: 16320 z bins of width 0.0049)
Z_COARSE = (1, 1, 2)
H_MIN, H_MAX, H_BINS = 1e-3, math.log(20), 64
D_WIDTH, D_HALF = 0.1, 100
#: The rank cells' axes: bins of u = r / m (one more for a token without an excess), and
#: fine z bins per z bin (a divisor of 896: the q bands' edges stay bin edges; the
#: weight reads u alone, z only places the cell in the histograms and bands).
U_BINS, Z_RANK = 100, 8

#: The bins of the axis each field adds (the last: tokens without it), in
#: :data:`OPTIONAL_TOKEN_SCHEMA` order.
_AXIS_SIZE = {"entropy_top20": H_BINS + 2, "logp_ref": 2 * D_HALF + 1}


def logp_of_z(z: np.ndarray) -> np.ndarray:
    """log(sigmoid(z)) without overflow."""
    return -np.logaddexp(0.0, -z)


def h_edges(n_bins: int = H_BINS) -> np.ndarray:
    """``(n_bins + 2,)`` edges of an entropy axis of ``n_bins`` log-spaced bins: 0, then
    H_MIN .. ln 20."""
    return np.r_[0.0, np.geomspace(H_MIN, H_MAX, n_bins + 1)]


def z_bin(step: int = 1) -> pl.Expr:
    """The z = logit(q) bin (float, before the cast) of each row's ``logp``, bins of
    ``step`` fine bins. A logp a rounding above 0 is q = 1 (the top bin), as the schemes
    read it; NaN goes to bin 0, null stays null."""
    lp = pl.col("logp").cast(pl.Float64).clip(upper_bound=0.0)
    z = lp - (1 - lp.exp()).log()  # logit(q); 1 - exp in float64 is exact enough here
    n = 2 * BIN_HALF // step
    return ((z + BIN_HALF * BIN_WIDTH) / (BIN_WIDTH * step)).floor().fill_nan(0).clip(0, n - 1)


def h_bin(n_bins: int = H_BINS) -> pl.Expr:
    """The bin of each row's ``entropy_top20`` among :func:`h_edges` (``n_bins``): 0 below
    H_MIN, 1..n_bins log-spaced (ln 20 and a rounding above it in the last); null for a
    null or NaN H."""
    v = pl.col("entropy_top20").cast(pl.Float64)
    idx = ((v.clip(lower_bound=H_MIN).log() - math.log(H_MIN))
           / (math.log(H_MAX / H_MIN) / n_bins)).floor() + 1
    return (pl.when(v.is_null() | v.is_nan()).then(None)
            .when(v < H_MIN).then(0).otherwise(idx.clip(1, n_bins)))


def z_edges(i: np.ndarray, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The logp edges ``(lo, hi)`` of z bins ``i`` (of ``step`` fine bins); the end bins
    reach to q = 0 and q = 1."""
    fine = np.asarray(i, dtype=np.int64) * step
    lo = np.where(fine == 0, -np.inf, BIN_EDGES_Z[fine])
    hi = np.where(fine + step >= 2 * BIN_HALF, np.inf,
                  BIN_EDGES_Z[np.minimum(fine + step, 2 * BIN_HALF)])
    return logp_of_z(lo), logp_of_z(hi)


def rank_bin() -> pl.Expr:
    """Each row's bin of u = r / m (:data:`U_BINS` of them; ``U_BINS``: no excess), r
    its 0-based rank by excess ``logp_ref - logp`` within its example (largest first,
    ties in order of the rows), m the example's rows with a finite excess. ``r * U_BINS
    // m`` in integers: bin < j exactly when r < ceil(j / U_BINS * m), the tokens excess
    keeps at keep = j / U_BINS. The frame must hold whole examples in position order (a
    run's parts do). The excess in float32, as the scheme computes it (the same ties)."""
    d = pl.col("logp_ref").cast(pl.Float32) - pl.col("logp").cast(pl.Float32)
    d = pl.when(d.is_finite()).then(d).otherwise(None)
    r = d.rank("ordinal", descending=True).over("example_id").cast(pl.Int64) - 1
    m = d.count().over("example_id").cast(pl.Int64)
    return pl.when(d.is_null()).then(U_BINS).otherwise(r * U_BINS // m)


@dataclass(frozen=True)
class Grid:
    """The cell grid of a run with optional ``fields``. A cell's key is its z bin plus
    ``n_z`` times the index of its bins on the field axes (mixed radix, in order).

    ``ranked``: the run's rank cells instead (z by u, see the module; no fields)."""

    fields: tuple[str, ...]
    ranked: bool = False

    @classmethod
    def of(cls, fields) -> "Grid":
        return cls(tuple(f for f in OPTIONAL_TOKEN_SCHEMA if f in fields))

    def __str__(self) -> str:
        """``q x entropy_top20``, ``q x rank share``: the axes, for messages.

        >>> str(Grid.of(("logp_ref", "entropy_top20"))), str(Grid((), ranked=True))
        ('q x entropy_top20 x logp_ref', 'q x rank share')
        """
        return " x ".join(("q", *(("rank share",) if self.ranked else self.fields)))

    @property
    def z_step(self) -> int:
        """Fine z bins per z bin of this grid."""
        return Z_RANK if self.ranked else Z_COARSE[len(self.fields)]

    @property
    def n_z(self) -> int:
        return 2 * BIN_HALF // self.z_step

    @property
    def sizes(self) -> tuple[int, ...]:
        if self.ranked:
            return (self.n_z, U_BINS + 1)
        return (self.n_z, *(_AXIS_SIZE[f] for f in self.fields))

    @property
    def inputs(self) -> tuple[str, ...]:
        """The token columns a cell key is computed from."""
        return ("logp", "logp_ref") if self.ranked else ("logp", *self.fields)

    def key(self) -> pl.Expr:
        """The cell key (i64) of each row of a token frame (``logp`` and the fields not
        null or NaN). A logp a rounding above 0 is q = 1, as the schemes read it."""
        key = z_bin(self.z_step)
        if self.ranked:
            return (key + self.n_z * rank_bin()).cast(pl.Int64).alias("key")
        radix = self.n_z
        for f in self.fields:
            v = pl.col(f).cast(pl.Float64)
            if f == "entropy_top20":
                idx = h_bin()
            else:
                lp = pl.col("logp").cast(pl.Float64).clip(upper_bound=0.0)
                idx = ((v - lp) / D_WIDTH + D_HALF).floor().clip(0, 2 * D_HALF - 1)
            idx = pl.when(v.is_null() | v.is_nan()).then(_AXIS_SIZE[f] - 1).otherwise(idx)
            key = key + radix * idx
            radix *= _AXIS_SIZE[f]
        return key.cast(pl.Int64).alias("key")

    def unravel(self, key: np.ndarray) -> list[np.ndarray]:
        """Each axis' bin index of ``key`` (z first)."""
        return list(np.unravel_index(np.asarray(key, dtype=np.int64), self.sizes[::-1],
                                     order="C"))[::-1]

    def u_edges(self, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rank cells' u bin edges ``(lo, hi)`` of ``key`` (NaN: no excess)."""
        u = self.unravel(key)[1].astype(np.float64)
        null = u == U_BINS
        return (np.where(null, np.nan, u / U_BINS), np.where(null, np.nan, (u + 1) / U_BINS))

    def corners(self, key: np.ndarray) -> list[dict[str, np.ndarray]]:
        """The corners of each cell: for each of the 2^(axes) corners, ``logp`` and each
        field, each ``(n,)`` float32. The end bins reach to infinity (z) or to the
        field's range."""
        idx = self.unravel(key)
        axes = [z_edges(idx[0], self.z_step)]
        for f, i in zip(self.fields, idx[1:]):
            null = i == _AXIS_SIZE[f] - 1
            if f == "entropy_top20":
                e = np.r_[h_edges(), np.nan, np.nan]  # H_top20 <= ln 20: the last edge
                lo, hi = e[i], e[i + 1]
            else:
                lo = np.where(i == 0, -np.inf, (i - D_HALF) * D_WIDTH)
                hi = np.where(i == 2 * D_HALF - 1, np.inf, (i - D_HALF + 1) * D_WIDTH)
            axes.append((np.where(null, np.nan, lo), np.where(null, np.nan, hi)))
        out = []
        for corner in range(2 ** len(axes)):
            pick = [axes[a][(corner >> a) & 1] for a in range(len(axes))]
            c = {"logp": pick[0]}
            for f, v in zip(self.fields, pick[1:]):
                # an excess corner is a logp_ref: logp + d (at most 0, a log-probability)
                c[f] = np.minimum(pick[0] + v, 0.0) if f == "logp_ref" else v
            out.append({k: v.astype(np.float32) for k, v in c.items()})
        return out


#: Partial cells held before they are merged (:func:`cells`): bounds the memory.
MERGE_ROWS = 1 << 21


def cells(run: Run, grid: Grid, groups: pl.DataFrame | None = None, *,
          means: bool = True) -> pl.DataFrame:
    """The run's target tokens as cells of ``grid``: ``key`` (i64), ``count`` (i64),
    ``logp`` and each field of the grid (f64 means over the cell's tokens; NaN in a
    field's null bin), sorted by key. A token with a null or NaN logp is left out.

    ``groups``: ``example_id`` (i32) -> ``group`` (i32); then one row per group and cell
    (a ``group`` column first), sorted by group and key; an example with no group is
    left out.

    ``means=False``: the counts alone (no ``logp`` or field columns), for a caller that
    weighs each cell at the run's own means (a breakdown): half the aggregation.

    Built part by part, the partial sums merged every :data:`MERGE_ROWS` rows: memory is
    bounded by a part and the cells, not the run. (Polars' streaming group-by held ~2 GB
    for the 730k group-cells of a 100M-token run in four groups.)

    Above :data:`analysis.cache.CACHE_ABOVE` target tokens kept in the run's cache folder
    (:func:`cache_path`), so a restarted app or a second ``infosft stats`` reads it back
    (7-8 s a pass at 100M target tokens, then a fraction of a second); a cache that
    cannot be read is rebuilt, one that cannot be written is skipped.

    The grid of logit q alone, on a run with a field, is summed from that field's grid
    (:func:`finer`: the same z bins), which a scheme of the field needs anyway: one
    pass over the parts for both."""
    src = finer(run, grid)
    if src is not None:
        return marginal(cells(run, src, groups, means=means), src, means)
    parts = run.check_parts()
    if not cache.kept(run):
        return _build(run, parts, grid, groups, means)
    file = cache_path(run, grid, groups, means)
    columns = [*(["group"] if groups is not None else []), "key", "count",
               *(("logp", *grid.fields) if means else ())]

    def load(f: Path) -> pl.DataFrame | None:
        df = pl.read_parquet(f)
        return df if df.columns == columns else None

    return cache.through(file, load, lambda: _build(run, parts, grid, groups, means),
                         pl.DataFrame.write_parquet)


def finer(run: Run, grid: Grid) -> Grid | None:
    """The grid whose cells, summed over its field, are ``grid``'s: for logit q alone on
    a run with an optional field, that field's grid (the first of
    :data:`OPTIONAL_TOKEN_SCHEMA` it has; one field keeps the z bins of none); else None."""
    if grid.ranked or grid.fields or Z_COARSE[0] != Z_COARSE[1]:
        return None
    have = [f for f in OPTIONAL_TOKEN_SCHEMA if f in run.token_fields()]
    return Grid((have[0],)) if have else None


def marginal(frame: pl.DataFrame, src: Grid, means: bool) -> pl.DataFrame:
    """:func:`cells`' ``frame`` of grid ``src`` summed over its field axes: the cells of
    its z bins alone (per group, if grouped), the logp means weighted by count."""
    by = ["group", "key"] if "group" in frame.columns else ["key"]
    z = frame.with_columns(pl.col("key") % src.n_z)
    if not means:
        return z.group_by(by).agg(pl.col("count").sum()).sort(by)
    return (z.group_by(by).agg(pl.col("count").sum(),
                               (pl.col("logp") * pl.col("count")).sum().alias("s"))
            .sort(by).select(*by, "count", (pl.col("s") / pl.col("count")).alias("logp")))


#: Bump when what :func:`_build` makes changes for the same inputs (the binning's own
#: constants are part of the cache key already).
CACHE_VERSION = 1


def cache_path(run: Run, grid: Grid, groups: pl.DataFrame | None, means: bool) -> Path:
    """``RUN/cache/cells-PARTS-WHAT.parquet`` (:mod:`analysis.cache`): WHAT the grid,
    the binning, the groups (each example's) and ``means``; the frame :func:`cells`
    returns."""
    blobs = []
    if groups is not None:
        g = groups.sort("example_id")
        blobs = [g["example_id"].to_numpy().astype(np.int64).tobytes(),
                 g["group"].to_numpy().astype(np.int64).tobytes()]
    return cache.path(run, "cells", (CACHE_VERSION, grid.fields, grid.ranked, grid.z_step,
                                     means, BIN_WIDTH, BIN_HALF, H_MIN, H_MAX, H_BINS,
                                     D_WIDTH, D_HALF, U_BINS), *blobs, ext="parquet")


def _build(run: Run, parts: list[Path], grid: Grid, groups: pl.DataFrame | None,
           means: bool) -> pl.DataFrame:
    """:func:`cells` from the parts themselves."""
    cols = ("logp", *grid.fields)
    summed = cols if means else ()
    by = ["key"] if groups is None else ["group", "key"]
    sums = [pl.len().cast(pl.Int64).alias("count"),
            *(pl.col(c).cast(pl.Float64).sum() for c in summed)]
    merge = [pl.col("count").sum(), *(pl.col(c).sum() for c in summed)]
    ok = pl.col("is_target") & pl.col("logp").is_not_null() & ~pl.col("logp").is_nan()
    space = int(np.prod(grid.sizes))  # keys of one group
    group = None
    if groups is not None:  # example id -> group: a lookup table (ids are row numbers)
        ids = groups["example_id"].to_numpy().astype(np.int64)
        lut = np.full(int(ids.max()) + 1 if len(ids) else 1, -1, dtype=np.int32)
        lut[ids] = groups["group"].to_numpy()
        ex = pl.col("example_id")
        group = (pl.when((ex >= 0) & (ex < len(lut)))
                 .then(pl.lit(pl.Series(lut)).gather(ex.clip(0, len(lut) - 1)))
                 .otherwise(-1).cast(pl.Int64))

    def scan(part: Path) -> pl.LazyFrame:
        """A part's target tokens with their cell key, in one plan (a third faster
        than mapping the groups between two)."""
        lf = pl.scan_parquet(part).filter(ok).select("example_id", *grid.inputs).with_columns(
            grid.key())
        if group is None:
            return lf
        # one i64 key per (group, cell): a faster group-by; int64 before the product
        # (group 10 of a two-field grid is past 2^31)
        return (lf.with_columns(group.alias("group")).filter(pl.col("group") >= 0)
                .with_columns((pl.col("group") * space + pl.col("key")).alias("key")))

    acc: list[pl.DataFrame] = []
    for part in parts:
        acc.append(run.collect(scan(part).group_by("key").agg(sums)))
        if sum(df.height for df in acc) > MERGE_ROWS:
            acc = [pl.concat(acc).group_by("key").agg(merge)]
    schema = {"key": pl.Int64, "count": pl.Int64, **{c: pl.Float64 for c in summed}}
    total = (pl.concat(acc).group_by("key").agg(merge) if acc
             else pl.DataFrame(schema=schema)).sort("key")
    if groups is not None:
        gk = total["key"].to_numpy()
        total = total.with_columns(pl.Series("group", (gk // space).astype(np.int32)),
                                   pl.Series("key", gk % space))
    if not means:
        return total.select(*by, "count")
    null = {f: grid.unravel(total["key"].to_numpy())[i + 1] == _AXIS_SIZE[f] - 1
            for i, f in enumerate(grid.fields)}
    return total.select(
        *by, "count", (pl.col("logp") / pl.col("count")).alias("logp"),
        *(pl.when(pl.Series(null[f])).then(None).otherwise(pl.col(f) / pl.col("count"))
          .cast(pl.Float64).alias(f) for f in grid.fields))
