"""The cache's commands: ``python precompute.py`` (:func:`precompute`) and ``python -m jasper.storage.cache verify DIR``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.utils import instantiate

from jasper.storage.cache.format import CORPUS_FILE
from jasper.storage.cache.store import TeacherCache

log = logging.getLogger(__name__)


def precompute(cfg) -> Path:
    """``python precompute.py``: the run's texts (cleaned, held out, augmented as training will see them)
    encoded by every configured teacher into the TeacherCache; resumes a killed build. ``verify=true`` only
    checks the cache (hashes, row counts, NaN/inf) and raises when anything is wrong."""
    teachers = instantiate(cfg.teachers)
    data = instantiate(cfg.data, teachers=teachers, tokenize=None)
    train, held_out = data.prepare_texts()
    texts = train + held_out
    root = (
        Path(data.teacher_cache) if data.teacher_cache else TeacherCache.for_texts(data.cache_dir, texts).root
    )
    if cfg.get("verify", False):
        problems = verify_tree(root)
        for problem in problems:
            log.error("cache problem: %s", problem)
        if problems:
            raise ValueError(f"{len(problems)} problem(s) in the cache {root}: {problems[:3]}")
        log.info("cache %s verified: %d rows, teachers %s", root, len(texts), teachers.names)
        return root
    log.info("rejected rows: %s", dict(data.rejected) or "none")
    cache = TeacherCache(root)
    stats = {"rejected": dict(data.rejected), "val_texts": data.val_texts, "seed": data.seed}
    cache.build(texts, teachers.teachers, teachers.batch_size, data.shard_rows, stats=stats)
    log.info("teacher vectors of %d texts in %s", len(texts), root)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "verify":
        print("usage: python -m jasper.storage.cache verify CACHE_DIR", file=sys.stderr)
        return 2
    problems = verify_tree(argv[1])
    for problem in problems:
        print(f"PROBLEM {problem}")
    print("cache OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def verify_tree(path: str | Path) -> list[str]:
    """Verify one corpus folder, or every ``corpus-*`` folder under a cache directory."""
    path = Path(path)
    if (path / CORPUS_FILE).exists():
        return TeacherCache(path).verify()
    roots = sorted(p.parent for p in path.glob(f"*/{CORPUS_FILE}"))
    if not roots:
        return [f"{path}: no cache found (no {CORPUS_FILE} in it or its subfolders)"]
    return [f"{root.name}/{p}" for root in roots for p in TeacherCache(root).verify()]
