"""Config-first commands (:mod:`infosft.configs`, :mod:`infosft.outcome`): every
setting of ``score``, ``train`` and ``eval`` is a dataclass field whose help makes the
flag; ``--config FILE`` gives the same fields; typed flags beat the file; and
``--status-file`` tells a launcher how the command ended."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from infosft.analysis.evaluate import EvalConfig
from infosft.analysis.score import ScoreConfig
from infosft.app.cli import build_parser
from infosft.configs import build, read_config_file, write_config
from infosft.errors import InfosftError
from infosft.outcome import read_outcome
from infosft.train_config import TrainConfig
from tests.helpers import (MATH_ROWS, cli, error_line, good_row, make_training_run, perturbed,
                           write_jsonl)


def _help(command: str) -> str:
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return " ".join(sub.format_help().split())


@pytest.mark.parametrize("command, cls, hidden", [
    ("score", ScoreConfig, {"head_chunk"}), ("eval", EvalConfig, {"token_budget",
                                                                 "gen_batch_size"}),
    ("train", TrainConfig, {"knobs"})])
def test_every_field_is_a_flag_with_its_help(command, cls, hidden):
    text = _help(command)
    for f in fields(cls):
        if f.name in hidden:
            continue
        assert " ".join(f.metadata["help"].split()) in text, (command, f.name)


def test_score_from_a_config_file_equals_score_from_flags(tmp_path, capsys, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", [good_row(i) for i in range(3)])
    rc, _, err = cli(capsys, "score", data, "--out", tmp_path / "flags", "--model",
                     tiny_model_dir, "--max-length", 64, "--limit", 2, "--top-k", 3,
                     "--no-template", "--quiet")
    assert rc == 0, err
    config = write_config({"source": str(data), "out": str(tmp_path / "file"),
                           "model": str(tiny_model_dir), "max_length": 64, "limit": 3,
                           "top_k": 3, "use_template": False}, tmp_path / "s.yaml")
    # --limit typed on the command line beats the file's limit: 3
    rc, _, err = cli(capsys, "score", "--config", config, "--limit", 2, "--quiet")
    assert rc == 0, err
    meta = [json.loads((tmp_path / d / "meta.json").read_text()) for d in ("flags", "file")]
    assert meta[0]["counts"] == meta[1]["counts"] and meta[1]["counts"]["examples"] == 2
    drop = {"out"}
    assert ({k: v for k, v in meta[0]["config"].items() if k not in drop}
            == {k: v for k, v in meta[1]["config"].items() if k not in drop})


@pytest.mark.parametrize("text, message", [
    ("source: d.jsonl\nout: r\nlimit: abc\n", "s.yaml: config field 'limit': expected int "
     "or null, got 'abc'"),
    ("source: d.jsonl\nout: r\nbogus: 1\n", "s.yaml: unknown config key 'bogus'"),
    ("out: r\n", "SOURCE is required (or 'source' in the --config file)"),
    ("source: d.jsonl\nout: r\nfields: [prompt]\n", "s.yaml: config field 'fields': "
     "expected dict[str, str] or null, got ['prompt']"),
])
def test_a_bad_config_file_is_one_line_naming_file_and_field(tmp_path, capsys, monkeypatch,
                                                             text, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(text)
    rc, _, err = cli(capsys, "score", "--config", "s.yaml")
    assert rc == 2 and error_line(err).removeprefix("infosft: error: ").startswith(message)


def test_the_status_file_says_how_the_command_ended(tmp_path, capsys, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", [good_row(0), {"prompt": "no response"}])
    status = tmp_path / "outcome.json"
    rc, _, err = cli(capsys, "--status-file", status, "score", data, "--out", tmp_path / "r",
                     "--model", tiny_model_dir, "--quiet")
    said = read_outcome(status)
    assert rc == 2 and said["returncode"] == 2 and said["command"] == "score"
    assert said["error"] == error_line(err).removeprefix("infosft: error: ")
    assert "line 2, field 'response'" in said["error"]
    rc, _, _ = cli(capsys, "--status-file", status, "score", data, "--out", tmp_path / "r",
                   "--model", tiny_model_dir, "--skip-invalid", "--quiet")
    said = read_outcome(status)
    assert rc == 0 and said["returncode"] == 0 and said["error"] is None
    assert said["ended_at"] >= said["started_at"]
    rc = cli(capsys, "--status-file", status, "score", "--no-such-flag")[0]
    assert rc == 2 and read_outcome(status)["error"].startswith("invalid command line")


def test_eval_takes_its_runs_from_the_config_file(tmp_path, capsys, tiny_model_dir, tokenizer):
    run = make_training_run(tmp_path / "run", perturbed(tiny_model_dir, 0.05, "layers.1"), tokenizer,
                            base=str(tiny_model_dir), eval_rows=MATH_ROWS[:2])
    config = write_config({"runs": [str(run)], "limit": 2, "accuracy_limit": 0,
                           "default_prior": False,
                           "prior_data": [str(write_jsonl(tmp_path / "p.jsonl",
                                                          MATH_ROWS[2:4]))]},
                          tmp_path / "e.yaml")
    rc, out, err = cli(capsys, "eval", "--config", config, "--quiet")
    assert rc == 0, err
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["status"] == "complete"
    assert report["settings"]["limit"] == 2 and report["settings"]["default_prior"] is False
    rc, _, err = cli(capsys, "eval", "--quiet")
    assert rc == 2 and "give at least one finished training run" in error_line(err)


def test_build_keeps_defaults_and_checks_types(tmp_path):
    cfg = build(EvalConfig, {"accuracy_limit": 3}, {"accuracy_limit": None, "limit": 4})
    assert (cfg.accuracy_limit, cfg.limit, cfg.max_new_tokens) == (3, 4, 256)
    with pytest.raises(InfosftError, match="e.yaml: config field 'runs': expected list"):
        build(EvalConfig, {"runs": "run"}, source="e.yaml")
    path = write_config({"runs": ["a"], "limit": None}, tmp_path / "x.yaml")
    assert read_config_file(path) == {"runs": ["a"], "limit": None}
