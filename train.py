"""Train one stage of the Jasper recipe: python train.py [stage=1|2|3|4] [overrides]. See README.md."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import jasper.training.resolvers  # noqa: F401  (registers the config resolvers)
from jasper.training.command_line import RunRefused, check_overrides, quote_paths
from jasper.training.preflight import remove_unused_run_folder, validate


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:  # a config this machine cannot run is refused before Lightning loads (seconds on 2 cores)
        validate(cfg)
    except RunRefused as error:
        remove_unused_run_folder(cfg.paths.output_dir, stop_at=Path(cfg.paths.run_dir).parent)
        raise SystemExit(f"error: {error}") from None
    # Lightning is imported here, once the config has passed
    from jasper.training.run import run
    from jasper.training.stages.base import NonFiniteLoss

    try:
        return run(cfg)
    except (RunRefused, NonFiniteLoss) as error:  # a config this machine cannot run, or a diverged stage: one
        raise SystemExit(f"error: {error}") from None  # line that names the key to change, no traceback


if __name__ == "__main__":
    sys.argv[1:] = quote_paths(sys.argv[1:])  # a job folder's name holds "=": Hydra needs it quoted
    try:  # before Hydra composes: an override of the stage_settings view is refused, naming the key to use
        check_overrides(sys.argv[1:])
    except RunRefused as error:
        raise SystemExit(f"error: {error}") from None
    main()
