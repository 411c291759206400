"""How close a run's student is to its teachers, on held-out texts: at init and after each stage.

Separate from ``evaluate.py`` because it scores against the run's own teachers and held-out split, which only the
training config (``teachers=``, ``data=``) rebuilds; ``evaluate.py`` takes models and files (its ``fidelity`` set
is the same score against any model on any text file)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from jasper.core.disk import check_name
from jasper.core.metrics import teacher_fidelity
from jasper.core.tables import ResultRow, markdown_table, write_report
from jasper.models.student import FC1, Student
from jasper.storage.checkpoints import STUDENT_FILE, load_student_weights, stage_students
from jasper.training.assembly import assemble

log = logging.getLogger(__name__)


def fidelity_row(
    name: str, student: Student, texts: list[str], teacher: torch.Tensor, batch_size: int
) -> ResultRow:
    """Mean cosine to the teacher on FC1; Spearman of in-batch similarities vs the teacher's, per head."""
    metrics: dict[str, float | None] = {}
    for head in student.head_names:
        scores = teacher_fidelity(
            student.encode(texts, head=head, batch_size=batch_size), teacher, batch_size
        )
        if head == FC1:
            metrics["cos fc1"] = scores["cosine"]
        metrics[f"spearman {head}"] = scores["spearman"]
    return ResultRow(model=name, metrics=metrics)


def report(cfg: DictConfig) -> str:
    """Build the run's teachers, student and held-out data from ``cfg``; score init and every finished stage."""
    check_name(cfg.run_name, "run_name", subfolders=True)  # the report is written into the run's folder
    run_dir = Path(cfg.paths.run_dir)
    stages = stage_students(run_dir)
    if not stages:
        raise FileNotFoundError(
            f"no {STUDENT_FILE} under {run_dir}: train first (python train.py run_name={cfg.run_name})"
        )
    parts = assemble(
        cfg, init_from=None
    )  # seeded as training is: the random FC1 and heads stage 1 started from
    student, datamodule, batch = parts.student, parts.datamodule, parts.settings.batch_size
    datamodule.setup("validate")
    texts, teacher = datamodule.val_set.texts, datamodule.val_set.teacher_vectors
    rows = [fidelity_row("init", student, texts, teacher, batch)]
    for name, path in stages:
        load_student_weights(student, path)
        rows.append(fidelity_row(name, student, texts, teacher, batch))
    write_report(rows, run_dir, stem="fidelity")
    table = markdown_table(rows)
    log.info(
        "teacher fidelity on %d held-out texts (in-batch Spearman over batches of %d):\n%s",
        len(texts),
        batch,
        table,
    )
    return table
