"""Every Lightning callback the runs use, named by ``_target_`` in ``conf/callbacks/`` (one file per set:
``default`` for every stage, ``vision`` for stage 4's extras).

- :class:`SaveStudent`, :class:`SaveVision`: ``student.pt`` / ``vision.pt`` at the end of fit;
- :class:`StageProgressBar`: the stage's optimiser steps (``stage 2: 312/800``);
- :class:`HeadPanels`: with the wandb logger, per-head fidelity as a ``wandb.Table`` and the Spearman-vs-head-dim
  curve at the end of a stage that trains MRL heads (works offline too: ``wandb sync`` uploads them later);
- :class:`RecallReport`: stage 4's held-out image<->caption recall before and after training.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from jasper.core.tables import ResultRow, markdown_table, write_report
from jasper.models.vision import save_vision
from jasper.storage.checkpoints import save_student

log = logging.getLogger(__name__)


class SaveStudent(L.Callback):
    """At the end of fit, write the student alone (weights + how to rebuild it) for the next stage and export."""

    def __init__(self, path: str) -> None:
        self.path = path

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        save_student(module.student, self.path)
        log.info("student saved to %s", self.path)


class SaveVision(L.Callback):
    """At the end of fit, write the vision tower (``vision.pt`` beside ``student.pt``; :func:`jasper.models.vision.load_vision`)."""

    def __init__(self, path: str) -> None:
        self.path = path

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        save_vision(module.vision, self.path)
        log.info("vision tower saved to %s", self.path)


class StageProgressBar(TQDMProgressBar):
    """The training bar counts the stage's optimiser steps (``stage 2: 312/800``) across epochs, and a resumed
    run starts at its step, instead of Lightning's per-epoch batch count."""

    def __init__(self, description: str = "train", refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.description = description

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        bar.total = trainer.max_steps if trainer.max_steps > 0 else convert_inf(self.total_train_batches)
        bar.set_description(self.description)
        bar.n = trainer.global_step
        bar.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *_: Any) -> None:
        bar = self.train_progress_bar
        if self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, module))

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, module))


COLUMNS = ["head", "dim", "spearman", "cosine"]


def head_rows(student, metrics: Mapping) -> list[list]:
    """``[head, dim, val/spearman_<head>, val/cosine_<head>]`` per head, from the trainer's final metrics."""

    def value(key: str) -> float | None:
        return float(metrics[key]) if key in metrics else None

    return [
        [head, student.head_dim(head), value(f"val/spearman_{head}"), value(f"val/cosine_{head}")]
        for head in student.head_names
    ]


def head_panels(student, metrics: Mapping, stage: int) -> dict:
    """``{"heads/fidelity": wandb.Table, "heads/spearman_vs_dim": line plot}`` for ``wandb.log``."""
    import wandb  # a logger choice: imported only when wandb logs

    table = wandb.Table(columns=COLUMNS, data=head_rows(student, metrics))
    curve = wandb.plot.line(
        table, "dim", "spearman", title=f"stage {stage}: held-out Spearman vs head dimension"
    )
    return {"heads/fidelity": table, "heads/spearman_vs_dim": curve}


class HeadPanels(L.Callback):
    """At the end of fit, when the stage trains more heads than FC1 and the logger is wandb: `head_panels`."""

    def __init__(self, stage: int) -> None:
        self.stage = stage

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not isinstance(trainer.logger, WandbLogger) or len(module.trained_heads()) < 2:
            return
        trainer.logger.experiment.log(head_panels(module.student, trainer.callback_metrics, self.stage))


def write_before_after(
    before: Sequence[ResultRow],
    after: Sequence[ResultRow],
    out_dir: str | Path,
    stem: str = "image_retrieval",
) -> dict[str, Path]:
    """Stage 4's report: the same held-out pairs with the untrained tower and with the trained one."""
    rows = [ResultRow("untrained tower", r.head, r.dim, r.metrics) for r in before]
    rows += [ResultRow("stage 4", r.head, r.dim, r.metrics) for r in after]
    paths = write_report(rows, out_dir, stem=stem)
    log.info("held-out image<->caption recall:\n%s", markdown_table(rows))
    return paths


class RecallReport(L.Callback):
    """Stage 4's report (``conf/stages/4.yaml``): held-out recall with the untrained tower at the start of fit and
    with the trained one at its end, written by :func:`write_before_after` to ``out_dir``."""

    def __init__(self, out_dir: str, stem: str = "image_retrieval") -> None:
        self.out_dir = out_dir
        self.stem = stem
        self.before: list[ResultRow] = []

    @staticmethod
    def rows(trainer: L.Trainer, module: L.LightningModule) -> list[ResultRow]:
        recall = module.held_out_recall(trainer.datamodule.val_dataloader())
        return [
            ResultRow("", head, module.student.head_dim(head), metrics) for head, metrics in recall.items()
        ]

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.before = self.rows(trainer, module)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        write_before_after(self.before, self.rows(trainer, module), self.out_dir, self.stem)
