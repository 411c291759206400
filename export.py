"""Export a student as a sentence-transformers folder with every head: python export.py ckpt=PATH out=DIR."""

import hydra
from omegaconf import DictConfig

import jasper.training.resolvers  # noqa: F401  (registers the config resolvers)
from jasper.exporting import ExportRefused, export_checkpoint


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        print(export_checkpoint(cfg.ckpt, cfg.out, scores=cfg.scores, overwrite=cfg.overwrite))
    except ExportRefused as error:  # an out folder export will not replace: one line, no traceback
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
