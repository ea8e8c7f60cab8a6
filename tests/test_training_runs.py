"""``analysis.training``: listing training runs and their metrics, on run directories
written by hand here (status.json, metrics.jsonl, config.yaml), with the expected
values computed in the test."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import polars as pl
import pytest
import yaml

from infosft.analysis.training import (knobs_of, list_train_runs, metrics_frame, tail_lines)


def make_run(root: Path, name: str, *, status: dict | None = None,
             config: dict | None = None, metrics: list | None = None,
             tail: str = "") -> Path:
    """A training run directory as the trainer lays it out; ``tail`` is appended to
    metrics.jsonl raw (a line being written)."""
    run = root / name
    run.mkdir(parents=True)
    if config is not None:
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    if status is not None:
        (run / "status.json").write_text(json.dumps(status))
    if metrics is not None:
        (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics) + tail)
    return run


def train_lines(losses, weights, start=1, every=1):
    return [{"step": start + i * every, "epoch": 0.1 * (i + 1), "loss": l, "mean_weight": w,
             "zero_weight_share": 0.25, "learning_rate": 1e-4, "grad_norm": 1.0,
             "tokens_per_s": 100.0, "time": 1000.0 + i}
            for i, (l, w) in enumerate(zip(losses, weights))]


CFG = {"data": "d.jsonl", "model": None, "scheme": "infosft", "C": None, "P": 0.9,
       "threshold": None, "direction": None, "mode": "online", "lora": True, "seed": 0}


@pytest.fixture
def runs_root(tmp_path) -> Path:
    root = tmp_path / "trainings"
    here = socket.gethostname()
    make_run(root, "done", config=CFG,
             status={"state": "finished", "step": 4, "total_steps": 4, "started_at": 1000.0,
                     "final_model": "x/final"},
             metrics=train_lines([2.0, 1.5], [0.3, 0.2], every=2)
             + [{"step": 4, "epoch": 1.0, "eval_loss": 1.7, "time": 1010.0}],
             tail='{"step": 5, "loss"')  # cut by a kill: skipped
    (root / "done" / "final").mkdir()  # its final model (the stored final_model is not used)
    make_run(root, "live", config={**CFG, "scheme": "profit", "P": None, "threshold": 0.2,
                                   "direction": "lower", "lora": False},
             status={"state": "running", "step": 3, "total_steps": 10, "started_at": 3000.0,
                     "pid": os.getpid(), "host": here},
             metrics=train_lines([3.0, 2.9, 2.5], [0.9, 0.8, 0.7]))
    make_run(root, "dead", config={**CFG, "scheme": "sft", "P": None},
             status={"state": "running", "step": 1, "total_steps": 10, "started_at": 2000.0,
                     "pid": 2**22 + 12345, "host": here})  # no such process
    make_run(root, "new", config={**CFG, "scheme": "dft", "P": None, "mode": "static"})
    (root / "not-a-run").mkdir()
    return root


def test_list_train_runs_one_row_per_run(runs_root):
    runs = list_train_runs(runs_root)
    # newest first; "new" has no status yet: its folder's age (now) stands in;
    # not-a-run is left out
    assert runs["name"].to_list() == ["new", "live", "dead", "done"]
    row = {r["name"]: r for r in runs.iter_rows(named=True)}
    assert row["done"]["state"] == "finished" and row["done"]["progress"] == "4/4"
    assert row["done"]["final_loss"] == 1.5 and row["done"]["final_eval_loss"] == 1.7
    assert row["done"]["final_mean_weight"] == 0.2
    assert row["done"]["knobs"] == f"C={math.log(0.9 / 0.1):.4g}"
    assert row["done"]["lora"] is True and row["done"]["final_model"] == str(
        runs_root / "done" / "final")
    assert row["live"]["state"] == "running" and row["live"]["progress"] == "3/10"
    assert row["live"]["final_loss"] == 2.5 and row["live"]["final_eval_loss"] is None
    assert row["live"]["knobs"] == "threshold=0.2, direction=lower"
    assert row["live"]["lora"] is False
    # claims to run, but its process is gone: failed, with the reason
    assert row["dead"]["state"] == "failed" and "died" in row["dead"]["error"]
    assert row["dead"]["resumable"] is False and row["dead"]["knobs"] == ""
    # config written, no status yet
    assert row["new"]["state"] == "queued" and row["new"]["progress"] == "0/?"
    assert row["new"]["mode"] == "static" and row["new"]["final_loss"] is None
    assert runs.schema["created"] == pl.Datetime("us", "UTC")
    assert row["done"]["created"].timestamp() == 1000.0


def test_list_train_runs_empty_and_missing_root(tmp_path):
    for root in (tmp_path / "missing", tmp_path):
        runs = list_train_runs(root)
        assert runs.is_empty() and "final_loss" in runs.columns


def test_unreadable_config_still_lists(tmp_path):
    run = make_run(tmp_path, "broken", status={"state": "failed", "error": "boom"})
    (run / "config.yaml").write_text("scheme: [unclosed")
    row = list_train_runs(tmp_path).row(0, named=True)
    assert row["state"] == "failed" and row["error"] == "boom" and row["scheme"] is None


def test_metrics_frame_long_and_sorted(runs_root):
    m = metrics_frame([runs_root / "live", runs_root / "done", runs_root / "new"])
    assert m.height == 3 + 3  # done: 2 train + 1 eval line (the cut line skipped)
    assert m.columns[:3] == ["run", "path", "step"]
    done = m.filter(pl.col("run") == "done")
    assert done["step"].to_list() == [1, 3, 4]
    assert done["loss"].to_list() == [2.0, 1.5, None]
    assert done["eval_loss"].to_list() == [None, None, 1.7]
    live = m.filter(pl.col("run") == "live")
    assert live["mean_weight"].to_list() == [0.9, 0.8, 0.7]
    assert live["zero_weight_share"].to_list() == [0.25] * 3
    assert metrics_frame([]).is_empty() and "eval_loss" in metrics_frame([]).columns


def test_metrics_frame_keeps_nan_and_tolerates_odd_types(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": NaN, "extra": "x"}\n'
                                       '{"step": 2, "loss": 1, "grad_norm": null}\n'
                                       '[1, 2]\n')
    m = metrics_frame([run])
    assert m.height == 2 and math.isnan(m["loss"][0]) and m["loss"][1] == 1.0


@pytest.mark.parametrize("cfg, expected", [
    ({"scheme": "infosft", "C": 2.0}, {"C": 2.0}),
    ({"scheme": "infosft"}, {"C": pytest.approx(math.log(0.93 / 0.07))}),
    ({"scheme": "profit", "threshold": [0.2, 0.8], "direction": "middle", "seed": 3},
     {"threshold": [0.2, 0.8], "direction": "middle"}),
    ({"scheme": "profit", "threshold": 0.3, "direction": "random", "seed": 3},
     {"threshold": 0.3, "direction": "random", "seed": 3}),
    ({"scheme": "sft", "C": 5.0}, {}),
    ({"scheme": "infosft", "C": -1.0}, {}),  # invalid: no knobs rather than an error
    ({}, {}),
])
def test_knobs_of(cfg, expected):
    assert knobs_of(cfg) == expected


def test_tail_lines(tmp_path):
    p = tmp_path / "train.log"
    p.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail_lines(p, 3) == "line 97\nline 98\nline 99"
    assert tail_lines(p, 3, max_bytes=10) == "line 99"  # only the end is read, whole lines
    assert tail_lines(tmp_path / "missing.log") == ""
