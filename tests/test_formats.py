"""Each on-disk format has one module that names its paths and reads and writes it; the
others go through that module. The guards read the source (like test_layers.py), so a
second spelling of a file name fails here."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from infosft.analysis.store import Run

ROOT = Path(__file__).resolve().parents[1]
SOURCE = sorted(p for layer in ("infosft", "analysis", "app") for p in (ROOT / layer).rglob("*.py"))


def _spelling(text: str, allowed: set[str]) -> list[str]:
    """The source files outside ``allowed`` (paths relative to the root) holding ``text``."""
    assert len(SOURCE) > 30
    return [str(p.relative_to(ROOT)) for p in SOURCE
            if str(p.relative_to(ROOT)) not in allowed and text in p.read_text(encoding="utf-8")]


# ---------------------------------------------------------- scoring progress files

def test_only_the_store_names_scoring_progress_files():
    assert _spelling("progress-", {"analysis/store.py"}) == []


def test_progress_files_are_written_read_and_removed_through_the_run(tmp_path):
    run = Run(tmp_path / "run")
    assert run.progress_files() == [] and run.read_progress() is None  # no directory yet
    run.path.mkdir()
    run.write_progress(0, 100, 400, 10.0)
    run.write_progress(1, 300, 400, 10.0)
    assert [p.name for p in run.progress_files()] == ["progress-000.json", "progress-001.json"]
    assert run.progress_path(1) == run.path / "progress-001.json"
    assert json.loads(run.progress_path(0).read_text()) == {
        "stage": "scoring", "done_tokens": 100, "total_tokens": 400, "elapsed_s": 10.0,
        "eta_s": 30.0}
    # summed over ranks, the ETA and the time of the slowest rank, the latest write
    p = run.read_progress()
    assert p.pop("updated") == max(f.stat().st_mtime for f in run.progress_files())
    assert p == {"stage": "scoring", "done_tokens": 400, "total_tokens": 800,
                 "elapsed_s": 10.0, "eta_s": 30.0}
    (run.path / "progress-000 (1).json").write_text("{}")  # a stray copy is not a rank
    assert len(run.progress_files()) == 2 and run.read_progress()["done_tokens"] == 400
    run.write_progress(2, 0, 50, 0.0)  # nothing done yet: no ETA
    assert json.loads(run.progress_path(2).read_text())["eta_s"] is None
    p = run.read_progress()
    assert (p["done_tokens"], p["total_tokens"], p["eta_s"]) == (400, 850, 30.0)
    run.write_progress(0, 0, 0, 2.0, stage="loading the model")  # before scoring: a stage
    assert run.read_progress()["stage"] == "loading the model"
    run.progress_path(2).write_text('{"done_tokens": 1}')  # not progress: unknown for now
    assert run.read_progress() is None
    run.remove_progress()
    assert run.progress_files() == [] and (run.path / "progress-000 (1).json").exists()


# ---------------------------------------------------------- training-run file names

def _literals(path: Path) -> set[str]:
    """Every string constant of a module, the pieces of f-strings included."""
    return {node.value for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def _literal_spelling(names: set[str], allowed: set[str]) -> list[str]:
    """``file: name`` for each source file outside ``allowed`` with a string constant that
    is one of ``names`` (or one with a slash before or after it: ``"/final"``)."""
    assert len(SOURCE) > 30
    return sorted(f"{p.relative_to(ROOT)}: {v!r}" for p in SOURCE
                  if str(p.relative_to(ROOT)) not in allowed
                  for v in _literals(p) if v.strip("/") in names)


def test_only_train_status_spells_the_training_run_file_names():
    from infosft import train_status as ts

    names = {ts.CONFIG, ts.STATUS, ts.METRICS, ts.LOG, ts.CHECKPOINTS, ts.FINAL, ts.MODEL_INFO,
             ts.EVAL_DATA, ts.SOURCE}
    # docstrings may say the names; code takes them from train_status
    assert _literal_spelling(names, {"infosft/train_status.py"}) == []


def test_the_checker_sees_a_spelled_name(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""Reads config.yaml."""\nx = run / "final"\ny = f"{run}/final"\n')
    assert {"final", "/final"} <= _literals(bad)


def test_model_info_has_one_reader(tmp_path):
    from infosft import models
    from infosft import train_status as ts
    from infosft.errors import InfosftError

    assert not hasattr(models, "MODEL_INFO")
    assert ts.read_model_info(tmp_path) is None
    (tmp_path / ts.MODEL_INFO).write_text(json.dumps({"base_model": None, "adapter": True}))
    assert ts.read_model_info(tmp_path) == {"base_model": None, "adapter": True}
    assert models._adapter_info(str(tmp_path)) == {"base_model": None, "adapter": True}
    (tmp_path / ts.MODEL_INFO).write_text(json.dumps({"adapter": False}))
    assert models._adapter_info(str(tmp_path)) is None
    for bad in ("{not json", "[1]"):
        (tmp_path / ts.MODEL_INFO).write_text(bad)
        with pytest.raises(InfosftError, match=f"{ts.MODEL_INFO}: unreadable"):
            ts.read_model_info(tmp_path)


