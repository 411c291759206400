"""Files on disk: jasper's own cache folder, crash-safe writes (a file, a whole folder), tensor files loaded without
running code, names safe to become folders, and the lock that keeps one writer at a time.

The one home of these helpers: the teacher cache (:mod:`jasper.storage.cache`), packaged models
(:mod:`jasper.models.packaged`), the file digests of :mod:`jasper.models.model_files`, ``student.pt`` /
``vision.pt`` and exports use them.
"""

from __future__ import annotations

import logging
import os
import pickle
import secrets
import shutil
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch
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

    The temporary file is ``.<name>.<pid>.tmp``; a write that raises removes it, one killed before its rename leaves
    it behind.
    Example: atomic_write(folder / "ids.npy", lambda f: np.save(f, ids))
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:  # an error (not a kill) removes its partial file
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextmanager
def replaced_folder(path: Path) -> Iterator[Path]:
    """A new, empty folder beside ``path`` (same parent, so the same file system) for the block to fill; when the
    block ends without an error it becomes ``path``: the old ``path`` (if any) is renamed aside, the new one
    renamed in, then the old one deleted. An error leaves ``path`` as it was and removes the new folder. A reader
    finds the old folder or the whole new one, except for the instant between the two renames.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = _beside(path, "new")
    try:
        yield new
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    old = _beside(path, "old") / path.name if path.exists() else None
    if old is not None:
        os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        shutil.rmtree(new, ignore_errors=True)
        raise
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old.parent)


def _beside(path: Path, what: str) -> Path:
    """A new empty folder ``.<name>.<what>-<random>`` in ``path``'s parent (made with the usual permissions, unlike
    ``tempfile.mkdtemp``'s owner-only ones: an export is often shared)."""
    folder = path.parent / f".{path.name}.{what}-{os.getpid()}-{secrets.token_hex(4)}"
    folder.mkdir()
    return folder


def load_tensors(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain values only, so a shared file cannot
    run code when it is read. A truncated or damaged file, or one holding other objects, raises ``ValueError``
    naming it."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights only load failed" in first.lower():
            raise ValueError(
                f"{path} holds objects other than tensors and plain values, which jasper does not load (loading "
                f"them could run code): {first} Write it again with this version of jasper"
            ) from None
        raise ValueError(
            f"{path} is truncated or damaged, not a readable torch file ({first}): write it again (rerun the "
            "command that made it) or restore a copy"
        ) from None


def check_name(name: str, key: str, subfolders: bool = False) -> str:
    """``name`` as it comes from the config (``key``), refused when, as a folder name, it would leave its parent:
    empty, ``.``, ``..``, absolute, or (unless ``subfolders``) holding a path separator. Returns it unchanged."""
    text = str(name)
    parts = text.replace("\\", "/").split("/")
    if (
        not text.strip()
        or text.startswith(("/", "~"))
        or any(part in ("", ".", "..") for part in parts)
        or (len(parts) > 1 and not subfolders)
    ):
        what = "folder names joined by /" if subfolders else "one folder name (no / or \\)"
        raise ValueError(
            f"{key}={text!r} cannot name a folder: it must be {what}, none of them empty, . or .."
        )
    return text


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
