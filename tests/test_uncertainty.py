"""analysis.uncertainty: bootstrap intervals agree with the normal-theory interval where
that is exact enough, are paired, weigh examples by their tokens, and an evaluation's
intervals hold the evaluation's own numbers."""

from __future__ import annotations

import doctest
import math

import numpy as np
import polars as pl
import pytest

import infosft.analysis.uncertainty as unc
from infosft.analysis import evaluate as ev
from infosft.analysis.accuracy import accuracy_summary
from infosft.analysis.kl import KL_SCHEMA


def test_doctests():
    assert doctest.testmod(unc).failed == 0


def test_mean_interval_matches_the_normal_interval_of_a_large_sample():
    x = np.random.default_rng(1).random(2000) < 0.3
    p = x.mean()
    half = 1.959964 * math.sqrt(p * (1 - p) / x.size)
    low, high = unc.bootstrap_ci(x.astype(float), n_boot=4000)
    assert low == pytest.approx(p - half, abs=0.004)
    assert high == pytest.approx(p + half, abs=0.004)


def test_ratio_interval_weighs_examples_by_their_tokens():
    rng = np.random.default_rng(2)
    sums, n = rng.normal(1.0, 1.0, 300), np.full(300, 4.0)
    low, high = unc.bootstrap_ci(sums, n)  # every example 4 tokens: the mean interval / 4
    mlow, mhigh = unc.bootstrap_ci(sums)
    assert (low, high) == pytest.approx((mlow / 4, mhigh / 4))
    # one long example with a large sum is one draw, not many: the interval is wider
    # than the token-level one that treats its 1000 tokens as independent
    sums2, n2 = np.append(sums, 1000.0), np.append(n, 1000.0)
    low2, high2 = unc.bootstrap_ci(sums2, n2)
    token_se = np.std(np.append(np.repeat(sums / 4, 4), np.ones(1000))) / math.sqrt(n2.sum())
    assert (high2 - low2) > 3 * 2 * 1.96 * token_se


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        unc.bootstrap_ci([])
    with pytest.raises(ValueError):
        unc.bootstrap_ci([1.0, 2.0], [1.0])


def _answers(path, base, tuned):
    pl.DataFrame({"example_id": range(len(base)), "base_correct": base,
                  "tuned_correct": tuned}).write_parquet(path)


def test_accuracy_intervals_hold_the_summary_numbers_and_are_paired(tmp_path):
    rng = np.random.default_rng(3)
    base = rng.random(80) < 0.4
    tuned = base | (rng.random(80) < 0.5)  # only gains: every resample's delta is >= 0
    tuned[:3] = False  # and three losses
    path = tmp_path / ev.ACCURACY
    _answers(path, base.tolist(), tuned.tolist())
    got = unc.accuracy_intervals(path)
    summary = accuracy_summary(pl.read_parquet(path))
    assert got["delta"]["value"] == pytest.approx(summary["delta"])
    assert got["lost_share"]["value"] == pytest.approx(summary["lost"] / summary["n"])
    for iv in got.values():
        assert iv["low"] <= iv["value"] <= iv["high"]
    # paired: the interval of the difference is narrower than that of two independent
    # proportions (their standard errors added in quadrature)
    se_indep = math.sqrt(base.mean() * (1 - base.mean()) / 80
                         + tuned.mean() * (1 - tuned.mean()) / 80)
    assert got["delta"]["high"] - got["delta"]["low"] < 2 * 1.96 * se_indep
    assert unc.accuracy_intervals(tmp_path / "missing.parquet") is None


def test_outcome_uses_answers_where_checked_and_kl_otherwise(tmp_path):
    eval_dir = tmp_path / ev.EVAL
    eval_dir.mkdir()
    _answers(eval_dir / ev.PRIOR_ACCURACY, [True] * 10, [True] * 8 + [False] * 2)
    _answers(eval_dir / ev.ACCURACY, [False] * 4, [True, True, False, False])
    kl = pl.DataFrame({"example_id": [0, 0, 0, 1], "position": [1, 2, 3, 1],
                       "kl": [0.1, 0.2, 0.3, 1.0]}, schema=KL_SCHEMA)
    kl.write_parquet(eval_dir / ev.KL_FILE)
    got = unc.kl_interval(eval_dir)
    assert got["value"] == pytest.approx(1.6 / 4)  # token mean, not the mean of example means
    assert got["low"] == pytest.approx(0.2, abs=1e-6) and got["high"] == pytest.approx(1.0)
    out = unc.outcome_intervals(tmp_path, {"prior_accuracy": {"n": 10}, "accuracy": {"n": 4}})
    assert out["learned_measure"] == "task accuracy change"
    assert out["learned"]["value"] == pytest.approx(0.5)
    assert out["forgot_measure"] == "share of prior answers lost"
    assert out["forgot"]["value"] == pytest.approx(0.2)
    out = unc.outcome_intervals(tmp_path, {"prior_accuracy": None, "accuracy": {"n": 4}})
    assert out["forgot_measure"] == "prior KL(base||tuned)"
    assert out["forgot"]["value"] == pytest.approx(0.4)
