"""Text DataModule: read a source, reject unusable rows, hold out texts, augment, attach teacher vectors."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from jasper.data.augment import augment as augment_texts
from jasper.teachers import TeacherEnsemble, check_finite

log = logging.getLogger(__name__)


def clean_rows(rows: Iterable[object]) -> tuple[list[str], Counter]:
    """Keep non-empty strings (stripped) and exact first occurrences; count everything rejected, by reason."""
    texts: list[str] = []
    seen: set[str] = set()
    rejected: Counter = Counter()
    for row in rows:
        if not isinstance(row, str):
            rejected["non-text"] += 1
            continue
        text = row.strip()
        if not text:
            rejected["empty"] += 1
        elif text in seen:
            rejected["duplicate"] += 1
        else:
            seen.add(text)
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


class TeacherVectorStore:
    """Teacher vectors computed once per (teachers, texts) and kept in ``cache_dir`` for later stages and runs."""

    def __init__(self, teachers: TeacherEnsemble, cache_dir: str | None) -> None:
        self.teachers = teachers
        self.cache_dir = Path(cache_dir) if cache_dir else None

    def vectors(self, texts: Sequence[str]) -> Tensor:
        digest = hashlib.sha256(json.dumps(self.teachers.describe(), sort_keys=True).encode())
        for text in texts:
            digest.update(text.encode("utf-8") + b"\0")
        path = self.cache_dir / f"teacher-{digest.hexdigest()[:20]}.pt" if self.cache_dir else None
        if path is not None and path.exists():
            vectors = torch.load(path)
            log.info("teacher vectors for %d texts read from %s", len(texts), path)
        else:
            log.info("encoding %d texts with teachers %s", len(texts), self.teachers.names)
            vectors = self.teachers.encode(texts)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(f".{random.getrandbits(32):x}.tmp")
                torch.save(vectors, partial)
                partial.replace(path)  # atomic: a crash never leaves a half-written cache behind
        if vectors.shape != (len(texts), self.teachers.dim):
            raise ValueError(
                f"teacher vectors have shape {tuple(vectors.shape)}, expected {(len(texts), self.teachers.dim)}"
            )
        check_finite(vectors, f"teachers {self.teachers.names}")
        return vectors


class DistillTextDataset(Dataset):
    """Row ``i`` is ``(texts[i], teacher_vectors[i])``: a text always travels with its own teacher vector."""

    def __init__(self, texts: Sequence[str], teacher_vectors: Tensor) -> None:
        if len(texts) != len(teacher_vectors):
            raise ValueError(
                f"{len(texts)} texts but {len(teacher_vectors)} teacher vectors: they must align 1:1"
            )
        self.texts = list(texts)
        self.teacher_vectors = teacher_vectors

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[str, Tensor]:
        return self.texts[index], self.teacher_vectors[index]


class Collator:
    def __init__(self, tokenize: Callable[[Sequence[str]], dict[str, Tensor]]) -> None:
        self.tokenize = tokenize

    def __call__(self, rows: list[tuple[str, Tensor]]) -> dict[str, Tensor]:
        texts = [text for text, _ in rows]
        batch = dict(self.tokenize(texts))
        batch["teacher"] = torch.stack([vector for _, vector in rows])
        return batch


class TextDistillDataModule(L.LightningDataModule):
    """Texts from ``source``, cleaned and deduplicated, ``val_texts`` held out (never augmented), the rest
    augmented as in the paper, every text paired with its teacher vector."""

    def __init__(
        self,
        source: Iterable[object],
        teachers: TeacherEnsemble,
        tokenize: Callable[[Sequence[str]], dict[str, Tensor]],
        batch_size: int = 32,
        max_texts: int | None = None,
        val_texts: int = 256,
        augment: dict | None = None,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 2:
            raise ValueError(
                f"batch size {batch_size} is too small: the in-batch losses need at least 2 texts"
            )
        self.source = source
        self.store = TeacherVectorStore(teachers, cache_dir)
        self.collate = Collator(tokenize)
        self.batch_size = batch_size
        self.max_texts = max_texts
        self.val_texts = val_texts
        self.augment = dict(augment or {})
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: DistillTextDataset | None = None
        self.val_set: DistillTextDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        texts, rejected = clean_rows(self.source)
        if rejected:
            log.warning("rejected %d row(s): %s", sum(rejected.values()), dict(rejected))
        if not texts:
            raise ValueError(
                f"the data source yielded no usable text (rejected: {dict(rejected)}); check data.source"
            )
        train, held_out = split_held_out(texts, self.val_texts)
        if self.max_texts is not None and len(train) > self.max_texts:
            train = random.Random(self.seed).sample(train, self.max_texts)
        train = augment_texts(train, seed=self.seed, **self.augment)
        log.info("%d training texts (after augmentation), %d held out", len(train), len(held_out))
        vectors = self.store.vectors(train + held_out)
        self.train_set = DistillTextDataset(train, vectors[: len(train)])
        self.val_set = DistillTextDataset(held_out, vectors[len(train) :])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
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
