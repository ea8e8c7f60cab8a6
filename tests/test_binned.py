"""Statistics from histograms (``Targets.binned``, ``ExampleBins``): the same numbers as
the exact per-token ones within bounds that hold them, at a cost that does not grow with
the run."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import torch

from infosft.analysis.example_bins import EX_BINS, ExampleBins, random_draws
from infosft.analysis.cells import BIN_HALF
from infosft.analysis.stats import Targets
from infosft.analysis.synthetic import make_run
from infosft.analysis.tune import Settings, auto_c, tune_view
from tests.helpers import SAMPLE_RUN, app_page, forbid_token_load

KNOBS = [("sft", {}), ("dft", {}), ("infosft", {"C": 2.0}), ("infosft", {"P": 0.99}),
         ("infosft", {"C": 0.3}), ("profit", {}), ("profit", {"threshold": 0.5}),
         ("profit", {"threshold": 0.3, "direction": "lower"}),
         ("profit", {"threshold": [0.2, 0.8], "direction": "middle"})]
BOUNDED = ("mean_weight", "share_nonzero", "effective_tokens")


@pytest.fixture(scope="module", params=["sample", "synthetic"])
def pair(request, tmp_path_factory):
    """(exact, binned) Targets of one run: the bundled sample, and a synthetic run whose
    q mix is unlike it."""
    run = SAMPLE_RUN if request.param == "sample" else make_run(
        tmp_path_factory.mktemp("syn") / "run", n_examples=400, target_tokens=120, seed=3).path
    return Targets.from_run(run), Targets.binned(run)


@pytest.mark.parametrize("scheme, knobs", KNOBS)
def test_the_bounds_hold_the_exact_numbers_and_are_tight(pair, scheme, knobs):
    exact, binned = pair
    assert len(binned) == len(exact)
    want, got, bounds = exact.summary(scheme, **knobs), binned.summary(scheme, **knobs), \
        binned.bounds(scheme, **knobs)
    for key in BOUNDED:
        lo, hi = bounds[key]
        assert lo - 1e-9 <= want[key] <= hi + 1e-9, (key, want[key], lo, hi)
        assert lo - 1e-9 <= got[key] <= hi + 1e-9, key
        assert hi - lo <= 0.01 * max(abs(want[key]), 1e-12), (key, lo, hi)  # under 1%
    for band in ("low", "medium", "high"):  # band edges are bin edges: same tokens
        assert got[f"weight_share_{band}"] == pytest.approx(want[f"weight_share_{band}"],
                                                            abs=2e-3)


def test_random_profit_is_its_expectation(pair):
    exact, binned = pair
    tau, n = 0.3, len(exact)
    got = binned.summary("profit", threshold=tau, direction="random")
    assert got["mean_weight"] == pytest.approx(1 - tau) == got["share_nonzero"]
    assert got["effective_tokens"] == pytest.approx((1 - tau) * n)
    drawn = exact.summary("profit", threshold=tau, direction="random")["mean_weight"]
    assert abs(drawn - (1 - tau)) < 5 * math.sqrt(tau * (1 - tau) / n)  # one draw of it


def test_scheme_free_facts_histograms_and_auto_c_match(pair):
    exact, binned = pair
    fe, fb = exact.q_facts(), binned.q_facts()
    for key in ("share_q_above_0.9", "share_q_below_0.1"):
        assert fb[key] == pytest.approx(fe[key], abs=1e-12)
    for key in ("mean_q", "median_q", "mean_nll"):
        assert fb[key] == pytest.approx(fe[key], rel=2e-3, abs=1e-4)
    s = Settings(scheme="infosft", C=2.0)
    he, hb = (tune_view(t, s, bins=50)["hist"] for t in (exact, binned))
    assert hb["count"].sum() == he["count"].sum() == len(exact)
    # a fine bin straddling a display edge lands on one side: a few tokens move, no more
    assert np.abs(hb["count"].to_numpy() - he["count"].to_numpy()).sum() <= 0.01 * len(exact)
    assert auto_c(binned)["P"] == pytest.approx(auto_c(exact)["P"], abs=2e-3)


def test_the_histogram_does_not_grow_with_the_run(tmp_path):
    small = Targets.binned(make_run(tmp_path / "s", n_examples=50, target_tokens=100).path)
    large = Targets.binned(make_run(tmp_path / "l", n_examples=2000, target_tokens=100).path)
    assert len(large) == 40 * len(small) == 200_000
    assert len(large.logp) <= 2 * BIN_HALF and len(large.logp) < 3 * len(small.logp)
    with pytest.raises(Exception, match="per-example numbers need the run's tokens"):
        large.per_example(large.weights("dft"))


def test_tune_works_on_the_histogram_above_the_limit(monkeypatch):
    """With the limits at 0 the sample run counts as large: Tune says so, its cards are
    the binned numbers (within 1% of the exact ones), EAFT is offered, and the breakdown
    by task comes from the histogram too (no token is loaded)."""
    from infosft.analysis import breakdown as bd

    state = _binned_app(monkeypatch)
    at = app_page("views/tune.py")
    assert not at.exception and not at.error
    assert any(c.value == state.BINNED_NOTE for c in at.caption)
    monkeypatch.undo()
    exact = Targets.from_run(SAMPLE_RUN)
    cards = {m.label: m.value for m in at.metric}
    assert float(cards["Mean weight"]) == pytest.approx(
        exact.summary("infosft", P=0.93)["mean_weight"], rel=0.01)
    assert at.selectbox(key="tune_by").value == "task"
    want = bd.breakdown(SAMPLE_RUN, "task", "infosft", P=0.93)
    shown = next(d.value for d in at.dataframe if "Emphasis" in d.value.columns)
    assert shown["Group"].tolist() == want["group"].to_list()
    assert shown["Target tokens"].tolist() == want["target_tokens"].to_list()
    assert shown["Weight (%)"].tolist() == pytest.approx(
        (want["weight_share"] * 100).to_list(), abs=0.25)
    state = _binned_app(monkeypatch)
    at.session_state["settings"] = Settings(scheme="eaft")
    at.run()
    assert not at.exception and not at.error
    assert float({m.label: m.value for m in at.metric}["Mean weight"]) == pytest.approx(
        exact.summary("eaft")["mean_weight"], rel=0.01)


def test_tune_weighs_excess_within_examples_on_the_rank_cells(monkeypatch, tmp_path):
    """Excess ranked within each example on a binned run: Tune stays on the histograms
    (no token loaded), and its cards and by-source table are the tokens' numbers."""
    from infosft.analysis import breakdown

    run = make_run(tmp_path / "run", n_examples=60, target_tokens=50, seed=8,
                   fields=("entropy_top20", "logp_ref"), sources=("a", "b")).path
    exact = Targets.from_run(run)
    want = exact.summary("excess", per="example", keep=0.35)
    table = breakdown.Grouping.build(exact, breakdown.group_labels(run, "source"), "source"
                                     ).table(exact, {"excess": want["knobs"]})
    state = _binned_app(monkeypatch)
    chosen = Settings(scheme="excess", extra=(("excess", "per", "example"),
                                              ("excess", "keep", 0.35)))
    at = app_page("views/tune.py", run_path=str(run), settings=chosen)
    assert not at.exception and not at.error
    assert any(c.value == state.BINNED_NOTE for c in at.caption)
    cards = {m.label: m.value for m in at.metric}
    assert cards["Effective tokens"].startswith(f"{want['effective_tokens']:,.0f} (")
    assert cards["Mean weight"] == f"{want['mean_weight']:.4f}"
    shown = next(d.value for d in at.dataframe if "Group" in d.value.columns)
    assert list(shown["Group"]) == table["group"].to_list()
    np.testing.assert_allclose(shown["Mean weight"].to_numpy(dtype=float),
                               table["mean_weight"].to_numpy(), atol=5e-5)  # 4 decimals


