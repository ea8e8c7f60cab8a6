"""The Train page under Streamlit's AppTest: the form prefilled from Tune and the active
run, name and value errors as one line, fake run directories in every state (progress,
ETA, error, Stop and Resume), the runs table and comparison chart, the training-job
helpers of ``app.jobs``, and one real tiny training launched from the page."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from infosft.analysis.tune import Settings  # noqa: E402
from infosft.errors import InfosftError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAIN = str(ROOT / "app" / "main.py")
SAMPLE_DATA = ROOT / "sample_data" / "sft_sample.jsonl"
PAGE = "views/train.py"


@pytest.fixture(autouse=True)
def workspace(tmp_path, monkeypatch) -> Path:
    ws = tmp_path / "ws"
    monkeypatch.setenv("INFOSFT_WORKSPACE", str(ws))
    return ws


def app(**state) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    at.switch_page(PAGE).run()
    return at


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _array(v) -> list[float]:
    """A trace's x or y: a list, or Plotly's typed binary ``{"dtype", "bdata"}``."""
    if isinstance(v, dict):
        import base64

        import numpy as np

        v = np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
    return [float(x) for x in v]


def charts(at: AppTest) -> dict[str, dict]:
    """The traces of each Plotly figure on the page, by chart key: ``{"data": [{"name",
    "x", "y"}, ...]}`` with plain lists."""
    return {c.key: {"data": [{"name": t.get("name"), "x": _array(t.get("x", [])),
                              "y": _array(t.get("y", []))}
                             for t in json.loads(c.proto.spec)["data"]]}
            for c in at.get("plotly_chart")}


def fake_run(ws: Path, name: str, *, status: dict, config: dict | None = None,
             metrics: list | None = None, final: bool = False, ckpt: bool = False) -> Path:
    """A training run directory written by hand, as the trainer lays it out."""
    run = ws / "trainings" / name
    run.mkdir(parents=True)
    cfg = {"data": "d.jsonl", "scheme": "infosft", "C": 2.0, "mode": "online", "lora": True,
           **(config or {})}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "status.json").write_text(json.dumps(
        {"host": socket.gethostname(), "started_at": time.time(), **status}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics or []))
    (run / "train.log").write_text(f"log of {name}\nlast line of {name}\n")
    if final:
        (run / "final").mkdir()
        (run / "final" / "adapter_config.json").write_text("{}")
        (run / "final" / "adapter_model.safetensors").write_bytes(b"")  # as a finished run has
    if ckpt:
        (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)
        (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    return run


def losses(values, weights=None, eval_at=None):
    out = [{"step": i + 1, "loss": v, "mean_weight": (weights or [0.5] * len(values))[i],
            "zero_weight_share": 0.1, "tokens_per_s": 50.0} for i, v in enumerate(values)]
    return out + ([{"step": eval_at[0], "eval_loss": eval_at[1]}] if eval_at else [])


# --- the form -------------------------------------------------------------------------

def test_prefilled_from_the_active_run_and_settings():
    at = app()
    ok(at)
    assert at.title[0].value == "Train"
    assert at.text_input(key="train_data").value == str(SAMPLE_DATA)
    assert at.text_input(key="train_model").value == ""  # scored with the default model
    assert at.number_input(key="train_max_len").value == 2048  # as scored
    assert at.selectbox(key="train_scheme").value == "infosft"
    assert at.slider(key="train_C").value == pytest.approx(Settings().C)
    assert at.number_input(key="train_lr").value == pytest.approx(2e-4)
    at.toggle(key="train_lora").set_value(False).run()
    assert at.number_input(key="train_lr").value == pytest.approx(2e-5)  # full fine-tune


def test_prefilled_from_the_sessions_knobs():
    s = Settings(scheme="profit", threshold=0.3, direction="lower")
    at = app(settings=s)
    ok(at)
    assert at.selectbox(key="train_scheme").value == "profit"
    assert at.slider(key="train_threshold").value == pytest.approx(0.3)
    assert at.selectbox(key="train_direction").value == "lower"


def test_knobs_moved_anywhere_are_the_forms_knobs():
    """One set of knobs: C moved on Tune shows on Train opened from the sidebar (no
    button), and C moved on Train shows on Export and in the sidebar."""
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    at.switch_page(PAGE).run()  # the form first shows the current settings
    assert at.slider(key="train_C").value == pytest.approx(Settings().C)
    at.switch_page("views/tune.py").run()
    at.slider(key="tune_C").set_value(1.5).run()
    at.switch_page(PAGE).run()  # as the sidebar does
    ok(at)
    assert at.slider(key="train_C").value == pytest.approx(1.5)
    at.slider(key="train_C").set_value(2.25).run()
    at.switch_page("views/export.py").run()
    assert at.slider(key="export_C").value == pytest.approx(2.25)
    assert any("2.25" in m.value for m in at.sidebar.markdown)
    at.switch_page(PAGE).run()
    # values typed into the form survive a visit to another page
    at.text_input(key="train_name").set_value("keep-me").run()
    at.switch_page("views/overview.py").run()
    at.switch_page(PAGE).run()
    assert at.text_input(key="train_name").value == "keep-me"
    assert at.slider(key="train_C").value == pytest.approx(2.25)


@pytest.mark.parametrize("name, data, message", [
    ("../evil", None, "not allowed"),
    ("a/b", None, "not allowed"),
    ("taken", None, "already exists"),
    ("fine", "/nonexistent/data.jsonl", "no such file"),
    ("fine", "", "Choose the training data"),
])
def test_bad_input_is_one_error_line(workspace, name, data, message):
    (workspace / "trainings" / "taken").mkdir(parents=True)
    at = app()
    at.text_input(key="train_name").set_value(name)
    if data is not None:
        at.text_input(key="train_data").set_value(data)
    at.run()
    at.button(key="train_go").click().run()
    assert not at.exception
    assert at.error and message in at.error[0].value and "Traceback" not in at.error[0].value
    assert not (workspace.parent / "evil").exists()
    assert not list((workspace / "jobs").glob("*.json"))  # nothing launched


def test_bad_saved_knobs_are_one_error_line(workspace):
    at = app(settings=Settings(C=-1.0))
    assert not at.exception and at.error and "C must be" in at.error[0].value


def config_of(argv: list[str]) -> dict:
    """The config file a job's command line names (``--config FILE``)."""
    from infosft.configs import read_config_file

    return read_config_file(argv[argv.index("--config") + 1])


