"""Which process wrote a record: its pid, its start time and its host.

A pid alone is not an identity: after a process dies the kernel hands its number to the
next one, so a stored pid can name a stranger. Every record that stores a process (a
training run's status, a job record, a lock file) stores :func:`current` and asks
:func:`alive` / :func:`terminate`, which compare the start time too (``psutil``'s
``create_time``: boot time plus the start ticks, stable for the life of a process).

Records written before start times were stored (``started`` is None) are checked by pid
alone, as they were.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

import psutil

# create_time is the boot time (whole seconds) plus start ticks (1/100 s): equal for one
# process whenever it is read; a different process started at least a tick apart.
_TOLERANCE_S = 0.05


def start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None when it is gone."""
    try:
        return round(psutil.Process(pid).create_time(), 2)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.Error:  # access denied (another user's process) and the like
        return None


def current() -> dict[str, Any]:
    """``{"pid", "started", "host"}`` of this process, to store in a record."""
    pid = os.getpid()
    return {"pid": pid, "started": start_time(pid), "host": socket.gethostname()}


def on_this_host(host: str | None) -> bool:
    return host in (None, socket.gethostname())


def alive(pid: Any, started: Any = None, host: str | None = None) -> bool:
    """Whether the process a record names is still running (and is not a zombie).

    ``started`` is the start time stored with the pid; a live process with another start
    time is a stranger that inherited the number, and counts as not alive. A process on
    another host cannot be checked and is taken at its word (True).
    """
    if not on_this_host(host):
        return True
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if isinstance(started, (int, float)) and abs(proc.create_time() - started) > _TOLERANCE_S:
            return False
        return True
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:  # exists, owned by someone else; its start time is unknown
        return started is None


def terminate(pid: Any, started: Any = None, host: str | None = None, *,
              group: bool = False, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig`` (SIGTERM) to the recorded process, or to its process group when
    ``group``; only when it is the same process (:func:`alive`) and on this host.
    Returns whether a signal was sent."""
    if not on_this_host(host) or not alive(pid, started, host):
        return False
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True
