"""TeacherCache: one corpus folder, one sub-folder per encoder; ``build`` encodes what is missing (resumable),
``reader`` opens finished teachers for training, ``verify`` lists every problem."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from tqdm.auto import tqdm

from jasper.core.disk import atomic_write, exclusive
from jasper.models.encoders import check_finite, encode_all
from jasper.models.ensemble import check_target_dim
from jasper.storage.cache.format import (
    CORPUS_FILE,
    FORMAT,
    IDS_FILE,
    LOCK,
    MANIFEST,
    SHARD,
    SHARD_ROWS,
    CacheDamaged,
    CacheMismatch,
    _read_json,
    _write_json,
    array_digest,
    corpus_key,
    fingerprint,
    refusal,
    slug,
    text_ids,
)
from jasper.storage.cache.ranks import Ranks
from jasper.storage.cache.reader import CacheReader
from jasper.storage.cache.verify import check_shard_files, verify_teacher

log = logging.getLogger(__name__)


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
        try:
            return np.load(self.root / IDS_FILE, mmap_mode="r")
        except (ValueError, OSError) as error:
            raise CacheDamaged(
                f"teacher cache file {self.root / IDS_FILE} is truncated or unreadable ({error}): delete "
                f"{self.root} and run python precompute.py with the run's data= and teachers= to rebuild it"
            ) from None

    def teacher_dir(self, encoder: object) -> Path:
        return self.root / slug(encoder.name)

    def init_corpus(
        self, texts: Sequence[str], shard_rows: int = SHARD_ROWS, stats: dict | None = None
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
        atomic_write(self.root / IDS_FILE, lambda f: np.save(f, ids))
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
        distributed: bool = False,
    ) -> None:
        """Encode every missing shard of every encoder; finished shards and finished encoders are skipped.

        ``distributed=True``: every rank of the running ``torch.distributed`` group calls this with the same
        arguments (``torchrun ... precompute.py``, docs/cache.md) and they share the work. Rank 0 writes
        corpus.json, holds the teacher folder's build lock for its whole group, clears a killed build's leftovers
        and lists the shards still missing; each rank encodes its part of that list (`Ranks.share`) into the one
        folder (temporary file, fsync, rename); once every rank has written its shards, rank 0 hashes them all and
        writes the one manifest. A shard is never encoded twice: the list is split once per start, and a resumed
        job (any number of ranks) lists only what no earlier run finished.
        """
        texts = list(texts)
        ranks = Ranks(distributed)
        ids, shard_rows = self._corpus(texts, shard_rows, stats, ranks)
        for encoder in encoders:
            self.check(encoder)
        # Rank 0 decides what is missing, for every rank: a teacher finished by another build between two ranks'
        # looks would otherwise leave the ranks waiting at different meeting points.
        todo = [
            encoders[i]
            for i in ranks.from_first([i for i, e in enumerate(encoders) if self.manifest(e) is None])
        ]
        if not todo:
            return
        shards = [(s, min(s + shard_rows, len(texts))) for s in range(0, len(texts), shard_rows)]

        def rows(indices: list[int]) -> int:
            return sum(shards[i][1] - shards[i][0] for i in indices)

        # This rank's share of the shards missing now, for the progress bar (rank 0 decides under the lock). One bar,
        # rank 0's: the shares are equal within a shard, and N bars on one terminal overwrite each other.
        expected = {id(e): rows(ranks.share(self._missing(e, len(shards)))) for e in todo}
        progress = tqdm(
            total=sum(expected.values()),
            unit="text",
            desc="precompute",
            disable=not (show_progress and ranks.first),
            smoothing=0.1,
        )
        busy = 0.0  # seconds spent encoding and writing, not waiting for a lock or for the other ranks
        encoded = 0  # texts this process encoded itself (not those another builder wrote while it waited)
        for encoder in todo:
            folder = self.teacher_dir(encoder)
            folder.mkdir(parents=True, exist_ok=True)
            # One build per teacher folder: rank 0 holds the lock for its group while every rank writes its own
            # shards; another build (a second precompute, a parallel sweep job, a node's prepare_data) waits here,
            # then finds the shards written and encodes nothing. Without it, its cleanup below could delete this
            # build's half-written shard before that one's rename.
            what = f"the {encoder.name} vectors of {self.root}"
            with exclusive(folder / LOCK, what) if ranks.first else nullcontext():
                plan = ranks.from_first(self._plan(encoder, len(shards)) if ranks.first else None)
                if plan is None:
                    log.info("%s were finished by another process", what)
                    progress.update(expected[id(encoder)])
                    continue
                mine = ranks.share(plan)
                progress.total += rows(mine) - expected[id(encoder)]  # what rank 0 found under the lock
                progress.refresh()
                if mine:
                    log.info(
                        "encoding %d text(s) into %s for %s%s", rows(mine), self.root, encoder.name, ranks.tag
                    )
                dtype = np.dtype(getattr(encoder, "cache_dtype", "float16"))
                for index in mine:
                    started = time.perf_counter()
                    start, stop = shards[index]
                    vectors = encode_all(encoder, texts[start:stop], batch_size, progress)
                    check_finite(vectors, f"{encoder.name}, shard {index} (rows {start}..{stop - 1})")
                    if getattr(encoder, "normalize", True):
                        vectors = F.normalize(vectors.float(), dim=-1)
                    array = vectors.numpy().astype(dtype)
                    atomic_write(folder / SHARD.format(index), lambda f, a=array: np.save(f, a))
                    encoded += stop - start
                    busy += time.perf_counter() - started
                ranks.barrier()  # every rank's shards are in place
                if ranks.first:
                    self._finish(encoder, ids, shards)
        ranks.barrier()  # no rank returns before the manifests are written
        progress.close()
        if encoded:
            log.info(
                "encoded %d text(s) in %.1f s (%.1f texts/s)%s",
                encoded,
                busy,
                encoded / max(busy, 1e-9),
                ranks.tag,
            )

    def _corpus(
        self, texts: list[str], shard_rows: int | None, stats: dict | None, ranks: Ranks
    ) -> tuple[np.ndarray, int]:
        """The texts' ids and the corpus's shard size; rank 0 writes (or checks) corpus.json and ids.npy, then the
        other ranks check that they see the same corpus, on the same disk."""
        if ranks.first:
            corpus = self.corpus
            shard_rows = int(corpus["shard_rows"] if corpus else shard_rows or SHARD_ROWS)
            ids = self.init_corpus(texts, shard_rows, stats)
        ranks.barrier()
        corpus = self.corpus
        if not ranks.first:
            if corpus is None:
                raise FileNotFoundError(
                    f"{ranks} does not see {self.root / CORPUS_FILE}, which rank 0 has just written: every rank "
                    "writes its shards into one folder, so paths.cache_dir must be on a file system that every "
                    "node mounts at the same path"
                )
            ids = text_ids(texts)
            if corpus_key(ids) != corpus["corpus"]:
                raise CacheMismatch(
                    f"{ranks} has other texts ({len(ids)}, corpus {corpus_key(ids)}) than rank 0 ("
                    f"{corpus['rows']}, corpus {corpus['corpus']}): every rank must read the same texts in the same "
                    "order (a seeded, deterministic data= source)"
                )
        return ids, int(corpus["shard_rows"])

    def _missing(self, encoder: object, count: int) -> list[int]:
        folder = self.teacher_dir(encoder)
        return [i for i in range(count) if not (folder / SHARD.format(i)).exists()]

    def _plan(self, encoder: object, count: int) -> list[int] | None:
        """Under the teacher folder's lock: the shards still to encode, None when another build finished the
        teacher while this one waited. Clears a killed build's temporary files (the lock holder's group is the
        only writer) and records the fingerprint before the first shard."""
        folder = self.teacher_dir(encoder)
        if self.manifest(encoder) is not None:
            return None
        for stale in folder.glob(".*.tmp"):
            stale.unlink()
        _write_json(folder / "fingerprint.json", fingerprint(encoder))
        return self._missing(encoder, count)

    def _finish(self, encoder: object, ids: np.ndarray, shards: list[tuple[int, int]]) -> None:
        """Hash every shard (texts via their ids, vectors via their bytes) and write the manifest, last."""
        folder = self.teacher_dir(encoder)
        absent = self._missing(encoder, len(shards))
        if absent:  # only when ranks wrote to different disks: each sees only its own shards
            raise FileNotFoundError(
                f"{len(absent)} shard(s) of {encoder.name} are not in {folder} after every rank wrote its own (first: "
                f"{[SHARD.format(i) for i in absent[:3]]}): the ranks do not share that folder. Put paths.cache_dir on "
                "a file system every node mounts at the same path and run again: the shards there are kept"
            )
        entries = []
        for index, (start, stop) in enumerate(shards):
            array = np.load(folder / SHARD.format(index), mmap_mode="r")
            entries.append(
                {
                    "file": SHARD.format(index),
                    "rows": stop - start,
                    "texts_hash": array_digest(np.ascontiguousarray(ids[start:stop], dtype="<u8")),
                    "vectors_hash": array_digest(array),
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
    def reader(
        self,
        encoders: Sequence[object],
        check_shards: bool = True,
        weights: Sequence[float] | None = None,
        target_dim: int | None = None,
    ) -> CacheReader:
        """Random access to the concatenated rows of ``encoders`` (each must be built and match), each scaled by
        its weight (default 1). Every shard's size and digest are checked once here (`check_shard_files`), so a
        damaged cache is refused before training reads it. ``target_dim`` (``teachers.target_dim``): the cached
        teachers' sizes must add up to it, or the cache is refused naming each one's."""
        stored = [self.manifest(encoder) for encoder in encoders]
        if all(stored):
            check_target_dim(
                [(m["teacher"]["name"], m["teacher"]["dim"]) for m in stored],
                target_dim,
                f"the teacher vectors cached in {self.root}",
                f"delete {self.root} to encode this run's teachers again",
            )
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
        return CacheReader(self.root, folders, manifests, weights)

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
                    f"{folder.name}/{MANIFEST}: missing, unfinished build ({done} shard(s)); run precompute again"
                )
                continue
            problems += verify_teacher(folder, manifest, ids, corpus)
        return problems