def capture_launches(monkeypatch) -> list:
    """Replace the job launcher: record (name, argv, run_dir, kind), start nothing."""
    from infosft.app import jobs

    launched = []
    monkeypatch.setattr(jobs, "start", lambda name, argv, run_dir, kind="score", log=None:
                        launched.append((name, argv, run_dir, kind)) or
                        jobs.Job("j1", name, kind, argv, os.getpid(), str(run_dir), "x.log", 0))
    return launched


def test_static_mode_trains_on_an_export(workspace, monkeypatch):
    from infosft.analysis.export import export_weighted

    at = app()
    at.radio(key="train_mode").set_value("static").run()
    assert not at.exception and at.warning and at.button(key="train_go").disabled
    out = export_weighted(ROOT / "sample_data" / "runs" / "sample",
                          workspace / "exports" / "w.parquet", "infosft", C=2.0)
    launched = capture_launches(monkeypatch)
    at.run()
    assert any("InfoSFT (C=2)" in c.value for c in at.caption)
    at.text_input(key="train_name").set_value("static-run").run()
    at.button(key="train_go").click().run()
    ok(at)
    (name, argv, run_dir, kind), = launched
    cfg = config_of(argv)
    assert (cfg["data"], cfg["mode"], cfg["C"]) == (str(out), "static", 2.0)
    assert cfg["P"] is None and cfg["fields"] is None  # C only; tokens come from the export
    assert run_dir == workspace / "trainings" / "static-run"


