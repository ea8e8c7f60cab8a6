"""The Streamlit launcher behind ``infosft app``: runs Streamlit's own ``streamlit run``
in this process (so SIGTERM / Ctrl+C stop the server itself; there is no child to
orphan), after three checks Streamlit does not do for us:

* the port is free, before any URL is printed (else the URL would name whatever holds
  the port);
* every HTTP request and WebSocket upgrade must carry a ``Host`` the app was bound to.
  A web page can rebind its own domain to 127.0.0.1, after which the browser sends it
  to this server with ``Host: evil.example.com``; refusing unknown names defeats that.
  Streamlit's ``server.allowedHosts`` checks the WebSocket only, so it is set *and* an
  ASGI middleware checks every request. The middleware is installed into Streamlit's
  app factory; if that hook is missing (another Streamlit), the app refuses to start
  rather than serve unprotected;
* uncaught errors show no traceback in the browser (``client.showErrorDetails``).

Two settings of this process keep a slider move fast while a browser draws beside it:

* what the pages use is imported and frozen out of the garbage collector
  (:func:`preload`): Streamlit runs a full ``gc.collect()`` after every script run,
  which walked ~300k module objects each time (~250 ms of a Tune slider move);
* numpy's BLAS runs one thread (:func:`one_blas_thread`): the statistics' dot products
  over a large run's cells are small, and two BLAS threads spinning against the
  browser's own made them 4x slower (``tune_view`` at 100M: 94 ms instead of 24 ms with
  another process busy on the second core).
"""

from __future__ import annotations

import errno
import gc
import importlib
import ipaddress
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from infosft.errors import InfosftError

MAIN = Path(__file__).resolve().parent / "main.py"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
WILDCARD = ("0.0.0.0", "::", "")
ALLOW_ENV = "INFOSFT_ALLOW_HOSTS"  # comma-separated extra host names


def allowed_hosts(host: str, extra: list[str] | None = None) -> list[str]:
    """The ``Host`` names (no ports) the app answers to when bound to ``host``: the
    bound address, the loopback names when it listens there, and for a wildcard bind the
    machine's name and addresses; plus ``extra`` and ``$INFOSFT_ALLOW_HOSTS`` (``*``
    accepts any)."""
    names = {host.strip("[]").lower()} - {""}
    if _is_loopback(host) or host in WILDCARD:
        names |= set(LOOPBACK)
    if host in WILDCARD:  # reachable on every interface: by its name or any address
        import psutil

        names.add(socket.gethostname().lower())
        names |= {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values()
                  for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)}
    env = os.environ.get(ALLOW_ENV, "").split(",")
    names |= {h.strip().strip("[]").lower() for h in [*(extra or []), *env] if h.strip()}
    return sorted(names - set(WILDCARD))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def host_allowed(header: str | None, allowed: list[str]) -> bool:
    """Whether a request's ``Host`` header names an allowed host. Ports are ignored:
    a rebinding page differs in the name, and proxies may rewrite the port."""
    if "*" in allowed:
        return True
    try:
        parsed = urlparse(f"//{header or ''}")
        name, _ = parsed.hostname, parsed.port  # .port raises on a malformed port
    except ValueError:
        return False
    if not name or parsed.username or parsed.password or parsed.path:
        return False
    return name.lower().rstrip(".") in allowed


