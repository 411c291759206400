"""``python precompute.py``: the run's texts (cleaned, held out, augmented as training will see them) encoded once by
every configured teacher into the TeacherCache that training reads; a killed build resumes where it stopped.

``torchrun --nproc_per_node=N precompute.py ...`` runs N such processes (on one node, or several with
``--nnodes``): they join one torch.distributed group and encode disjoint shards of one cache, whose manifest rank 0
writes once every shard is in place (docs/cache.md, "Several processes").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from jasper.storage.cache import verify_tree
from jasper.training.assembly import assemble

log = logging.getLogger(__name__)
# How long a rank waits for the others at a meeting point: the slowest rank's last shard, or rank 0 waiting for
# another build's lock on the same teacher (hours at the paper's scale). A rank that dies does not leave the others
# waiting this long: torchrun stops the whole job when one of its processes fails.
MEETING_TIMEOUT = timedelta(days=7)


@contextmanager
def torchrun_group() -> Iterator[bool]:
    """The process group of the processes torchrun started (its ``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR`` ...),
    destroyed on the way out, error or not (a process that exits with its group alive can abort at exit). True
    under torchrun with more than one process; False, and nothing started, for ``python precompute.py``.

    Backend gloo: the ranks exchange only barriers and short lists of shard numbers, which gloo carries on any
    machine; each rank's teachers still encode on its own GPU (``LOCAL_RANK``), set here before any loads."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield False
        return
    if torch.cuda.is_available():  # teachers load on "cuda", the current device: one GPU per rank of a node
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("gloo", timeout=MEETING_TIMEOUT)
    try:
        yield True
    finally:
        dist.destroy_process_group()


def precompute(cfg: DictConfig) -> Path:
    """Build the run's teacher cache (what it lacks), sharing the shards between torchrun's processes when there
    are several; ``verify=true`` only checks it (hashes, row counts, NaN/inf) and raises when anything is wrong.
    Returns the corpus folder."""
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
    with torchrun_group() as distributed:
        data.prepare_data(distributed=distributed)
    log.info("teacher vectors of the run's texts in %s", cache.root)
    return cache.root
