"""Length-bucketed batches: texts of similar length together, so a batch pads little.

Random batches of docstring-like text pad to ~3.5x their real tokens; bucketed ones ran ~4x faster per step on
2 cores. Buckets are drawn from a window of ``window_batches`` random batches, so each batch is still a random
sample of the corpus within a length band, and the batch order is shuffled.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from torch.utils.data import BatchSampler, Sampler


class LengthBucketBatchSampler(BatchSampler):
    """Indices from ``sampler`` in windows of ``batch_size * window_batches``; each window sorted by length and
    cut into batches; the batches of an epoch shuffled. Under DDP Lightning passes a ``DistributedSampler`` as
    ``sampler``, so every rank buckets its own shard."""

    def __init__(
        self,
        sampler: Sampler[int],
        batch_size: int,
        drop_last: bool,
        lengths: Sequence[int],
        window_batches: int = 50,
        seed: int = 0,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.lengths = lengths
        self.window_batches = window_batches
        self.seed = seed
        self.epoch = 0

    def __iter__(self) -> Iterator[list[int]]:
        indices = list(self.sampler)
        window = self.batch_size * self.window_batches
        batches = []
        for start in range(0, len(indices), window):
            chunk = sorted(indices[start : start + window], key=self.lengths.__getitem__)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        random.Random(self.seed + self.epoch).shuffle(batches)
        self.epoch += 1
        yield from batches
