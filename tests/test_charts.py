"""app.charts: figures a person reads without effort (issue 17, part 5): round ticks on
every axis, every scheme's curve visible where curves coincide, probabilities on log
axes, integer steps, axes only for series with data, and the optimizer's curves."""

from __future__ import annotations

import doctest
import json

import numpy as np
import polars as pl
import pytest

from infosft.analysis.stats import Targets
from infosft.analysis.training import METRIC_SCHEMA
from infosft.analysis.tune import Settings, tune_view
from infosft.app import charts


def _fig(fig) -> dict:
    return json.loads(fig.to_json())


@pytest.fixture(scope="module")
def view():
    rng = np.random.default_rng(0)
    logp = np.log(rng.uniform(1e-6, 1.0, 4000)).astype(np.float32)
    t = Targets.from_frame(pl.DataFrame({"example_id": np.repeat(np.arange(40), 100),
                                         "position": np.tile(np.arange(100), 40),
                                         "logp": logp}).with_columns(
        pl.col("example_id").cast(pl.Int32), pl.col("position").cast(pl.Int32)))
    return {log_x: tune_view(t, Settings(), bins=50, log_x=log_x) for log_x in (False, True)}


def test_doctests():
    assert doctest.testmod(charts).failed == 0


def test_weight_axis_has_round_ticks_and_every_curve_stays_visible(view):
    f = _fig(charts.q_histogram_with_curves(view[False]["hist"], view[False]["curves"],
                                            log_x=False))
    y2 = f["layout"]["yaxis2"]
    assert (y2["tick0"], y2["dtick"], y2["tickmode"]) == (0, 0.2, "linear")  # 0, 0.2, .., 1
    lines = {t["name"]: t["line"] for t in f["data"][1:]}
    sft = next(v for k, v in lines.items() if "SFT" in k and "InfoSFT" not in k)
    profit = next(v for k, v in lines.items() if "ProFit" in k)
    # SFT's w = 1 under ProFit's kept tokens: wider and dashed, ProFit dotted on top
    assert sft["width"] > profit["width"] and sft["dash"] == "dash" and profit["dash"] == "dot"
    fill = f["data"][0]["fillcolor"]
    assert float(fill.rsplit(",", 1)[1].rstrip(")")) >= 0.4  # the histogram is legible


def test_log_q_axis_is_labelled_as_probabilities(view):
    for fig in (charts.q_histogram_with_curves(view[True]["hist"], view[True]["curves"],
                                               log_x=True),
                charts.weight_share_histogram(view[True]["hist"], log_x=True)):
        x = _fig(fig)["layout"]["xaxis"]
        assert x["type"] == "log" and x["ticktext"][-3:] == ["0.01", "0.1", "1"]
        assert "10⁻⁶" in x["ticktext"] and not any("µ" in t for t in x["ticktext"])
        assert x["tickvals"] == pytest.approx([10.0 ** -k for k in range(len(x["tickvals"]) - 1, -1, -1)])


def _metrics(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=METRIC_SCHEMA, strict=False)


def test_training_charts_have_whole_steps_and_no_empty_eval_axis():
    m = _metrics([{"step": s, "loss": 2.0 / s, "learning_rate": 2e-4 * (1 - s / 4),
                   "grad_norm": 1.0 + s, "mean_weight": 0.5, "zero_weight_share": 0.1}
                  for s in (1, 2, 3)])
    f = _fig(charts.loss_curve(m))
    assert len(f["data"]) == 1 and "yaxis2" not in f["layout"]  # no eval point yet
    x = f["layout"]["xaxis"]
    assert x["dtick"] == 1 and x["tickformat"] == "d"
    f = _fig(charts.loss_curve(pl.concat([m, _metrics([{"step": 3, "eval_loss": 1.5}])])))
    assert len(f["data"]) == 2 and f["layout"]["yaxis2"]["rangemode"] == "tozero"
    assert f["layout"]["yaxis2"]["tickmode"] == "auto"  # its own ticks, not synced
    long = _metrics([{"step": s, "loss": 1.0} for s in range(1, 401)])
    assert _fig(charts.loss_curve(long))["layout"]["xaxis"]["dtick"] == 100
    opt = _fig(charts.optimizer_curve(m))
    assert opt["layout"]["yaxis2"]["tickmode"] == "auto"
    by_name = {t["name"]: t["y"] for t in opt["data"]}
    assert by_name["learning rate"] == pytest.approx(m["learning_rate"].to_list())
    assert by_name["gradient norm"] == [2.0, 3.0, 4.0]


def test_kl_axis_starts_at_zero():
    table = pl.DataFrame({"run": ["a"], "scheme": ["sft"], "knobs": [""],
                          "task_delta_nll": [-0.2], "prior_delta_nll": [0.01],
                          "prior_kl": [0.05]})
    assert _fig(charts.tradeoff_scatter(table, "prior_kl"))["layout"]["xaxis"]["rangemode"] \
        == "tozero"
