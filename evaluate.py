"""Evaluate students, exported folders and sentence-transformers models: python evaluate.py model=PATH eval=dev.

See docs/evaluation.md. ``run_name=NAME`` adds the run's teacher, init and every finished stage to the table.
python evaluate.py eval=images model=PATH/student.pt: a stage-4 student and its tower on image-caption pairs
(docs/vision.md). python evaluate.py eval=serving run_name=NAME: also every head at float32 / int8 / binary, the
student's queries against the teachers' documents, and the trade-off figure (docs/evaluation.md, "Serving").
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import jasper.training.resolvers  # noqa: F401  (registers the config resolvers)
from jasper.evaluation.image_retrieval import evaluate_images
from jasper.evaluation.runner import evaluate, missing_data_note
from jasper.training.command_line import quote_paths

REPO = Path(__file__).resolve().parent


@hydra.main(version_base="1.3", config_path="conf/evaluate", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    config = OmegaConf.to_container(cfg, resolve=True)
    if config["eval"].get("images"):  # eval=images: image-caption pairs, not text sets
        print(evaluate_images(config, REPO)[1])
        return
    note = missing_data_note(config, REPO)
    if note:
        print(note)
        return
    print(evaluate(config, REPO)[1])


if __name__ == "__main__":
    sys.argv[1:] = quote_paths(sys.argv[1:])  # a job folder's name holds "=": Hydra needs it quoted
    main()
