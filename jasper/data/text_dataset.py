"""Rows of a text stage: each text with its teacher vector (and stage 1's cached encoder features), read on demand
from the teacher cache, and the collator that tokenises a batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from jasper.storage.cache import CacheReader


class CachedRows:
    """Rows of a ``CacheReader`` in the order of a dataset: ``rows[i]`` is the cache row of the dataset's text ``i``.

    Read on demand from memory-mapped shards, so a dataset of any size holds only its row numbers.
    """

    def __init__(self, reader: CacheReader, rows: np.ndarray) -> None:
        self.reader = reader
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Tensor:
        return self.reader[int(self.rows[index])]

    def many(self, indices: Sequence[int]) -> Tensor:
        """Rows of several indices in one read (a DataLoader batch)."""
        return self.reader[self.rows[np.asarray(indices, dtype=np.int64)]]

    def tensor(self) -> Tensor:
        """Every row at once (small sets only: the held-out texts, tests)."""
        return self.reader[self.rows]


class DistillTextDataset(Dataset):
    """Row ``i`` is ``(texts[i], teacher_vectors[i])``, plus ``features[i]`` (the frozen encoder's pooled state)
    when a stage-1 feature cache is on: a text always travels with its own vectors."""

    def __init__(
        self,
        texts: Sequence[str],
        teacher_vectors: Tensor | CachedRows,
        features: Tensor | CachedRows | None = None,
    ) -> None:
        for name, table in [("teacher vectors", teacher_vectors), ("features", features)]:
            if table is not None and len(texts) != len(table):
                raise ValueError(f"{len(texts)} texts but {len(table)} {name}: they must align 1:1")
        self.texts = list(texts)
        self.teacher_vectors = teacher_vectors
        self.features = features

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple:
        row = (self.texts[index], self.teacher_vectors[index])
        return row if self.features is None else (*row, self.features[index])

    def __getitems__(self, indices: list[int]) -> list[tuple]:
        """A whole DataLoader batch at once: one batched read per cached table instead of one per row."""
        columns = [[self.texts[i] for i in indices]]
        for table in (self.teacher_vectors, self.features):
            if table is None:
                continue
            columns.append(table.many(indices) if isinstance(table, CachedRows) else table[indices])
        return list(zip(*columns, strict=True))


class Collator:
    """Tokenised texts plus ``teacher``; rows with cached features get ``features`` instead of tokens."""

    def __init__(self, tokenize: Callable[[Sequence[str]], dict[str, Tensor]]) -> None:
        self.tokenize = tokenize

    def __call__(self, rows: list[tuple]) -> dict[str, Tensor]:
        if len(rows[0]) == 3:  # stage 1 on cached features: the encoder never runs, so no tokens
            batch = {"features": torch.stack([row[2] for row in rows])}
        else:
            batch = dict(self.tokenize([row[0] for row in rows]))
        batch["teacher"] = torch.stack([row[1] for row in rows])
        return batch