class HostCheck:
    """ASGI middleware: 403 for HTTP requests and WebSocket upgrades whose ``Host`` is
    not allowed (lifespan and other scopes pass through)."""

    def __init__(self, app, allowed: list[str]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if not host_allowed(host, self.allowed):
                if scope["type"] == "websocket":
                    await receive()  # websocket.connect; closing before accept is a 403
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = f"host {host!r} is not allowed; see `infosft app --help`\n".encode()
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def install_host_check(allowed: list[str]) -> None:
    """Wrap the ASGI app Streamlit's server builds in :class:`HostCheck`. Raises
    :class:`InfosftError` when this Streamlit has no such factory (fail closed)."""
    try:
        from streamlit.web.server.starlette import starlette_server as server
        factory = server.create_starlette_app
    except (ImportError, AttributeError) as e:
        raise InfosftError(f"cannot install the Host check into this Streamlit ({e}); "
                           "refusing to start without it (install streamlit 1.67)") from None
    if getattr(factory, "host_checked", False):
        factory = factory.__wrapped__

    def create_starlette_app(runtime):
        return HostCheck(factory(runtime), allowed)

    create_starlette_app.host_checked, create_starlette_app.__wrapped__ = True, factory
    server.create_starlette_app = create_starlette_app


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`InfosftError` (one line) when ``host:port`` cannot be bound."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host or None, port,
                                                          type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise InfosftError(f"cannot bind to {host!r}: {e.strerror}") from None
    with socket.socket(family, kind, proto) as s:
        # as Streamlit binds: a port left in TIME_WAIT by a stopped app counts as free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                raise InfosftError(f"port {port} is in use; choose another with --port") \
                    from None
            raise InfosftError(f"cannot bind to {host}:{port}: {e.strerror}") from None


def flag_options(host: str, port: int, allowed: list[str]) -> list[str]:
    """``streamlit run`` flags."""
    argv = ["--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "minimal",  # no "Deploy": a local tool
            "--client.showErrorDetails", "none"]  # an uncaught error: no traceback shown
    for name in allowed:
        argv += ["--server.allowedHosts", name]
    return argv


#: what the pages import (the views themselves run as scripts, so they are not in here)
PRELOAD = ("streamlit", "uvicorn", "pandas", "pyarrow.compute", "pyarrow.pandas_compat",
           "plotly.graph_objects", "infosft.app.state", "infosft.app.charts",
           "infosft.app.knobs", "infosft.app.render", "infosft.app.jobs",
           "infosft.app.sweep_view", "infosft.analysis.breakdown", "infosft.analysis.tune",
           "infosft.analysis.evaluate", "infosft.analysis.training", "infosft.analysis.runs",
           "infosft.analysis.preview")


def preload(modules: tuple[str, ...] = PRELOAD) -> int:
    """Import ``modules`` and move every object alive now into the collector's permanent
    generation (``gc.freeze``); returns how many were frozen.

    Streamlit's ``runner.postScriptGC`` runs ``gc.collect(2)`` after each script run, and
    a full collection walks every tracked object: with torch, transformers and plotly
    loaded that is ~300k module-level objects (150-250 ms a rerun, most of a slider
    move's server time). Module objects live as long as the process, so freezing them
    loses nothing; objects the scripts make later are still collected after each run.
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional extra not installed: its page says so itself
            pass
    gc.collect()  # import-time garbage is freed, not frozen
    gc.freeze()
    return gc.get_freeze_count()


def one_blas_thread() -> None:
    """Limit numpy's BLAS (OpenBLAS, MKL or BLIS, whichever is loaded) to one thread in
    this process for its lifetime. Through ``threadpoolctl``, not ``OPENBLAS_NUM_THREADS``:
    an environment variable would be inherited by the scoring and training jobs the app
    starts, which do want every core (and numpy is loaded already)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def serve(host: str = "127.0.0.1", port: int = 8501, workspace: str | None = None,
          allow_hosts: list[str] | None = None) -> int:
    """Check the port and the Host hook, then run Streamlit until SIGTERM / Ctrl+C."""
    from streamlit.web import cli as stcli

    if workspace:
        os.environ["INFOSFT_WORKSPACE"] = str(Path(workspace).resolve())
    allowed = allowed_hosts(host, allow_hosts)
    install_host_check(allowed)
    check_port_free(host, port)
    preload()
    one_blas_thread()
    shown = f"[{host}]" if ":" in host else host
    print(f"infosft app on http://{shown}:{port} (Ctrl+C to stop); answers to host names: "
          f"{', '.join(allowed)} (more with {ALLOW_ENV})", flush=True)
    try:
        stcli.main.main(["run", str(MAIN), *flag_options(host, port, allowed)],
                        prog_name="streamlit", standalone_mode=False)
    except KeyboardInterrupt:
        pass
    return 0
