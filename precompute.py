"""Encode the run's texts with its teachers once, into the TeacherCache that training reads.

python precompute.py [teachers=...] [data=...] [key=value ...]   # same config groups as train.py
python precompute.py verify=true                                 # this run's cache: hashes, row counts, NaN/inf
python precompute.py verify=all                                  # every corpus under paths.cache_dir; exit 1 on any problem
torchrun --standalone --nproc_per_node=N precompute.py [...]     # N processes (GPUs) sharing the shards of one cache
See docs/cache.md.
"""

import sys

import hydra
from omegaconf import DictConfig

import jasper.training.resolvers  # noqa: F401  (registers the config resolvers)
from jasper.storage.cache import verify_cache_dir
from jasper.training.precompute import precompute


@hydra.main(version_base="1.3", config_path="conf", config_name="precompute")
def main(cfg: DictConfig) -> None:
    if cfg.verify == "all":  # reads only the cache folder: no teacher is loaded, no text is read
        sys.exit(verify_cache_dir(cfg.paths.cache_dir))
    if cfg.verify not in (True, False):
        raise ValueError(
            f"verify={cfg.verify}: use verify=true (this run's cache) or verify=all (every corpus under "
            "paths.cache_dir)"
        )
    precompute(cfg)


if __name__ == "__main__":
    main()