# ---------------------------------------------------------------- per example, at scale

EX_KNOBS = KNOBS + [("profit", {"threshold": 0.3, "direction": "random", "seed": 4}),
                    ("eaft", {}), ("eaft", {"alpha": 0.3}), ("eaft", {"alpha": 4.0}),
                    ("excess", {}), ("excess", {"keep": 0.25}),
                    ("excess", {"per": "example"}), ("excess", {"per": "example", "keep": 0.333})]


@pytest.fixture(scope="module")
def ex_pair(tmp_path_factory):
    """(exact, per-example bins) of a synthetic run in several parts, with both optional
    fields (so EAFT and excess are offered where the tokens are)."""
    run = make_run(tmp_path_factory.mktemp("ex") / "run", n_examples=300, target_tokens=80,
                   prompt_tokens=5, part_examples=70, seed=5,
                   fields=("entropy_top20", "logp_ref")).path
    return run, Targets.from_run(run), ExampleBins.from_run(run)


@pytest.mark.parametrize("scheme, knobs", EX_KNOBS)
def test_per_example_bins_bound_the_exact_numbers(ex_pair, scheme, knobs):
    """Each example's mean weight and share w = 0 from its coarse histogram: the exact
    ones lie within the bounds (a weight's change across one bin; a step scheme: the
    straddling bin's tokens), and so does the estimate; ProFit random is exact."""
    _, exact, bins = ex_pair
    want = exact.per_example(exact.weights(scheme, **knobs))
    got = bins.per_example(scheme, **knobs)
    j = want.join(got, on="example_id", suffix="_b")
    assert j.height == want.height == got.height == 300
    for k in ("mean_weight", "zero_weight_share"):
        w, e = j[k].to_numpy(), j[f"{k}_b"].to_numpy()
        lo, hi = j[f"{k}_lo"].to_numpy(), j[f"{k}_hi"].to_numpy()
        assert (lo - 1e-6 <= w).all() and (w <= hi + 1e-6).all(), k
        assert (lo - 1e-9 <= e).all() and (e <= hi + 1e-9).all(), k
        assert np.abs(w - e).max() <= bins.bound(scheme, **knobs)[k] + 1e-6
        if Targets._random(scheme, knobs) or knobs.get("per") == "example":
            np.testing.assert_allclose(e, w, atol=1e-12)  # ceil(keep * m) of m: exact
    if scheme in ("sft", "dft") or (scheme, knobs) == ("infosft", {"C": 2.0}):
        assert bins.bound(scheme, **knobs)["mean_weight"] < 0.03  # bins of 0.27 logit q
    if (scheme, knobs) == ("eaft", {}):  # bins of a factor 1.28 in H: w at most ~0.25 apart
        assert bins.bound(scheme, **knobs)["mean_weight"] < 0.1
    if (scheme, knobs) == ("excess", {}):  # the tokens of one 0.05-nat bin, at most
        assert bins.bound(scheme, **knobs)["mean_weight"] < 0.1


