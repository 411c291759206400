"""The paper's corpus: sources mixed in fixed shares (80% fineweb-edu, 20% embedding-training-data texts).

``Mix`` draws rows from named sources in the configured shares (exact quotas of ``total`` rows, interleaved by a
seeded draw); ``TextsOf`` turns structured rows (pairs, triplets, ``{"query", "pos", "neg"}``, ``{"set": [...]}``)
into their texts, labels dropped; ``JsonRows`` reads whole rows of local or ``hf://`` JSON-lines files (``.gz``
too) and parquet files, streaming. Rows stay raw: the DataModule cleans, deduplicates and counts rejects.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence

from jasper.data.files import INVALID_UTF8, RejectedRow
from jasper.data.hub_files import local_url

log = logging.getLogger(__name__)


def quotas(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Rows per source: ``total`` split by ``weights`` (largest remainder, so the quotas sum to ``total``)."""
    if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"data.source.weights={dict(weights)} must be non-negative with a positive sum")
    scale = total / sum(weights.values())
    exact = {name: w * scale for name, w in weights.items()}
    out = {name: int(v) for name, v in exact.items()}
    for name in sorted(exact, key=lambda n: out[n] - exact[n])[: total - sum(out.values())]:
        out[name] += 1
    return out


class Mix:
    """``total`` rows from ``sources`` in the shares of ``weights`` (same keys), interleaved at random (``seed``).

    A source that runs out early is logged with how many rows it lacked; the others are not stretched to make up
    for it, so the shares never drift silently. ``counts`` holds the rows drawn per source after iteration.
    """

    def __init__(
        self,
        sources: Mapping[str, Iterable[object]],
        weights: Mapping[str, float],
        total: int,
        seed: int = 0,
    ) -> None:
        if set(sources) != set(weights):
            raise ValueError(
                f"data.source.sources {sorted(sources)} and data.source.weights {sorted(weights)} must name the same sources"
            )
        self.sources = dict(sources)
        self.weights = dict(weights)
        self.total = int(total)
        self.seed = seed
        self.counts: Counter = Counter()

    def __iter__(self) -> Iterator[object]:
        left = quotas(self.weights, self.total)
        iterators = {name: iter(source) for name, source in self.sources.items()}
        rng = random.Random(self.seed)
        self.counts = Counter()
        while any(left.values()):
            names = [n for n in left if left[n] > 0]
            name = rng.choices(names, weights=[left[n] for n in names])[0]
            try:
                row = next(iterators[name])
            except StopIteration:
                log.warning("source %s ran out %d row(s) short of its share", name, left[name])
                left[name] = 0
                continue
            left[name] -= 1
            self.counts[name] += 1
            yield row
        log.info("mixed %d rows: %s", sum(self.counts.values()), dict(self.counts))


def texts_in(row: object, fields: Sequence[str] | None = None) -> Iterator[object]:
    """Every text of a row: a string itself, each item of a list, the values of ``fields`` (or all) of a dict.

    Anything else (numbers, None) is passed through so the DataModule counts it as non-text.
    """
    if isinstance(row, str):
        yield row
    elif isinstance(row, Mapping):
        for key in fields if fields is not None else row:
            if key in row:
                yield from texts_in(row[key])
    elif isinstance(row, list | tuple):
        for item in row:
            yield from texts_in(item)
    else:
        yield row


class TextsOf:
    """The texts of each row of ``rows`` (labels and scores dropped: only texts train the student)."""

    def __init__(self, rows: Iterable[object], fields: Sequence[str] | None = None) -> None:
        self.rows = rows
        self.fields = list(fields) if fields is not None else None

    def __iter__(self) -> Iterator[object]:
        for row in self.rows:
            yield from texts_in(row, self.fields)


class JsonRows:
    """Whole rows of JSON-lines (``.jsonl``, ``.jsonl.gz``; a row may be a list) or parquet files, streamed.

    A line that is not UTF-8 becomes a `jasper.data.files.RejectedRow` (counted by the DataModule with its
    ``file:line``); a line that is not JSON fails, naming the file and the line.

    ``paths`` may hold globs and ``hf://datasets/...`` URLs (read through fsspec from the hub; offline, from the
    repository's snapshot in the Hugging Face cache: `jasper.data.hub_files.local_url`).
    """

    def __init__(self, paths: Sequence[str] | str, max_rows: int | None = None) -> None:
        self.paths = [paths] if isinstance(paths, str) else list(paths)
        self.max_rows = max_rows

    def _files(self) -> list[str]:
        import fsspec  # remote file systems: only a JsonRows source needs it

        files = []
        for pattern in map(local_url, self.paths):
            found = sorted(f.fs.unstrip_protocol(f.path) for f in fsspec.open_files(pattern))
            if not found:
                raise FileNotFoundError(f"no file matches {pattern}; fix data.source paths")
            files += found
        return files

    def __iter__(self) -> Iterator[object]:
        count = 0
        for path in self._files():
            for row in self._rows(path):
                if self.max_rows is not None and count >= self.max_rows:
                    return
                count += 1
                yield row

    @staticmethod
    def _rows(path: str) -> Iterator[object]:
        import fsspec  # see _files

        if path.endswith(".parquet"):
            import pyarrow.parquet as pq  # heavy: only parquet files need it

            with fsspec.open(path, "rb") as file:
                for batch in pq.ParquetFile(file).iter_batches(batch_size=1024):
                    yield from batch.to_pylist()
            return
        where = path.removeprefix("file://")
        with fsspec.open(path, "rb", compression="infer") as file:
            for number, raw in enumerate(file, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:  # counted and rejected by the DataModule, never a U+FFFD text
                    yield RejectedRow(INVALID_UTF8, f"{where}:{number}")
                    continue
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(
                        f"{where}:{number} is not a JSON row ({error}): fix or delete that line (one JSON value "
                        "per line), or leave the file out of the source's paths"
                    ) from None
