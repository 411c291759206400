"""``python precompute.py``: the run's texts (cleaned, held out, augmented as training will see them) encoded once by
every configured teacher into the TeacherCache that training reads; a killed build resumes where it stopped."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from jasper.storage.cache import verify_tree
from jasper.training.assembly import assemble

log = logging.getLogger(__name__)


def precompute(cfg: DictConfig) -> Path:
    """Build the run's teacher cache (what it lacks); ``verify=true`` only checks it (hashes, row counts, NaN/inf)
    and raises when anything is wrong. Returns the corpus folder."""
    parts = assemble(cfg, student=False)
    data = parts.datamodule
    cache = data.corpus_cache()
    if cache is None:
        raise ValueError(
            "precompute writes the teacher cache, but this config has none (data.cache_dir=null or "
            "teachers.online=true): set data.cache_dir (default ${paths.cache_dir})"
        )
    if cfg.verify:
        problems = verify_tree(cache.root)
        for problem in problems:
            log.error("cache problem: %s", problem)
        if problems:
            raise ValueError(f"{len(problems)} problem(s) in the cache {cache.root}: {problems[:3]}")
        log.info("cache %s verified: teachers %s", cache.root, parts.teachers.names)
        return cache.root
    data.prepare_data()
    log.info("teacher vectors of the run's texts in %s", cache.root)
    return cache.root
