"""The browser app under Streamlit's AppTest: every page renders, the C slider drives the
metrics to exactly what ``analysis.stats`` computes, export writes a loadable file, bad
runs give a one-line error; plus the pure helpers the pages use."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from infosft.analysis.stats import Targets, q_summary  # noqa: E402
from infosft.analysis.store import Run  # noqa: E402
from infosft.analysis.tune import Settings, auto_c, overview_facts  # noqa: E402
from infosft.analysis.view import token_view  # noqa: E402
from infosft.app.render import fact_cards, summary_cards, token_html  # noqa: E402
from infosft.errors import InfosftError  # noqa: E402
from infosft.weights import c_from_p, p_from_c  # noqa: E402

from tests.helpers import app_page  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAIN = str(ROOT / "app" / "main.py")
SAMPLE_RUN = ROOT / "sample_data" / "runs" / "sample"
PAGES = ["views/data.py", "views/overview.py", "views/tune.py", "views/examples.py",
         "views/token_view.py", "views/export.py"]


@pytest.fixture(autouse=True)
def workspace(tmp_path, monkeypatch) -> Path:
    ws = tmp_path / "ws"
    monkeypatch.setenv("INFOSFT_WORKSPACE", str(ws))
    return ws


@pytest.fixture(scope="module")
def targets() -> Targets:
    return Targets.from_run(SAMPLE_RUN)


app = app_page


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(page):
    ok(app(page))


def test_opens_on_overview_of_the_sample_run(targets):
    at = app()
    ok(at)
    assert at.title[0].value == "Overview"
    ex = Run(SAMPLE_RUN).read_examples()
    assert metrics(at) == dict(fact_cards(overview_facts(targets, ex)))
    assert metrics(at)["Mean q"] == f"{q_summary(targets.logp)['mean_q']:.3f}"


def test_c_slider_changes_metrics_to_stats_values(targets):
    at = app("views/tune.py")
    before = metrics(at)
    assert before == dict(summary_cards(targets.summary("infosft", C=Settings().C)))
    at.slider(key="tune_C").set_value(1.5).run()
    ok(at)
    after = metrics(at)
    assert after != before
    assert after == dict(summary_cards(targets.summary("infosft", C=1.5)))
    # the equivalent P follows
    assert at.number_input(key="tune_P").value == pytest.approx(p_from_c(1.5))


def test_p_input_sets_c(targets):
    at = app("views/tune.py")
    at.number_input(key="tune_P").set_value(0.8).run()
    ok(at)
    assert at.slider(key="tune_C").value == pytest.approx(c_from_p(0.8), abs=1e-4)
    assert metrics(at) == dict(summary_cards(targets.summary("infosft", C=round(c_from_p(0.8), 4))))


def test_profit_threshold_and_direction(targets):
    at = app("views/tune.py")
    at.selectbox(key="tune_scheme").set_value("profit").run()
    at.slider(key="tune_threshold").set_value(0.3).run()
    ok(at)
    assert metrics(at) == dict(summary_cards(targets.summary("profit", threshold=0.3)))
    at.selectbox(key="tune_direction").set_value("middle").run()
    at.slider(key="tune_middle").set_value((0.2, 0.8)).run()
    ok(at)
    assert metrics(at) == dict(summary_cards(
        targets.summary("profit", threshold=[0.2, 0.8], direction="middle")))


def test_auto_c_button(targets):
    at = app("views/tune.py")
    at.button(key="auto_c").click().run()
    ok(at)
    assert at.slider(key="tune_C").value == pytest.approx(auto_c(targets)["C"], abs=1e-4)


def test_tune_carries_knobs_to_export():
    at = app("views/tune.py")
    at.slider(key="tune_C").set_value(3.0).run()
    at.button(key="to_export").click().run()
    ok(at)
    assert at.title[0].value == "Export"
    assert at.slider(key="export_C").value == pytest.approx(3.0)
    at.switch_page("views/tune.py").run()
    at.button(key="to_train").click().run()
    assert at.title[0].value == "Train"
    assert at.slider(key="train_C").value == pytest.approx(3.0)


def test_export_writes_a_file_that_loads_back(workspace, targets):
    at = app("views/export.py")
    at.slider(key="export_C").set_value(2.0).run()
    at.text_input(key="export_name").set_value("mine").run()
    at.button(key="export_go").click().run()
    ok(at)
    out = workspace / "exports" / "mine.parquet"
    assert out.exists() and at.success
    from infosft.analysis.export import read_export_meta

    assert read_export_meta(out)["knobs"]["C"] == pytest.approx(2.0)
    df = pl.read_parquet(out).sort("example_id")
    w = np.concatenate([np.asarray(ws)[np.asarray(lb) != -100]
                        for ws, lb in zip(df["weights"], df["labels"])])
    np.testing.assert_allclose(w, targets.weights("infosft", C=2.0), rtol=1e-6)
    assert any("load_dataset" in c.value for c in at.code)


def test_export_rejects_escaping_names(workspace):
    at = app("views/export.py")
    at.text_input(key="export_name").set_value("../evil").run()
    at.button(key="export_go").click().run()
    assert not at.exception and at.error
    assert not (workspace.parent / "evil.parquet").exists()


def test_deleted_run_shows_an_error_not_a_traceback(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(SAMPLE_RUN, run)
    at = app(run_path=str(run))
    ok(at)
    shutil.rmtree(run)
    for page in PAGES[1:]:
        at.switch_page(page).run()
        assert not at.exception
        assert at.error and "no longer exists" in at.error[0].value
    at.switch_page("views/data.py").run()  # where the user picks another run
    assert not at.exception


@pytest.mark.parametrize("make", ["empty", "bad_meta", "running"])
def test_invalid_run_dir_shows_an_error(tmp_path, make):
    run = tmp_path / "run"
    run.mkdir()
    if make == "bad_meta":
        (run / "meta.json").write_text("{not json")
    if make == "running":
        (run / "meta.json").write_text(json.dumps({"status": "running"}))
    at = app("views/tune.py", run_path=str(run))
    assert not at.exception
    assert at.error and "Traceback" not in at.error[0].value


def test_examples_page_search_and_open():
    at = app("views/examples.py")
    ok(at)
    n_all = at.dataframe[0].value.shape[0]
    at.text_input(key="ex_search").set_value("dollars").run()
    n = at.dataframe[0].value.shape[0]
    assert 0 < n < n_all
    pick = at.selectbox(key="ex_pick").value
    at.button(key="ex_open").click().run()
    ok(at)
    assert at.title[0].value == "Token view"
    assert at.selectbox(key="tv_example").value == pick


def test_examples_sort_box_speaks_the_tables_headers_and_the_picker_follows_it():
    at = app("views/examples.py")
    box = at.selectbox(key="ex_sort")
    assert box.options == ["example id", "mean q", "min q", "mean w", "share w = 0",
                           "tokens", "target tokens"]
    box.set_value("min_q").run()
    at.toggle(key="ex_desc").set_value(True).run()
    ok(at)
    shown = at.dataframe[0].value
    assert list(shown["min_q"]) == sorted(shown["min_q"], reverse=True)
    # the Example picker lists the examples in the table's order
    assert at.selectbox(key="ex_pick").options == [str(i) for i in shown["example_id"]]


def test_many_examples_are_listed_by_their_first_rows_and_picked_by_id(monkeypatch):
    """Past ROWS_UP_TO examples (a 100M run has 400k) the Examples table shows its first
    rows and the Token view takes an id: a 400k-row table or box is sent on every rerun."""
    import doctest

    from infosft.analysis import view as view_mod
    from infosft.app import state

    assert doctest.testmod(view_mod).failed == 0  # nearest_id
    monkeypatch.setattr(state, "ROWS_UP_TO", 5)
    ex = Run(SAMPLE_RUN).read_examples()
    at = app("views/examples.py")
    ok(at)
    assert at.dataframe[0].value.shape[0] == 5
    assert f"{ex.height:,} of {ex.height:,} examples; the first 5 shown" in " ".join(
        c.value for c in at.caption)
    assert len(at.selectbox(key="ex_pick").options) == 5
    at.selectbox(key="ex_pick").set_value(at.selectbox(key="ex_pick").options[3]).run()
    pick = int(at.selectbox(key="ex_pick").value)
    at.button(key="ex_open").click().run()
    ok(at)
    assert at.title[0].value == "Token view"
    assert at.number_input(key="tv_example_id").value == pick  # opened from Examples
    n_target = dict(zip(ex["example_id"].to_list(), ex["n_target"].to_list()))
    assert metrics(at)["Target tokens"].startswith(f"{n_target[pick]:,} of ")
    at = app("views/token_view.py", example_id=pick)
    other = int(ex["example_id"][-1])
    at.number_input(key="tv_example_id").set_value(other).run()  # typed: it stays
    ok(at)
    assert at.number_input(key="tv_example_id").value == other
    assert metrics(at)["Target tokens"].startswith(f"{n_target[other]:,} of ")
    at.number_input(key="tv_example_id").set_value(pick).run()
    assert metrics(at)["Target tokens"].startswith(f"{n_target[pick]:,} of ")


def test_token_view_page_has_tooltips():
    at = app("views/token_view.py")
    ok(at)
    html = " ".join(h.proto.body for h in at.get("html"))
    # the app's own hover cards, not the browser's title tooltips
    assert 'class="card"' in html and "top-k alternatives" in html and "↵" in html
    assert 'title="' not in html and 'tabindex="0"' in html


def test_token_view_data_matches_stats(targets):
    run = Run(SAMPLE_RUN)
    s = Settings(C=2.0, direction="random", threshold=0.3)
    view = token_view(run, 5, targets, run.read_vocab(), s)
    tgt = view.filter(pl.col("is_target"))
    sl = targets.ex_starts[targets.ex_ids == 5][0]
    n = tgt.height
    np.testing.assert_allclose(tgt["w_infosft"].to_numpy(),
                               targets.weights("infosft", C=2.0)[sl:sl + n], rtol=1e-6)
    np.testing.assert_array_equal(tgt["w_profit"].to_numpy(), targets.weights(
        "profit", threshold=0.3, direction="random")[sl:sl + n])
    assert view.filter(~pl.col("is_target"))["w_sft"].null_count() == view.height - n
    first = tgt.row(0, named=True)
    assert len(first["top_pieces"]) == 5 and first["top_probs"][0] >= first["top_probs"][-1]
    with pytest.raises(InfosftError):
        token_view(run, 10_000, targets, run.read_vocab(), s)


def test_token_html_escapes_and_shows_newlines():
    view = pl.DataFrame({"position": [0, 1, 2], "token": ["<b>", "a\nb", '"x"'],
                         "is_target": [False, True, True], "q": [None, 0.5, 0.9],
                         "logp": [None, -0.69, -0.1], "rank": [None, 1, 2],
                         "entropy": [None, 1.0, 0.5],
                         "top_pieces": [None, ["a", "<c>"], ["x"]],
                         "top_probs": [None, [0.5, 0.2], [0.9]],
                         **{f"w_{s}": [None, 0.5, 0.1] for s in ("sft", "dft", "infosft",
                                                                   "profit")}})
    out = token_html(view, "weight", "infosft")
    assert "<b>" not in out.split("</style>")[1] and "&lt;b&gt;" in out
    assert '<span class="nl">↵</span>\nb' in out
    assert "&#x27;&lt;c&gt;&#x27; 0.200" in out or "&lt;c&gt;" in out
    assert 'title="' not in out and out.count('class="card"') == 3


def test_cli_app_defaults_to_localhost():
    from infosft.app.cli import build_parser

    args = build_parser().parse_args(["app"])
    assert args.host == "127.0.0.1" and args.func.__name__ == "cmd_app"


def test_render_doctests():
    import doctest

    from infosft.app import render

    assert doctest.testmod(render).failed == 0


def test_overview_cards_of_a_large_run_fit_their_column():
    """Seven cards share a row: a 100M count was drawn as ``100,00…``."""
    cards = dict(fact_cards({"examples": 400_000, "target_tokens": 100_000_000,
                             "tokens": 104_000_000}))
    assert cards == {"Examples": "400,000", "Target tokens": "100M", "All tokens": "104M"}


# --- workspace names, background jobs, the Data & scoring page -------------------------

@pytest.mark.parametrize("name", ["run1", "my-run.v2", "A_b"])
def test_safe_name_accepts(name):
    from infosft.app.workspace import safe_name

    assert safe_name(name) == name


@pytest.mark.parametrize("name", ["", "..", "../x", "a/b", "a\\b", "/abs", ".hidden", "a..b",
                                  "x" * 101, "a b", "~"])
def test_safe_name_rejects(name, workspace):
    from infosft.app.workspace import inside, safe_name

    with pytest.raises(InfosftError):
        safe_name(name)
    with pytest.raises(InfosftError):
        inside(workspace, name)


def wait_for(job, states, timeout=120.0):
    import time

    from infosft.app import jobs

    deadline = time.time() + timeout
    while time.time() < deadline:
        st = jobs.status(jobs.load(job.id))  # the record, as the page reads it
        if st["state"] in states:
            return st
        time.sleep(0.5)
    raise AssertionError(f"job still {st['state']} after {timeout}s; log:\n{jobs.log_tail(job)}")


@pytest.mark.slow
def test_failed_job_shows_the_cli_error(tmp_path, workspace):
    from infosft.app import jobs

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{oops\n')
    job = jobs.launch_score("bad-run", str(bad))
    st = wait_for(job, {"failed", "complete"})
    assert st["state"] == "failed"
    assert "line 2" in st["message"] and "Traceback" not in st["message"]
    assert jobs.list_jobs()[0].id == job.id
    at = app("views/data.py")
    assert not at.exception
    assert any("Scoring failed" in e.value and "line 2" in e.value for e in at.error)


def test_cancel_stops_a_job(workspace):
    import sys

    from infosft.app import jobs

    job = jobs.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"],
                      workspace / "runs" / "sleeper")
    assert jobs.status(job)["state"] == "starting"
    jobs.cancel(job)
    st = wait_for(job, {"cancelled"}, timeout=20)
    assert st["state"] == "cancelled" and not jobs.alive(job)


@pytest.mark.slow
def test_score_job_completes_and_becomes_a_run(tmp_path, workspace, tiny_model_dir):
    from infosft.app import jobs

    rows = [json.loads(line) for line in
            (ROOT / "sample_data" / "sft_sample.jsonl").read_text().splitlines()[:4]]
    data = tmp_path / "four.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    job = jobs.launch_score("tiny", str(data), model=str(tiny_model_dir), max_length=256)
    st = wait_for(job, {"complete", "failed"}, timeout=180)
    assert st["state"] == "complete", st.get("log")
    assert Run(workspace / "runs" / "tiny").meta()["counts"]["examples"] == 4
    at = app("views/data.py")
    assert not at.exception
    assert str(workspace / "runs" / "tiny") in at.selectbox(key="run_pick").options
    at.selectbox(key="run_pick").set_value(str(workspace / "runs" / "tiny")).run()
    at.button(key="run_activate").click().run()
    at.switch_page("views/tune.py").run()
    ok(at)
    assert at.session_state["run_path"] == str(workspace / "runs" / "tiny")
    with pytest.raises(InfosftError):  # the name is taken now
        jobs.launch_score("tiny", str(data))


def test_data_page_preview_and_bad_mapping(tmp_path):
    at = app("views/data.py")
    ok(at)
    assert any("pair" in i.value for i in at.info)
    at.selectbox(key="data_format").set_value("messages").run()  # 'prompt' is not a list
    assert not at.exception and at.error
    assert at.button(key="score_go").disabled


def test_data_page_unreadable_file(tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    at = app("views/data.py")
    at.radio(key="data_kind").set_value("Local path").run()
    at.text_input(key="data_path").set_value(str(bad)).run()
    assert not at.exception
    assert at.error and "broken.parquet" in at.error[0].value


def test_preview_detects_and_checks_mapping(tmp_path):
    from infosft.analysis.preview import preview

    p = tmp_path / "d.jsonl"
    p.write_text('{"q": "hi", "a": "there"}\n{"q": "x", "a": 3}\n')
    pv = preview(str(p))
    assert pv.kind is None and "cannot tell" in pv.problems[0]
    pv = preview(str(p), fields={"prompt": "q", "response": "a"})
    assert pv.kind == "pair" and pv.problems == ["line 2, field 'a': expected a string, got int"]


def test_running_job_shows_progress_eta_and_cancel(workspace):
    """A live process + the scorer's status files: progress bar, ETA, Cancel button."""
    import sys

    from infosft.app import jobs

    run = workspace / "runs" / "live"
    run.mkdir(parents=True)
    (run / "meta.json").write_text(json.dumps({"status": "running"}))
    (run / "progress-000.json").write_text(json.dumps(
        {"done_tokens": 1000, "total_tokens": 4000, "elapsed_s": 10.0, "eta_s": 30.0}))
    job = jobs.start("live", [sys.executable, "-c", "import time; time.sleep(60)"], run)
    st = jobs.status(job)
    assert st["state"] == "running" and st["fraction"] == 0.25 and st["eta_s"] == 30.0
    at = app("views/data.py")
    ok(at)
    bars = at.get("progress")
    assert bars and "1,000 / 4,000 tokens · ETA 30s" in bars[0].proto.text
    at.button(key=f"cancel_{job.id}").click().run()
    assert not at.exception
    assert wait_for(job, {"cancelled"}, timeout=20)["state"] == "cancelled"