def test_excess_asks_for_a_reference_and_eaft_sends_its_alpha(workspace, monkeypatch,
                                                              tiny_model_dir):
    """The registry's schemes from the Train page: excess shows a reference-model box
    whose path lands in the config; EAFT's alpha lands under ``knobs``."""
    at = app()
    at.text_input(key="train_data").set_value(str(ROOT / "sample_data" / "sft_sample.jsonl"))
    assert not any(t.key == "train_reference" for t in at.text_input)
    at.selectbox(key="train_scheme").set_value("excess").run()
    ok(at)
    launched = capture_launches(monkeypatch)
    at.text_input(key="train_name").set_value("no-ref").run()
    at.button(key="train_go").click().run()
    assert at.error and "reference" in at.error[0].value and not launched
    at.text_input(key="train_reference").set_value(str(tiny_model_dir))
    at.text_input(key="train_name").set_value("excess-run").run()
    at.button(key="train_go").click().run()
    ok(at)
    (_, argv, _, _), = launched
    cfg = config_of(argv)
    assert (cfg["scheme"], cfg["reference"], cfg["knobs"]) == (
        "excess", str(tiny_model_dir), {"keep": 0.6, "per": "all"})
    at.selectbox(key="train_scheme").set_value("eaft").run()
    at.slider(key="train_eaft_alpha").set_value(0.5).run()  # alpha in [0, 10]: a slider
    at.text_input(key="train_name").set_value("eaft-run").run()
    at.button(key="train_go").click().run()
    ok(at)
    cfg = config_of(launched[-1][1])
    assert (cfg["scheme"], cfg["knobs"], cfg.get("reference")) == ("eaft", {"alpha": 0.5}, None)


# --- runs in every state -----------------------------------------------------------------

@pytest.fixture
def fake_runs(workspace) -> dict[str, Path]:
    return {
        "running": fake_run(workspace, "running", status={
            "state": "running", "pid": os.getpid(), "step": 3, "total_steps": 10,
            "epoch": 0.3, "eta_s": 30.0}, metrics=losses([3.0, 2.8, 2.5], [0.6, 0.5, 0.4])),
        "failed": fake_run(workspace, "failed", ckpt=True, status={
            "state": "failed", "step": 2, "total_steps": 10, "error": "CUDA out of memory",
            "resumable": True, "last_checkpoint": "checkpoints/checkpoint-2"},
            config={"scheme": "sft", "C": None}),
        "stopped": fake_run(workspace, "stopped", ckpt=True, status={
            "state": "stopped", "step": 2, "total_steps": 10, "resumable": True},
            metrics=losses([2.0, 1.9])),
        "finished": fake_run(workspace, "finished", final=True, status={
            "state": "finished", "step": 4, "total_steps": 4, "final_model": None},
            metrics=losses([2.0, 1.6, 1.4, 1.2], eval_at=(4, 1.3)),
            config={"scheme": "profit", "C": None, "threshold": 0.2, "direction": "higher"}),
    }


def pick(at: AppTest, run: Path) -> AppTest:
    return at.selectbox(key="train_pick").set_value(str(run)).run()


def test_running_run_shows_progress_eta_and_stop(fake_runs):
    at = app()
    pick(at, fake_runs["running"])
    ok(at)
    bars = at.get("progress")
    assert bars and "step 3 / 10 · epoch 0.30 · ETA 30s" in bars[0].proto.text
    assert bars[0].proto.value == 30  # percent
    assert at.button(key="train_stop")  # (not clicked: its pid is this test process)
    assert not [b for b in at.button if b.key == "train_resume"]
    figs = charts(at)
    loss = figs["train_loss_chart"]["data"][0]
    assert loss["x"] == [1, 2, 3] and loss["y"] == [3.0, 2.8, 2.5]
    assert figs["train_weight_chart"]["data"][0]["y"] == [0.6, 0.5, 0.4]
    assert {m.label: m.value for m in at.metric}["Loss"] == "2.5"
    assert any("last line of running" in c.value for c in at.code)


