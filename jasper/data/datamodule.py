"""Text DataModule: read a source, reject unusable rows, hold out texts, augment, attach teacher vectors."""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from jasper.data.augment import augment as augment_texts
from jasper.data.batching import (
    EpochRandomSampler,
    LengthBucketBatchSampler,
    ResumableBatchSampler,
    ResumableDataLoader,
    check_full_batch,
)
from jasper.data.files import RejectedRow
from jasper.data.text_dataset import CachedRows, Collator, DistillTextDataset
from jasper.models.encoders import check_finite, encode_all
from jasper.models.ensemble import TeacherEnsemble
from jasper.storage.cache import SHARD_ROWS, PooledFeatures, TeacherCache, text_ids

log = logging.getLogger(__name__)
PLACES_SHOWN = 5  # file:line places logged per rejection reason


def clean_rows(
    rows: Iterable[object], max_chars: int | None = None, places: dict[str, list[str]] | None = None
) -> tuple[list[str], Counter]:
    """Keep non-empty strings (stripped, cut to ``max_chars``) and exact first occurrences; count every row
    rejected by reason (``empty``, ``non-text``, ``duplicate``, or a `RejectedRow`'s own reason, such as
    ``broken JSON``) and the kept ones cut short (``truncated``). ``places`` collects where the first
    `PLACES_SHOWN` rows of each `RejectedRow` reason were (``file:line``)."""
    texts: list[str] = []
    seen: set[bytes] = set()  # 16-byte digests, not the texts: flat in the texts' length
    rejected: Counter = Counter()
    for row in rows:
        if isinstance(row, RejectedRow):
            rejected[row.reason] += 1
            if places is not None and len(places.setdefault(row.reason, [])) < PLACES_SHOWN:
                places[row.reason].append(row.where)
            continue
        if not isinstance(row, str):
            rejected["non-text"] += 1
            continue
        text = row.strip()
        if max_chars is not None and len(text) > max_chars:
            text = text[:max_chars].rstrip()
            rejected["truncated"] += 1
        key = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        if not text:
            rejected["empty"] += 1
        elif key in seen:
            rejected["duplicate"] += 1
        else:
            seen.add(key)
            texts.append(text)
    return texts, rejected


def text_key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def split_held_out(texts: Sequence[str], count: int) -> tuple[list[str], list[str]]:
    """The ``count`` texts with the smallest hashes are held out: the split depends on the text, not its position."""
    if count >= len(texts):
        raise ValueError(f"data.val_texts={count} leaves no training text out of {len(texts)}; lower it")
    held = set(sorted(texts, key=text_key)[:count])
    return [t for t in texts if t not in held], [t for t in texts if t in held]