def test_a_job_before_scoring_shows_what_it_is_doing(workspace):
    """Loading the model is a stage of its own on the card, with the time spent, not a
    bar stuck at 0 tokens."""
    import sys

    from infosft.app import jobs

    run = workspace / "runs" / "loading"
    run.mkdir(parents=True)
    Run(run).write_progress(0, 0, 0, 3.0, stage="loading the model")
    job = jobs.start("loading", [sys.executable, "-c", "import time; time.sleep(60)"], run)
    st = jobs.status(job)
    assert st["state"] == "starting" and st["stage"] == "loading the model"
    assert st["total"] is None and st["fraction"] == 0.0
    at = app("views/data.py")
    ok(at)
    assert at.get("progress")[0].proto.text.startswith("loading the model... (")
    jobs.cancel(job)


def test_a_finished_scoring_card_says_what_it_produced(workspace):
    """Tokens, time, speed and mean q on the finished job's card, from the run itself."""
    import shutil
    import sys

    import numpy as np

    from infosft.analysis.stats import load_targets
    from infosft.app import jobs

    run = workspace / "runs" / "done"
    shutil.copytree(SAMPLE_RUN, run)
    job = jobs.start("done", [sys.executable, "-c", "pass"], run)
    wait_for(job, {"complete"})
    at = app("views/data.py")
    ok(at)
    meta = json.loads((run / "meta.json").read_text())
    mean_q = float(np.exp(load_targets(run)["logp"].to_numpy().astype(np.float64)).mean())
    card = next(c.value for c in at.caption if "target tokens" in c.value)
    assert f"{meta['counts']['examples']:,} examples" in card
    assert f"{meta['counts']['target_tokens']:,} target tokens of {meta['counts']['tokens']:,}" in card
    assert f"at {meta['tokens_per_s']:,.0f} tokens/s" in card
    assert f"mean q {mean_q:.3f}" in card


