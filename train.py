"""Train one stage of the Jasper recipe: python train.py [stage=1|2|3|4] [overrides]. See README.md."""

import sys

import hydra
from omegaconf import DictConfig

import jasper.training.resolvers  # noqa: F401  (registers the config resolvers)
from jasper.training.run import RunRefused, check_overrides, run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        return run(cfg)
    except RunRefused as error:  # a configuration this machine cannot run: one line, no traceback
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    try:  # before Hydra composes: an override of the stage_settings view is refused, naming the key to use
        check_overrides(sys.argv[1:])
    except RunRefused as error:
        raise SystemExit(f"error: {error}") from None
    main()