def test_failed_run_shows_error_and_resume(fake_runs):
    at = app()
    pick(at, fake_runs["failed"])
    assert not at.exception
    assert [e.value for e in at.error] == ["Training failed: CUDA out of memory"]
    assert at.button(key="train_resume") and not at.get("progress")


def test_dead_process_is_failed(workspace):
    run = fake_run(workspace, "dead", status={"state": "running", "pid": 2**22 + 4321,
                                              "step": 1, "total_steps": 5})
    at = app()
    pick(at, run)
    assert at.error and "died without finishing" in at.error[0].value
    assert not [b for b in at.button if b.key in ("train_stop", "train_resume")]


def test_stopped_run_resumes_with_the_resume_flag(fake_runs, monkeypatch):
    launched = capture_launches(monkeypatch)
    at = app()
    pick(at, fake_runs["stopped"])
    ok(at)
    assert any("Stopped at step 2 of 10" in i.value for i in at.info)
    at.button(key="train_resume").click().run()
    assert not at.exception
    (name, argv, run_dir, kind), = launched
    assert kind == "train" and name == "stopped" and run_dir == fake_runs["stopped"]
    assert argv[1:3] == ["-m", "infosft"] and argv[5] == "train" and "--resume" in argv
    assert argv[argv.index("--out") + 1] == str(fake_runs["stopped"])


def test_a_resumed_run_is_queued_until_the_trainer_writes(fake_runs, workspace):
    from infosft.app import jobs

    run = fake_runs["stopped"]
    jobs.start("stopped", [sys.executable, "-c", "import time; time.sleep(60)"], run,
                      kind="train")
    try:
        assert jobs.train_status(run)["state"] == "queued"  # not the stale "stopped"
        with pytest.raises(InfosftError, match="still queued"):
            jobs.resume_train(run)  # a second click starts nothing
    finally:
        jobs.stop_train(run)


def test_finished_run_shows_the_model_and_how_to_load_it(fake_runs):
    at = app()
    pick(at, fake_runs["finished"])
    ok(at)
    final = fake_runs["finished"] / "final"
    assert any(str(final) in s.value for s in at.success)
    code = "\n".join(c.value for c in at.code)
    assert f'load_model("{final}")' in code
    assert f'AutoPeftModelForCausalLM.from_pretrained("{final}")' in code
    figs = charts(at)
    assert figs["train_loss_chart"]["data"][1]["y"] == [1.3]  # eval loss
    # on its own axis, titled as such (the scales differ: weighted vs plain NLL)
    spec = json.loads(next(c for c in at.get("plotly_chart")
                           if c.key == "train_loss_chart").proto.spec)
    assert spec["data"][1]["yaxis"] == "y2"
    assert (spec["layout"]["yaxis"]["title"]["text"], spec["layout"]["yaxis2"]["title"]["text"]) \
        == ("train loss", "eval loss")
    assert {m.label: m.value for m in at.metric}["Eval loss"] == "1.3"


def test_evaluate_this_run_launches_an_evaluation_and_opens_the_page(fake_runs, monkeypatch):
    launched = capture_launches(monkeypatch)
    at = app()
    pick(at, fake_runs["finished"])
    at.button(key="train_evaluate").click().run()
    assert not at.exception
    (name, argv, run_dir, kind), = launched
    assert kind == "eval" and run_dir == fake_runs["finished"]
    assert argv[5] == "eval" and config_of(argv)["runs"] == [str(fake_runs["finished"])]
    assert at.title[0].value == "Evaluate"
    assert at.session_state["eval_runs"] == [str(fake_runs["finished"])]


