"""Sweeps from the browser: the Train page's sweep form (its command line, read back by
the real CLI parser), the queue read from a sweep's directory (``sweep_progress``), job
states with Stop and Resume (``app.sweep_jobs``), and one real tiny sweep launched from
the page and followed to its frontier."""

from __future__ import annotations

import doctest
import json
import os
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

import infosft.app.sweep_jobs as sweep_jobs  # noqa: E402
from infosft import train_status as ts  # noqa: E402
from infosft.analysis import sweep  # noqa: E402
from infosft.app import jobs  # noqa: E402
from infosft.app.cli import build_parser  # noqa: E402
from infosft.errors import InfosftError  # noqa: E402
from infosft.train_config import load_config, resolve  # noqa: E402
from tests.helpers import MATH_ROWS, write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAIN = str(ROOT / "app" / "main.py")


@pytest.fixture(autouse=True)
def workspace(tmp_path, monkeypatch) -> Path:
    ws = tmp_path / "ws"
    monkeypatch.setenv("INFOSFT_WORKSPACE", str(ws))
    return ws


def train_page(**state) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    at.switch_page("views/train.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_doctests():
    assert doctest.testmod(sweep_jobs).failed == 0


def test_grid_and_seeds_are_checked_with_one_line_errors():
    assert sweep_jobs.parse_grid(" sft \n\ninfosft:C=2.5\n") == ["sft", "infosft:C=2.5"]
    for bad in ("", "infosft:P=2", "nosuch"):
        with pytest.raises(InfosftError):
            sweep_jobs.parse_grid(bad)
    for bad in ("", "0 x", "1 1"):
        with pytest.raises(InfosftError):
            sweep_jobs.parse_seeds(bad)


def test_the_form_launches_the_sweep_the_cli_reads_back(workspace, tmp_path, monkeypatch):
    launched = []
    monkeypatch.setattr(jobs, "start", lambda name, argv, run_dir, kind="score", log=None:
                        launched.append((name, argv, run_dir, kind)) or
                        jobs.Job("j1", name, kind, argv, os.getpid(), str(run_dir), "x.log", 0))
    data = write_jsonl(tmp_path / "d.jsonl", MATH_ROWS[:4])
    at = train_page()
    at.text_input(key="train_data").set_value(str(data))
    at.radio(key="train_what").set_value("a sweep").run()
    at.text_area(key="sw_grid").set_value("sft\ninfosft:P=0.9\nprofit:threshold=0.2")
    at.text_input(key="sw_seeds").set_value("0 1")
    at.text_input(key="sw_name").set_value("grid")
    at.number_input(key="train_batch").set_value(2)
    at.number_input(key="train_eval_split").set_value(0.25)
    at.run()
    assert any("6 training runs, one after another" in c.value for c in at.caption)
    at.text_input(key="sw_devices").set_value("cpu, cpu").run()
    assert any("6 training runs, side by side on 2 devices" in c.value for c in at.caption)
    at.button(key="sw_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (name, argv, run_dir, kind), = launched
    assert (name, kind, run_dir) == ("grid", "sweep", workspace / "sweeps" / "grid")
    assert argv[:3] == [sys.executable, "-m", "infosft"] and argv[5] == "sweep"
    args = build_parser().parse_args(argv[3:])
    assert args.points == ["sft", "infosft:P=0.9", "profit:threshold=0.2"]
    assert args.seeds == [0, 1] and args.out == str(run_dir)
    assert args.devices == ["cpu", "cpu"]
    cfg = resolve(load_config(args.config), {"out": str(run_dir / "runs" / "_")})
    assert (cfg.data, cfg.batch_size, cfg.eval_split, cfg.lora) == (str(data), 2, 0.25, True)
    assert at.session_state["sw_follow"] == str(run_dir)


def test_the_form_refuses_what_would_fail_later(workspace, tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "start", lambda *a, **k: pytest.fail("launched"))
    data = write_jsonl(tmp_path / "d.jsonl", MATH_ROWS[:4])
    at = train_page()
    at.text_input(key="train_data").set_value(str(data))
    at.radio(key="train_what").set_value("a sweep").run()
    at.text_area(key="sw_grid").set_value("sft\ninfosft:P=1.5").run()
    assert at.error and "infosft:P=1.5" in at.error[0].value
    at.text_area(key="sw_grid").set_value("sft").run()
    at.text_input(key="sw_devices").set_value("cpu cuda:99").run()  # checked as the CLI does
    assert at.error and "device 'cuda:99' is not available" in at.error[0].value
    at.text_input(key="sw_devices").set_value("").run()
    at.number_input(key="train_eval_split").set_value(0.0)
    at.button(key="sw_go").click().run()
    assert at.error and "Nothing to evaluate on" in at.error[0].value
    (workspace / "sweeps" / "taken").mkdir(parents=True)
    at.number_input(key="train_eval_split").set_value(0.2)
    at.text_input(key="sw_name").set_value("taken")
    at.button(key="sw_go").click().run()
    assert at.error and "already exists" in at.error[0].value


def _plan(out: Path, points: list[str], seeds: list[int]) -> None:
    out.mkdir(parents=True)
    (out / sweep.SWEEP_FILE).write_text(json.dumps(
        {"points": points, "seeds": seeds, "train": {}, "eval": {}}))


def _run(out: Path, name: str, state: str, step: int, total: int, report: str | None = None):
    run = out / sweep.RUNS / name
    run.mkdir(parents=True)
    (run / ts.CONFIG).write_text("scheme: sft\n")
    ts.write_status(run, state=state, step=step, total_steps=total, pid=None)
    if report:
        (run / "eval").mkdir()
        (run / "eval" / "report.json").write_text(json.dumps({"status": report}))


def test_progress_is_read_from_the_sweep_directory(workspace):
    out = workspace / "sweeps" / "s"
    _plan(out, ["sft", "dft", "profit"], [0])
    _run(out, "sft-s0", "finished", 4, 4, report="complete")
    _run(out, "dft-s0", "finished", 4, 4, report="running")
    p = sweep.sweep_progress(out)
    assert [r["state"] for r in p["runs"]] == ["done", "evaluating", "waiting"]
    assert (p["done"], p["total"], p["current"]) == (1, 3, "dft-s0")
    assert p["fraction"] == pytest.approx(1 / 3)
    (out / sweep.RUNS / "dft-s0" / "eval" / "report.json").write_text(
        json.dumps({"status": "complete"}))
    _run(out, "profit-s0", "stopped", 1, 4)
    p = sweep.sweep_progress(out)
    assert [r["state"] for r in p["runs"]] == ["done", "done", "stopped"]
    assert p["fraction"] == pytest.approx(2 / 3) and p["current"] is None


def _job(out: Path, code: str) -> jobs.Job:
    job = jobs.start(out.name, [sys.executable, "-c", code], out, kind=sweep_jobs.KIND)
    deadline = time.time() + 30
    while jobs.alive(job):
        assert time.time() < deadline
        time.sleep(0.05)
    return job


def test_job_states_stop_and_resume(workspace, monkeypatch):
    out = workspace / "sweeps" / "s"
    _plan(out, ["sft", "dft"], [0])
    _run(out, "sft-s0", "finished", 4, 4, report="complete")
    # a stand-in for the command: it says why it failed in its outcome file, as the CLI does
    log = jobs.new_job_log()
    code = ("import sys, time; from infosft.outcome import write_outcome; "
            f"write_outcome({str(log.with_suffix(jobs.OUTCOME))!r}, 'sweep', 2, "
            "'data.jsonl: row 3: bad', time.time()); sys.exit(2)")
    job = jobs.start(out.name, [sys.executable, "-c", code], out, kind=sweep_jobs.KIND, log=log)
    deadline = time.time() + 30
    while jobs.alive(job):
        assert time.time() < deadline
        time.sleep(0.05)
    st = sweep_jobs.sweep_status(out)
    assert st["state"] == "failed" and st["message"] == "data.jsonl: row 3: bad"
    assert (st["done"], st["total"]) == (1, 2)
    with pytest.raises(InfosftError, match="not running"):
        sweep_jobs.stop_sweep(out)
    launched = []
    monkeypatch.setattr(jobs, "start", lambda name, argv, run_dir, kind="score", log=None:
                        launched.append(argv) or jobs.Job("j2", name, kind, argv, os.getpid(),
                                                          str(run_dir), "x.log", time.time()))
    sweep_jobs.resume_sweep(out)
    assert launched[0][5:] == ["sweep", "--out", str(out), "--resume", "--quiet"]
    assert build_parser().parse_args(launched[0][3:]).resume


def test_the_queue_panel_shows_the_runs_and_offers_resume(workspace, monkeypatch):
    out = workspace / "sweeps" / "s"
    _plan(out, ["sft", "dft"], [0])
    _run(out, "sft-s0", "finished", 4, 4, report="complete")
    _run(out, "dft-s0", "stopped", 2, 4)
    at = train_page()
    queue = at.dataframe[-1].value  # the queue: the page's last table
    assert list(queue["name"]) == ["sft-s0", "dft-s0"]
    assert list(queue["state"]) == ["done", "stopped"]
    assert "stopped · 1 of 2 runs done" in at.get("progress")[-1].proto.text
    launched = []
    monkeypatch.setattr(jobs, "start", lambda name, argv, run_dir, kind="score", log=None:
                        launched.append(argv) or jobs.Job("j3", name, kind, argv, os.getpid(),
                                                          str(run_dir), "x.log", time.time()))
    at.button(key="sw_resume").click().run()
    assert launched and "--resume" in launched[0]
    at.button(key="sw_to_eval").click().run()
    assert at.title[0].value == "Evaluate"
    assert at.selectbox(key="sw_pick").value == str(out)


@pytest.mark.slow  # a real sweep of two tiny trainings, launched from the page
def test_a_tiny_sweep_from_the_page_runs_to_its_frontier(workspace, tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", MATH_ROWS[:8])
    at = train_page()
    at.text_input(key="train_data").set_value(str(data))
    at.text_input(key="train_model").set_value(str(tiny_model_dir))
    at.radio(key="train_by").set_value("steps").run()
    for key, value in (("train_max_steps", 1), ("train_batch", 4), ("train_eval_split", 0.25),
                       ("train_max_len", 256)):
        at.number_input(key=key).set_value(value)
    at.radio(key="train_what").set_value("a sweep").run()
    at.text_area(key="sw_grid").set_value("sft\ninfosft:P=0.9")
    at.text_input(key="sw_name").set_value("tiny")
    at.number_input(key="sw_acc").set_value(1)
    at.number_input(key="sw_new").set_value(8)
    at.run()
    at.button(key="sw_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    out = workspace / "sweeps" / "tiny"
    deadline = time.time() + 300
    while (st := sweep_jobs.sweep_status(out))["state"] in ("starting", "running"):
        assert time.time() < deadline, st["log"]
        time.sleep(1)
    assert st["state"] == "finished", st["message"] or st["log"]
    report = sweep.read_sweep_report(out)
    assert [r["scheme"] for r in report["runs"]] == ["sft", "infosft"]
    assert all(r["learned"]["low"] <= r["learned"]["value"] <= r["learned"]["high"]
               for r in report["runs"])
    at.run()
    assert "finished · 2 of 2 runs done" in at.get("progress")[-1].proto.text
    at.button(key="sw_to_eval").click().run()
    assert at.title[0].value == "Evaluate" and not at.exception
    assert len(at.get("plotly_chart")) >= 1