def test_per_example_bins_are_compact_and_refuse_token_schemes(ex_pair, tmp_path):
    _, exact, bins = ex_pair
    assert len(bins) == len(exact) and bins.bins.max() < EX_BINS
    # beside the fixed fine histograms: ~3 bytes an occupied bin (of q, H and the
    # excess), under 2.5 a token at 80
    assert bins.nbytes - sum(a.fine_count.nbytes for a in (bins.q, bins.h, bins.d)) \
        < 2.5 * exact.logp.nbytes
    # a run without entropy_top20 has no H axis, and EAFT is not offered at all
    bare = ExampleBins.from_run(make_run(tmp_path / "bare", n_examples=20, target_tokens=10).path)
    assert bare.h is None and "entropy_top20" in bare.missing("eaft", short=True)
    for scheme in (f"{__name__}:of_q_and_h",):
        assert bins.per_example(scheme) is None and bins.bound(scheme) is None
        assert "needs the run's tokens" in bins.missing(scheme, short=True)
        table = bins.example_table(exact_examples(ex_pair), scheme)
        assert table["mean_weight"].null_count() == table.height


def by_example_parity(logp, example):
    """A user's selection by example (reads ``example``): no histogram carries it."""
    return (example % 2 == 0).float() * torch.ones_like(logp)


