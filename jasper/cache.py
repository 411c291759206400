"""TeacherCache: encode a corpus once per teacher, store the vectors on disk, read rows by random access.

Layout of one corpus (``root``, usually ``<cache_dir>/corpus-<key>``, the key a hash of the corpus's text ids)::

    corpus.json                 rows, corpus key, shard size, rejected-row counts (written before any shard)
    ids.npy                     uint64 text id of every row (blake2b of the text), row order
    <teacher-slug>/
        shard-00000.npy ...     (rows, dim) vectors, float16 by default, one file per ``shard_rows`` rows
        manifest.json           fingerprint (name, revision, prompt, max length, pooling, dim, normalisation),
                                rows, and per shard its row count, a hash of its texts and one of its vectors

Each teacher has its own folder, so adding a teacher encodes only that teacher: the ensemble's concatenation
(normalise each, concatenate, normalise) happens at read time. A shard is written to a temporary file, fsynced
and renamed into place, and the manifest is written last, so a build killed at any point (SIGKILL included)
resumes where it stopped and ends bitwise identical to an uninterrupted one. A folder whose fingerprint differs
from the run's teacher is refused, with the fields that differ; it is never silently used.

    python -m jasper.cache verify DIR     # shard hashes, row counts, NaN/inf; exit status 1 on any problem
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from jasper.model_files import fsync_dir

log = logging.getLogger(__name__)

FORMAT = 1
CORPUS_FILE = "corpus.json"
IDS_FILE = "ids.npy"
MANIFEST = "manifest.json"
SHARD = "shard-{:05d}.npy"
# Fields of a fingerprint that change the vectors; a mismatch on any of them refuses the cache.
FINGERPRINT_FIELDS = (
    "name",
    "model",
    "revision",
    "weights",
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


# Text ids and hashes.
def text_ids(texts: Sequence[str]) -> np.ndarray:
    """``(N,)`` uint64: the first 8 bytes of blake2b of each text's UTF-8 bytes."""
    digest = b"".join(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest() for t in texts)
    return np.frombuffer(digest, dtype="<u8").copy()


def corpus_key(ids: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(ids, dtype="<u8").tobytes(), digest_size=10).hexdigest()


def _hash_bytes(array: np.ndarray, chunk_rows: int = 8192) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for start in range(0, len(array), chunk_rows):
        digest.update(np.ascontiguousarray(array[start : start + chunk_rows]).tobytes())
    return digest.hexdigest()


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:80] or "teacher"