class TextDistillDataModule(L.LightningDataModule):
    """Texts from ``source``, cleaned and deduplicated, ``val_texts`` held out (never augmented), the rest
    augmented as in the paper, every text paired with its teacher vector.

    Teacher vectors come from the ``TeacherCache`` under ``cache_dir`` (built here when missing, as
    ``precompute.py`` would) and are read row by row from disk; ``teacher_cache`` names a precomputed corpus
    folder to use instead (refused when it lacks this run's texts or teachers). With ``teachers.online=true``
    or no ``cache_dir`` the vectors are computed in memory and nothing is written. ``features`` (the student,
    set by ``train.build`` when ``stages.stage1.feature_cache=true``) adds the frozen encoder's cached pooled
    states to each training row.
    """

    def __init__(
        self,
        source: Iterable[object],
        teachers: TeacherEnsemble,
        tokenize: Callable[[Sequence[str]], dict[str, Tensor]] | None,
        batch_size: int = 32,
        max_texts: int | None = None,
        val_texts: int = 256,
        augment: dict | None = None,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        teacher_cache: str | None = None,
        shard_rows: int = SHARD_ROWS,
        max_chars: int | None = None,
        features: object | None = None,
        length_buckets: bool = False,
        bucket_window: int = 50,
    ) -> None:
        super().__init__()
        if batch_size < 2:
            raise ValueError(
                f"batch size {batch_size} is too small: the in-batch losses need at least 2 texts"
            )
        self.source = source
        self.teachers = teachers
        self.online = bool(getattr(teachers, "online", False))
        self.cache_dir = cache_dir
        self.teacher_cache = teacher_cache
        self.shard_rows = shard_rows
        self.max_chars = max_chars
        self.features = features
        self.collate = Collator(tokenize)
        self.batch_size = batch_size
        self.max_texts = max_texts
        self.val_texts = val_texts
        self.augment = dict(augment or {})
        self.num_workers = num_workers
        self.seed = seed
        self.length_buckets = length_buckets
        self.bucket_window = bucket_window
        self.rejected: Counter = Counter()
        self._prepared: tuple[list[str], list[str]] | None = None
        self.train_set: DistillTextDataset | None = None
        self.val_set: DistillTextDataset | None = None

    def prepare_texts(self) -> tuple[list[str], list[str]]:
        """Training texts (augmented) and held-out texts, exactly as ``setup`` and ``precompute.py`` see them."""
        places: dict[str, list[str]] = {}
        texts, self.rejected = clean_rows(self.source, self.max_chars, places)
        dropped = {k: v for k, v in self.rejected.items() if k != "truncated"}
        if dropped:
            where = "; ".join(f"{reason} at {', '.join(p)}" for reason, p in places.items())
            log.warning(
                "rejected %d row(s): %s%s", sum(dropped.values()), dropped, f" ({where})" if where else ""
            )
        if self.rejected["truncated"]:
            log.warning(
                "cut %d over-long row(s) to data.max_chars=%s", self.rejected["truncated"], self.max_chars
            )
        source = type(self.source).__name__
        if not texts:
            raise ValueError(
                f"the data source {source} yielded no usable text (rejected: {dict(self.rejected)}); "
                "check data.source"
            )
        train, held_out = split_held_out(texts, self.val_texts)
        if self.max_texts is not None and len(train) > self.max_texts:
            train = random.Random(self.seed).sample(train, self.max_texts)
        elif self.max_texts is not None and len(train) < self.max_texts:
            log.warning(
                "data.max_texts=%d but %s has only %d training texts (after %d held out): using all of them",
                self.max_texts,
                source,
                len(train),
                len(held_out),
            )
        train = augment_texts(train, seed=self.seed, **self.augment)
        log.info("%d training texts (after augmentation), %d held out", len(train), len(held_out))
        return train, held_out

    def cache(self, texts: Sequence[str], precomputed: bool = True) -> TeacherCache | None:
        """The cache these texts read from: ``teacher_cache`` if given, else their corpus folder in ``cache_dir``."""
        if self.teacher_cache and precomputed:
            return TeacherCache(self.teacher_cache)
        if self.online or not self.cache_dir:
            return None
        return TeacherCache.for_texts(self.cache_dir, texts)

    def corpus_cache(self) -> TeacherCache | None:
        """The cache of this run's texts (training and held out), as ``prepare_data`` builds it."""
        train, held_out = self._split()
        return self.cache(train + held_out)

    def build_cache(
        self,
        texts: Sequence[str],
        encoders: Sequence[object],
        show_progress: bool = True,
        precomputed: bool = True,
        distributed: bool = False,
    ) -> None:
        cache = self.cache(texts, precomputed)
        stats = {"rejected": dict(self.rejected), "val_texts": self.val_texts, "seed": self.seed}
        cache.build(
            texts,
            encoders,
            self.teachers.batch_size,
            self.shard_rows,
            stats=stats,
            show_progress=show_progress,
            distributed=distributed,
        )

    def _built_cache(
        self,
        texts: list[str],
        encoders: Sequence[object],
        precomputed: bool = True,
        distributed: bool = False,
    ) -> TeacherCache | None:
        """The cache of these encoders' vectors, with whatever it lacked encoded (nothing when it is complete or
        a precomputed ``teacher_cache``); None when the vectors are computed in memory instead."""
        cache = self.cache(texts, precomputed)
        if cache is not None and not (self.teacher_cache and precomputed):
            self.build_cache(texts, encoders, precomputed=precomputed, distributed=distributed)
        return cache

    def _vectors(
        self, texts: list[str], encoders: Sequence[object], what: str, precomputed: bool = True
    ) -> CachedRows | Tensor:
        cache = self._built_cache(texts, encoders, precomputed)
        ensemble = list(encoders) == self.teachers.teachers
        if cache is None:
            log.info("encoding %d texts with %s in memory (no cache)", len(texts), what)
            if ensemble:
                return self.teachers.encode(texts)
            return torch.cat([encode_all(e, texts, self.teachers.batch_size) for e in encoders], dim=-1)
        reader = cache.reader(
            encoders,
            weights=self.teachers.weights if ensemble else None,
            target_dim=self.teachers.target_dim if ensemble else None,
        )
        log.info("%s for %d texts read from %s", what, len(texts), cache.root)
        return CachedRows(reader, reader.lookup(text_ids(texts)))

    def prepare_data(self, distributed: bool = False) -> None:
        """Build what the caches lack in one process per node: Lightning runs this on local rank 0 while the
        other ranks wait at a barrier with no timeout, however long the encoding takes; ``setup`` then only reads.
        (Two ranks building at once would encode everything twice; the cache's lock keeps them correct.)
        ``distributed=True`` (``torchrun ... precompute.py``): every rank of the process group calls this and they
        encode disjoint shards of one cache (``TeacherCache.build``)."""
        train, held_out = self._split()
        texts = train + held_out
        self._built_cache(texts, self.teachers.teachers, distributed=distributed)
        if self.features is not None:
            self._built_cache(
                texts, [PooledFeatures(self.features)], precomputed=False, distributed=distributed
            )

    def _split(self) -> tuple[list[str], list[str]]:
        """``prepare_texts``, read once per process (rank 0 reads them in ``prepare_data``, then ``setup``)."""
        if self._prepared is None:
            self._prepared = self.prepare_texts()
        return self._prepared

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, held_out = self._split()
        texts = train + held_out
        n = len(train)
        vectors = self._vectors(texts, self.teachers.teachers, f"teachers {self.teachers.names}")
        if len(vectors) != len(texts) or (vectors[0].shape[-1] if len(vectors) else 0) != self.teachers.dim:
            raise ValueError(
                f"teacher vectors have {len(vectors)} rows of {vectors[0].shape[-1]}-d, "
                f"expected {(len(texts), self.teachers.dim)}"
            )
        features = None
        if self.features is not None:
            encoder = PooledFeatures(self.features)
            features = self._vectors(texts, [encoder], "stage-1 features", precomputed=False)
        if features is not None:
            features = (
                features[:n]
                if isinstance(features, Tensor)
                else CachedRows(features.reader, features.rows[:n])
            )
        if isinstance(vectors, Tensor):
            check_finite(vectors, f"teachers {self.teachers.names}")
            train_vectors, val_vectors = vectors[:n], vectors[n:]
        else:
            train_vectors = CachedRows(vectors.reader, vectors.rows[:n])
            val_vectors = CachedRows(vectors.reader, vectors.rows[n:]).tensor()  # small: held in memory
        self.train_set = DistillTextDataset(train, train_vectors, features)
        self.val_set = DistillTextDataset(held_out, val_vectors)

    def train_dataloader(self) -> DataLoader:
        """Seeded per epoch and resumable mid-epoch (jasper/data/batching.py): a run resumed from a checkpoint sees
        exactly the batches an uninterrupted one would."""
        check_full_batch(
            len(self.train_set),
            self.batch_size,
            self.trainer,
            "texts (after holding out data.val_texts and augmenting)",
            "give the stage more texts (data.max_texts, data.source)",
        )
        sampler = EpochRandomSampler(self.train_set, seed=self.seed)
        if self.length_buckets:
            lengths = [len(t) for t in self.train_set.texts]
            batches = LengthBucketBatchSampler(
                sampler, self.batch_size, True, lengths, window_batches=self.bucket_window, seed=self.seed
            )
        else:
            batches = ResumableBatchSampler(sampler, self.batch_size, drop_last=True)
        return ResumableDataLoader(
            self.train_set,
            batch_sampler=batches,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set,
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )
