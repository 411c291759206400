"""Cost of the teacher-cache check on load (`jasper.storage.cache.check_shard_files`: every shard's size and digest).

    python benchmarks/cache_check_bench.py [--rows 1000000] [--dim 768]

Writes ``--rows`` random float16 rows of ``--dim`` in 65,536-row shards with their manifest entries (as a finished
cache holds them) into a temporary folder, then times the check. The shards were just written, so they are read
from the page cache: the figure is the hashing cost; on a cold disk add one sequential read of the shards.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from jasper.storage.cache import SHARD, array_digest, check_shard_files


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    args = parser.parse_args()
    shard_rows = 65536
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        entries = []
        for index, start in enumerate(range(0, args.rows, shard_rows)):
            rows = min(shard_rows, args.rows - start)
            array = rng.standard_normal((rows, args.dim), dtype=np.float32).astype(np.float16)
            np.save(Path(folder) / SHARD.format(index), array)
            entries.append({"file": SHARD.format(index), "rows": rows, "vectors_hash": array_digest(array)})
        manifest = {"teacher": {"dim": args.dim}, "shards": entries}
        gigabytes = args.rows * args.dim * 2 / 1e9
        started = time.perf_counter()
        check_shard_files(Path(folder), manifest)
        seconds = time.perf_counter() - started
    print("| rows | dim | GB | check s | GB/s |\n|---|---|---|---|---|")
    print(f"| {args.rows:,} | {args.dim} | {gigabytes:.2f} | {seconds:.2f} | {gigabytes / seconds:.2f} |")


if __name__ == "__main__":
    main()