# Encoders: anything with name, dim and encode(texts, batch_size) -> (N, dim) float tensor.
def fingerprint(encoder: object) -> dict:
    """Everything that changes an encoder's vectors, as stored in (and compared with) the manifest.

    Read from the encoder's description only, never from a loaded model: a lazy teacher stays unloaded
    (``jasper.teachers.LazyTeacher``). ``weights`` is a digest of the model's files, ``max_length`` the length
    its tokenizer truncates to, ``num_layers`` the layers it runs, ``compute_dtype`` the dtype it encodes in
    (``dtype`` is the dtype the vectors are stored in).
    """
    compute_dtype = getattr(encoder, "dtype", None)
    return {
        "name": encoder.name,
        "model": getattr(encoder, "model_name_or_path", None),
        "revision": getattr(encoder, "commit", None) or getattr(encoder, "revision", None),
        "weights": getattr(encoder, "weights", None),
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


# Files.
def _atomic_write(path: Path, write) -> None:
    """``write(file)`` into a temporary file next to ``path``, fsync, rename over ``path``, fsync the folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _write_json(path: Path, data: dict) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(data, indent=1, sort_keys=True).encode()))


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


class TeacherCache:
    """One corpus's vectors, one folder per encoder. ``build`` encodes what is missing; ``reader`` reads rows."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def for_texts(cls, cache_dir: str | Path, texts: Sequence[str]) -> TeacherCache:
        """The corpus folder of exactly these texts (in this order) under ``cache_dir``."""
        return cls(Path(cache_dir) / f"corpus-{corpus_key(text_ids(texts))}")

    # Corpus.
    @property
    def corpus(self) -> dict | None:
        return _read_json(self.root / CORPUS_FILE)

    def ids(self) -> np.ndarray:
        return np.load(self.root / IDS_FILE, mmap_mode="r")

    def teacher_dir(self, encoder: object) -> Path:
        return self.root / slug(encoder.name)

    def init_corpus(
        self, texts: Sequence[str], shard_rows: int = 65536, stats: dict | None = None
    ) -> np.ndarray:
        """Write (or check) ids.npy and corpus.json; returns the text ids."""
        ids = text_ids(texts)
        key = corpus_key(ids)
        existing = self.corpus
        if existing is not None:
            if existing["corpus"] != key or existing["rows"] != len(ids):
                raise CacheMismatch(
                    f"cache {self.root} holds {existing['rows']} texts (corpus {existing['corpus']}) but this run "
                    f"has {len(ids)} texts (corpus {key}): different texts. Point the cache elsewhere or delete it"
                )
            return ids
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.root / IDS_FILE, lambda f: np.save(f, ids))
        info = {"format": FORMAT, "corpus": key, "rows": len(ids), "shard_rows": int(shard_rows)}
        _write_json(self.root / CORPUS_FILE, {**info, **(stats or {})})
        return ids

    # Teachers.
    def manifest(self, encoder: object) -> dict | None:
        return _read_json(self.teacher_dir(encoder) / MANIFEST)

    def check(self, encoder: object) -> None:
        """Refuse a folder made for another configuration of the same-named teacher (manifest or partial build)."""
        folder = self.teacher_dir(encoder)
        stored = _read_json(folder / MANIFEST) or _read_json(folder / "fingerprint.json")
        if stored is None:
            return
        error = refusal(encoder, folder, stored.get("teacher", stored))
        if error is not None:
            raise error

    def build(
        self,
        texts: Sequence[str],
        encoders: Sequence[object],
        batch_size: int = 32,
        shard_rows: int | None = None,
        stats: dict | None = None,
        show_progress: bool = True,
    ) -> None:
        """Encode every missing shard of every encoder; finished shards and finished encoders are skipped."""
        texts = list(texts)
        corpus = self.corpus
        shard_rows = int(corpus["shard_rows"] if corpus else shard_rows or 65536)
        ids = self.init_corpus(texts, shard_rows, stats)
        for encoder in encoders:
            self.check(encoder)
        todo = [e for e in encoders if self.manifest(e) is None]
        shards = [(s, min(s + shard_rows, len(texts))) for s in range(0, len(texts), shard_rows)]
        missing = {
            id(e): [i for i in range(len(shards)) if not (self.teacher_dir(e) / SHARD.format(i)).exists()]
            for e in todo
        }
        total = sum((shards[i][1] - shards[i][0]) for e in todo for i in missing[id(e)])
        if not todo:
            return
        log.info("encoding %d text(s) into %s for %s", total, self.root, [e.name for e in todo])
        progress = tqdm(total=total, unit="text", desc="precompute", disable=not show_progress, smoothing=0.1)
        started = time.perf_counter()
        for encoder in todo:
            folder = self.teacher_dir(encoder)
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob(".*.tmp"):  # left by a killed build
                stale.unlink()
            _write_json(folder / "fingerprint.json", fingerprint(encoder))
            dtype = np.dtype(getattr(encoder, "cache_dtype", "float16"))
            for index in missing[id(encoder)]:
                start, stop = shards[index]
                vectors = encode_sorted(encoder, texts[start:stop], batch_size, progress)
                check_finite(vectors, f"{encoder.name}, shard {index} (rows {start}..{stop - 1})")
                if getattr(encoder, "normalize", True):
                    vectors = F.normalize(vectors.float(), dim=-1)
                array = vectors.numpy().astype(dtype)
                _atomic_write(folder / SHARD.format(index), lambda f, a=array: np.save(f, a))
            self._finish(encoder, ids, shards)
        progress.close()
        if total:
            seconds = time.perf_counter() - started
            log.info(
                "encoded %d text(s) in %.1f s (%.1f texts/s)", total, seconds, total / max(seconds, 1e-9)
            )

    def _finish(self, encoder: object, ids: np.ndarray, shards: list[tuple[int, int]]) -> None:
        """Hash every shard (texts via their ids, vectors via their bytes) and write the manifest, last."""
        folder = self.teacher_dir(encoder)
        entries = []
        for index, (start, stop) in enumerate(shards):
            array = np.load(folder / SHARD.format(index), mmap_mode="r")
            entries.append(
                {
                    "file": SHARD.format(index),
                    "rows": stop - start,
                    "texts_hash": _hash_bytes(np.ascontiguousarray(ids[start:stop], dtype="<u8")),
                    "vectors_hash": _hash_bytes(array),
                }
            )
        manifest = {
            "format": FORMAT,
            "teacher": fingerprint(encoder),
            "rows": len(ids),
            "corpus": corpus_key(ids),
            "shard_rows": shards[0][1] - shards[0][0] if shards else 0,
            "shards": entries,
        }
        _write_json(folder / MANIFEST, manifest)

    # Reading.
    def reader(self, encoders: Sequence[object], check_shards: bool = True) -> CacheReader:
        """Random access to the concatenated rows of ``encoders`` (each must be built and match). Every shard's
        size and digest are checked once here (`check_shard_files`), so a damaged cache is refused before
        training reads it."""
        manifests = []
        for encoder in encoders:
            self.check(encoder)
            manifest = self.manifest(encoder)
            if manifest is None:
                raise FileNotFoundError(
                    f"no finished cache for {encoder.name} in {self.root}; run python precompute.py first"
                )
            manifests.append(manifest)
        folders = [self.teacher_dir(e) for e in encoders]
        if check_shards:
            for folder, manifest in zip(folders, manifests, strict=True):
                check_shard_files(folder, manifest)
        return CacheReader(self.root, folders, manifests)

    # Integrity.
    def verify(self) -> list[str]:
        """Every problem found (missing or short shards, hash mismatches, NaN/inf); empty when sound."""
        corpus = self.corpus
        if corpus is None:
            return [f"{self.root}: no {CORPUS_FILE}, not a cache folder"]
        problems = []
        ids = self.ids()
        if len(ids) != corpus["rows"] or corpus_key(np.asarray(ids)) != corpus["corpus"]:
            problems.append(f"{IDS_FILE}: {len(ids)} ids, do not match corpus.json ({corpus['rows']} rows)")
        folders = sorted(p for p in self.root.iterdir() if p.is_dir())
        if not folders:
            problems.append(f"{self.root}: no teacher folder")
        for folder in folders:
            manifest = _read_json(folder / MANIFEST)
            if manifest is None:
                done = len(list(folder.glob("shard-*.npy")))
                problems.append(
                    f"{folder.name}: unfinished ({done} shard(s), no manifest); run precompute again"
                )
                continue
            problems += _verify_teacher(folder, manifest, ids, corpus)
        return problems


