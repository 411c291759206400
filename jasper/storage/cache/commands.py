"""Checking caches: ``python precompute.py verify=all`` (:func:`verify_cache_dir`: every corpus under
``paths.cache_dir``) and :func:`verify_tree`, which ``verify=true`` (:mod:`jasper.training.precompute`) also uses."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from jasper.storage.cache.format import CORPUS_FILE, MANIFEST
from jasper.storage.cache.store import TeacherCache

log = logging.getLogger(__name__)


def verify_cache_dir(cache_dir: str | Path) -> int:
    """``python precompute.py verify=all``: every corpus under ``cache_dir`` (or one corpus folder), each problem
    printed; returns the exit status, 1 on any problem, 0 ("cache OK") otherwise."""
    problems = verify_tree(cache_dir)
    for problem in problems:
        print(f"PROBLEM {problem}")
    print("cache OK" if not problems else f"{len(problems)} problem(s) in {cache_dir}")
    return 1 if problems else 0


def verify_tree(path: str | Path) -> list[str]:
    """Verify one corpus folder, or every corpus folder (``corpus-*``, or any holding a corpus.json) under a cache
    directory. A ``corpus-*`` folder without its corpus.json, or with a corpus.json or manifest.json that is not
    valid JSON, is a problem naming that file."""
    path = Path(path)
    if (path / CORPUS_FILE).exists():
        return _verify_corpus(path)
    roots = sorted(
        {p.parent for p in path.glob(f"*/{CORPUS_FILE}")} | {p for p in path.glob("corpus-*") if p.is_dir()}
    )
    if not roots:
        return [f"{path}: no cache found (no {CORPUS_FILE} in it or its subfolders)"]
    return [f"{root.name}/{p}" for root in roots for p in _verify_corpus(root)]


def _verify_corpus(root: Path) -> list[str]:
    """`TeacherCache.verify`, or, when a corpus.json or manifest.json does not parse, those files by name (the
    shards are checked once the manifests read again: delete the damaged one and run precompute to rebuild it)."""
    damaged = []
    for file in [root / CORPUS_FILE, *sorted(root.glob(f"*/{MANIFEST}"))]:
        try:
            if file.exists():
                json.loads(file.read_text())
        except (ValueError, OSError) as error:
            damaged.append(
                f"{file.relative_to(root)}: damaged, not readable JSON ({error}); delete it and run "
                "python precompute.py with the run's data= and teachers= to rebuild it"
            )
    if damaged:
        return damaged
    try:
        return TeacherCache(root).verify()
    except (ValueError, OSError) as error:  # ids.npy truncated or unreadable: named, not a crash
        return [str(error)]
