"""The README's TRL / Trainer section runs as written, on the CPU, with no TRL warning."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Train with TRL or the Hugging Face Trainer"
# Runs a block and fails (exit 3) on any warning TRL raises, or that names TRL's
# deprecated compute_loss_func: the trainer classes must need no deprecated path.
RUN_BLOCK = """
import sys, warnings
caught = []
warnings.showwarning = lambda m, c, f, *a, **k: caught.append((c.__name__, f, str(m)))
warnings.simplefilter("always")
exec(compile(sys.argv[1], "<readme>", "exec"), {"__name__": "__main__"})
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
    for i, (lang, code) in enumerate(blocks(SECTION)):
        argv = (["bash", "-euc", code] if lang == "bash" else
                [sys.executable, "-c", RUN_BLOCK, code])
        proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, f"block {i} ({lang}):\n{proc.stderr[-3000:]}"
    for out in ("out-online", "out-static", "out-hf"):
        assert (tmp_path / out).is_dir(), out
