"""Issue #13 for the app: nothing lost, nothing crashes, nobody in. A real ``infosft app``
over HTTP and WebSocket (Host checks, SIGTERM, a busy port), previews of decompression
bombs, job records whose pid now names a stranger, paths and uploads that mean one file,
a workspace that cannot be left through a symlink, and pages on a damaged run."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import app_page, free_port

ROOT = Path(__file__).resolve().parents[1]


def start_app(port: int, ws: Path, log: Path, *flags: str) -> subprocess.Popen:
    """``infosft app`` as a user starts it (its own session, like a terminal's job)."""
    out = open(log, "wb")
    return subprocess.Popen([sys.executable, "-m", "infosft", "app", "--port", str(port),
                             "--workspace", str(ws), *flags], cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_serving(port: int, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
            return
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.3)
    pytest.fail(f"the app did not start: {log.read_text()[-2000:]}")


def serving(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_status(port: int, host: str, path: str = "/", headers: dict | None = None) -> int:
    """The status line of a raw HTTP/1.1 request with exactly this ``Host`` header."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close",
             *(f"{k}: {v}" for k, v in (headers or {}).items()), "", ""]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall("\r\n".join(lines).encode())
        head = s.recv(4096).decode("latin-1")
    return int(head.split()[1])


def ws_status(port: int, host: str, origin: str) -> int:
    """The status of a WebSocket upgrade to Streamlit's stream (101 = accepted)."""
    key = base64.b64encode(os.urandom(16)).decode()
    return http_status(port, host, "/_stcore/stream", {
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": key, "Origin": origin})


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    ws = tmp_path / "ws"
    monkeypatch.setenv("INFOSFT_WORKSPACE", str(ws))
    return ws


page = app_page


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    port = free_port()
    tmp = tmp_path_factory.mktemp("app")
    proc = start_app(port, tmp / "ws", tmp / "app.log", "--allow-host", "proxy.example.test")
    wait_serving(port, proc, tmp / "app.log")
    yield port
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=20)


# --- 1. DNS rebinding: only the bound host names get in ---------------------------------

@pytest.mark.slow
def test_http_with_a_foreign_host_is_refused(app_server):
    port = app_server
    assert http_status(port, f"evil.example.com:{port}") == 403
    assert http_status(port, f"evil.example.com:{port}", "/_stcore/health") == 403
    for good in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}",
                 "proxy.example.test"):  # the last one by --allow-host
        assert http_status(port, good) == 200, good


@pytest.mark.slow
def test_websocket_with_a_foreign_host_is_refused(app_server):
    port = app_server
    evil = f"evil.example.com:{port}"
    assert ws_status(port, evil, f"http://{evil}") != 101
    assert ws_status(port, f"127.0.0.1:{port}", f"http://127.0.0.1:{port}") == 101
    # a foreign page talking to the right host (no rebinding) is refused by its Origin
    assert ws_status(port, f"127.0.0.1:{port}", f"http://{evil}") != 101


def test_allowed_hosts(monkeypatch):
    from infosft.app.serve import ALLOW_ENV, allowed_hosts, host_allowed

    local = allowed_hosts("127.0.0.1")
    assert set(local) == {"127.0.0.1", "localhost", "::1"}
    assert host_allowed("LOCALHOST:8501", local) and host_allowed("[::1]:1", local)
    for bad in ("evil.example.com", "localhost.evil.example.com", "", "a@localhost",
                "localhost:notaport", "127.0.0.2"):
        assert not host_allowed(bad, local), bad
    lan = allowed_hosts("0.0.0.0", ["box.lan"])
    assert {"localhost", "box.lan", socket.gethostname().lower()} <= set(lan)
    assert "0.0.0.0" not in lan and not host_allowed("evil.example.com", lan)
    monkeypatch.setenv(ALLOW_ENV, "app.example.com, [fd00::1]")
    assert {"app.example.com", "fd00::1"} <= set(allowed_hosts("127.0.0.1"))
    assert host_allowed("anything", allowed_hosts("127.0.0.1", ["*"]))


def test_host_check_fails_closed(monkeypatch):
    """A Streamlit without the app factory the check wraps: refuse to start."""
    from streamlit.web.server.starlette import starlette_server

    from infosft.app.serve import install_host_check
    from infosft.errors import InfosftError

    monkeypatch.delattr(starlette_server, "create_starlette_app")
    with pytest.raises(InfosftError, match="refusing to start"):
        install_host_check(["127.0.0.1"])


def test_preload_leaves_the_post_run_collection_little_to_walk():
    """Streamlit runs ``gc.collect(2)`` after every script run; ``infosft app`` first
    imports what the pages use and freezes it, so that collection walks only what the
    scripts made (a fresh process: freezing is for the life of the process)."""
    code = """if True:
        import gc, json
        from infosft.app.serve import PRELOAD, preload
        assert preload(("no_such_module_xyz",)) >= 0  # a missing extra does not stop the app
        frozen = preload()
        walked = len(gc.get_objects())
        a = []; a.append(a); del a  # garbage made after the freeze is still collected
        print(json.dumps([frozen, walked, gc.collect(), "torch" in __import__("sys").modules]))
    """
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    frozen, walked, collected, torch = json.loads(r.stdout.strip().splitlines()[-1])
    assert torch  # the heavy modules are what is frozen
    assert frozen > 100_000 and walked < frozen / 10, (frozen, walked)
    assert collected >= 1


def test_one_blas_thread_holds_for_the_app_process_not_its_jobs():
    code = """if True:
        import json, subprocess, sys
        import numpy  # noqa: F401 - loads the BLAS
        from threadpoolctl import threadpool_info
        from infosft.app.serve import one_blas_thread
        blas = lambda: sorted({i["num_threads"] for i in threadpool_info()
                               if i["user_api"] == "blas"})
        before = blas()
        one_blas_thread()
        job = subprocess.run([sys.executable, "-c", "import numpy, json; from threadpoolctl "
                              "import threadpool_info as t; print(json.dumps(sorted({i["
                              "'num_threads'] for i in t() if i['user_api'] == 'blas'})))"],
                             capture_output=True, text=True, check=True).stdout
        print(json.dumps([before, blas(), json.loads(job)]))
    """
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    before, after, job = json.loads(r.stdout.strip().splitlines()[-1])
    assert before and after == [1]
    assert job == before  # a scoring or training job the app starts keeps every thread


# --- 2. SIGTERM stops the server; a busy port is one line ---------------------------------

@pytest.mark.slow
def test_second_app_on_a_busy_port_is_one_line(app_server, tmp_path):
    r = subprocess.run([sys.executable, "-m", "infosft", "app", "--port", str(app_server),
                        "--workspace", str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip() == (f"infosft: error: port {app_server} is in use; choose "
                                "another with --port")
    assert "http://" not in r.stdout  # no URL of whatever else holds the port


@pytest.mark.slow
def test_sigterm_stops_the_server(tmp_path):
    import psutil

    port = free_port()
    proc = start_app(port, tmp_path / "ws", tmp_path / "app.log")
    try:
        wait_serving(port, proc, tmp_path / "app.log")
        family = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
        proc.send_signal(signal.SIGTERM)  # the launcher only, as `kill PID` or systemd do
        deadline = time.time() + 15
        while time.time() < deadline and (serving(port) or any(map(psutil.pid_exists, family))):
            time.sleep(0.2)
        leftover = [p for p in family if psutil.pid_exists(p)
                    and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert not serving(port), "the port is still served after SIGTERM"
        assert not leftover, f"processes left after SIGTERM: {leftover}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=20)


# --- 3. previews cost what they show, not what the file expands to ---------------------

_WRITE_BOMB = """
import sys, pyarrow as pa, pyarrow.parquet as pq
n = int(sys.argv[2])
data = pa.py_buffer(b"x" * n)  # one n-byte string, plain-encoded in one page
col = pa.LargeStringArray.from_buffers(1, pa.py_buffer(pa.array([0, n], pa.int64()).buffers()[1]), data)
pq.write_table(pa.table({"text": col}), sys.argv[1], compression="zstd", use_dictionary=False,
               data_page_size=1 << 31 - 1)
"""

_MEASURE = """
import json, resource, sys, time
import pyarrow.parquet  # noqa: F401 - the readers' own memory is not the preview's
from infosft.analysis.preview import preview
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.time()
pv = preview(sys.argv[1])
print(json.dumps({"grew_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
                  "s": time.time() - t, "rows": pv.rows.height, "problems": pv.problems,
                  "cell": max((len(v) for v in pv.rows.to_dicts()[0].values()), default=0)
                  if pv.rows.height else 0}))
"""


def measure_preview(path: Path) -> dict:
    """``preview(path)`` in a fresh process: how much its peak RSS grew, and the result."""
    import json

    r = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]  # no exception escapes
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.parquet"
    subprocess.run([sys.executable, "-c", _WRITE_BOMB, str(path), str(200 << 20)], check=True,
                   timeout=120)
    assert path.stat().st_size < 64 << 10  # KB on disk, 200 MB decompressed
    return path


def test_parquet_bomb_preview_is_a_message_not_memory(bomb):
    got = measure_preview(bomb)
    assert got["grew_mb"] < 50, got
    assert got["s"] < 10 and got["rows"] == 0
    assert "too large to preview" in got["problems"][0] and "bomb.parquet" in got["problems"][0]


def test_data_page_shows_the_bomb_as_one_line(bomb, workspace):
    at = page("views/data.py")
    at.radio(key="data_kind").set_value("Local path").run()
    at.text_input(key="data_path").set_value(str(bomb)).run()
    assert not at.exception
    assert [e.value for e in at.error if "too large to preview" in e.value]
    assert at.button(key="score_go").disabled


def test_text_preview_reads_only_the_head(tmp_path):
    """JSONL with a 150 MB tail: the first rows show, the tail is never read; a first
    record longer than the head is a message."""
    big = tmp_path / "big.jsonl"
    with open(big, "w") as f:
        for i in range(5):
            f.write(f'{{"prompt": "p{i}", "response": "{"r" * 5000}"}}\n')
        f.write('{"prompt": "tail", "response": "' + "y" * (150 << 20) + '"}\n')
    got = measure_preview(big)
    assert got["grew_mb"] < 30 and got["rows"] == 5 and not got["problems"], got
    assert got["cell"] < 5000  # long cells are cut for display
    one = tmp_path / "one.jsonl"
    one.write_text('{"prompt": "' + "z" * (20 << 20) + '", "response": "r"}\n')
    got = measure_preview(one)
    assert got["rows"] == 0 and "longer than" in got["problems"][0], got


def test_json_array_preview_reads_only_the_head(tmp_path):
    from infosft.analysis import preview as pvm

    p = tmp_path / "arr.json"
    rows = [{"prompt": f"p{i}", "response": "r" * 1000} for i in range(20_000)]
    p.write_text(json.dumps(rows))
    assert p.stat().st_size > pvm.HEAD_BYTES
    pv = pvm.preview(str(p))
    assert pv.rows.height == 5 and pv.kind == "pair" and not pv.problems


# --- 4. a job's pid, reused by a stranger, is not the job ------------------------------

@pytest.fixture
def stranger():
    """An unrelated process leading its own process group, as a reused pid would be."""
    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def stranger_job(workspace, stranger, kind="score", **extra):
    """A job record (as a killed job leaves it) whose pid now names ``stranger``."""
    from infosft.app import jobs
    from infosft import process

    jobs_dir = workspace / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    run = workspace / ("trainings" if kind == "train" else "runs") / "gone"
    job = jobs.Job("20260101-000000-abcdef", "gone", kind, ["infosft"], stranger.pid,
                   str(run), str(jobs_dir / "20260101-000000-abcdef.log"), time.time() - 600,
                   started=process.start_time(stranger.pid) - 500, host=process.current()["host"],
                   **extra)
    job.save()
    return job


def test_a_stranger_with_the_jobs_pid_is_not_the_job(workspace, stranger):
    from infosft.app import jobs

    job = stranger_job(workspace, stranger)
    assert not jobs.alive(job)
    assert jobs.status(jobs.list_jobs()[0])["state"] == "failed"
    jobs.cancel(job)
    time.sleep(0.3)
    assert stranger.poll() is None, "Cancel signalled a process that is not the job"


def test_stop_train_spares_a_stranger(workspace, stranger):
    from infosft.app import jobs
    from infosft import process

    job = stranger_job(workspace, stranger, kind="train")
    run = Path(job.run_dir)
    run.mkdir(parents=True)
    status = {"state": "running", "step": 1, "total_steps": 10, "pid": stranger.pid,
              "started": process.start_time(stranger.pid) - 500,
              "host": process.current()["host"], "updated_at": time.time()}
    (run / "status.json").write_text(json.dumps(status))
    with pytest.raises(Exception, match="nothing to stop"):
        jobs.stop_train(run)
    time.sleep(0.3)
    assert stranger.poll() is None, "Stop signalled a process that is not the training"


def test_job_identity_is_stored_and_old_records_still_read(workspace):
    from infosft.app import jobs
    from infosft import process

    job = jobs.start("live", [sys.executable, "-c", "import time; time.sleep(30)"],
                      workspace / "runs" / "live")
    try:
        rec = json.loads(job.record_path.read_text())
        assert rec["started"] == process.start_time(job.pid) and rec["host"]
        assert jobs.alive(job)
        for key in ("started", "host"):  # a record written before identities were stored
            rec.pop(key)
        job.record_path.write_text(json.dumps(rec))
        old = jobs.load(job.id)
        assert old.started is None and jobs.alive(old)
    finally:
        jobs.cancel(job)
    deadline = time.time() + 10
    while jobs.alive(job) and time.time() < deadline:
        time.sleep(0.1)
    assert not jobs.alive(job)


# --- 5. a relative path means one file, in the preview and in the job -------------------

def test_relative_paths_reach_jobs_absolute(tmp_path, workspace, monkeypatch):
    """The app started in ``tmp_path``: ``data/d.jsonl`` is previewed and scored as
    ``tmp_path/data/d.jsonl``, although jobs run in the repository root."""
    from infosft.app import jobs

    (tmp_path / "data").mkdir()
    data = tmp_path / "data" / "d.jsonl"
    data.write_text('{"prompt": "hi", "response": "there"}\n')
    monkeypatch.chdir(tmp_path)
    launched = []
    monkeypatch.setattr(jobs, "start", lambda name, argv, run_dir, kind="score", log=None:
                        launched.append(argv) or jobs.Job("j", name, kind, argv, 0, str(run_dir),
                                                          "x.log", 0.0))
    at = page("views/data.py")
    at.radio(key="data_kind").set_value("Local path").run()
    at.text_input(key="data_path").set_value("data/d.jsonl").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(str(data) in c.value for c in at.caption)  # the preview names the file
    at.button(key="score_go").click().run()
    from infosft.configs import read_config_file

    argv, = launched
    assert read_config_file(argv[argv.index("--config") + 1])["source"] == str(data)
    values = jobs.train_values("data/d.jsonl", workspace / "t", model="data")
    assert (values["data"], values["model"]) == (str(data), str(tmp_path / "data"))
    values = jobs.eval_config(["data"], task_data="data/d.jsonl", prior_data=["data/d.jsonl"])
    assert values["runs"] == [str(tmp_path / "data")]
    assert values["task_data"] == str(data) and values["prior_data"] == [str(data)]
    assert jobs.train_values("openai/gsm8k", workspace / "t")["data"] == "openai/gsm8k"  # hub


# --- 6. uploads are content-addressed ------------------------------------------------------

def test_uploads_of_one_name_never_replace_each_other(workspace):
    from infosft.app.workspace import save_upload

    first = save_upload("data.jsonl", b'{"prompt": "a", "response": "1"}\n')
    mtime = first.stat().st_mtime_ns
    second = save_upload("data.jsonl", b'{"prompt": "b", "response": "2"}\n')
    assert first != second and first.name == second.name == "data.jsonl"
    assert first.read_bytes() == b'{"prompt": "a", "response": "1"}\n'  # still what run 1 read
    again = save_upload("data.jsonl", b'{"prompt": "a", "response": "1"}\n')
    assert again == first and again.stat().st_mtime_ns == mtime  # reused, not rewritten
    assert first.parent.parent == second.parent.parent == workspace / "uploads"
    odd = save_upload("../../we ird.jsonl", b"x")
    assert odd.name == "we_ird.jsonl" and odd.parent.parent == workspace / "uploads"


# --- 7. a workspace folder replaced by a symlink does not carry writes out --------------

@pytest.mark.parametrize("kind", ["runs", "exports", "uploads", "jobs", "trainings"])
def test_a_symlinked_workspace_folder_is_refused(tmp_path, workspace, kind):
    from infosft.app import workspace as wsm
    from infosft.errors import InfosftError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    workspace.mkdir()
    (workspace / kind).symlink_to(elsewhere)
    with pytest.raises(InfosftError, match="leads outside the workspace"):
        wsm.subdir(kind)
    (workspace / kind).unlink()
    (workspace / kind).symlink_to(tmp_path / "dangling")  # mkdir would follow it
    with pytest.raises(InfosftError, match="leads outside the workspace"):
        wsm.subdir(kind)
    assert not (tmp_path / "dangling").exists() and not any(elsewhere.iterdir())


def test_a_symlinked_folder_is_one_line_on_the_pages(tmp_path, workspace):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    workspace.mkdir()
    for kind in ("runs", "exports", "trainings", "jobs"):
        (workspace / kind).symlink_to(elsewhere)
    for script in ("views/data.py", "views/train.py", "views/evaluate.py"):
        at = page(script)
        assert not at.exception, (script, [e.value for e in at.exception])
        assert any("leads outside the workspace" in e.value for e in at.error), script
    at = page("views/export.py")
    at.button(key="export_go").click().run()
    assert not at.exception and any("leads outside the workspace" in e.value for e in at.error)
    assert not any(elsewhere.iterdir())


# --- 8. a damaged run is one line on every page, never a traceback -----------------------

PAGES = ["views/data.py", "views/overview.py", "views/tune.py", "views/examples.py",
         "views/token_view.py", "views/export.py", "views/train.py", "views/evaluate.py"]


def damage(run: Path, how: str) -> None:
    import shutil

    parts = sorted((run / "tokens").glob("*.parquet"))
    if how == "truncated part":
        data = parts[0].read_bytes()
        parts[0].write_bytes(data[: len(data) // 2])
    elif how == "garbage part":
        parts[0].write_bytes(b"PAR1" + os.urandom(4096) + b"PAR1")
    elif how == "garbage meta":
        (run / "meta.json").write_text("{not json")
    elif how == "meta not an object":
        (run / "meta.json").write_text("[1, 2]")
    elif how == "meta of wrong types":
        meta = json.loads((run / "meta.json").read_text())
        meta.update(model="x", dataset=None, counts="many", max_length="long")
        (run / "meta.json").write_text(json.dumps(meta))
    elif how == "truncated examples":
        (run / "examples.parquet").write_bytes((run / "examples.parquet").read_bytes()[:100])
    elif how == "no vocab":
        (run / "vocab.parquet").unlink()
    elif how == "no tokens":
        shutil.rmtree(run / "tokens")


@pytest.mark.parametrize("how", ["truncated part", "garbage part", "garbage meta",
                                 "meta not an object", "meta of wrong types",
                                 "truncated examples", "no vocab", "no tokens"])
def test_damaged_run_is_one_line_on_every_page(tmp_path, workspace, how):
    import shutil

    run = tmp_path / "damaged"
    shutil.copytree(ROOT / "sample_data" / "runs" / "sample", run)
    damage(run, how)
    errors = []
    for script in PAGES:
        at = page(script, run_path=str(run))
        assert not at.exception, (how, script, [e.value[:300] for e in at.exception])
        errors += [e.value for e in at.error]
    at = page("views/export.py", run_path=str(run))
    for button in [b for b in at.button if b.key == "export_go"]:  # reads every part
        button.click().run()
        assert not at.exception, (how, [e.value[:300] for e in at.exception])
        errors += [e.value for e in at.error]
    assert errors and all("\n" not in e and "Traceback" not in e for e in errors), (how, errors)


def training_run(ws: Path, name: str, **files: str | bytes) -> Path:
    """A finished training run as the trainer leaves it, with ``files`` replaced."""
    run = ws / "trainings" / name
    (run / "final").mkdir(parents=True)
    (run / "final" / "adapter_config.json").write_text("{}")
    (run / "final" / "adapter_model.safetensors").write_bytes(b"")
    good = {"config.yaml": "data: d.jsonl\nscheme: sft\nmode: online\nlora: true\n",
            "status.json": json.dumps({"state": "finished", "step": 2, "total_steps": 2,
                                       "host": socket.gethostname()}),
            "metrics.jsonl": '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n',
            "train.log": "log\n"}
    for rel, content in {**good, **files}.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        getattr(run / rel, "write_bytes" if isinstance(content, bytes) else "write_text")(content)
    return run


@pytest.mark.parametrize("files", [
    {"status.json": "{garbage"}, {"status.json": "[]"}, {"config.yaml": ": : :\n- ["},
    {"config.yaml": "[1, 2]\n"}, {"metrics.jsonl": '{"step": 1, "loss": 2.0}\n{"ste'},
    {"metrics.jsonl": '{"step": "x", "loss": "y"}\n[]\n'}, {"train.log": b"\xff\xfe\x00"},
    {"eval/report.json": "{trunc"}, {"eval/report.json": '{"status": "complete"}'},
    {"eval/progress.json": "{trunc"}, {"status.json": json.dumps(
        {"state": "finished", "step": "two", "total_steps": None, "final_model": 3})},
], ids=lambda f: ",".join(f"{k}:{str(v)[:12]}" for k, v in f.items()))
def test_damaged_training_run_is_one_line_on_train_and_evaluate(workspace, files):
    run = training_run(workspace, "damaged", **files)
    training_run(workspace, "good")
    for script in ("views/train.py", "views/evaluate.py"):
        at = page(script, eval_runs=[str(run)])
        assert not at.exception, (script, [e.value[:400] for e in at.exception])
        assert all("\n" not in e.value for e in at.error), (script, [e.value for e in at.error])
        assert [b for b in at.button if b.key in ("train_go", "ev_go")]  # the form stays
    at = page("views/train.py")
    for sel in [s for s in at.selectbox if s.key == "train_pick"]:
        sel.set_value(str(run)).run()
        assert not at.exception, [e.value[:400] for e in at.exception]
