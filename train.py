"""Train one stage of the Jasper recipe: python train.py [stage=1|2|3] [overrides]. See README.md."""

import hydra
from omegaconf import DictConfig

import jasper.config  # noqa: F401  (registers the config resolvers)
from jasper.train import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)


if __name__ == "__main__":
    main()
