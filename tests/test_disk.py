"""jasper/core/disk.py: the cache folder's location, crash-safe writes, and the one-writer lock (filelock)."""

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jasper.core.disk import atomic_write, cache_home, exclusive


def test_cache_home_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("JASPER_CACHE_HOME", str(tmp_path / "a"))
    assert cache_home() == tmp_path / "a"
    monkeypatch.delenv("JASPER_CACHE_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_home() == Path(tmp_path / "xdg" / "jasper")


def test_atomic_write_replaces_the_whole_file_or_leaves_the_old_one(tmp_path):
    path = tmp_path / "ids.bin"
    atomic_write(path, lambda f: f.write(b"first"))
    atomic_write(path, lambda f: f.write(b"second, longer"))
    assert path.read_bytes() == b"second, longer"
    assert [p.name for p in tmp_path.iterdir()] == ["ids.bin"]  # no temporary file left

    def torn(file):
        file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, torn)
    assert path.read_bytes() == b"second, longer"  # a failed write never reaches the file


def test_exclusive_does_not_log_when_the_lock_is_free(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="jasper.core.disk"):
        with exclusive(tmp_path / ".build.lock", "nothing"):
            pass
        with exclusive(tmp_path / ".build.lock", "nothing"):  # released on exit: free again
            pass
    assert [r for r in caplog.records if r.name == "jasper.core.disk"] == []


# Another process holds the lock (a plain filelock.FileLock, as any other jasper process would) until its stdin
# closes.
HOLDER = (
    "import sys, filelock\n"
    "lock = filelock.FileLock(sys.argv[1])\n"
    "lock.acquire()\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
    "lock.release()\n"
)


def test_exclusive_waits_for_a_holder_in_another_process_and_logs_it_once(tmp_path, caplog):
    lock_file = tmp_path / ".build.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    release = threading.Timer(1.0, holder.stdin.close)  # the holder finishes its writes after 1 s
    try:
        assert holder.stdout.readline().strip() == "held"
        release.start()
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="jasper.core.disk"):
            with exclusive(lock_file, "the test's shards"):
                waited = time.monotonic() - started
                assert holder.wait(timeout=30) == 0  # we are in only once the holder let go
    finally:
        release.cancel()
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert waited > 0.5
    messages = [r.getMessage() for r in caplog.records if r.name == "jasper.core.disk"]
    assert messages == [f"waiting for the test's shards (lock {lock_file}) held by another process"]