class CacheDamaged(ValueError):
    """A finished cache whose shard files no longer hold what the manifest recorded."""


def check_shard_files(folder: Path, manifest: dict) -> None:
    """Each shard of a finished teacher folder: present, of the manifest's shape (a truncated file fails here, not
    as a bare mmap error) and with the manifest's vectors digest (flipped bytes). Raises `CacheDamaged` naming
    the file and how to rebuild it. Reads every byte once: 6.3 s for 10^6 rows of 768-d float16 (1.5 GB) on a
    loaded 2-core machine (benchmarks/cache_check_bench.py), against hours of training on that many rows."""
    dim = manifest["teacher"]["dim"]
    for entry in manifest["shards"]:
        path = folder / entry["file"]
        problem = None
        if not path.is_file():
            problem = "is missing"
        else:
            try:
                array = np.load(path, mmap_mode="r")
            except (ValueError, OSError) as error:
                problem = f"is truncated or unreadable ({error})"
            else:
                if array.shape != (entry["rows"], dim):
                    problem = f"has shape {array.shape}, the manifest says {(entry['rows'], dim)}"
                elif _hash_bytes(array) != entry["vectors_hash"]:
                    problem = "differs from the manifest's digest (corrupted bytes)"
        if problem:
            raise CacheDamaged(
                f"teacher cache shard {path} {problem}: delete it and {folder / MANIFEST}, then run "
                "python precompute.py with the same data= and teachers= (or the same train.py command) to "
                "encode that shard again"
            )


