"""wandb panels that answer "how good is each head?": at the end of a stage that trains MRL heads (stage 3), the
per-head validation fidelity as a ``wandb.Table`` and the Spearman-vs-head-dimension curve as a wandb line plot.

Runs are grouped by ``run_name`` and named by stage (conf/logger/wandb.yaml); per-head loss terms, per-head
validation fidelity and learning rates are logged during training (jasper/training/stages/text.py, LearningRateMonitor). Works
offline the same way (the panels land in the offline run's files, ``wandb sync`` uploads them).
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

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
