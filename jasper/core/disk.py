"""Files on disk: jasper's own cache folder, crash-safe writes, and the lock that keeps one writer at a time.

The one home of these helpers: the teacher cache (:mod:`jasper.storage.cache`), packaged models
(:mod:`jasper.models.packaged`) and the file digests of :mod:`jasper.models.model_files` use them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)


def cache_home() -> Path:
    """jasper's own cache (file digests, reassembled packaged models): ``$JASPER_CACHE_HOME``, else
    ``$XDG_CACHE_HOME/jasper``, else ``~/.cache/jasper``."""
    if os.environ.get("JASPER_CACHE_HOME"):
        return Path(os.environ["JASPER_CACHE_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "jasper"


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (fsync the folder itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(file)`` into a temporary file next to ``path``, fsync, rename over ``path`` (``os.replace``), fsync
    the folder: a reader finds the old file or the whole new one, never a part, even after a crash or a SIGKILL.

    The temporary file is ``.<name>.<pid>.tmp``; a write killed before its rename leaves it behind.
    Example: atomic_write(folder / "ids.npy", lambda f: np.save(f, ids))
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextmanager
def exclusive(lock_file: Path, what: str) -> Iterator[None]:
    """Hold ``filelock.FileLock(lock_file)`` (created if missing) while the block runs: one writer at a time for
    ``what`` across processes (DDP ranks, parallel sweep jobs, a second command) and threads.

    The lock is the OS's (``flock``), which the kernel releases when its holder exits or dies, so a killed writer
    never leaves it held; on a filesystem without ``flock`` filelock falls back to a lock file's existence. A lock
    held elsewhere is logged once at INFO ("waiting for <what> (lock <path>) held by another process"), then
    waited for without a time limit.
    """
    lock = FileLock(lock_file)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        log.info("waiting for %s (lock %s) held by another process", what, lock_file)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