def of_q_and_h(logp, entropy_top20):
    """A user's scheme of two fields: its per-example numbers need the tokens."""
    return logp.exp() * entropy_top20


def exact_examples(ex_pair):
    from infosft.analysis.store import Run

    return Run(ex_pair[0]).read_examples()


def test_the_runs_draws_come_back_in_pieces():
    import torch

    gen = torch.Generator().manual_seed(7)
    whole = torch.rand(10_000, generator=gen).numpy()
    np.testing.assert_array_equal(random_draws(7, 1234, 5678), whole[1234:5678])


def test_token_view_at_scale_reads_one_example(ex_pair, monkeypatch):
    """A large run's token view: the q schemes and EAFT exact from the example's own
    tokens, ProFit random the run's own draws, excess (per=all) against the run's cut
    (exact but for the tokens within 0.01 nats of it, which show a share), and all
    tokens never loaded."""
    from infosft.analysis.store import Run
    from infosft.analysis.view import ranked_here, token_view

    path, exact, bins = ex_pair
    run = Run(path)
    s = Settings(C=2.0, direction="random", threshold=0.3, seed=2)
    want = token_view(run, 123, exact, run.read_vocab(), s)
    forbid_token_load(monkeypatch)
    got = token_view(run, 123, bins, run.read_vocab(), s)
    assert got.columns == want.columns and "w_excess" in got.columns
    for sc in ("sft", "dft", "infosft", "profit", "eaft"):
        np.testing.assert_array_equal(got[f"w_{sc}"].to_numpy(), want[f"w_{sc}"].to_numpy())
    assert ranked_here(["sft", "excess", "eaft"], s, bins) == []  # the run's cut
    assert ranked_here(["sft", "excess", "eaft"], s) == ["excess"]  # without the bins
    assert ranked_here(["excess"], s.with_knob("excess", "per", "example")) == []
    g, w = (v.filter(pl.col("is_target"))["w_excess"].to_numpy() for v in (got, want))
    whole = (g == 0) | (g == 1)
    np.testing.assert_array_equal(g[whole], w[whole])
    # over the whole run: every token against the run's cut, the share only in the one
    # fine bin (0.01 nats) that straddles it, and that share is the exact one
    for keep in (0.6, 0.25):
        g = bins.excess_weights(exact.fields["logp_ref"] - exact.logp, keep=keep)
        w = exact.weights("excess", keep=keep)
        part = (g > 0) & (g < 1)
        np.testing.assert_array_equal(g[~part], w[~part])
        d = (exact.fields["logp_ref"] - exact.logp)[part].astype(np.float64)
        assert 0 < part.sum() < 0.02 * len(g) and d.max() - d.min() < 0.01
        assert w[part].mean() == pytest.approx(float(g[part][0]), abs=1e-6)


def _binned_app(monkeypatch):
    from infosft.app import state

    monkeypatch.setattr(state, "BINNED_ABOVE", 0)
    monkeypatch.setattr(state, "TOKENS_UP_TO", 0)
    forbid_token_load(monkeypatch)
    return state


