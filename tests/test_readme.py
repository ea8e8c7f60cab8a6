"""The README's TRL / Trainer section runs as written, on the CPU, with no TRL warning."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Train with TRL or the Hugging Face Trainer"
# Runs blocks one after another, each in fresh globals, in one interpreter (one start of
# torch, transformers and TRL for all of them), and fails (exit 3) on any warning TRL
# raises, or that names TRL's deprecated compute_loss_func: the trainer classes must
# need no deprecated path.
RUN_BLOCKS = """
import sys, warnings
caught = []
warnings.showwarning = lambda m, c, f, *a, **k: caught.append((c.__name__, f, str(m)))
warnings.simplefilter("always")
for i, code in enumerate(sys.argv[1:]):
    exec(compile(code, f"<readme python block {i}>", "exec"), {"__name__": "__main__"})
bad = [w for w in caught if "/trl/" in w[1] or "compute_loss_func" in w[2]]
if bad:
    print("warnings from TRL:", bad, file=sys.stderr)
    sys.exit(3)
"""


def blocks(section: str) -> list[tuple[str, str]]:
    """``(language, code)`` of each fenced block of a README section, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split(section + "\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", body, re.S)


def test_the_section_has_the_three_trainers():
    code = [c for lang, c in blocks(SECTION) if lang == "python"]
    assert len(code) == 3
    assert "scheme=\"infosft\"" in code[0] and "mode=\"static\"" in code[1]
    assert "WeightedTrainer(" in code[2]


@pytest.mark.slow
def test_readme_trainer_blocks_run_as_written(tmp_path):
    # From a copy of the repository root: sample_data and the venv, nothing else.
    (tmp_path / "sample_data").symlink_to(ROOT / "sample_data")
    (tmp_path / ".venv").symlink_to(sys.prefix)  # the venv this test runs in
    section = blocks(SECTION)
    # the shell block (the export the static blocks read) first, then the Python blocks
    # in their order; the online block reads only the sample data
    for code in [c for lang, c in section if lang == "bash"]:
        proc = subprocess.run(["bash", "-euc", code], cwd=tmp_path, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, f"bash block:\n{proc.stderr[-3000:]}"
    python = [c for lang, c in section if lang == "python"]
    assert "weighted.parquet" not in python[0]  # the first block does not need the export
    proc = subprocess.run([sys.executable, "-c", RUN_BLOCKS, *python], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"python blocks:\n{proc.stderr[-3000:]}"
    for out in ("out-online", "out-static", "out-hf"):
        assert (tmp_path / out).is_dir(), out
