"""Each on-disk format has one module that names its paths and reads and writes it; the
others go through that module. The guards read the source (like test_layers.py), so a
second spelling of a file name fails here."""

from __future__ import annotations

import json
from pathlib import Path

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
        "done_tokens": 100, "total_tokens": 400, "elapsed_s": 10.0, "eta_s": 30.0}
    # summed over ranks, the ETA of the slowest rank
    assert run.read_progress() == {"done_tokens": 400, "total_tokens": 800, "eta_s": 30.0}
    (run.path / "progress-000 (1).json").write_text("{}")  # a stray copy is not a rank
    assert len(run.progress_files()) == 2 and run.read_progress()["done_tokens"] == 400
    run.write_progress(2, 0, 50, 0.0)  # nothing done yet: no ETA
    assert json.loads(run.progress_path(2).read_text())["eta_s"] is None
    assert run.read_progress() == {"done_tokens": 400, "total_tokens": 850, "eta_s": 30.0}
    run.progress_path(2).write_text('{"done_tokens": 1}')  # not progress: unknown for now
    assert run.read_progress() is None
    run.remove_progress()
    assert run.progress_files() == [] and (run.path / "progress-000 (1).json").exists()
