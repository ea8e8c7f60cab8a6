"""The built wheel works outside the checkout: installed into a fresh directory and run
from an empty one, with no path back to the repository (``python -S``: no ``.pth`` file
runs, so the checkout's editable install cannot stand in for a file the wheel lacks).

Checked: it installs one top-level name (``infosft``) and every page and bundled file of
the repository; ``infosft app`` serves and opens on the bundled sample run; ``infosft
eval``'s default prior set is found and reads; the bundled sample data can be scored."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel file, install dir, env for ``python -S``, empty working directory)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy: an in-tree build reuses build/ from earlier builds, whose stale
    # files would hide one the wheel no longer gets.
    src = tmp / "src"
    local = {".git", ".venv", "build", "dist", "test-artifacts", "workspace", "runs"}
    shutil.copytree(ROOT, src, ignore=lambda d, names: [
        n for n in names if (Path(d) == ROOT and n in local) or n == "__pycache__"
        or n.endswith(".egg-info")])
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, timeout=600)
    wheel, = (tmp / "dist").glob("infosft-*.whl")
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=600)
    deps = sysconfig.get_paths()["purelib"]  # torch, streamlit, ...: never infosft itself
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), deps]))
    empty = tmp / "empty"
    empty.mkdir()
    return wheel, target, env, empty


def _python(installed, code: str, timeout: float = 300) -> str:
    _, _, env, empty = installed
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=empty, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_wheel_holds_one_top_level_name_and_every_page_and_bundled_file(installed):
    wheel = installed[0]
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"infosft", wheel.name.split("-py")[0] + ".dist-info"}
    repo = {f"infosft/app/views/{p.name}" for p in (ROOT / "app" / "views").glob("*.py")}
    repo |= {"infosft/sample_data/" + str(p.relative_to(ROOT / "sample_data"))
             for p in (ROOT / "sample_data").rglob("*")
             if p.is_file() and p.suffix in {".jsonl", ".json", ".parquet"}}
    assert len(repo) > 10 and repo <= set(names), repo - set(names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "infosft = infosft.app.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_installed_package_finds_its_files_and_imports_no_generic_names(installed):
    target = installed[1]
    out = json.loads(_python(installed, """
import importlib.util, json, tempfile
from pathlib import Path
import infosft
from infosft.analysis.evaluate import DEFAULT_PRIOR, combine_prior
from infosft.app import serve
print(json.dumps({
    "infosft": infosft.__file__, "prior": str(DEFAULT_PRIOR), "main": str(serve.MAIN),
    "prior_rows": len(combine_prior([str(DEFAULT_PRIOR)], Path(tempfile.mkdtemp()) / "p.jsonl",
                                    None).read_text().splitlines()),
    "generic": [n for n in ("app", "analysis", "sample_data") if importlib.util.find_spec(n)],
}))
"""))
    for key in ("infosft", "prior", "main"):
        assert Path(out[key]).is_relative_to(target), (key, out[key])
    want = sum(1 for line in (ROOT / "sample_data" / "prior.jsonl").read_text().splitlines()
               if line.strip())
    assert out["prior_rows"] == want > 0
    assert out["generic"] == []


def test_installed_app_serves_and_opens_on_the_bundled_sample_run(installed):
    target = installed[1]
    out = json.loads(_python(installed, """
import json
from streamlit.testing.v1 import AppTest
from infosft.app import serve
at = AppTest.from_file(str(serve.MAIN), default_timeout=120)
at.run()
print(json.dumps({"errors": [e.value for e in at.exception] + [e.value for e in at.error],
                  "run": at.session_state["run_path"], "title": [t.value for t in at.title]}))
""", timeout=300))
    assert out["errors"] == []
    assert Path(out["run"]) == target / "infosft" / "sample_data" / "runs" / "sample"
    assert out["title"], "the default page drew nothing"

    _, _, env, empty = installed
    port = free_port()
    log = open(empty / "app.log", "wb")
    proc = subprocess.Popen([sys.executable, "-S", "-m", "infosft", "app", "--port", str(port),
                             "--workspace", str(empty / "ws")], cwd=empty, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                              timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, \
                    (empty / "app.log").read_text()[-2000:]
                time.sleep(0.3)
        assert page == b"ok"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_installed_cli_scores_the_bundled_sample_data(installed):
    _, target, env, empty = installed
    data = target / "infosft" / "sample_data" / "sft_sample.jsonl"
    out = subprocess.run([sys.executable, "-S", "-m", "infosft", "score", str(data), "--out",
                          str(empty / "scored"), "--limit", "2", "--quiet"], cwd=empty, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    meta = json.loads((empty / "scored" / "meta.json").read_text())
    assert meta["status"] == "complete"
    assert meta["counts"]["examples"] == 2 and meta["counts"]["target_tokens"] > 0
