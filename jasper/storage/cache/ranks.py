"""The ranks of one cache build: which shards this process encodes, and the decisions one rank makes for all.

``python precompute.py`` alone is one rank and nothing here communicates. Under ``torchrun --nproc_per_node=N
precompute.py`` (:func:`jasper.training.precompute.precompute` starts and destroys the process group) each process
is a rank: rank 0 decides (which teachers and shards are missing) and tells the others with
``broadcast_object_list``; ``barrier`` is where every rank's shards are in place. Only a few small Python objects
cross ranks (lists of shard numbers), so any backend does, gloo included, on CPUs or GPUs.
"""

from __future__ import annotations

from typing import TypeVar

import torch.distributed as dist

T = TypeVar("T")


class Ranks:
    """This process's place among the ranks of the running ``torch.distributed`` group (``distributed=True``),
    or the only rank (``distributed=False``, whether or not a group exists: Lightning's ``prepare_data`` builds
    the cache on one rank while the others wait, so a group alone does not mean the work is shared)."""

    def __init__(self, distributed: bool = False) -> None:
        if distributed and not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "a distributed cache build needs torch.distributed's process group: start the command with "
                "torchrun (torchrun --nproc_per_node=N precompute.py ...), which precompute turns into a group"
            )
        self.distributed = distributed
        self.rank = dist.get_rank() if distributed else 0
        self.world = dist.get_world_size() if distributed else 1

    @property
    def first(self) -> bool:
        """Rank 0: the one that writes corpus.json and manifests, holds the build lock and decides the work."""
        return self.rank == 0

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world}" if self.distributed else "the only rank"

    @property
    def tag(self) -> str:
        """`` (rank r of N)`` for a log line of a distributed build, empty for one process (its logs unchanged)."""
        return f" ({self})" if self.distributed else ""

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def from_first(self, value: T) -> T:
        """Rank 0's ``value`` on every rank: one decision for the group, even when files change between the
        moments at which the ranks would look at them (another build finishing a teacher meanwhile)."""
        if not self.distributed:
            return value
        box = [value if self.first else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def share(self, items: list[T]) -> list[T]:
        """This rank's part of ``items``: every ``world``-th from its own rank on. Disjoint, together all of them,
        and balanced within one item per rank. ``items`` is the shards still missing when the run starts, so a
        resumed job splits what is left whatever its number of ranks."""
        return items[self.rank :: self.world]
