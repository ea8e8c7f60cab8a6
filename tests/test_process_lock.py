"""Process identity (pid + start time), the run-directory lock and the atomic writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import lock_held_by_another_process
from infosft import process
from infosft.atomic import atomic_write, atomic_write_text, remove_temp_files
from infosft.errors import InfosftError
from infosft.runlock import LOCK, RunLock, clear_dir, holder, is_empty, is_locked


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_alive_compares_start_time():
    proc = _sleeper()
    try:
        started = process.start_time(proc.pid)
        assert process.alive(proc.pid, started)
        # the same pid with another start time is a stranger that inherited the number
        assert not process.alive(proc.pid, started - 5.0)
        assert process.alive(proc.pid)  # legacy record without a start time: pid only
    finally:
        proc.kill()
        proc.wait()
    assert not process.alive(proc.pid, started)


def test_terminate_spares_a_stranger_with_the_same_pid():
    proc = _sleeper()
    try:
        started = process.start_time(proc.pid)
        assert not process.terminate(proc.pid, started + 100.0)
        time.sleep(0.2)
        assert proc.poll() is None  # not signalled
        assert process.terminate(proc.pid, started)
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()


def test_alive_zombie_and_other_host():
    proc = _sleeper()
    proc.kill()
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped: a zombie
    assert not process.alive(proc.pid)
    proc.wait()
    assert process.alive(12345678, 1.0, host="another-host")  # cannot check: trusted
    assert not process.alive(None) and not process.alive(True)


def test_lock_refuses_a_second_writer_and_dies_with_its_holder(tmp_path):
    run = tmp_path / "run"
    with lock_held_by_another_process(run) as holder_proc:  # SIGKILLed at the end
        assert is_locked(run)
        assert holder(run)["pid"] == holder_proc.pid
        with pytest.raises(InfosftError, match=rf"in use by another infosft process \(pid "
                                               rf"{holder_proc.pid}\)") as e:
            RunLock(run, "resuming").acquire()
        assert "\n" not in str(e.value) and str(run) in str(e.value)
    assert not is_locked(run)
    with RunLock(run) as lock:  # the kernel released the dead holder's lock
        assert lock is not None and holder(run)["pid"] == os.getpid()


def test_lock_removes_a_directory_it_created_when_nothing_was_written(tmp_path):
    run = tmp_path / "new"
    with pytest.raises(ValueError):
        with RunLock(run):
            assert (run / LOCK).is_file()
            raise ValueError("bad input")
    assert not run.exists()
    with RunLock(run):
        (run / "meta.json").write_text("{}")
    assert (run / "meta.json").is_file()
    nested = tmp_path / "a" / "b" / "run"
    with pytest.raises(ValueError):
        with RunLock(nested):
            raise ValueError("bad input")
    assert not (tmp_path / "a").exists()  # the parents it made go too
    existing = tmp_path / "existing"
    existing.mkdir()
    with RunLock(existing):
        assert (existing / LOCK).is_file()
    assert existing.is_dir() and list(existing.iterdir()) == []  # left as it was found


def test_clear_dir_keeps_the_lock(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        (run / "tokens").mkdir()
        (run / "tokens" / "part-0.parquet").write_text("x")
        (run / "meta.json").write_text("{}")
        assert not is_empty(run)
        clear_dir(run)
        assert is_empty(run) and (run / LOCK).is_file()


def test_atomic_write_permissions_and_no_leftovers(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)  # not mkstemp's 0600
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "b.bin", lambda tmp: (tmp.write_bytes(b"half"),
                                                       (_ for _ in ()).throw(RuntimeError("x"))))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_atomic_write_names_the_file_when_the_disk_is_full(tmp_path):
    class LibraryError(Exception):  # e.g. polars' ComputeError wrapping ENOSPC
        pass

    def full(tmp):
        raise LibraryError("failed to write: No space left on device (os error 28)")

    with pytest.raises(OSError) as e:
        atomic_write(tmp_path / "part.parquet", full)
    assert e.value.filename == str(tmp_path / "part.parquet")
    assert list(tmp_path.iterdir()) == []


def test_remove_temp_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".part-1.parquet.abc.tmp").write_text("half")
    (tmp_path / "keep.parquet").write_text("whole")
    assert remove_temp_files(tmp_path) == 1
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["keep.parquet"]


def test_a_lock_file_deleted_by_its_last_holder_is_not_a_lock(tmp_path):
    """A process that opened the lock file just before its holder deleted it must not
    think it holds the lock (a third process could create a new file and lock that)."""
    import fcntl

    run = tmp_path / "run"
    run.mkdir()
    first = RunLock(run).acquire()
    stale = os.open(run / LOCK, os.O_RDWR)  # opened while the first still holds it
    first.release()  # deletes the file, then unlocks
    assert not (run / LOCK).exists()
    fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # an unlinked inode: locks "fine"
    try:
        with RunLock(run):  # the path's file is a new one: taken, not blocked by the stale fd
            assert is_locked(run)
    finally:
        os.close(stale)


def test_acquire_retries_when_the_file_it_locked_was_deleted(tmp_path, monkeypatch):
    """The race the inode check closes: the file we opened is deleted by its last holder
    before our flock; holding that orphan would leave the path free for a third process."""
    import infosft.runlock as runlock

    run = tmp_path / "run"
    run.mkdir()
    real_open, calls = os.open, []

    def open_then_lose_it(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        calls.append(path)
        if len(calls) == 1:
            os.unlink(path)  # the previous holder deletes it as it lets go
        return fd

    monkeypatch.setattr(runlock.os, "open", open_then_lose_it)
    with RunLock(run):
        monkeypatch.setattr(runlock.os, "open", real_open)
        assert len(calls) == 2
        assert is_locked(run)  # the lock is on the file at the path, not an orphan
