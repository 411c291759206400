"""Export a student as a sentence-transformers folder with every head: python export.py ckpt=PATH out=DIR."""

import hydra
from omegaconf import DictConfig

import jasper.training.resolvers  # noqa: F401  (registers the config resolvers)
from jasper.exporting import export_checkpoint


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    print(export_checkpoint(cfg.ckpt, cfg.out, scores=cfg.scores))


if __name__ == "__main__":
    main()
