"""TeacherCache random reads: rows/s and memory at 10^4, 10^5 and 10^6 cached rows of 768-d (synthetic vectors).

    python benchmarks/cache_read_bench.py [--sizes 10000 100000 1000000] [--reads 20000]

Each size runs in a fresh subprocess: it builds a cache of N random unit vectors (float16, 65,536-row shards, the
same code path as precompute.py), drops nothing from the page cache, then reads ``--reads`` random rows one at a
time as the DataLoader does (``CachedRows[i]``) and in batches of 128 (``reader[rows]``). Memory: the resident set
(VmRSS, which counts the mapped shard pages the reads touched: page cache, reclaimable), its anonymous part
(RssAnon: the process's own memory) and the process's peak (VmHWM, the synthetic build included), in MiB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time


def _status(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return float("nan")


def _child(rows: int, reads: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)

    from jasper.data.text_dataset import CachedRows
    from jasper.storage.cache import TeacherCache

    class Synthetic:
        name, dim = "synthetic-768", 768

        def __init__(self) -> None:
            self.generator = torch.Generator().manual_seed(0)

        def encode(self, texts, batch_size=32):
            return torch.nn.functional.normalize(
                torch.randn(len(texts), 768, generator=self.generator), dim=-1
            )

    texts = [f"t{i}" for i in range(rows)]
    with tempfile.TemporaryDirectory() as folder:
        cache = TeacherCache(folder)
        started = time.perf_counter()
        cache.build(texts, [Synthetic()], batch_size=4096, shard_rows=65536, show_progress=False)
        build_s = time.perf_counter() - started
        del texts
        reader = cache.reader([Synthetic()])
        rng = np.random.default_rng(0)
        picks = rng.integers(0, rows, reads)
        view = CachedRows(reader, np.arange(rows))
        rss_before, anon_before = _status("VmRSS"), _status("RssAnon")
        started = time.perf_counter()
        for i in picks:
            view[int(i)]
        single = reads / (time.perf_counter() - started)
        started = time.perf_counter()
        for start in range(0, reads, 128):
            reader[picks[start : start + 128]]
        batched = reads / (time.perf_counter() - started)
        return {
            "rows": rows,
            "build_s": build_s,
            "single": single,
            "batched": batched,
            "rss_before": rss_before,
            "rss_after": _status("VmRSS"),
            "anon_before": anon_before,
            "anon_after": _status("RssAnon"),
            "peak": _status("VmHWM"),
            "disk_mb": rows * 768 * 2 / 2**20,
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--reads", type=int, default=20_000)
    parser.add_argument("--child", type=int)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.reads)))
        return
    print(
        "| rows | on disk (MiB) | build (s) | rows/s, one at a time | rows/s, batches of 128 | RSS before -> after reads (MiB) | anonymous RSS before -> after (MiB) | peak RSS (MiB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rows in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(rows), "--reads", str(args.reads)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {r['rows']:,} | {r['disk_mb']:,.0f} | {r['build_s']:.1f} | {r['single']:,.0f} | {r['batched']:,.0f} "
            f"| {r['rss_before']:,.0f} -> {r['rss_after']:,.0f} | {r['anon_before']:,.0f} -> {r['anon_after']:,.0f} "
            f"| {r['peak']:,.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
