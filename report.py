"""Teacher fidelity of a run at init and after each finished stage: python report.py run_name=NAME.

Not an evaluate.py preset: it scores against the run's own teachers and held-out split, which only the training
config rebuilds (evaluate.py's `fidelity` set scores any model against a teacher model on a text file)."""

import hydra
from omegaconf import DictConfig

import jasper.training.resolvers  # noqa: F401  (registers the config resolvers)
from jasper.evaluation.fidelity import report


@hydra.main(version_base="1.3", config_path="conf", config_name="report")
def main(cfg: DictConfig) -> None:
    report(cfg)  # logs the table and writes fidelity.{json,md,png} into the run folder


if __name__ == "__main__":
    main()
