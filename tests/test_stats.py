"""Run statistics against independent numpy computations of the paper formulas."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from infosft.analysis.stats import (example_table, format_summary, load_targets, q_histogram,
                            run_summary, scheme_summary, weights)
from tests.helpers import reference_weights


@pytest.fixture
def logp():
    rng = np.random.default_rng(0)
    q = np.concatenate([rng.uniform(0, 1, 5000), rng.beta(8, 1, 5000), [1.0, 0.999999]])
    return np.log(np.clip(q, 1e-9, 1)).astype(np.float32)


@pytest.mark.parametrize("scheme,knobs", [("sft", {}), ("dft", {}), ("infosft", {"C": 2.0}),
                                          ("profit", {"threshold": 0.1})])
def test_scheme_summary_matches_numpy(logp, scheme, knobs):
    w = reference_weights(logp, scheme, C=2.0)
    q = np.exp(logp.astype(np.float64))
    s = scheme_summary(logp, scheme, **knobs)
    assert s["n_targets"] == len(logp)
    assert s["mean_weight"] == pytest.approx(w.mean(), rel=1e-5)
    assert s["share_nonzero"] == pytest.approx((w > 0).mean(), abs=1e-3)
    assert s["effective_tokens"] == pytest.approx(w.sum() ** 2 / (w ** 2).sum(), rel=1e-4)
    for name, lo, hi in [("low", 0, 0.1), ("medium", 0.1, 0.9), ("high", 0.9, 1.01)]:
        band = (q >= lo) & (q < hi)
        assert s[f"weight_share_{name}"] == pytest.approx(w[band].sum() / w.sum(), abs=1e-4)


def test_infosft_puts_no_weight_on_confident_tokens(logp):
    s = scheme_summary(logp, "infosft", P=0.9)
    assert s["weight_share_high"] == 0.0
    assert scheme_summary(logp, "dft")["weight_share_high"] > 0.3


def test_summary_moves_with_C(logp):
    lo, hi = scheme_summary(logp, "infosft", C=1.0), scheme_summary(logp, "infosft", C=4.0)
    # larger C: zero point P = sigmoid(C) moves up, more tokens keep weight
    assert hi["share_nonzero"] > lo["share_nonzero"]
    assert hi["mean_weight"] != lo["mean_weight"]


@pytest.mark.parametrize("log_x", [False, True])
def test_q_histogram_counts_and_weights(logp, log_x):
    w = weights(logp, "dft")
    h = q_histogram(logp, bins=20, log_x=log_x, w=w)
    assert h.height == 20 and h["count"].sum() == len(logp)
    assert h["weight"].sum() == pytest.approx(float(w.sum()), rel=1e-6)
    if not log_x:
        counts, _ = np.histogram(np.exp(logp.astype(np.float64)), bins=20, range=(0, 1))
        assert np.abs(h["count"].to_numpy() - counts).sum() <= 2  # float edges at bin borders
    assert (h["lo"] < h["hi"]).all()


def test_weights_of_nan_are_zero():
    w = weights(np.array([np.nan, 0.0, -1.0], dtype=np.float32), "sft")
    assert w.tolist() == [0.0, 1.0, 1.0]


def test_run_level_stats(tiny_run):
    targets = load_targets(tiny_run)
    tokens = tiny_run.scan_tokens().collect()
    assert targets.height == tokens["is_target"].sum()
    assert targets["logp"].null_count() == 0
    examples = tiny_run.read_examples()
    table = example_table(targets, examples, "infosft", C=1.5)
    assert table.height == examples.height
    ex = targets.filter(pl.col("example_id") == 3)["logp"].to_numpy()
    w = reference_weights(ex, "infosft", C=1.5)
    row = table.filter(pl.col("example_id") == 3)
    assert row["mean_weight"][0] == pytest.approx(w.mean(), rel=1e-5)
    assert row["zero_weight_share"][0] == pytest.approx((w == 0).mean())
    # examples.parquet summaries agree with the token rows
    assert row["mean_logp"][0] == pytest.approx(ex.mean(), rel=1e-5)
    assert row["n_target"][0] == len(ex)
    s = run_summary(tiny_run.path, "infosft", C=1.5)
    assert s["scheme"]["mean_weight"] == pytest.approx(
        reference_weights(targets["logp"].to_numpy(), "infosft", C=1.5).mean(), rel=1e-5)
    text = format_summary(s)
    assert "infosft" in text and "effective tokens" in text


def test_auto_c_is_the_median_q_clipped():
    """P = the median of target q (the rule the sweeps chose), clipped to [0.6, 0.99]."""
    from infosft.analysis.stats import Targets
    from infosft.analysis.tune import auto_c
    from infosft.weights import c_from_p

    q = np.array([0.1, 0.3, 0.7, 0.75, 0.9, 0.95, 0.99])  # median 0.75
    got = auto_c(Targets(np.zeros(len(q), dtype=np.int32), np.log(q)))
    assert got["P"] == pytest.approx(0.75, rel=1e-6)
    assert got["C"] == pytest.approx(c_from_p(0.75), rel=1e-5)
    low = auto_c(Targets(np.zeros(3, dtype=np.int32), np.log([0.01, 0.2, 0.3])))
    high = auto_c(Targets(np.zeros(3, dtype=np.int32), np.log([0.999, 0.9999, 0.99999])))
    assert (low["P"], high["P"]) == (pytest.approx(0.6), pytest.approx(0.99))