def test_examples_page_at_scale(monkeypatch):
    """Above the limit the Examples page works on the per-example bins: no token load,
    a caption with the bound, and mean weights within it of the exact ones."""
    exact = Targets.from_run(SAMPLE_RUN)
    want = exact.per_example(exact.weights("infosft", C=2.0))
    _binned_app(monkeypatch)
    at = app_page("views/examples.py", settings=Settings(C=2.0))
    assert not at.exception and not at.error
    cap = next(c.value for c in at.caption if c.value.startswith("This run is large"))
    bound = float(cap.split("within ±")[1].split(" ")[0])
    assert 0 < bound < 0.05
    df = at.dataframe[0].value
    got = pl.from_pandas(df[["example_id", "mean_weight"]]).cast({"example_id": pl.Int32})
    j = want.join(got, on="example_id", suffix="_b")
    assert j.height == want.height
    assert (j["mean_weight"] - j["mean_weight_b"]).abs().max() <= bound + 1e-3
    at.session_state["settings"] = Settings(scheme="eaft")  # of H alone: its own histogram
    at.run()
    assert not at.exception and not at.error
    cap = next(c.value for c in at.caption if c.value.startswith("This run is large"))
    bound = float(cap.split("within ±")[1].split(" ")[0])
    monkeypatch.undo()
    want = exact.per_example(exact.weights("eaft"))
    df = at.dataframe[0].value
    got = pl.from_pandas(df[["example_id", "mean_weight"]]).cast({"example_id": pl.Int32})
    j = want.join(got, on="example_id", suffix="_b")
    assert j.height == want.height and 0 < bound < 0.1
    assert (j["mean_weight"] - j["mean_weight_b"]).abs().max() <= bound + 1e-3


def test_token_view_and_export_pages_at_scale(monkeypatch):
    state = _binned_app(monkeypatch)
    at = app_page("views/token_view.py", settings=Settings(direction="random"))
    assert not at.exception and not at.error
    assert at.metric and at.get("html")
    at = app_page("views/export.py")
    assert not at.exception and not at.error
    at.text_input(key="export_where").set_value("weight_mass<=0.3").run()
    assert not at.exception and not at.error
    assert any(c.value.startswith("This run is large, so the count") for c in at.caption)
    n = int(next(m.value for m in at.markdown if "examples match" in m.value)
            .strip("*").split(" ")[0])
    at.text_input(key="export_where").set_value("n_target>=5").run()  # no weights needed
    assert not at.exception and not at.error
    assert not any(c.value.startswith("This run is large, so the count") for c in at.caption)
    at.session_state["settings"] = Settings(scheme="excess")
    at.run()  # the sample has no logp_ref: excess is not offered, nothing breaks
    assert not at.exception
    monkeypatch.undo()  # the exact count, from the tokens
    assert state.TOKENS_UP_TO > 0
    exact = Targets.from_run(SAMPLE_RUN)
    mean = exact.per_example(exact.weights("infosft", **Settings().knobs()))["mean_weight"]
    # an example may cross the cut only if its exact number is within the bound of it
    assert abs(n - int((mean <= 0.3).sum())) <= int(((mean - 0.3).abs() <= 0.1).sum())


def test_pages_at_scale_weigh_excess_from_the_histograms(ex_pair, monkeypatch):
    """A large run with logp_ref: the token view weighs excess (per=all) against the
    run's cut, not within the example; the Examples page shows excess's columns from the
    excess histograms (within the bound it states), ProFit random's and excess within
    each example's exact."""
    path, exact, bins = ex_pair
    state = _binned_app(monkeypatch)
    at = app_page("views/token_view.py", run_path=str(path), settings=Settings(C=2.0))
    assert not at.exception and not at.error
    assert not any("among themselves" in c.value for c in at.caption)
    w = bins.excess_weights(exact.fields["logp_ref"] - exact.logp)[exact.example_id == 0]
    assert {m.label: m.value for m in at.metric}["Mean w Excess loss (Rho-1)"] \
        == f"{w.mean():.3f}"
    at = app_page("views/examples.py", run_path=str(path), settings=Settings(scheme="excess"))
    assert not at.exception and not at.error
    cap = next(c.value for c in at.caption if c.value.startswith("This run is large"))
    bound = float(cap.split("within ±")[1].split(" ")[0])
    want = exact.per_example(exact.weights("excess"))["mean_weight"].to_numpy()
    got = at.dataframe[0].value.sort_values("example_id")["mean_weight"].to_numpy()
    assert 0 < bound < 0.1 and np.abs(got - want).max() <= bound + 1e-3
    for scheme, knobs in (("profit", {"threshold": 0.4, "direction": "random"}),
                          ("excess", {"per": "example", "keep": 0.45})):
        chosen = Settings(scheme=scheme, **({"direction": "random", "threshold": 0.4}
                                            if scheme == "profit" else {}))
        for k, v in knobs.items() if scheme == "excess" else ():
            chosen = chosen.with_knob("excess", k, v)
        at.session_state["settings"] = chosen
        at.run()
        assert not at.exception and any(c.value == state.EXAMPLES_EXACT for c in at.caption)
        want = exact.per_example(exact.weights(scheme, **knobs))
        got = at.dataframe[0].value.sort_values("example_id")["mean_weight"].to_numpy()
        np.testing.assert_allclose(got, want["mean_weight"].to_numpy(), atol=1e-12)


