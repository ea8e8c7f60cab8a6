"""The layers import only downwards: app/ (infosft.app) -> analysis/ (infosft.analysis) ->
infosft/'s own modules (the core). Read from the source, so a new upward import fails here
before it becomes a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ABOVE = {"infosft": ("infosft.analysis", "infosft.app"), "analysis": ("infosft.app",)}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


@pytest.mark.parametrize("layer", sorted(ABOVE))
def test_no_module_imports_a_layer_above_it(layer):
    files = [p for p in (ROOT / layer).glob("*.py") if p.name != "__main__.py"]
    assert len(files) > 5
    upward = {f"{p.relative_to(ROOT)}: {name}" for p in files for name in _imports(p)
              if name.startswith(ABOVE[layer])}
    assert not upward


def test_the_checker_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from infosft.app import state\nimport infosft.analysis.store\n")
    assert {"infosft.app.state", "infosft.analysis.store"} <= _imports(bad)


def test_no_test_module_imports_another():
    """Shared test code lives in tests/helpers.py (functions) and tests/conftest.py
    (fixtures); a test module importing another would run that module's tests' setup
    and hide where a fixture comes from."""
    tests = Path(__file__).resolve().parent
    offenders = []
    for path in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{path.name}: {n}" for n in names
                          if n.split(".")[-1].startswith("test_") or ".test_" in n]
    assert offenders == []
