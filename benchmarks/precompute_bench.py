"""precompute throughput as a ratio to the bare teacher encode on the same texts, measured in the same run.

    python benchmarks/precompute_bench.py [--texts 1000] [--repeats 3] [--max-length 128]

Teacher: the packaged all-MiniLM-L6-v2 (HuggingFaceTeacher, mean pooling). Texts: standard-library docstrings.
"bare": ``teacher.encode`` over the texts sorted by length, batch 32 (no cache, no files). "precompute":
``TeacherCache.build`` into a fresh folder (sorting, fp16 conversion, shard write + fsync + rename, hashing,
manifest), 256-row shards. The two alternate, ``--repeats`` times each; the table gives medians and the ratio of
texts/s (precompute / bare; target >= 0.95).
"""

from __future__ import annotations

import argparse
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    from jasper.data.datamodule import clean_rows
    from jasper.data.sources import PythonDocstrings
    from jasper.models.packaged import packaged_minilm
    from jasper.models.teachers import HuggingFaceTeacher
    from jasper.storage.cache import TeacherCache

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts, _ = clean_rows(PythonDocstrings(root=str(stdlib)))
    texts = texts[: args.texts]
    teacher = HuggingFaceTeacher(packaged_minilm(), max_length=args.max_length)
    ordered = sorted(texts, key=len, reverse=True)
    teacher.encode(ordered[:64], 32)  # warm-up

    bare, cached = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        teacher.encode(ordered, 32)
        bare.append(time.perf_counter() - started)
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            TeacherCache(folder).build(texts, [teacher], batch_size=32, shard_rows=256, show_progress=False)
            cached.append(time.perf_counter() - started)
    b, c = statistics.median(bare), statistics.median(cached)
    print(f"{len(texts)} texts, max_length {args.max_length}, median of {args.repeats}, alternating")
    print("| path | seconds | texts/s | ratio to bare |")
    print("|---|---:|---:|---:|")
    print(f"| bare teacher.encode | {b:.1f} | {len(texts) / b:.1f} | 1.00 |")
    print(f"| precompute (TeacherCache.build) | {c:.1f} | {len(texts) / c:.1f} | {b / c:.2f} |")


if __name__ == "__main__":
    main()