def test_example_bins_use_the_runs_fine_grid(ex_pair):
    from infosft.analysis.cells import Grid, cells, z_bin
    from infosft.analysis.store import Run

    path, _, bins = ex_pair
    fine = cells(Run(path), Grid.of(()))  # the grid of a run without optional fields
    np.testing.assert_array_equal(np.flatnonzero(bins.fine_count), fine["key"].to_numpy())
    np.testing.assert_array_equal(bins.fine_count[fine["key"].to_numpy()], fine["count"])
    lp = pl.Series("logp", [-50, -np.inf, 0, 1e-7, np.nan, None], dtype=pl.Float32)
    got = pl.DataFrame([lp]).select(z_bin())["logp"].to_list()  # beyond the grid
    assert got == [0, 0, 2 * BIN_HALF - 1, 2 * BIN_HALF - 1, 0, None]


def test_example_bins_of_parts_out_of_example_order(tmp_path):
    """Parts of several scoring ranks hold examples out of order: the bins come out in
    example order all the same (offsets for ProFit random's draws included)."""
    run = make_run(tmp_path / "run", n_examples=50, target_tokens=40, prompt_tokens=3,
                   part_examples=12, seed=2)
    run.part_path(0, 0).rename(run.part_path(1, 0))  # examples 0-11 now read last
    exact, bins = Targets.from_run(run.path), ExampleBins.from_run(run.path)
    np.testing.assert_array_equal(bins.ex_ids, exact.ex_ids)
    assert [bins.offset(e) for e in (0, 12, 49)] == [0, 12 * 40, 49 * 40]
    for scheme, knobs in (("dft", {}), ("profit", {"direction": "random", "threshold": 0.5})):
        want = exact.per_example(exact.weights(scheme, **knobs))
        got = bins.per_example(scheme, **knobs)
        assert (want["mean_weight"] >= got["mean_weight_lo"] - 1e-6).all()
        assert (want["mean_weight"] <= got["mean_weight_hi"] + 1e-6).all()


def test_a_logp_rounded_above_zero_is_binned_as_q_one(tmp_path):
    """A target whose logp rounds to just above 0 (q = 1 to float precision) falls in the
    top bin, as the schemes read it (clamped to 0), not in the lowest (it used to give
    NaN there and land at q ~ 0)."""
    import polars as pl

    from infosft.analysis.store import atomic_write_parquet
    from infosft.analysis.synthetic import make_run

    run = make_run(tmp_path / "r", n_examples=4, prompt_tokens=2, target_tokens=10)
    part = run.part_paths()[0]
    df = pl.read_parquet(part)
    first = df["is_target"].arg_max()
    df = df.with_columns(pl.when(pl.int_range(pl.len()) == first).then(pl.lit(1e-7))
                         .otherwise(pl.col("logp")).cast(pl.Float32).alias("logp"))
    atomic_write_parquet(df, part)
    exact, binned = Targets.from_run(run.path), Targets.binned(run.path)
    assert exact.summary("dft")["weight_share_high"] == pytest.approx(
        binned.summary("dft")["weight_share_high"], abs=1e-3)
    assert binned.logp.min() > -30  # nothing at the bottom of the grid