def _verify_teacher(folder: Path, manifest: dict, ids: np.ndarray, corpus: dict) -> list[str]:
    problems = []
    dim = manifest["teacher"]["dim"]
    if manifest["rows"] != corpus["rows"] or manifest["corpus"] != corpus["corpus"]:
        problems.append(
            f"{folder.name}: manifest is for {manifest['rows']} rows of corpus {manifest['corpus']}"
        )
    start = 0
    for entry in manifest["shards"]:
        name, rows = f"{folder.name}/{entry['file']}", entry["rows"]
        path = folder / entry["file"]
        if not path.exists():
            problems.append(f"{name}: missing")
            start += rows
            continue
        try:
            array = np.load(path, mmap_mode="r")
        except ValueError as error:
            problems.append(f"{name}: unreadable ({error})")
            start += rows
            continue
        if array.shape != (rows, dim):
            problems.append(f"{name}: shape {array.shape}, manifest says {(rows, dim)}")
        if _hash_bytes(array) != entry["vectors_hash"]:
            problems.append(f"{name}: vectors hash differs from the manifest (corrupted or replaced)")
        if _hash_bytes(np.ascontiguousarray(ids[start : start + rows], dtype="<u8")) != entry["texts_hash"]:
            problems.append(f"{name}: texts hash differs (rows no longer belong to the same texts)")
        bad = sum(
            int((~np.isfinite(array[s : s + 8192])).any(axis=1).sum()) for s in range(0, len(array), 8192)
        )
        if bad:
            problems.append(f"{name}: {bad} row(s) with NaN/inf")
        start += rows
    if start != manifest["rows"]:
        problems.append(f"{folder.name}: shards hold {start} rows, manifest says {manifest['rows']}")
    return problems


def _unit(array: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (as ``F.normalize``: eps 1e-12), in numpy: cheap for a few rows."""
    return array / np.maximum(np.sqrt(np.einsum("ij,ij->i", array, array)), 1e-12)[:, None]


class CacheReader:
    """Rows of one or more cached encoders, read from memory-mapped shards (memory stays flat).

    ``reader[rows]`` -> ``(len(rows), sum of dims)`` float32: each encoder's row normalised (when it was
    normalised at build), the parts concatenated, and the concatenation normalised (again: when normalised).
    """

    def __init__(self, root: Path, folders: Sequence[Path], manifests: Sequence[dict]) -> None:
        self.root = Path(root)
        self.folders = [Path(f) for f in folders]
        self.manifests = list(manifests)
        self.shard_rows = self.manifests[0]["shard_rows"] or 1
        self.rows = self.manifests[0]["rows"]
        self.dims = [m["teacher"]["dim"] for m in self.manifests]
        self.normalize = all(m["teacher"]["normalize"] for m in self.manifests)
        self._maps: dict[tuple[int, int], np.ndarray] = {}
        self._sorted_ids: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def dim(self) -> int:
        return sum(self.dims)

    def __len__(self) -> int:
        return self.rows

    def __getstate__(self) -> dict:  # DataLoader workers reopen the shards instead of pickling the maps
        return {**self.__dict__, "_maps": {}, "_sorted_ids": None}

    def _shard(self, teacher: int, shard: int) -> np.ndarray:
        key = (teacher, shard)
        if key not in self._maps:
            self._maps[key] = np.load(self.folders[teacher] / SHARD.format(shard), mmap_mode="r")
        return self._maps[key]

    def __getitem__(self, rows: int | Sequence[int] | np.ndarray) -> Tensor:
        single = np.isscalar(rows)
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        if len(rows) and (rows.min() < 0 or rows.max() >= self.rows):
            raise IndexError(f"row out of range 0..{self.rows - 1}")
        shard, offset = np.divmod(rows, self.shard_rows)
        shards = np.unique(shard)
        parts = []
        for teacher, dim in enumerate(self.dims):
            if len(shards) == 1:  # the common case of one row, or rows of one shard: no masks
                part = np.asarray(self._shard(teacher, int(shards[0]))[offset], dtype=np.float32)
            else:
                part = np.empty((len(rows), dim), dtype=np.float32)
                for s in shards:
                    where = shard == s
                    part[where] = self._shard(teacher, int(s))[offset[where]]
            parts.append(_unit(part) if self.normalize else part)
        vectors = np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
        if self.normalize and len(parts) > 1:
            vectors = _unit(vectors)
        vectors = torch.from_numpy(vectors)
        return vectors[0] if single else vectors

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Cache rows of the given text ids; raises (saying how many) when some texts are not in the cache."""
        if self._sorted_ids is None:
            stored = np.asarray(np.load(self.root / IDS_FILE, mmap_mode="r"))
            order = np.argsort(stored, kind="stable")
            self._sorted_ids = (stored[order], order)
        sorted_ids, order = self._sorted_ids
        position = np.searchsorted(sorted_ids, ids).clip(max=len(sorted_ids) - 1)
        found = sorted_ids[position] == ids
        if not found.all():
            raise CacheMismatch(
                f"{int((~found).sum())} of {len(ids)} texts of this run are not in the cache {self.root} "
                f"(first missing rows of the run: {np.flatnonzero(~found)[:5].tolist()}): different texts"
            )
        return order[position]