def test_stop_is_acknowledged_before_the_step_ends(workspace):
    """The trainer sees SIGTERM only at the end of its step; the page says "stopping" at
    once (here the job's process ignores SIGTERM, like a trainer mid-step)."""
    import os
    import sys
    import time

    from infosft.app import jobs

    run = workspace / "trainings" / "busy"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("scheme: sft\n")
    (run / "status.json").write_text(json.dumps(
        {"state": "running", "pid": os.getpid(), "step": 4, "total_steps": 10,
         "updated_at": time.time() + 60}))  # the trainer has written since the job began
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")
    job = jobs.start("busy", [sys.executable, "-c", code], run, kind="train")
    try:
        deadline = time.time() + 30
        while "ready" not in jobs.log_tail(job):  # SIGTERM ignored from here on
            assert time.time() < deadline
            time.sleep(0.05)
        assert jobs.train_status(run)["state"] == "running"
        jobs.stop_train(run)
        assert jobs.train_status(run)["state"] == "stopping"
        at = app("views/train.py")
        at.selectbox(key="train_pick").set_value(str(run)).run()
        assert any("Stopping after step 5" in i.value for i in at.info)
        assert not [b for b in at.button if b.key == "train_stop"]
    finally:
        os.killpg(job.pid, 9)


@pytest.mark.parametrize("page", ["views/tune.py", "views/overview.py"])
def test_schemes_side_by_side_follow_the_knobs(targets, page):
    """One row per scheme, each number computed here from the reference formulas."""
    import numpy as np

    from tests.helpers import reference_weights

    at = app(page)
    if page.endswith("tune.py"):
        at.slider(key="tune_C").set_value(1.5).run()
        at.selectbox(key="tune_scheme").set_value("profit").run()
        at.slider(key="tune_threshold").set_value(0.3).run()
    ok(at)
    C, tau = (1.5, 0.3) if page.endswith("tune.py") else (Settings().C, Settings().threshold)
    table = next(d.value for d in at.dataframe if "Effective tokens" in d.value.columns)
    # the bundled run has entropy_top20 (EAFT) but no logp_ref (excess is not offered)
    assert len(table) == 5
    q = np.exp(targets.logp.astype(np.float64))
    entropy = targets.fields["entropy_top20"].astype(np.float64)
    for (_, row), scheme in zip(table.iterrows(), ("sft", "dft", "infosft", "profit", "eaft")):
        w = (entropy / 3) if scheme == "eaft" else reference_weights(targets.logp, scheme,
                                                                       C=C, tau=tau)
        assert row["Mean weight"] == pytest.approx(round(w.mean(), 4), abs=1e-4)
        assert row["w > 0 (%)"] == pytest.approx(round(100 * (w > 0).mean(), 1), abs=0.051)
        assert row["Effective tokens"] == pytest.approx(w.sum() ** 2 / (w ** 2).sum(), abs=1)
        medium = w[(q >= 0.1) & (q < 0.9)].sum() / w.sum()
        assert row["on medium q (%)"] == pytest.approx(round(100 * medium, 1), abs=0.051)
    if page.endswith("tune.py"):  # the knobs in force name each row
        assert table["Scheme"][2] == "InfoSFT (C=1.5)" and "τ=0.3" in table["Scheme"][3]


def test_make_active_on_a_job_card_updates_the_active_run_box(workspace):
    import shutil
    import sys

    from infosft.app import jobs

    run = workspace / "runs" / "fresh"
    shutil.copytree(SAMPLE_RUN, run)
    job = jobs.start("fresh", [sys.executable, "-c", "pass"], run)
    wait_for(job, {"complete"})
    at = app("views/data.py")
    assert at.selectbox(key="run_pick").value == str(SAMPLE_RUN)
    at.button(key=f"activate_{job.id}").click().run()
    ok(at)
    assert at.session_state["run_path"] == str(run)
    assert at.selectbox(key="run_pick").value == str(run)  # the page's box, not only the sidebar
    assert not [b for b in at.button if b.key == "run_activate"]  # nothing to switch back to
