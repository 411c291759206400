"""How close a run's student is to its teachers, on held-out texts: at init and after each stage.

Separate from ``evaluate.py`` because it scores against the run's own teachers and held-out split, which only the
training config (``teachers=``, ``data=``) rebuilds; ``evaluate.py`` takes models and files (its ``fidelity`` set
is the same score against any model on any text file)."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from jasper.core.disk import check_name
from jasper.core.metrics import teacher_fidelity
from jasper.core.tables import ResultRow, markdown_table, write_report
from jasper.evaluation.models import encoder_fingerprint
from jasper.models.student import FC1, Student
from jasper.storage.checkpoints import STUDENT_FILE, load_student, stage_students
from jasper.training.assembly import assemble

log = logging.getLogger(__name__)
SAME_KEYS = ("seed", "teachers", "data")  # what decides the held-out texts and their teacher vectors


def fidelity_row(
    name: str, student: Student, pooled: torch.Tensor, teacher: torch.Tensor, batch_size: int
) -> ResultRow:
    """Mean cosine to the teacher on FC1; Spearman of in-batch similarities vs the teacher's, per head, from the
    student's pooled states of the held-out texts (:meth:`Student.encode_pooled`)."""
    vectors = student.project_pooled(pooled)
    metrics: dict[str, float | None] = {}
    for head in student.head_names:
        scores = teacher_fidelity(vectors[head], teacher, batch_size)
        if head == FC1:
            metrics["cos fc1"] = scores["cosine"]
        metrics[f"spearman {head}"] = scores["spearman"]
    return ResultRow(model=name, metrics=metrics)


def saved_config(student_file: Path) -> DictConfig:
    """The config a stage trained with: Hydra's ``.hydra/config.yaml`` beside its ``student.pt``."""
    path = student_file.parent / ".hydra" / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no {path}: report.py rebuilds the run's teachers and held-out texts from the config the run saved "
            "there, so it reports on runs trained with train.py"
        )
    cfg = OmegaConf.load(path)
    cfg.paths.output_dir = str(
        student_file.parent
    )  # was ${hydra:runtime.output_dir}, known only inside Hydra
    return cfg


def run_config(stages: list[tuple[str, Path]]) -> DictConfig:
    """The first stage's saved config; every other stage must share its teachers, data and seed, or the rows
    would be scored on different held-out texts."""
    first_name, first = stages[0]
    cfg = saved_config(first)
    for name, path in stages[1:]:
        other = saved_config(path)
        for key in SAME_KEYS:
            if unresolved(other, key) != unresolved(cfg, key):
                raise ValueError(
                    f"{name} was trained with other {key}= than {first_name}: their fidelity is not measured on "
                    f"the same held-out texts; report each alone with run_name=<run>/<folder>"
                )
    return cfg


def unresolved(cfg: DictConfig, key: str) -> object:
    """``cfg[key]`` as written (interpolations kept: comparing them needs no resolver and no Hydra)."""
    value = cfg.get(key)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def report(cfg: DictConfig) -> str:
    """Score init and every finished stage of the run ``cfg.paths.run_dir`` on its held-out texts, with the
    teachers, data and seed that the run saved (its ``.hydra/config.yaml``, not today's defaults). Each stage is
    scored with its own heads; a head a student lacks shows as "-"."""
    check_name(cfg.run_name, "run_name", subfolders=True)  # the report is written into the run's folder
    run_dir = Path(cfg.paths.run_dir)
    stages = stage_students(run_dir)
    if not stages:
        raise FileNotFoundError(
            f"no {STUDENT_FILE} under {run_dir}: train first (python train.py run_name={cfg.run_name})"
        )
    trained = run_config(stages)
    log.info("teachers, data and init as %s trained them", stages[0][0])
    # The untrained init, seeded as training was: the random FC1 and heads stage 1 started from.
    parts = assemble(trained, init_from=None)
    _, texts = parts.datamodule.prepare_texts()  # the teachers encode the held-out texts only
    teacher = parts.teachers.encode(texts)
    batch = parts.settings.batch_size
    # Students with equal encoder weights (stage 1 trains FC1 alone on init's; a frozen-encoder stage 3 keeps
    # stage 2's) share one encoding of the texts.
    pooled: dict[str, torch.Tensor] = {}
    rows = []
    # A generator: one stage's student in memory at a time, as before (a 1.5B student is GBs).
    students = itertools.chain([("init", parts.student)], ((n, load_student(p)[0]) for n, p in stages))
    for name, student in students:
        key = encoder_fingerprint(student)
        if key not in pooled:
            pooled[key] = student.encode_pooled(texts, batch)
        rows.append(fidelity_row(name, student, pooled[key], teacher, batch))
    write_report(rows, run_dir, stem="fidelity")
    table = markdown_table(rows)
    log.info(
        "teacher fidelity on %d held-out texts (in-batch Spearman over batches of %d):\n%s",
        len(texts),
        batch,
        table,
    )
    return table