class PooledFeatures:
    """The student's frozen encoder as a cache encoder: mean-pooled last hidden states, float32, not normalised.

    Stage 1 trains FC1 only, so these features are a fixed function of the text: cached once, FC1 trains on
    them without running the encoder. The folder name carries a hash of the encoder's weights, so a student
    initialised differently never reads another's features.
    """

    normalize = False
    cache_dtype = "float32"
    pooling = "mean"

    def __init__(self, student: torch.nn.Module) -> None:
        self.student = student
        digest = hashlib.blake2b(digest_size=8)
        for key, tensor in sorted(student.encoder.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        self.weights = digest.hexdigest()
        self.name = f"student-features-{self.weights}"
        self.model_name_or_path = student.model_name_or_path
        self.prompt = student.prompt
        self.max_length = student.max_length
        self.dim = student.encoder.config.hidden_size
        self.fingerprint_extra = {"weights": self.weights, "layers": student.encoder.config.num_hidden_layers}

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Tensor:
        was_training = self.student.encoder.training
        self.student.encoder.eval()  # as stage 1 runs it: dropout off
        device = next(self.student.encoder.parameters()).device
        try:
            chunks = []
            for start in range(0, len(texts), batch_size):
                batch = self.student.tokenize(texts[start : start + batch_size]).to(device)
                chunks.append(self.student.pooled(batch["input_ids"], batch["attention_mask"]).float().cpu())
        finally:
            self.student.encoder.train(was_training)
        return torch.cat(chunks) if chunks else torch.empty(0, self.dim)


def encode_sorted(encoder: object, texts: Sequence[str], batch_size: int, progress=None) -> Tensor:
    """``encoder.encode`` over texts sorted longest first (less padding), rows returned in input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    step = batch_size * 4
    chunks = []
    for start in range(0, len(order), step):
        chunk = [texts[i] for i in order[start : start + step]]
        chunks.append(encoder.encode(chunk, batch_size).float().cpu())
        if progress is not None:
            progress.update(len(chunk))
    vectors = torch.cat(chunks) if chunks else torch.empty(0, encoder.dim)
    return vectors[torch.argsort(torch.tensor(order, dtype=torch.long))] if order else vectors


def check_finite(vectors: Tensor, source: str) -> None:
    from jasper.teachers import check_finite as check

    check(vectors, source)


def precompute(cfg) -> Path:
    """``python precompute.py``: the run's texts (cleaned, held out, augmented as training will see them)
    encoded by every configured teacher into the TeacherCache; resumes a killed build. ``verify=true`` only
    checks the cache (hashes, row counts, NaN/inf) and raises when anything is wrong."""
    from hydra.utils import instantiate

    teachers = instantiate(cfg.teachers)
    data = instantiate(cfg.data, teachers=teachers, tokenize=None)
    train, held_out = data.prepare_texts()
    texts = train + held_out
    root = (
        Path(data.teacher_cache) if data.teacher_cache else TeacherCache.for_texts(data.cache_dir, texts).root
    )
    if cfg.get("verify", False):
        problems = verify_tree(root)
        for problem in problems:
            log.error("cache problem: %s", problem)
        if problems:
            raise ValueError(f"{len(problems)} problem(s) in the cache {root}: {problems[:3]}")
        log.info("cache %s verified: %d rows, teachers %s", root, len(texts), teachers.names)
        return root
    log.info("rejected rows: %s", dict(data.rejected) or "none")
    cache = TeacherCache(root)
    stats = {"rejected": dict(data.rejected), "val_texts": data.val_texts, "seed": data.seed}
    cache.build(texts, teachers.teachers, teachers.batch_size, data.shard_rows, stats=stats)
    log.info("teacher vectors of %d texts in %s", len(texts), root)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "verify":
        print("usage: python -m jasper.cache verify CACHE_DIR", file=sys.stderr)
        return 2
    problems = verify_tree(argv[1])
    for problem in problems:
        print(f"PROBLEM {problem}")
    print("cache OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def verify_tree(path: str | Path) -> list[str]:
    """Verify one corpus folder, or every ``corpus-*`` folder under a cache directory."""
    path = Path(path)
    if (path / CORPUS_FILE).exists():
        return TeacherCache(path).verify()
    roots = sorted(p.parent for p in path.glob(f"*/{CORPUS_FILE}"))
    if not roots:
        return [f"{path}: no cache found (no {CORPUS_FILE} in it or its subfolders)"]
    return [f"{root.name}/{p}" for root in roots for p in TeacherCache(root).verify()]


if __name__ == "__main__":
    sys.exit(main())
