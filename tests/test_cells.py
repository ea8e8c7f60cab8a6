"""The joint histogram of a run with optional per-token fields (``analysis.cells``): EAFT,
excess and a user's scheme of several fields computed from it, within bounds that hold
the exact per-token numbers, at a size that does not grow with the run."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from infosft.analysis.cells import BIN_HALF, H_BINS, Grid, cells
from infosft.analysis.stats import Targets
from infosft.analysis.store import Run
from infosft.analysis.synthetic import make_run
from infosft.analysis.tune import Settings, tune_view

BOUNDED = ("mean_weight", "share_nonzero", "effective_tokens")
BOTH = ("entropy_top20", "logp_ref")


def focal_ref(logp, logp_ref, entropy_top20, gamma=1.0):
    """A user's scheme of three fields (one token's own, so it has no selection)."""
    return (1 - logp.exp()) ** gamma * logp_ref.exp() * (entropy_top20 / 3)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(exact, binned) Targets of a synthetic run with both optional fields, a few of its
    target tokens without an entropy_top20 (a field may be missing on some tokens)."""
    run = make_run(tmp_path_factory.mktemp("cells") / "run", n_examples=400,
                   target_tokens=100, prompt_tokens=5, part_examples=150, seed=11,
                   fields=BOTH)
    for part in run.part_paths():
        df = pl.read_parquet(part)
        gone = (pl.col("position") % 97 == 13) & pl.col("is_target")
        df.with_columns(pl.when(gone).then(None).otherwise(pl.col("entropy_top20"))
                        .alias("entropy_top20")).write_parquet(part)
    return Targets.from_run(run.path), Targets.binned(run.path, Grid.of(BOTH))


KNOBS = [("sft", {}), ("infosft", {"C": 2.0}), ("profit", {"threshold": 0.5}),
         ("eaft", {}), ("eaft", {"alpha": 0.5}), ("eaft", {"alpha": 3.0}),
         (f"{__name__}:focal_ref", {})]


@pytest.mark.parametrize("scheme, knobs", KNOBS)
def test_bounds_hold_the_exact_numbers(pair, scheme, knobs):
    exact, binned = pair
    assert len(binned) == len(exact) == 40_000
    want, got = exact.summary(scheme, **knobs), binned.summary(scheme, **knobs)
    bounds = binned.bounds(scheme, **knobs)
    for key in BOUNDED:
        lo, hi = bounds[key]
        assert lo - 1e-9 <= want[key] <= hi + 1e-9, (key, want[key], lo, hi)
        assert lo - 1e-9 <= got[key] <= hi + 1e-9, key
        # the means: close (effective tokens sum w^2, where EAFT at alpha 3 reads H^6:
        # ~0.6% off at the means of bins a factor 1.13 wide)
        assert got[key] == pytest.approx(want[key], rel=1e-2 if key == "effective_tokens"
                                         else 3e-3), key
    for band in ("low", "medium", "high"):  # band edges are bin edges: same tokens
        assert got[f"weight_share_{band}"] == pytest.approx(want[f"weight_share_{band}"],
                                                            abs=3e-3)


def test_tokens_without_the_field_weigh_zero_but_count(pair):
    exact, binned = pair
    missing = np.isnan(exact.fields["entropy_top20"])
    assert 300 < missing.sum() < 500
    # SFT counts them (its mean weight is 1 over all tokens); EAFT gives them 0
    assert binned.summary("sft")["mean_weight"] == 1.0
    want = exact.summary("eaft")["share_nonzero"]
    assert want <= 1 - missing.mean() + 1e-12
    assert binned.summary("eaft")["share_nonzero"] == pytest.approx(want, abs=2e-3)


@pytest.mark.parametrize("keep", [0.6, 0.2, 1.0])
def test_excess_over_the_run_keeps_exactly_as_many_tokens(pair, keep):
    """Rho-1's selection over the whole run: the kept count is exact (a cell straddling
    the cut keeps its share); where the kept tokens lie (the q bands) is close."""
    exact, binned = pair
    want, got = (t.summary("excess", keep=keep, per="all") for t in (exact, binned))
    for key in BOUNDED:
        assert got[key] == pytest.approx(want[key], rel=1e-9), key
        assert binned.bounds("excess", keep=keep)[key] == (got[key], got[key])
    for band in ("low", "medium", "high"):
        assert got[f"weight_share_{band}"] == pytest.approx(want[f"weight_share_{band}"],
                                                            abs=0.01)
    w = binned.weights("excess", keep=keep)
    assert ((w > 0) & (w < 1)).sum() <= 1  # one cell straddles the cut, at most