def test_per_example_pages_load_the_tokens_only_for_a_scheme_their_bins_lack(
        ex_pair, monkeypatch):
    """Above BINNED_ABOVE the Examples page works on the bins for EAFT and excess (no
    token loaded) and loads the tokens for a user's scheme of two fields, which no
    histogram carries, while the run is under TOKENS_UP_TO: its columns are then the
    exact ones."""
    from infosft.app import state

    path, exact, _ = ex_pair
    monkeypatch.setattr(state, "BINNED_ABOVE", 0)
    with monkeypatch.context() as m:
        forbid_token_load(m)
        for scheme in ("eaft", "excess"):
            at = app_page("views/examples.py", run_path=str(path),
                          settings=Settings(scheme=scheme))
            assert not at.exception and not at.error
            assert any(c.value.startswith("This run is large") for c in at.caption)
    user = f"{__name__}:of_q_and_h"
    at = app_page("views/examples.py", run_path=str(path), settings=Settings(scheme=user))
    assert not at.exception and not at.error
    assert not any(c.value.startswith(("This run is large", "of_q_and_h")) for c in at.caption)
    want = exact.per_example(exact.weights(user))
    got = at.dataframe[0].value.sort_values("example_id")["mean_weight"].to_numpy()
    np.testing.assert_allclose(got, want["mean_weight"].to_numpy(), atol=1e-9)


# --- infosft stats on the cells: --binned, --exact, and by the run's size -----------------

@pytest.fixture(scope="module")
def fielded_run(tmp_path_factory):
    """A run with both optional fields and a mixture of sources."""
    return make_run(tmp_path_factory.mktemp("stats") / "run", n_examples=300,
                    target_tokens=60, seed=11, fields=("entropy_top20", "logp_ref"),
                    sources=("web", "code", "math")).path


@pytest.mark.parametrize("scheme, knobs", [
    ("infosft", ["--C", "1.5"]), ("eaft", []), ("excess", ["--keep", "0.3"]), ("profit", []),
    ("excess", ["--per", "example", "--keep", "0.55"])])
def test_stats_binned_matches_exact(capsys, fielded_run, scheme, knobs):
    from tests.helpers import cli

    got = {}
    for how in ("--exact", "--binned"):
        rc, out, err = cli(capsys, "stats", fielded_run, "--scheme", scheme, *knobs, how,
                           "--json")
        assert rc == 0, err
        got[how] = json.loads(out)
    exact, binned = got["--exact"], got["--binned"]
    assert (exact["binned"], binned["binned"]) == (False, True)
    for k in ("mean_weight", "share_nonzero", "effective_share"):
        assert binned["scheme"][k] == pytest.approx(exact["scheme"][k], rel=0.01, abs=1e-3), k
    assert binned["q"]["mean_q"] == pytest.approx(exact["q"]["mean_q"], abs=2e-3)
    assert binned["q"]["share_q_above_0.9"] == pytest.approx(exact["q"]["share_q_above_0.9"],
                                                            abs=2e-3)


