"""Issue #13 for the app: nothing lost, nothing crashes, nobody in. A real ``infosft app``
over HTTP and WebSocket (Host checks, SIGTERM, a busy port), previews of decompression
bombs, job records whose pid now names a stranger, paths and uploads that mean one file,
a workspace that cannot be left through a symlink, and pages on a damaged run."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, ws: Path, log: Path) -> subprocess.Popen:
    """``infosft app`` as a user starts it (its own session, like a terminal's job)."""
    out = open(log, "wb")
    return subprocess.Popen([sys.executable, "-m", "app.cli", "app", "--port", str(port),
                             "--workspace", str(ws)], cwd=ROOT, stdout=out,
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


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    port = free_port()
    tmp = tmp_path_factory.mktemp("app")
    proc = start_app(port, tmp / "ws", tmp / "app.log")
    wait_serving(port, proc, tmp / "app.log")
    yield port
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=20)


# --- 1. DNS rebinding: only the bound host names get in ---------------------------------

def test_http_with_a_foreign_host_is_refused(app_server):
    port = app_server
    assert http_status(port, f"evil.example.com:{port}") == 403
    assert http_status(port, f"evil.example.com:{port}", "/_stcore/health") == 403
    for good in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert http_status(port, good) == 200, good


def test_websocket_with_a_foreign_host_is_refused(app_server):
    port = app_server
    evil = f"evil.example.com:{port}"
    assert ws_status(port, evil, f"http://{evil}") != 101
    assert ws_status(port, f"127.0.0.1:{port}", f"http://127.0.0.1:{port}") == 101


def test_allowed_hosts():
    from app.serve import allowed_hosts, host_allowed

    local = allowed_hosts("127.0.0.1")
    assert set(local) == {"127.0.0.1", "localhost", "::1"}
    assert host_allowed("LOCALHOST:8501", local) and host_allowed("[::1]:1", local)
    for bad in ("evil.example.com", "localhost.evil.example.com", "", "a@localhost",
                "localhost:notaport", "127.0.0.2"):
        assert not host_allowed(bad, local), bad
    lan = allowed_hosts("0.0.0.0", ["box.lan"])
    assert {"localhost", "box.lan", socket.gethostname().lower()} <= set(lan)
    assert "0.0.0.0" not in lan and not host_allowed("evil.example.com", lan)


def test_host_check_fails_closed(monkeypatch):
    """A Streamlit without the app factory the check wraps: refuse to start."""
    from streamlit.web.server.starlette import starlette_server

    from app.serve import install_host_check
    from infosft.errors import InfosftError

    monkeypatch.delattr(starlette_server, "create_starlette_app")
    with pytest.raises(InfosftError, match="refusing to start"):
        install_host_check(["127.0.0.1"])


# --- 2. SIGTERM stops the server; a busy port is one line ---------------------------------

def test_second_app_on_a_busy_port_is_one_line(app_server, tmp_path):
    r = subprocess.run([sys.executable, "-m", "app.cli", "app", "--port", str(app_server),
                        "--workspace", str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip() == (f"infosft: error: port {app_server} is in use; choose "
                                "another with --port")
    assert "http://" not in r.stdout  # no URL of whatever else holds the port


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