def test_runs_table_and_comparison(fake_runs):
    at = app()
    assert not at.exception
    table = at.dataframe[0].value
    states = dict(zip(table["name"], table["state"]))
    assert states == {"running": "running", "failed": "failed", "stopped": "stopped",
                      "finished": "finished"}
    finals = dict(zip(table["name"], table["final_loss"]))
    assert finals["finished"] == 1.2 and finals["stopped"] == 1.9
    assert dict(zip(table["name"], table["knobs"]))["finished"] == "threshold=0.2, direction=higher"
    # the runs with a logged loss are offered for comparison
    compare = at.multiselect(key="train_compare")
    assert set(compare.options) == {"running", "stopped", "finished"}  # shown by name
    compare.set_value([str(fake_runs["finished"]), str(fake_runs["stopped"])]).run()
    fig = charts(at)["train_compare_chart"]  # eval loss first: comparable across schemes
    assert [(t["name"], t["y"]) for t in fig["data"]] == [("finished", [1.3])]
    at.radio(key="train_compare_y").set_value("loss").run()
    fig = charts(at)["train_compare_chart"]
    assert {t["name"]: t["y"] for t in fig["data"]} == {"finished": [2.0, 1.6, 1.4, 1.2],
                                                        "stopped": [2.0, 1.9]}


# --- the job helpers ------------------------------------------------------------------

def test_the_train_job_config_carries_every_option_and_reads_back(tmp_path, workspace,
                                                                  monkeypatch):
    """The form's options become the job's config file; ``infosft train --config`` reads
    back exactly the config the app validated."""
    from infosft.app import jobs
    from infosft.train_config import load_config, resolve

    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "hi", "response": "there"}\n')
    launched = []
    monkeypatch.setattr(jobs, "start", lambda name, argv, run_dir, kind="score", log=None:
                        launched.append(argv) or jobs.Job("j", name, kind, argv, 0,
                                                          str(run_dir), str(log), 0.0))
    knobs = Settings(scheme="profit", direction="middle", middle=(0.25, 0.75)).knobs()
    jobs.launch_train("t", str(data), scheme="profit", knobs=knobs, mode="online", lora=False,
                      lr=1e-5, max_steps=7, batch_size=2, grad_accum=3, max_length=128,
                      eval_split=0.1, logging_steps=1, fields={"prompt": "q"},
                      no_template=True, model=str(tmp_path))
    argv, = launched
    assert argv[1:3] == ["-m", "infosft"] and argv[5:7] == ["train", "--config"]
    cfg = resolve(load_config(argv[7]))
    expected = dict(data=str(data), out=str(workspace / "trainings" / "t"), scheme="profit",
                    threshold=[0.25, 0.75], direction="middle", seed=0, mode="online",
                    lora=False, lr=1e-5, max_steps=7, batch_size=2, grad_accum=3,
                    max_length=128, eval_split=0.1, logging_steps=1, fields={"prompt": "q"},
                    use_template=False, model=str(tmp_path))
    assert {k: getattr(cfg, k) for k in expected} == expected
    with pytest.raises(TypeError):
        jobs.train_values("d", tmp_path, bogus=1)


def test_stop_sends_sigterm_to_the_job(workspace):
    from infosft.app import jobs

    run = workspace / "trainings" / "sleepy"
    job = jobs.start("sleepy", [sys.executable, "-c", "import time; time.sleep(60)"], run,
                      kind="train")
    assert jobs.train_status(run)["state"] == "queued"  # no status.json yet
    assert jobs.list_jobs() == [] and jobs.list_jobs(kind="train")[0].id == job.id
    jobs.stop_train(run)
    deadline = time.time() + 20
    while jobs.alive(jobs.load(job.id)) and time.time() < deadline:  # the fresh record
        time.sleep(0.2)
    assert not jobs.alive(jobs.load(job.id))
    assert jobs.train_status(run)["state"] == "stopped"
    with pytest.raises(InfosftError):
        jobs.stop_train(run)  # nothing to stop


def test_cli_error_before_the_trainer_starts_is_the_failure_reason(workspace, tmp_path):
    """The real command fails on its config (the trainer never starts): the reason shown
    is the line its outcome file carries, not whatever its log says last."""
    from infosft.app import jobs

    run = workspace / "trainings" / "bad"
    missing = tmp_path / "missing.jsonl"
    job = jobs.launch("bad", "train", run, kind="train",
                      config={"data": str(missing), "out": str(run)})
    assert job.argv[3:7] == ["--status-file", str(job.outcome_path), "train", "--config"]
    deadline = time.time() + 60
    while (st := jobs.train_status(run))["state"] == "queued" and time.time() < deadline:
        time.sleep(0.2)
    assert st["state"] == "failed"
    assert st["message"] == f"{job.config_path}: config field 'data': no such file {missing}"
    assert jobs.outcome(job)["returncode"] == 2


