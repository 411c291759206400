"""Checking a cache against its manifests: shard files (before training reads them) and whole folders (``verify``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jasper.storage.cache.format import MANIFEST, CacheDamaged, array_digest


def check_shard_files(folder: Path, manifest: dict) -> None:
    """Each shard of a finished teacher folder: present, of the manifest's shape (a truncated file fails here, not
    as a bare mmap error) and with the manifest's vectors digest (flipped bytes). Raises `CacheDamaged` naming
    the file and how to rebuild it. Reads every byte once: 6.3 s for 10^6 rows of 768-d float16 (1.5 GB) on a
    loaded 2-core machine (benchmarks/cache_check_bench.py), against hours of training on that many rows."""
    dim = manifest["teacher"]["dim"]
    for entry in manifest["shards"]:
        path = folder / entry["file"]
        problem = None
        if not path.is_file():
            problem = "is missing"
        else:
            try:
                array = np.load(path, mmap_mode="r")
            except (ValueError, OSError) as error:
                problem = f"is truncated or unreadable ({error})"
            else:
                if array.shape != (entry["rows"], dim):
                    problem = f"has shape {array.shape}, the manifest says {(entry['rows'], dim)}"
                elif array_digest(array) != entry["vectors_hash"]:
                    problem = "differs from the manifest's digest (corrupted bytes)"
        if problem:
            raise CacheDamaged(
                f"teacher cache shard {path} {problem}: delete it and {folder / MANIFEST}, then run "
                "python precompute.py with the same data= and teachers= (or the same train.py command) to "
                "encode that shard again"
            )


def verify_teacher(folder: Path, manifest: dict, ids: np.ndarray, corpus: dict) -> list[str]:
    problems = []
    dim = manifest["teacher"]["dim"]
    if manifest["rows"] != corpus["rows"] or manifest["corpus"] != corpus["corpus"]:
        problems.append(
            f"{folder.name}: manifest is for {manifest['rows']} rows of corpus {manifest['corpus']}"
        )
    start = 0
    for entry in manifest["shards"]:
        name, rows = f"{folder.name}/{entry['file']}", entry["rows"]
        path = folder / entry["file"]
        if not path.exists():
            problems.append(f"{name}: missing")
            start += rows
            continue
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as error:
            problems.append(f"{name}: unreadable ({error})")
            start += rows
            continue
        if array.shape != (rows, dim):
            problems.append(f"{name}: shape {array.shape}, manifest says {(rows, dim)}")
        if array_digest(array) != entry["vectors_hash"]:
            problems.append(f"{name}: vectors hash differs from the manifest (corrupted or replaced)")
        if array_digest(np.ascontiguousarray(ids[start : start + rows], dtype="<u8")) != entry["texts_hash"]:
            problems.append(f"{name}: texts hash differs (rows no longer belong to the same texts)")
        bad = sum(
            int((~np.isfinite(array[s : s + 8192])).any(axis=1).sum()) for s in range(0, len(array), 8192)
        )
        if bad:
            problems.append(f"{name}: {bad} row(s) with NaN/inf")
        start += rows
    if start != manifest["rows"]:
        problems.append(f"{folder.name}: shards hold {start} rows, manifest says {manifest['rows']}")
    return problems