def test_the_grid_is_small_and_its_corners_hold_each_cells_means(pair, tmp_path):
    exact, binned = pair
    grid = binned.grid
    assert grid.fields == BOTH and grid.z_step == 2
    corners = grid.corners(binned.cell_key)
    for name, mean in (("logp", binned.logp), *binned.fields.items()):
        ok = ~np.isnan(mean)
        vals = np.stack([c[name][ok] for c in corners])
        lo, hi = vals.min(axis=0), vals.max(axis=0)
        assert (lo <= mean[ok] + 1e-5).all() and (mean[ok] <= hi + 1e-5).all(), name
    # the null bin of entropy_top20 holds the tokens without it, and only them
    null = grid.unravel(binned.cell_key)[1] == H_BINS + 1
    assert binned.count[null].sum() == np.isnan(exact.fields["entropy_top20"]).sum()
    # a 25x larger run of the same mix: about as many cells, not 25x
    big = Targets.binned(make_run(tmp_path / "big", n_examples=2000, target_tokens=500,
                                  part_examples=1000, seed=12, fields=("entropy_top20",)).path)
    assert len(big) == 1_000_000 and len(big.logp) < 2 * BIN_HALF * 4
    assert big.grid.z_step == 1


def test_tune_view_of_the_histogram_matches_the_tokens(pair):
    exact, binned = pair
    s = Settings(scheme="eaft", C=2.0)
    want, got = tune_view(exact, s), tune_view(binned, s)
    assert list(got["weights"]) == list(want["weights"])  # the same schemes, excess too
    a, b = want["schemes"], got["schemes"]
    np.testing.assert_allclose(b["mean_weight"].to_numpy(), a["mean_weight"].to_numpy(),
                               rtol=3e-3)
    ha, hb = want["hist"], got["hist"]
    for scheme in want["weights"]:  # each scheme's share of the weight per q bin
        assert np.abs(ha[scheme].to_numpy() - hb[scheme].to_numpy()).sum() < 0.02, scheme


@pytest.mark.parametrize("fields", [("entropy_top20",), BOTH])
def test_cells_by_group_add_up_to_the_runs(tmp_path, fields):
    """Each group's cells, summed, are the run's: counts and means (group codes up to 19:
    on the two-field grid, group 10 onwards has keys past 2^31)."""
    run = Run(make_run(tmp_path / "run", n_examples=60, target_tokens=30, seed=4,
                       part_examples=25, fields=fields).path)
    grid = Grid.of(run.token_fields())
    whole = cells(run, grid)
    groups = pl.DataFrame({"example_id": np.arange(60, dtype=np.int32),
                           "group": (np.arange(60) % 20).astype(np.int32)})
    split = cells(run, grid, groups)
    assert split["group"].unique().sort().to_list() == list(range(20))
    summed = split.group_by("key").agg(
        pl.col("count").sum(), (pl.col("logp") * pl.col("count")).sum().alias("s")
    ).sort("key")
    assert summed["key"].to_list() == whole["key"].to_list()
    assert summed["count"].to_list() == whole["count"].to_list()
    np.testing.assert_allclose(summed["s"].to_numpy() / summed["count"].to_numpy(),
                               whole["logp"].to_numpy(), rtol=1e-9)
    assert whole["count"].sum() == 60 * 30
    counted = cells(run, grid, groups, means=False)  # what a breakdown builds
    assert counted.columns == ["group", "key", "count"]
    assert counted.rows() == split.select("group", "key", "count").rows()


# --- the cache: a large run's cells are kept in RUN/cache/ -------------------------------

@pytest.fixture
def cached_run(tmp_path, monkeypatch):
    """A run the cache applies to (its threshold lowered below the run's size)."""
    from infosft.analysis import cache

    monkeypatch.setattr(cache, "CACHE_ABOVE", 100)
    return Run(make_run(tmp_path / "run", n_examples=60, target_tokens=30, seed=5,
                        part_examples=20, fields=("entropy_top20",)).path)