def test_a_job_killed_before_it_could_report_says_so(workspace):
    """No outcome file: the message says the process was killed, even when its log ends
    with something that looks like an error line."""
    from infosft.app import jobs

    run = workspace / "trainings" / "killed"
    jobs.start("killed", [sys.executable, "-c", "import os, signal; print('infosft: "
                                "error: a line from the log'); os.kill(os.getpid(), "
                                "signal.SIGKILL)"], run, kind="train")
    deadline = time.time() + 20
    while (st := jobs.train_status(run))["state"] == "queued" and time.time() < deadline:
        time.sleep(0.2)
    assert st["state"] == "failed"
    assert st["message"] == "the process was killed (SIGKILL) before it could report; see its log"
    assert "a line from the log" in st["log"]  # the log is still shown, for the details


# --- a real training from the page -------------------------------------------------------

@pytest.mark.slow
def test_launch_a_tiny_training_from_the_page(tmp_path, workspace, tiny_model_dir):
    from infosft.app import jobs

    data = tmp_path / "six.jsonl"
    data.write_text("".join(SAMPLE_DATA.read_text().splitlines(keepends=True)[:6]))
    at = app()
    for key, value in (("train_data", str(data)), ("train_model", str(tiny_model_dir)),
                       ("train_name", "tiny")):
        at.text_input(key=key).set_value(value)
    at.radio(key="train_by").set_value("steps").run()
    for key, value in (("train_max_steps", 2), ("train_log_every", 1), ("train_batch", 2),
                       ("train_max_len", 256), ("train_eval_split", 0.2),
                       ("train_eval_every", 1)):
        at.number_input(key=key).set_value(value)
    at.run()
    at.button(key="train_go").click().run()
    ok(at)
    run = workspace / "trainings" / "tiny"
    assert at.success and at.selectbox(key="train_pick").value == str(run)
    deadline = time.time() + 90
    while (st := jobs.train_status(run))["state"] not in ("finished", "failed", "stopped"):
        assert time.time() < deadline, f"still {st['state']}; log:\n{st['log']}"
        time.sleep(1)
    assert st["state"] == "finished", st["message"] or st["log"]
    assert (run / "final" / "adapter_config.json").exists()
    at.run()
    ok(at)
    assert any("final" in s.value for s in at.success)
    table = at.dataframe[0].value
    assert table["state"].to_list() == ["finished"] and table["progress"][0] == "2/2"
    assert table["final_eval_loss"][0] is not None
    # "Evaluate every N steps" = 1: an eval loss at each step, not only at the end
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(m["step"] for m in logged if m.get("eval_loss") is not None) == [1, 2]
    at.text_input(key="train_name").set_value("tiny").run()
    at.button(key="train_go").click().run()
    assert at.error and "already exists" in at.error[0].value


