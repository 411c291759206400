"""Random access to cached rows: memory-mapped shards of one or more teachers, normalised and concatenated."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from jasper.models.ensemble import ensemble_vectors
from jasper.storage.cache.format import IDS_FILE, SHARD, CacheMismatch


class CacheReader:
    """Rows of one or more cached encoders, read from memory-mapped shards (memory stays flat).

    ``reader[rows]`` -> ``(len(rows), sum of dims)`` float32: each encoder's row normalised (when it was
    normalised at build) and scaled by its weight (`TeacherEnsemble`), the parts concatenated, and the
    concatenation normalised (again: when normalised). Weights are applied here, at read time, so changing them
    never re-encodes.
    """

    def __init__(
        self,
        root: Path,
        folders: Sequence[Path],
        manifests: Sequence[dict],
        weights: Sequence[float] | None = None,
    ) -> None:
        self.root = Path(root)
        self.folders = [Path(f) for f in folders]
        self.manifests = list(manifests)
        self.shard_rows = self.manifests[0]["shard_rows"] or 1
        self.rows = self.manifests[0]["rows"]
        self.dims = [m["teacher"]["dim"] for m in self.manifests]
        self.normalize = all(m["teacher"]["normalize"] for m in self.manifests)
        self.weights = [1.0] * len(self.dims) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.dims):
            raise ValueError(
                f"{len(self.weights)} weight(s) for {len(self.dims)} cached encoder(s): give one each"
            )
        if not self.normalize and set(self.weights) != {1.0}:
            raise ValueError(
                "weights scale normalised teacher vectors; these cached vectors are not normalised"
            )
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
            parts.append(part)
        if self.normalize:
            vectors = ensemble_vectors(parts, self.weights)
        else:
            vectors = np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
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
