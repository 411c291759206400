"""jasper/core/disk.py: the cache folder's location, crash-safe writes, and the one-writer lock (filelock)."""

import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from jasper.core.disk import atomic_write, cache_home, check_name, exclusive, load_tensors, replaced_folder


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


def test_a_failed_atomic_write_leaves_no_partial_file(tmp_path):
    path = tmp_path / "student.pt"

    def torn(file):
        file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, torn)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_replaced_folder_swaps_the_whole_folder_or_nothing(tmp_path):
    out = tmp_path / "export"
    with replaced_folder(out) as new:
        assert new.parent == tmp_path and new != out and not out.exists()  # written beside, same parent
        (new / "a.txt").write_text("first")
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    with pytest.raises(RuntimeError, match="failed midway"):
        with replaced_folder(out) as new:
            (new / "b.txt").write_text("half of the second")
            raise RuntimeError("failed midway")
    assert [p.name for p in out.iterdir()] == ["a.txt"]  # the old folder, untouched
    with replaced_folder(out) as new:
        (new / "b.txt").write_text("second")
    assert [p.name for p in out.iterdir()] == ["b.txt"]  # stale files of the old folder are gone
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary folder left beside it
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's owner-only permissions


def test_load_tensors_reads_only_tensors_and_names_a_damaged_file(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}, "names": ["fc1"]}, tmp_path / "ok.pt")
    assert load_tensors(tmp_path / "ok.pt")["names"] == ["fc1"]
    torch.save({"state_dict": {}, "code": Unpicklable()}, tmp_path / "code.pt")
    with pytest.raises(ValueError, match=r"code\.pt holds objects other than tensors"):
        load_tensors(tmp_path / "code.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pt is truncated or damaged"):
        load_tensors(tmp_path / "cut.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pt is truncated or damaged"):
        load_tensors(tmp_path / "empty.pt")


class Unpicklable:
    """Any class: weights_only refuses to build it (a pickle could name os.system just as well)."""


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "/abs", "~", "a\\b"])
def test_a_name_that_would_leave_its_folder_is_refused(name):
    with pytest.raises(ValueError, match="cannot name a folder"):
        check_name(name, "run_name")


def test_names_with_subfolders_may_nest_but_never_climb():
    assert check_name("ablations/s1", "run_name", subfolders=True) == "ablations/s1"
    assert check_name("all-MiniLM-L6-v2", "name") == "all-MiniLM-L6-v2"
    for name in ("../x", "a/../../b", "a//b", "/tmp/x"):
        with pytest.raises(ValueError, match=f"run_name='{re.escape(name)}' cannot name a folder"):
            check_name(name, "run_name", subfolders=True)
