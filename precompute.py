"""Encode the run's texts with its teachers once, into the TeacherCache that training reads.

python precompute.py [teachers=...] [data=...] [key=value ...]   # same config groups as train.py
python precompute.py verify=true                                 # check hashes, row counts, NaN/inf
See docs/cache.md.
"""

import hydra
from omegaconf import DictConfig

import jasper.training.resolvers  # noqa: F401  (registers the config resolvers)
from jasper.storage.cache import precompute


@hydra.main(version_base="1.3", config_path="conf", config_name="precompute")
def main(cfg: DictConfig) -> None:
    precompute(cfg)


if __name__ == "__main__":
    main()