def _no_build(monkeypatch):
    from infosft.analysis import cells as cells_mod

    def fail(*a, **k):
        raise AssertionError("the cells were built from the parts, not read back")
    monkeypatch.setattr(cells_mod, "_build", fail)


def test_cells_are_read_back_until_the_parts_change(cached_run, monkeypatch):
    from infosft.analysis import cells as cells_mod

    grid = Grid.of(cached_run.token_fields())
    groups = pl.DataFrame({"example_id": np.arange(60, dtype=np.int32),
                           "group": (np.arange(60) % 3).astype(np.int32)})
    whole, counted = cells(cached_run, grid), cells(cached_run, grid, groups, means=False)
    assert len(list(cached_run.cache_dir.glob("cells-*.parquet"))) == 2
    build = cells_mod._build
    with monkeypatch.context() as m:
        _no_build(m)
        assert cells(cached_run, grid).equals(whole)
        assert cells(cached_run, grid, groups, means=False).equals(counted)
        with pytest.raises(AssertionError, match="not read back"):  # other groups: a build
            cells(cached_run, grid, groups.with_columns(pl.col("group") % 2), means=False)
    # a part rewritten (all its targets now q = 0.5): the cells follow, the old go
    part = cached_run.part_paths()[0]
    df = pl.read_parquet(part)
    df.with_columns(pl.when(pl.col("is_target")).then(pl.lit(np.log(0.5), pl.Float32))
                    .otherwise(None).alias("logp")).write_parquet(part)
    now = cells(cached_run, grid)
    assert not now.equals(whole)
    assert now.equals(build(cached_run, cached_run.part_paths(), grid, None, True))
    names = [p.name for p in cached_run.cache_dir.glob("cells-*.parquet")]
    assert names == [cells_mod.cache_path(cached_run, grid, None, True).name]


def test_a_damaged_or_unwritable_cache_costs_only_a_rebuild(cached_run, monkeypatch):
    from infosft.analysis import cells as cells_mod

    grid = Grid.of(cached_run.token_fields())
    want = cells(cached_run, grid)
    path = cells_mod.cache_path(cached_run, grid, None, True)
    path.write_bytes(b"not parquet")
    assert cells(cached_run, grid).equals(want)
    assert pl.read_parquet(path).equals(want)  # rewritten whole
    path.unlink()

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr("infosft.analysis.cache.atomic_write", refuse)
    assert cells(cached_run, grid).equals(want)
    assert not path.exists()


def test_small_runs_keep_no_cache(tmp_path):
    run = Run(make_run(tmp_path / "run", n_examples=20, target_tokens=10).path)
    cells(run, Grid.of(run.token_fields()))
    assert not run.cache_dir.exists()  # the bundled sample's folder stays as installed


# --- the rank cells: excess ranked within each example -----------------------------------

@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """A run with logp_ref and a source, in several parts, whose excess ties within an
    example (a third of the targets have logp_ref = logp: excess exactly 0, so the order
    of position decides at the bins' edges) and a few targets without a logp_ref."""
    run = make_run(tmp_path_factory.mktemp("tied") / "run", n_examples=240,
                   target_tokens=53, prompt_tokens=3, part_examples=70, seed=21,
                   fields=("logp_ref",), sources=("web", "code", "math"))
    for part in run.part_paths():
        df = pl.read_parquet(part)
        pos = pl.col("position")
        ref = (pl.when(pos % 31 == 7).then(None).when(pos % 3 == 0).then(pl.col("logp"))
               .otherwise(pl.col("logp_ref")))
        df.with_columns(pl.when(pl.col("is_target")).then(ref).otherwise(None)
                        .alias("logp_ref")).write_parquet(part)
    return Run(run.path)


def u_bins_numpy(tokens: pl.DataFrame) -> np.ndarray:
    """Each target token's bin of its within-example rank share, computed directly: the
    tokens with a finite float32 excess ranked by it (largest first, ties: the earlier
    position), bin = rank * 100 // m; 100 without an excess."""
    ex = tokens["example_id"].to_numpy()
    d = (tokens["logp_ref"].cast(pl.Float32).fill_null(np.nan).to_numpy()
         - tokens["logp"].to_numpy().astype(np.float32))
    out = np.full(len(d), 100, dtype=np.int64)
    for e in np.unique(ex):
        idx = np.flatnonzero((ex == e) & np.isfinite(d))
        order = idx[np.argsort(-d[idx], kind="stable")]
        out[order] = np.arange(len(order)) * 100 // len(order)
    return out