def test_stats_picks_the_cells_above_exact_up_to_and_says_so(capsys, fielded_run,
                                                              monkeypatch):
    from infosft.analysis import stats
    from infosft.analysis.stats import BINNED_LINE
    from tests.helpers import cli, error_line

    rc, out, _ = cli(capsys, "stats", fielded_run)
    assert rc == 0 and BINNED_LINE not in out  # 18k target tokens: exact by default
    monkeypatch.setattr(stats, "EXACT_UP_TO", 10_000)
    rc, out, _ = cli(capsys, "stats", fielded_run)
    assert rc == 0 and out.strip().endswith(BINNED_LINE)
    rc, out, _ = cli(capsys, "stats", fielded_run, "--by", "source", "--json")
    assert rc == 0 and json.loads(out)["binned"] is True
    rc, out, _ = cli(capsys, "stats", fielded_run, "--by", "source")
    assert BINNED_LINE in out and "math" in out
    # a user's selection over each example has no histogram form: one line, and the
    # way out
    user = f"{__name__}:by_example_parity"
    rc, _, err = cli(capsys, "stats", fielded_run, "--scheme", user)
    assert rc == 2
    line = error_line(err)
    assert str(fielded_run) in line and line.endswith("--exact loads every token")
    rc, _, err = cli(capsys, "stats", fielded_run, "--scheme", user, "--exact")
    assert rc == 0, err
    rc, _, err = cli(capsys, "stats", fielded_run, "--exact", "--binned")
    assert rc == 2 and "not allowed with" in err


def test_stats_by_column_binned_matches_exact(capsys, fielded_run):
    from tests.helpers import cli

    rows = {}
    for how in ("--exact", "--binned"):
        rc, out, err = cli(capsys, "stats", fielded_run, "--by", "source", "--scheme", "eaft",
                           how, "--json")
        assert rc == 0, err
        rows[how] = {(r["group"], r["scheme"]): r for r in json.loads(out)["rows"]}
    assert rows["--exact"].keys() == rows["--binned"].keys()
    assert {g for g, _ in rows["--exact"]} == {"web", "code", "math"}
    for key, want in rows["--exact"].items():
        got = rows["--binned"][key]
        assert got["target_tokens"] == want["target_tokens"], key
        assert got["weight_share"] == pytest.approx(want["weight_share"], abs=0.01), key
        assert got["mean_weight"] == pytest.approx(want["mean_weight"], rel=0.01, abs=1e-3), key


@pytest.mark.parametrize("fields", [(), ("entropy_top20",)])
def test_per_example_bins_are_read_back_from_the_run_cache(tmp_path, monkeypatch, fields):
    from infosft.analysis import cache

    monkeypatch.setattr(cache, "CACHE_ABOVE", 100)
    run = make_run(tmp_path / "run", n_examples=40, target_tokens=25, seed=2,
                   part_examples=15, fields=fields)
    built = ExampleBins.from_run(run.path)
    [file] = run.cache_dir.glob("example-bins-*.npz")
    with monkeypatch.context() as m:
        m.setattr(ExampleBins, "_build", classmethod(lambda cls, r: pytest.fail("rebuilt")))
        back = ExampleBins.from_run(run.path)
    assert back.run_fields == built.run_fields == tuple(fields)
    assert (back.h is None) == (built.h is None) == (not fields)
    for scheme in ["dft", "infosft", *(["eaft"] if fields else [])]:
        assert back.per_example(scheme).equals(built.per_example(scheme)), scheme
    file.write_bytes(b"\x00" * 10)  # damaged: rebuilt, and rewritten whole
    assert ExampleBins.from_run(run.path).per_example("dft").equals(built.per_example("dft"))
    assert np.load(file)["ex_ids"].tolist() == list(range(40))


def test_auto_c_follows_what_the_page_summarizes(monkeypatch):
    """The suggested C is cached per run and per kind of Targets: the cells' median
    above BINNED_ABOVE, the tokens' below, whichever was asked first in the process."""
    binned = auto_c(Targets.binned(SAMPLE_RUN))["C"]
    exact = auto_c(Targets.from_run(SAMPLE_RUN))["C"]
    assert abs(binned - exact) > 1e-4  # the two medians differ: the test can tell them apart
    for patched, want in ((True, binned), (False, exact)):
        with monkeypatch.context() as m:
            if patched:
                _binned_app(m)
            at = app_page("views/tune.py")
            at.button(key="auto_c").click().run()
            assert not at.exception
            assert at.slider(key="tune_C").value == pytest.approx(want, abs=1e-4)
