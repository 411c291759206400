"""Teacher fidelity of a run at init and after each finished stage: python report.py run_name=NAME.
The run's own saved config (its .hydra/config.yaml) decides the teachers and the held-out texts. A sweep's job
folder alone, its name as it is on the command line: python report.py run_name=mine/mrl_dims=128,64

Not an evaluate.py preset: it scores against the run's own teachers and held-out split, which only the training
config rebuilds (evaluate.py's `fidelity` set scores any model against a teacher model on a text file)."""

import sys

import hydra
from omegaconf import DictConfig

import jasper.training.resolvers  # noqa: F401  (registers the config resolvers)
from jasper.evaluation.fidelity import report
from jasper.training.command_line import quote_paths


@hydra.main(version_base="1.3", config_path="conf", config_name="report")
def main(cfg: DictConfig) -> None:
    report(cfg)  # logs the table and writes fidelity.{json,md,png} into the run folder


if __name__ == "__main__":
    sys.argv[1:] = quote_paths(sys.argv[1:])  # a job folder's name holds "=": Hydra needs it quoted
    main()