def test_q_drift_heat_map_and_band_weights_follow_the_logged_histograms(workspace):
    from infosft.analysis.training import q_drift

    hists = [[0] * 20 for _ in range(3)]
    hists[0][2], hists[0][10] = 6, 2          # step 1: mostly q in [0.10, 0.15)
    hists[1][10], hists[1][19] = 4, 4         # step 2: half medium, half high
    hists[2][19] = 8                          # step 3: all learned
    metrics = [{**m, "q_hist": h, "weight_share_low": 0.0, "weight_share_medium": wm,
                "weight_share_high": 1 - wm}
               for m, h, wm in zip(losses([2.0, 1.0, 0.5]), hists, [1.0, 0.6, 0.0])]
    metrics.insert(1, {"step": 9, "loss": 1.5, "q_hist": [1, 2]})  # damaged: skipped
    run = fake_run(workspace, "drift", status={"state": "finished", "step": 3,
                                               "total_steps": 3}, metrics=metrics)
    drift = q_drift(run)
    assert sorted(drift["step"].unique().to_list()) == [1, 2, 3]
    row = drift.filter((pl.col("step") == 1) & (pl.col("q_low") == 0.1))
    assert row["share"].to_list() == [0.75] and row["q_high"].to_list() == [0.15]
    assert drift.group_by("step").agg(pl.col("share").sum())["share"].to_list() == \
        pytest.approx([1.0, 1.0, 1.0])
    at = app()
    pick(at, run)
    ok(at)
    spec = next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
                if c.key == "train_drift_chart")
    heat = spec["data"][0]
    assert heat["type"] == "heatmap" and heat["x"] == [1, 2, 3]
    z = [[float(v) for v in r] for r in heat["z"]]
    assert z[2] == [0.75, 0.0, 0.0] and z[19] == [0.0, 0.5, 1.0]  # bins (y) by steps (x)
    bands = {t["name"]: t["y"] for t in charts(at)["train_band_chart"]["data"]}
    assert bands["medium q"] == [1.0, 0.6, 0.0] and bands["high q (≥ 0.9)"] == [0.0, 0.4, 1.0]


def test_compare_says_why_when_no_run_logged_the_curve(workspace):
    run = fake_run(workspace, "noeval", status={"state": "finished", "step": 2,
                                                "total_steps": 2}, metrics=losses([2.0, 1.5]))
    at = app()
    ok(at)
    assert at.multiselect(key="train_compare").value == [str(run)]
    assert "train_compare_chart" not in charts(at)  # no empty eval-loss axes
    assert any("No eval loss logged for these runs (they had no eval split)" in c.value
               for c in at.caption)
    at.radio(key="train_compare_y").set_value("loss").run()
    assert charts(at)["train_compare_chart"]["data"][0]["y"] == [2.0, 1.5]


def test_a_run_finds_its_job_without_reading_every_record(workspace, monkeypatch):
    """``train_job`` reads one pointer file: it neither lists the job records nor confuses
    two runs, and a newer job into the same run replaces the older one."""
    from infosft.app import jobs

    a, b = workspace / "trainings" / "a", workspace / "trainings" / "b"
    first = jobs.start("a", [sys.executable, "-c", "pass"], a, kind="train")
    other = jobs.start("b", [sys.executable, "-c", "pass"], b, kind="train")
    monkeypatch.setattr(jobs, "list_jobs", lambda *a, **k: pytest.fail("listed every job"))
    assert jobs.train_job(a).id == first.id and jobs.train_job(b).id == other.id
    second = jobs.start("a", [sys.executable, "-c", "pass"], a, kind="train")
    assert jobs.train_job(a).id == second.id
    assert jobs.train_job(workspace / "trainings" / "c") is None
    assert jobs.latest_job(a, "eval") is None  # a kind of its own


def test_compare_picks_up_a_run_that_logs_while_the_page_is_open(workspace):
    """A run that logs its first loss while the page is open joins the comparison (its
    options and its selection), without the user's own picks being undone."""
    one = fake_run(workspace, "one", status={"state": "finished", "step": 2, "total_steps": 2},
                   metrics=losses([2.0, 1.5]))
    two = fake_run(workspace, "two", status={"state": "finished", "step": 2, "total_steps": 2},
                   metrics=losses([2.2, 1.7]))
    at = app()
    assert at.multiselect(key="train_compare").value == [str(one), str(two)]
    at.multiselect(key="train_compare").set_value([str(two)]).run()  # the user drops one
    new = fake_run(workspace, "three", status={"state": "running", "step": 1,
                                               "total_steps": 4}, metrics=losses([2.4]))
    at.run()  # the fragment's next tick
    compare = at.multiselect(key="train_compare")
    assert "three" in compare.options  # shown by name
    assert compare.value == [str(two), str(new)]
    at.switch_page("views/tune.py").run()
    at.switch_page(PAGE).run()  # Streamlit drops a widget's value while its page is away
    assert at.multiselect(key="train_compare").value == [str(two), str(new)]