# ---------------------------------------------------------- the evaluation directory

def test_only_evaluate_names_the_evaluation_directory_and_its_scored_runs(tmp_path):
    from infosft.analysis import evaluate as ev

    assert _spelling("base-", {"analysis/evaluate.py"}) == []
    assert _spelling("tuned-", {"analysis/evaluate.py"}) == []
    assert ev.eval_dir(tmp_path) == tmp_path / "eval"
    assert ev.report_path(tmp_path) == tmp_path / "eval" / "report.json"
    base, tuned = ev.scored_pair(tmp_path, "prior")
    assert (base.path, tuned.path) == (tmp_path / "eval" / "base-prior",
                                       tmp_path / "eval" / "tuned-prior")
    assert ev.SCORED == ("base-task", "tuned-task", "base-prior", "tuned-prior")
    with pytest.raises(ValueError):
        ev.scored_name("tuned", "other")


# ---------------------------------------------------------- the ignore label

def _minus_100(path: Path) -> int:
    """How many times a module writes the literal -100 in code (docstrings aside)."""
    return sum(1 for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
               and isinstance(node.operand, ast.Constant) and node.operand.value == 100)


def test_one_ignore_index():
    from infosft import data, loss

    assert data.IGNORE_INDEX == -100 and loss.IGNORE_INDEX is data.IGNORE_INDEX
    spelled = {str(p.relative_to(ROOT)): n for p in SOURCE if (n := _minus_100(p))}
    assert spelled == {"infosft/data.py": 1}


# ---------------------------------------------------------- the export

def test_only_export_format_names_the_export_sidecar():
    from infosft import train

    assert _spelling(".meta.json", {"infosft/export_format.py"}) == []
    assert not hasattr(train, "export_meta")  # training reads export_format.read_meta


# ---------------------------------------------------------- status.json: derived, not stored

def test_status_derives_checkpoint_resumable_and_final_from_the_directory(tmp_path):
    from infosft import train_status as ts

    run = tmp_path
    # an older status file stores the three fields: it still reads, the directory decides
    (run / ts.STATUS).write_text(json.dumps({
        "state": "stopped", "step": 2, "last_checkpoint": "elsewhere", "resumable": True,
        "final_model": "x/final"}))
    s = ts.read_status(run)
    assert (s["state"], s["step"]) == ("stopped", 2)
    assert (s["last_checkpoint"], s["resumable"], s["final_model"]) == (None, False, None)
    ckpt = run / ts.CHECKPOINTS / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    s = ts.read_status(run)
    assert (s["last_checkpoint"], s["resumable"], s["final_model"]) == (str(ckpt), True, None)
    for state in ("queued", "failed"):
        ts.write_status(run, state=state)
        assert ts.read_status(run)["resumable"] is True
    (run / ts.FINAL).mkdir()
    ts.write_status(run, state="finished")
    s = ts.read_status(run)
    assert (s["last_checkpoint"], s["resumable"], s["final_model"]) == (
        str(ckpt), False, str(run / ts.FINAL))
    # written back without them; a writer cannot store them
    assert set(json.loads((run / ts.STATUS).read_text())) == set(ts.STORED_FIELDS)
    for field in ts.DERIVED_FIELDS:
        with pytest.raises(ValueError, match="derived"):
            ts.write_status(run, **{field: None})
    assert set(ts.read_status(run)) == set(ts.STATUS_FIELDS)


def test_only_the_workspace_module_names_its_folders():
    import re

    from infosft.app import workspace

    literal = re.compile(r"""subdir\(\s*["']""")
    spelled = [str(p.relative_to(ROOT)) for p in (ROOT / "app").rglob("*.py")
               if literal.search(p.read_text(encoding="utf-8"))]
    assert spelled == []
    assert {workspace.RUNS, workspace.TRAININGS, workspace.SWEEPS, workspace.EXPORTS,
            workspace.JOBS, workspace.UPLOADS} == {"runs", "trainings", "sweeps", "exports",
                                                   "jobs", "uploads"}


# ---------------------------------------------------------- jobs: config in, outcome out

def test_job_state_never_comes_from_log_text_or_the_command_line():
    """The CLI prints its error line; only the outcome file (:mod:`infosft.outcome`) carries
    it to the app. No module but the CLI spells the line's prefix, and none reads a job's
    command line back (``.argv.index``, ``argv[``)."""
    assert _spelling("infosft: error:", {"app/cli.py"}) == []
    assert _spelling(".argv.index(", set()) == []
    assert _spelling("job.argv[", set()) == []
