"""infosft sweep: a grid trained and evaluated as a queue into one directory, a report
whose frontier is the non-dominated runs, and a resume that retrains nothing finished."""

from __future__ import annotations

import doctest
import json

import pytest

import infosft.analysis.sweep as sweep
from infosft.app.cli import main
from tests.helpers import MATH_ROWS, write_jsonl


def test_doctests():
    assert doctest.testmod(sweep).failed == 0


def test_bad_points_are_one_line_before_anything_runs(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", MATH_ROWS[:4])
    assert main(["sweep", "--data", str(data), "--out", str(tmp_path / "sw"),
                 "--scheme", "infosft:P=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("infosft: error: --scheme 'infosft:P=3': ")
    assert not (tmp_path / "sw").exists()


@pytest.mark.slow  # two tiny trainings and evaluations
def test_sweep_runs_the_grid_reports_the_frontier_and_resumes(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", MATH_ROWS[:8])
    out = tmp_path / "sw"
    argv = ["sweep", "--data", str(data), "--out", str(out), "--model", str(tiny_model_dir),
            "--scheme", "sft", "--scheme", "infosft:P=0.9", "--max-steps", "1", "--batch-size", "4", "--eval-split", "0.25", "--limit", "8",
            "--accuracy-limit", "1", "--max-new-tokens", "2", "--device", "cpu", "--quiet", "--seeds", "0"]
    assert main(argv) == 0
    report = json.loads((out / sweep.REPORT_FILE).read_text())
    rows = report["runs"]
    printed = capsys.readouterr().out
    assert sweep.format_report(report) in printed
    on = [r["run"].split("/")[-1] for r in rows if r["on_frontier"]]
    assert f"frontier: {', '.join(on)}" in printed
    assert [(r["scheme"], r["knobs"], r["seed"]) for r in rows] == [
        ("sft", {}, 0), ("infosft", {"P": 0.9}, 0)]
    for r in rows:
        ev = json.loads((out / "runs" / r["run"].split("/")[-1] / "eval" / "report.json")
                        .read_text())
        assert ev["training"]["scheme"] == r["scheme"]
        # the values are the evaluation's own numbers; the intervals hold them
        want = {"task accuracy change": lambda: ev["accuracy"]["delta"],
                "task NLL fall": lambda: -ev["learned"]["delta_nll"],
                "share of prior answers lost": lambda: (ev["prior_accuracy"]["lost"]
                                                        / ev["prior_accuracy"]["n"]),
                "prior KL(base||tuned)": lambda: ev["forgot"]["mean_kl"]}
        for key in ("learned", "forgot"):
            got = r[key]
            assert got["value"] == pytest.approx(want[r[f"{key}_measure"]](), rel=1e-5, abs=1e-9)
            assert got["low"] <= got["value"] <= got["high"]
    point_of = {json.dumps([p["scheme"], p["knobs"]]): p for p in report["points"]}
    assert len(point_of) == 2
    for r in rows:  # one seed: a point is its one run
        p = point_of[json.dumps([r["scheme"], r["knobs"]])]
        assert p["seeds"] == 1 and p["learned"]["value"] == r["learned"]["value"]
    assert [r["on_frontier"] for r in rows] == sweep.frontier(rows)
    assert any(r["on_frontier"] for r in rows)
    finals = {r["run"]: (out / "runs" / r["run"].split("/")[-1] / "final" /
                         "adapter_model.safetensors").stat().st_mtime_ns for r in rows}
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 0  # nothing to do: nothing retrained
    assert "sweep: training" not in capsys.readouterr().out
    assert finals == {r["run"]: (out / "runs" / r["run"].split("/")[-1] / "final" /
                                 "adapter_model.safetensors").stat().st_mtime_ns for r in rows}
    assert main(argv) == 2  # without --resume an existing sweep is never overwritten
    assert "use --resume" in capsys.readouterr().err
    assert main(argv[:-1] + ["1", "--resume"]) == 2
    assert "started with other settings (seeds)" in capsys.readouterr().err


@pytest.mark.slow  # a sweep stopped in its first run, then resumed with --resume alone
def test_a_killed_sweep_resumes_with_its_stored_settings(tmp_path, tiny_model_dir):
    import subprocess

    from tests.helpers import HOLD_TRAIN_AT_STEP_2, hooked_cli, wait_parked

    data = write_jsonl(tmp_path / "d.jsonl", MATH_ROWS[:8])
    out = tmp_path / "sw"
    argv = ["sweep", "--data", str(data), "--out", str(out), "--model", str(tiny_model_dir),
            "--scheme", "sft", "--scheme", "dft", "--max-steps", "3", "--batch-size", "2",
            "--logging-steps", "1",
            "--eval-split", "0.25", "--accuracy-limit", "1", "--max-new-tokens", "2",
            "--device", "cpu", "--quiet"]
    hook = HOLD_TRAIN_AT_STEP_2.replace(  # say so once parked at step 2
        "        while not self.stop.requested:",
        "        print('parked', flush=True)\n        while not self.stop.requested:")
    proc = subprocess.Popen(hooked_cli(hook, *argv), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_parked(proc), "the sweep ended before its first run reached step 2"
        proc.terminate()
        rest = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == 2 and "continue the sweep with --resume" in rest
    first = out / "runs" / "sft-s0"
    assert sweep.sweep_progress(out)["runs"][0]["state"] == "stopped"
    assert (first / "checkpoints").is_dir()
    # only --resume: the grid and every setting come from SWEEP/sweep.json
    assert main(["sweep", "--out", str(out), "--resume", "--quiet"]) == 0
    progress = sweep.sweep_progress(out)
    assert [r["state"] for r in progress["runs"]] == ["done", "done"]
    steps = [json.loads(line)["step"] for line in (first / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == [1, 2, 3]  # each step logged once: resumed from step 2, not redone
    report = json.loads((out / sweep.REPORT_FILE).read_text())
    assert [r["scheme"] for r in report["runs"]] == ["sft", "dft"]
    assert all(r["learned"] is not None for r in report["runs"])


def test_resume_alone_refuses_flags_it_would_ignore(tmp_path, capsys):
    assert main(["sweep", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "no sweep to resume" in capsys.readouterr().err
    assert main(["sweep", "--out", str(tmp_path), "--resume", "--lr", "0.1"]) == 2
    assert "drop --lr" in capsys.readouterr().err
    assert main(["sweep", "--out", str(tmp_path)]) == 2
    assert "give at least one --scheme" in capsys.readouterr().err


@pytest.mark.slow  # two tiny trainings side by side in subprocesses, each evaluated
def test_a_sweep_on_two_devices_runs_side_by_side_with_the_same_results(tmp_path,
                                                                       tiny_model_dir):
    """``--devices cpu cpu``: two workers; each run trains and is evaluated in its own
    process, both at once, and the report equals the one-after-another sweep's."""
    from infosft import train_status as ts

    data = write_jsonl(tmp_path / "d.jsonl", MATH_ROWS[:8])
    common = ["--data", str(data), "--model", str(tiny_model_dir), "--scheme", "sft",
              "--scheme", "infosft:P=0.9", "--max-steps", "2", "--batch-size", "4",
              "--eval-split", "0.25", "--limit", "8", "--accuracy-limit", "1",
              "--max-new-tokens", "2", "--device", "cpu", "--quiet", "--seeds", "0"]
    assert main(["sweep", "--out", str(tmp_path / "one"), *common]) == 0
    assert main(["sweep", "--out", str(tmp_path / "two"), *common, "--devices", "cpu",
                 "cpu"]) == 0
    one, two = (json.loads((tmp_path / d / sweep.REPORT_FILE).read_text())["runs"]
                for d in ("one", "two"))
    for a, b in zip(one, two, strict=True):
        for key in ("learned", "forgot"):
            assert b[key]["value"] == pytest.approx(a[key]["value"], rel=1e-4, abs=1e-6)
        assert a["on_frontier"] == b["on_frontier"]
    queue = tmp_path / "two" / "queue"
    spans = []
    for r in two:
        run = tmp_path / "two" / "runs" / r["run"].split("/")[-1]
        assert ts.read_status(run)["state"] == "finished"
        assert (queue / f"{run.name}.train.yaml").is_file()
        assert json.loads((queue / f"{run.name}.eval.outcome").read_text())["returncode"] == 0
        # each run's worker: from its training process' start to its evaluation's end
        # (the trainings alone, 2 steps of ~0.1 s, once missed each other by 34 ms)
        train = json.loads((queue / f"{run.name}.train.outcome").read_text())
        evaluation = json.loads((queue / f"{run.name}.eval.outcome").read_text())
        spans.append((train["started_at"], evaluation["ended_at"]))
    (a0, a1), (b0, b1) = spans
    assert a0 < b1 and b0 < a1  # the two workers ran at the same time


def test_devices_are_checked_before_anything_runs(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", MATH_ROWS[:4])
    for devices, message in ((["cpu", "tpu"], "unknown device 'tpu'"),
                             (["cuda:0", "cpu"], "not available")):
        assert main(["sweep", "--data", str(data), "--out", str(tmp_path / "sw"),
                     "--scheme", "sft", "--devices", *devices]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not (tmp_path / "sw").exists()


def test_each_device_worker_sees_only_its_device(monkeypatch):
    """A GPU worker's processes see one GPU (``cuda:N`` -> ``CUDA_VISIBLE_DEVICES=N``,
    which they then call ``cuda``); CPU workers split the cores instead of each taking
    all of them; one CPU worker keeps the environment as it is."""
    from infosft.analysis.sweep_devices import _env

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert _env("cuda:3", 0)["CUDA_VISIBLE_DEVICES"] == "3"
    assert "OMP_NUM_THREADS" not in _env("cuda:3", 0)
    assert _env("cpu", 2)["OMP_NUM_THREADS"] == "4"
    assert _env("cpu", 3)["OMP_NUM_THREADS"] == "2"
    assert "OMP_NUM_THREADS" not in _env("cpu", 1)
    assert "CUDA_VISIBLE_DEVICES" not in _env("cpu", 2)
