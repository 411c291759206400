"""The cache's on-disk format: file names, text ids and hashes, the teacher fingerprint a folder is keyed on, and
its JSON files, written crash-safe (:func:`jasper.core.disk.atomic_write`: temporary file, fsync, atomic rename)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jasper.core.disk import atomic_write, check_name

FORMAT = 1
CORPUS_FILE = "corpus.json"
IDS_FILE = "ids.npy"
MANIFEST = "manifest.json"
LOCK = ".build.lock"  # held by the one process writing a teacher folder
SHARD = "shard-{:05d}.npy"
# Rows per shard file of a new cache (data.shard_rows); a cache keeps the size it was built with. A shard is the unit
# a killed build resumes from, so it is small: 4,096 rows are ~2-5 min of a 110M teacher on 2 CPU cores (a kill loses
# at most that) and seconds on a GPU; 65,536 once lost a 42-minute partial build of a 50,450-text corpus (one shard).
SHARD_ROWS = 4096
# Fields of a fingerprint that change the vectors; a mismatch on any of them refuses the cache.
FINGERPRINT_FIELDS = (
    "name",
    "model",
    "revision",
    "weights",
    "role",
    "prompt",
    "max_length",
    "pooling",
    "num_layers",
    "dim",
    "normalize",
    "compute_dtype",
    "dtype",
)


class CacheMismatch(ValueError):
    """The cache on disk was made for other texts or another teacher configuration."""


class CacheDamaged(ValueError):
    """A cache file that no longer holds what was written: a JSON file that does not parse, or a finished cache
    whose shard files differ from the manifest."""


# Text ids and hashes.
def text_ids(texts: Sequence[str]) -> np.ndarray:
    """``(N,)`` uint64: the first 8 bytes of blake2b of each text's UTF-8 bytes."""
    digest = b"".join(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest() for t in texts)
    return np.frombuffer(digest, dtype="<u8").copy()


def corpus_key(ids: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(ids, dtype="<u8").tobytes(), digest_size=10).hexdigest()


def array_digest(array: np.ndarray, chunk_rows: int = 8192) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for start in range(0, len(array), chunk_rows):
        digest.update(np.ascontiguousarray(array[start : start + chunk_rows]).tobytes())
    return digest.hexdigest()


def slug(name: str) -> str:
    """A teacher's name as its cache folder's name: characters other than letters, digits, ``.``, ``_`` and ``-``
    become ``-`` (so no path separator survives); a name that would be ``.`` or ``..`` is refused."""
    folder = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:80] or "teacher"
    return check_name(folder, "teachers.teachers[].name")


# Encoders: anything with name, dim and encode(texts, batch_size) -> (N, dim) float tensor.
def fingerprint(encoder: object) -> dict:
    """Everything that changes an encoder's vectors, as stored in (and compared with) the manifest.

    Read from the encoder's description only, never from a loaded model: a lazy teacher stays unloaded
    (``jasper.models.teachers.LazyTeacher``). ``weights`` is a digest of the model's files, ``max_length`` the length
    its tokenizer truncates to, ``num_layers`` the layers it runs, ``compute_dtype`` the dtype it encodes in
    (``dtype`` is the dtype the vectors are stored in), ``role`` what the texts were to it (query or document) and
    ``prompt`` that role's prompt.
    """
    compute_dtype = getattr(encoder, "dtype", None)
    return {
        "name": encoder.name,
        "model": getattr(encoder, "model_name_or_path", None),
        "revision": getattr(encoder, "commit", None) or getattr(encoder, "revision", None),
        "weights": getattr(encoder, "weights", None),
        "role": getattr(encoder, "role", None),
        "prompt": getattr(encoder, "prompt", ""),
        "max_length": getattr(encoder, "max_length", None),
        "pooling": getattr(encoder, "pooling", "sentence-transformers"),
        "num_layers": getattr(encoder, "num_layers", None),
        "dim": int(encoder.dim),
        "normalize": bool(getattr(encoder, "normalize", True)),
        "compute_dtype": str(compute_dtype) if compute_dtype is not None else None,
        "dtype": str(getattr(encoder, "cache_dtype", "float16")),
        **({"extra": encoder.fingerprint_extra} if hasattr(encoder, "fingerprint_extra") else {}),
    }


def differences(stored: dict, wanted: dict) -> list[str]:
    if "role" not in stored and wanted.get("role") is not None:
        # Written before teachers had roles: every text was encoded with the one prompt, as a document is now.
        stored = {**stored, "role": "document"}
    keys = [*FINGERPRINT_FIELDS, "extra"]
    return [
        f"{k}: cache has {stored.get(k)!r}, this run has {wanted.get(k)!r}"
        + (" (the model's files changed)" if k == "weights" and k in stored else "")
        for k in keys
        if stored.get(k) != wanted.get(k)
    ]


def refusal(encoder: object, folder: Path, stored: dict) -> CacheMismatch | None:
    """The error refusing ``folder`` for ``encoder``, naming the teacher and what changed; None when they match."""
    diff = differences(stored, fingerprint(encoder))
    if not diff:
        return None
    old = [k for k in ("weights", "num_layers", "compute_dtype") if k not in stored]
    hint = (
        f" (the cache was written before jasper recorded {', '.join(old)}: it cannot be trusted for this teacher)"
        if old
        else ""
    )
    return CacheMismatch(
        f"teacher {encoder.name!r} changed since its vectors were cached in {folder}{hint}: {'; '.join(diff)}. "
        "They are not used: delete that folder to recompute, or give the teacher another name"
    )


# Files (written with jasper.core.disk.atomic_write: temporary file, fsync, atomic rename, fsync the folder).
def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=1, sort_keys=True).encode()))


def _read_json(path: Path) -> dict | None:
    """The JSON file at ``path``, None when there is none; a file that does not parse raises, naming it."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise CacheDamaged(
            f"teacher cache file {path} is damaged, not readable JSON ({error}): delete it and run python "
            "precompute.py with the run's data= and teachers= (or the same train.py command) to rebuild it"
        ) from None
