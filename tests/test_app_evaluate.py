"""The Evaluate page under AppTest on prepared evaluations (table, trade-off scatter data,
Delta view), the Delta HTML, and evaluation jobs' status (``app.jobs``)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import polars as pl
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from infosft.analysis.delta import example_delta, example_deltas  # noqa: E402
from infosft.analysis.evaluate import (EVAL, REPORT, EvalConfig, evaluate_run, read_reports,  # noqa: E402
                               report_table)
from infosft.analysis.store import Run  # noqa: E402
from infosft.app import jobs  # noqa: E402
from infosft.app.render_delta import delta_colors, delta_html  # noqa: E402
from tests.helpers import CODE_ROWS, MATH_ROWS, make_training_run, perturbed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAIN = str(ROOT / "app" / "main.py")


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model_dir, tokenizer) -> Path:
    """A workspace with two evaluated training runs: ``alpha`` (evaluated for real) and
    ``beta`` (alpha's evaluation with other numbers and scheme, for a second point)."""
    ws = tmp_path_factory.mktemp("ws")
    trainings = ws / "trainings"
    alpha = make_training_run(trainings / "alpha", perturbed(tiny_model_dir, 0.05, "layers.1"),
                              tokenizer, base=str(tiny_model_dir),
                              eval_rows=MATH_ROWS[:2] + CODE_ROWS[:1])
    evaluate_run(alpha, EvalConfig(limit=3, accuracy_limit=2, max_new_tokens=4), progress=False)
    beta = make_training_run(trainings / "beta", None, None, base=str(tiny_model_dir),
                             eval_rows=MATH_ROWS[:2], scheme="profit", C=None, threshold=0.1,
                             direction="higher")
    shutil.copytree(alpha / "final", beta / "final")
    shutil.copytree(alpha / EVAL, beta / EVAL)
    rep = json.loads((beta / EVAL / REPORT).read_text())
    rep.update(name="beta", run=str(beta), training={**rep["training"], "scheme": "profit",
                                                     "C": None, "threshold": 0.1,
                                                     "direction": "higher"})
    rep["learned"]["delta_nll"] = -0.5
    rep["forgot"]["mean_kl"] = 0.25
    (beta / EVAL / REPORT).write_text(json.dumps(rep))
    return ws


@pytest.fixture(autouse=True)
def workspace_env(ws, monkeypatch):
    monkeypatch.setenv("INFOSFT_WORKSPACE", str(ws))


def page(**state) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    at.switch_page("views/evaluate.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def runs(ws: Path) -> list[Path]:
    return [ws / "trainings" / "alpha", ws / "trainings" / "beta"]


def test_table_and_scatter_show_the_reports(ws):
    at = page()
    assert at.title[0].value == "Evaluate"
    want = report_table(read_reports(runs(ws)))
    shown = at.dataframe[0].value  # the runs table comes first
    assert list(shown["run"]) == ["alpha", "beta"]
    assert list(shown["task_delta_nll"]) == pytest.approx(want["task_delta_nll"].to_list())
    assert list(shown["prior_kl"]) == pytest.approx(want["prior_kl"].to_list())
    assert shown["knobs"][1] == "threshold=0.1, direction=higher, online"
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    points = {(t["text"][0], t["x"][0], t["y"][0]) for t in fig["data"] if t.get("text")}
    assert points == {(r, x, -y) for r, x, y in
                      want.select("run", "prior_kl", "task_delta_nll").rows()}
    at.radio(key="ev_x").set_value("prior_delta_nll").run()
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    xs = sorted(t["x"][0] for t in fig["data"] if t.get("text"))
    assert xs == pytest.approx(sorted(want["prior_delta_nll"].to_list()))


def test_delta_view_matches_analysis(ws):
    at = page()
    alpha = ws / "trainings" / "alpha"
    assert at.selectbox(key="ev_run").value == str(alpha)
    for which in ("task", "prior"):
        at.radio(key="ev_set").set_value(which).run()
        base, tuned = Run(alpha / EVAL / f"base-{which}"), Run(alpha / EVAL / f"tuned-{which}")
        first = example_deltas(base, tuned)["example_id"][0]
        assert at.selectbox(key="ev_example").value == first
        view = example_delta(base, tuned, first)
        tgt = view.filter(pl.col("is_target"))
        metrics = {m.label: m.value for m in at.metric}
        assert metrics["Mean Δlogp"] == f"{tgt['delta'].mean():+.4f}"
        assert (metrics["Mean KL"] == "–") == (which == "task")
        html = " ".join(h.proto.body for h in at.get("html"))
        assert html.count('class="t"') == tgt.height and "Δlogp" in html
        assert not at.exception and not at.error


def test_open_in_other_pages_sets_the_active_run(ws):
    at = page()
    at.button(key="ev_activate").click().run()
    assert at.session_state["run_path"] == str(ws / "trainings" / "alpha" / EVAL / "tuned-task")


def test_launch_form_preselects_runs_from_the_train_page(ws):
    alpha = str(ws / "trainings" / "alpha")
    at = page(eval_runs=[alpha])
    ms = at.multiselect(key="ev_pick")
    assert ms.value == [alpha]
    assert set(ms.options) == {"alpha", "beta"}
    at.button(key="ev_go").click().run()  # already evaluated and no overwrite: one line
    assert at.error and "already exists; use --overwrite" in at.error[0].value


def test_delta_html_colours():
    assert delta_colors([0.0, -5.0, 5.0, float("nan")], 2.0) == [
        "rgb(255,255,255)", "rgb(215,48,39)", "rgb(26,152,80)", "rgb(255,255,255)"]
    view = pl.DataFrame({"position": [0, 1], "token": ["<a>", "b\n"], "is_target": [False, True],
                         "logp_base": [None, -1.0], "logp_tuned": [None, -0.5],
                         "q_base": [None, 0.37], "q_tuned": [None, 0.61], "delta": [None, 0.5],
                         "kl": [None, 0.01]})
    out = delta_html(view)
    assert "&lt;a&gt;" in out and "↵" in out and "Δlogp +0.500" in out and "KL(base‖tuned)" in out


def _job(ws: Path, runs: list[Path], created_at: float, error: str | None = None) -> jobs.Job:
    """An ended evaluation job's record: its config names ``runs``; its command said
    ``error`` (an outcome file), while its log says something else."""
    from infosft.configs import write_config
    from infosft.outcome import write_outcome

    log = ws / "jobs" / f"test-{created_at}.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text("infosft: error: a line of the log, not the reason\n")
    job = jobs.Job("t", "eval", "eval", ["infosft", "eval"], 2 ** 22 + 12345, str(runs[0]),
                   str(log), created_at)
    write_config(jobs.eval_config(runs), job.config_path)
    if error is not None:
        write_outcome(job.outcome_path, "eval", 2, error, created_at)
    return job


def test_eval_job_status(ws):
    both = runs(ws)
    assert jobs.job_runs(_job(ws, both, 0)) == both  # from its config, not its command line
    assert jobs.status(_job(ws, both, 0))["state"] == "complete"
    # reports older than the job belong to the evaluation being replaced: they do not count
    st = jobs.status(_job(ws, both, time.time() + 60, error="something broke"))
    assert st["state"] == "failed" and st["message"] == "something broke"
    st = jobs.status(_job(ws, both, time.time() + 61))  # killed: no outcome to read
    assert st["state"] == "failed" and "without reporting an outcome" in st["message"]


@pytest.fixture(scope="module")
def sweep_ws(ws, tmp_path_factory) -> Path:
    """A workspace with one sweep, ``grid``: alpha's and beta's evaluations as its two
    runs (sft and profit), its report written by the sweep's own code."""
    from infosft.analysis import sweep

    other = tmp_path_factory.mktemp("sweep_ws")
    grid = other / "sweeps" / "grid"
    (grid / sweep.RUNS).mkdir(parents=True)
    (grid / sweep.SWEEP_FILE).write_text(json.dumps(
        {"points": ["sft", "profit:threshold=0.1"], "seeds": [0], "train": {}, "eval": {}}))
    for src, name in (("alpha", "sft-s0"), ("beta", "profit-threshold0.1-s0")):
        dst = grid / sweep.RUNS / name
        shutil.copytree(ws / "trainings" / src, dst)
        rep = json.loads((dst / EVAL / REPORT).read_text())
        rep.update(run=str(dst), name=name)
        (dst / EVAL / REPORT).write_text(json.dumps(rep))
    sweep.write_report(grid)
    return other


def test_sweep_frontier_plot_shows_each_run_with_its_interval(sweep_ws, monkeypatch):
    from infosft.analysis.sweep import read_sweep_report

    monkeypatch.setenv("INFOSFT_WORKSPACE", str(sweep_ws))
    at = page()
    report = read_sweep_report(sweep_ws / "sweeps" / "grid")
    charts = at.get("plotly_chart")
    assert len(charts) == 1  # no training runs of its own: the sweep's chart only
    fig = json.loads(charts[0].proto.spec)
    markers = [t for t in fig["data"] if t.get("mode") == "markers"]
    shown = {name: (t["y"][i], t["error_y"]["array"][i], t["error_y"]["arrayminus"][i],
                    t["x"][i], t["marker"]["color"])
             for t in markers for i, name in enumerate(t["text"])}
    assert set(shown) == {"sft-s0", "profit-threshold0.1-s0"}
    for row in report["runs"]:
        y, up, down, x, color = shown[row["run"].split("/")[-1]]
        lo, hi = row["learned"]["low"], row["learned"]["high"]
        assert y == pytest.approx(row["learned"]["value"])
        assert (y + up, y - down) == pytest.approx((hi, lo))
        assert x == pytest.approx(row["forgot"]["value"])
        assert (color == "#c7c7c7") == (not row["on_frontier"])  # dominated runs are grey
    table = at.dataframe[0].value  # the sweep's table (no other runs here)
    assert list(table["name"]) == ["sft-s0", "profit-threshold0.1-s0"]
    assert list(table["on_frontier"]) == [r["on_frontier"] for r in report["runs"]]


def test_a_sweep_run_opens_in_the_token_view(sweep_ws, monkeypatch):
    monkeypatch.setenv("INFOSFT_WORKSPACE", str(sweep_ws))
    at = page()
    run = str(sweep_ws / "sweeps" / "grid" / "runs" / "profit-threshold0.1-s0")
    at.selectbox(key="sw_run").set_value(run).run()
    at.button(key="sw_open").click().run()
    assert not at.exception and not at.error
    assert at.selectbox(key="ev_run").value == run  # the delta view shows that run
    html = " ".join(h.proto.body for h in at.get("html"))
    assert 'class="t"' in html


def test_no_sweep_yet_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.setenv("INFOSFT_WORKSPACE", str(tmp_path))
    at = page()
    assert any("infosft sweep --data DATA" in c.value for c in at.caption)


def test_try_the_model_shows_both_answers(ws):
    from infosft.analysis.try_model import side_by_side
    from infosft.models import load_model

    alpha = ws / "trainings" / "alpha"
    at = page()
    at.selectbox(key="try_run").set_value(str(alpha))
    at.number_input(key="try_new").set_value(5)
    at.text_area(key="try_prompt").set_value("Tell me a number.").run()
    at.button(key="try_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    import yaml

    base, tok, _ = load_model(yaml.safe_load((alpha / "config.yaml").read_text())["model"])
    tuned, _, _ = load_model(str(alpha / "final"))
    want = side_by_side(base, tuned, tok, "Tell me a number.", max_new_tokens=5)
    html = [h.proto.body for h in at.get("html") if "q under the" in h.proto.body]
    assert len(html) == 2
    for body, who in zip(html, ("base", "tuned")):
        n = want[who]["tokens"].height
        assert body.count('class="t"') == n and f"q under the {who} model (who wrote it)" in body


def test_a_measure_not_computed_shows_why(ws):
    """alpha's prior set (the bundled capitals) has no final answers: its prior accuracy
    was not computed, and the page says why, in the table and in a line per run."""
    reason = json.loads((ws / "trainings" / "alpha" / EVAL / REPORT).read_text())[
        "skipped"]["prior_accuracy"]
    assert "not math with final answers" in reason
    at = page()
    assert f"alpha: prior accuracy not computed: {reason}" in [i.value for i in at.info]
    shown = at.dataframe[0].value
    assert list(shown["not computed"]) == [f"prior accuracy: {reason}"] * 2


def test_an_older_report_without_reasons_is_not_silent(ws, tmp_path, monkeypatch):
    old = tmp_path / "trainings" / "old"
    shutil.copytree(ws / "trainings" / "alpha", old)
    rep = json.loads((old / EVAL / REPORT).read_text())
    rep.pop("skipped")
    rep.update(name="old", run=str(old), accuracy=None)
    (old / EVAL / REPORT).write_text(json.dumps(rep))
    monkeypatch.setenv("INFOSFT_WORKSPACE", str(tmp_path))
    infos = [i.value for i in page().info]
    assert any(i.startswith("old: accuracy not computed: no reason recorded") for i in infos)
