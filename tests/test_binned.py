"""Statistics from a fine histogram (``Targets.binned``): the same numbers as the exact
per-token ones within bounds that hold them, at a cost that does not grow with the run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from infosft.analysis.stats import BIN_HALF, Targets
from infosft.analysis.synthetic import make_run
from infosft.analysis.tune import Settings, auto_c, tune_view
from tests.helpers import SAMPLE_RUN, app_page

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
    """With the limit at 0 the sample run counts as large: Tune says so, its cards are
    the binned numbers (within 1% of the exact ones), and the breakdown is not loaded."""
    from infosft.app import state

    monkeypatch.setattr(state, "BINNED_ABOVE", 0)
    at = app_page("views/tune.py")
    assert not at.exception
    assert any(c.value == state.BINNED_NOTE for c in at.caption)
    assert any(c.value == state.BINNED_BY for c in at.caption)
    exact = Targets.from_run(SAMPLE_RUN).summary("infosft", P=0.93)
    cards = {m.label: m.value for m in at.metric}
    assert float(cards["Mean weight"]) == pytest.approx(exact["mean_weight"], rel=0.01)