def test_rank_cells_bin_each_token_by_its_rank_share(tied):
    from infosft.analysis.cells import U_BINS, Z_RANK, z_bin

    grid = Grid((), ranked=True)
    assert grid.z_step == Z_RANK and grid.sizes == (2 * BIN_HALF // Z_RANK, U_BINS + 1)
    tokens = tied.collect(tied.scan_tokens().filter(pl.col("is_target"))
                          .select("example_id", "position", "logp", "logp_ref",
                                  z_bin(Z_RANK).cast(pl.Int64).alias("z"))
                          .sort("example_id", "position"))
    assert (tokens["logp_ref"] == tokens["logp"]).sum() > 3000  # the ties are there
    key = tokens["z"].to_numpy() + grid.n_z * u_bins_numpy(tokens)
    want = pl.DataFrame({"key": key, "logp": tokens["logp"].cast(pl.Float64)}).group_by(
        "key").agg(pl.len().cast(pl.Int64).alias("count"), pl.col("logp").mean()).sort("key")
    got = cells(tied, grid)
    assert got["key"].to_list() == want["key"].to_list()
    assert got["count"].to_list() == want["count"].to_list()
    np.testing.assert_allclose(got["logp"].to_numpy(), want["logp"].to_numpy(), rtol=1e-9)


@pytest.mark.parametrize("keep", [0.6, 0.01, 0.37, 1.0, 0.333, 0.777])
def test_excess_within_each_example_from_the_rank_cells(tied, keep):
    """On the 1% grid of keep every number is the tokens' (the kept tokens are the same
    ones; the q bands are bin edges); between, the bounds hold it (the straddling bin's
    tokens kept or not) and the estimate is close."""
    exact, binned = Targets.from_run(tied), Targets.binned(tied)
    want = exact.summary("excess", keep=keep, per="example")
    got = binned.summary("excess", keep=keep, per="example")
    bounds = binned.bounds("excess", keep=keep, per="example")
    on_grid = abs(keep * 100 - round(keep * 100)) < 1e-9
    n = len(exact)
    for key in BOUNDED:
        lo, hi = bounds[key]
        assert lo - 1e-9 <= want[key] <= hi + 1e-9, (key, want[key], lo, hi)
        assert lo - 1e-9 <= got[key] <= hi + 1e-9, key
        if on_grid:
            assert got[key] == pytest.approx(want[key], rel=1e-12) and lo == hi, key
        else:
            scale = n if key == "effective_tokens" else 1  # within 1 / U_BINS of a share
            assert got[key] == pytest.approx(want[key], abs=0.01 * scale), key
    for band in ("low", "medium", "high"):
        assert got[f"weight_share_{band}"] == pytest.approx(
            want[f"weight_share_{band}"], abs=1e-12 if on_grid else 0.01)


def test_tune_view_and_breakdown_of_excess_within_examples_match_the_tokens(tied):
    from infosft.analysis import breakdown

    exact, binned = Targets.from_run(tied), Targets.binned(tied)
    s = Settings(scheme="excess").with_knob("excess", "per", "example") \
        .with_knob("excess", "keep", 0.4)
    want, got = tune_view(exact, s), tune_view(binned, s)
    assert got["schemes"]["scheme"].to_list() == want["schemes"]["scheme"].to_list()
    np.testing.assert_allclose(got["schemes"].drop("scheme").to_numpy(),
                               want["schemes"].drop("scheme").to_numpy(), rtol=3e-3, atol=1e-9)
    row = {r["scheme"]: r for r in got["schemes"].iter_rows(named=True)}["excess"]
    assert row["mean_weight"] == pytest.approx(want["summary"]["mean_weight"], rel=1e-12)
    assert np.abs(got["hist"]["excess"].to_numpy() - want["hist"]["excess"].to_numpy()
                  ).sum() < 0.02
    knobs = {"excess": s.knobs("excess"), "dft": {}}
    labels = breakdown.group_labels(tied, "source")
    a = breakdown.Grouping.build(exact, labels, "source").table(exact, knobs)
    b = breakdown.grouping(tied, "source", targets=binned).table(binned, knobs)
    assert a["group"].to_list() == b["group"].to_list() and a.height == 6
    ex = pl.col("scheme") == "excess"
    for col in ("target_tokens", "mean_weight", "share_nonzero", "effective_tokens",
                "weight_share", "weight_share_low", "weight_share_high"):
        np.testing.assert_allclose(b.filter(ex)[col].to_numpy(), a.filter(ex)[col].to_numpy(),
                                   rtol=1e-12, atol=1e-12, err_msg=col)


def test_each_table_is_built_on_first_use_and_kept(tied, monkeypatch):
    from infosft.analysis import cache

    monkeypatch.setattr(cache, "CACHE_ABOVE", 100)
    binned = Targets.binned(tied)  # logit q alone: summed from q x excess, kept
    binned.summary("infosft")
    assert len(list(tied.cache_dir.glob("cells-*.parquet"))) == 1
    binned.summary("excess")  # over the run: those cells of q x excess, read back
    assert len(list(tied.cache_dir.glob("cells-*.parquet"))) == 1
    want = binned.summary("excess", per="example")  # the rank cells, on first use
    assert len(list(tied.cache_dir.glob("cells-*.parquet"))) == 2
    _no_build(monkeypatch)
    assert Targets.binned(tied).summary("excess", per="example") == want


def test_each_scheme_is_weighed_on_the_cells_of_the_fields_it_reads(tmp_path):
    """A run with both fields: the schemes of q on logit q alone, EAFT on q x H, excess
    on q x excess, a user's scheme of every field on the joint grid, built only when it
    is asked for (the joint grid is the largest: its knob moves cost the most)."""
    run = make_run(tmp_path / "run", n_examples=80, target_tokens=60, seed=2, fields=BOTH)
    binned, exact = Targets.binned(run.path), Targets.from_run(run.path)
    user = f"{__name__}:focal_ref"
    s = Settings(scheme=user)
    assert binned.pending(user) and binned.pending("eaft") and not binned.pending("dft")
    tune_view(binned, Settings())  # the built-ins
    assert not binned.pending("eaft") and not binned.pending("excess")
    assert binned.pending("excess", {"per": "example"})  # the rank cells: not asked yet
    assert binned.pending(user)  # the joint grid: not asked yet
    view = tune_view(binned, s)
    assert binned.over(user).grid.fields == BOTH and not binned.pending(user)
    sizes = {sc: len(binned.over(sc).logp) for sc in ("dft", "eaft", "excess", user)}
    assert sizes["dft"] < sizes["eaft"] < sizes[user] and sizes["excess"] < sizes[user]
    want = tune_view(exact, s)
    np.testing.assert_allclose(view["schemes"]["mean_weight"].to_numpy(),
                               want["schemes"]["mean_weight"].to_numpy(), rtol=3e-3)


def test_doctests():
    import doctest

    from infosft.analysis import cells as cells_mod

    assert doctest.testmod(cells_mod).failed == 0


@pytest.mark.parametrize("fields", [("entropy_top20",), ("logp_ref",), BOTH, ()])
def test_the_cells_of_q_alone_are_summed_from_a_fields_grid(tmp_path, fields):
    """On a run with a field, logit q's cells come from that field's grid (one pass for
    both): the same cells, counts and means as built from the parts, per group too."""
    from infosft.analysis.cells import _build, finer

    run = Run(make_run(tmp_path / "run", n_examples=70, target_tokens=40, seed=6,
                       part_examples=30, fields=fields).path)
    q = Grid.of(())
    assert finer(run, q) == (Grid((fields[0],)) if fields else None)
    groups = pl.DataFrame({"example_id": np.arange(70, dtype=np.int32),
                           "group": (np.arange(70) % 3).astype(np.int32)})
    for g, means in ((None, True), (groups, False), (groups, True)):
        got, want = cells(run, q, g, means=means), _build(run, run.part_paths(), q, g, means)
        assert got.columns == want.columns
        assert got.drop("logp", strict=False).equals(want.drop("logp", strict=False))
        if means:
            np.testing.assert_allclose(got["logp"].to_numpy(), want["logp"].to_numpy(),
                                       rtol=1e-12)
