"""Every Lightning callback the runs use, named by ``_target_`` in ``conf/callbacks/`` (one file per set:
``default`` for every stage, ``vision`` for stage 4's extras).

- :class:`StageCheckpoint`: Lightning's checkpoints while a stage runs, one file (``last.ckpt`` links to it);
  gone once the stage has run its whole schedule and written ``student.pt``;
- :class:`SaveStudent`, :class:`SaveVision`: ``student.pt`` / ``vision.pt`` at the end of fit;
- :class:`StageProgressBar`: the stage's optimiser steps (``stage 2: 312/800``);
- :class:`HeadPanels`: with the wandb logger, per-head fidelity as a ``wandb.Table`` and the Spearman-vs-head-dim
  curve at the end of a stage that trains MRL heads (works offline too: ``wandb sync`` uploads them later);
- :class:`RecallReport`: stage 4's held-out image<->caption recall before and after training;
- :class:`RandomState`: every rank's random generators in each checkpoint, so a resumed stage draws what an
  uninterrupted one would (dropout).
"""

from __future__ import annotations

import logging
import random
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from jasper.core.tables import ResultRow, markdown_table, write_report
from jasper.models.vision import save_vision
from jasper.storage.checkpoints import save_student

log = logging.getLogger(__name__)


class StageCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` for a stage that may be interrupted: with ``save_last="link"`` the folder
    holds one checkpoint (the newest step's file, ``last.ckpt`` a link to it). Once the stage has run its whole
    schedule (``stage_steps``) and ``superseded_by`` (its ``student.pt``) is written, that file has no use left,
    since resuming it would train no step, and it is removed: a finished stage keeps ``student.pt``, an
    interrupted one its checkpoint. ``superseded_by=None`` keeps it. Lightning runs checkpoint callbacks after the
    others, so ``student.pt`` and ``vision.pt`` are written before this ``on_fit_end``."""

    def __init__(
        self, *args, stage_steps: int | None = None, superseded_by: str | None = None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.stage_steps = stage_steps
        self.superseded_by = superseded_by

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        finished = self.stage_steps is not None and trainer.global_step >= self.stage_steps
        if not (trainer.is_global_zero and finished and self.superseded_by and self.dirpath):
            return
        if not Path(self.superseded_by).is_file():
            return
        folder = Path(self.dirpath)
        for path in folder.glob("*.ckpt"):
            if path.is_dir() and not path.is_symlink():  # a DeepSpeed checkpoint is a directory
                shutil.rmtree(path)
            else:
                path.unlink()
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        log.info("stage finished: %s replaces its checkpoints in %s", self.superseded_by, folder)


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


def random_states() -> dict:
    """This process's generators: torch's, CUDA's (the current device, when there is one), numpy's and Python's."""
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_random_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def storable(states: dict) -> dict:
    """``states`` as plain tensors, tuples and numbers, so a checkpoint loads with ``weights_only=True``
    (numpy's state is an ndarray)."""
    kind, keys, position, has_gauss, gauss = states["numpy"]
    return {**states, "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss)}


def from_storable(states: dict) -> dict:
    kind, keys, position, has_gauss, gauss = states["numpy"]
    python = states["python"]
    numpy = (kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss)
    return {**states, "numpy": numpy, "python": (python[0], tuple(python[1]), python[2])}


class RandomState(L.Callback):
    """A resumed stage draws the random numbers an uninterrupted one draws (dropout in stages 2-4), on every rank.

    The run seeds its generators once at the start (``jasper.training.assembly.assemble``), so without this a
    resumed run would replay the first steps' dropout masks. Each training step ends by keeping the generators'
    states; the next step starts by putting them back, so what runs between two steps (a validation pass, a new
    epoch's loader: each draws a seed from torch's generator) leaves the training stream as it was, and a
    checkpoint written between the steps holds exactly the states the next step starts from. Every rank's states
    are gathered into the checkpoint (rank 0 writes it); a resumed rank takes its own. Lightning calls
    ``state_dict`` on every rank while saving, so the gather is collective. The batches draw nothing from these
    generators (their order and the augmentation have seeds of their own: ``jasper/data/batching.py``)."""

    def __init__(self) -> None:
        self.between_steps: dict | None = None  # this rank's states after its last step
        self.loaded: list[dict] | None = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.loaded is None:
            if trainer.ckpt_path is not None:
                log.warning(
                    "%s holds no random states (written before they were saved): the resumed run's dropout "
                    "differs from an uninterrupted run's",
                    trainer.ckpt_path,
                )
            return
        if len(self.loaded) != trainer.world_size:
            log.warning(
                "the checkpoint holds the random states of %d rank(s) and this run has %d: the resumed run's "
                "dropout differs from an uninterrupted run's (resume with the same trainer.devices to keep them)",
                len(self.loaded),
                trainer.world_size,
            )
        else:
            self.between_steps = from_storable(self.loaded[trainer.global_rank])
        self.loaded = None

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, *_: Any) -> None:
        if self.between_steps is not None:
            set_random_states(self.between_steps)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *_: Any) -> None:
        # Before ModelCheckpoint's own on_train_batch_end: Lightning runs checkpoint callbacks last.
        self.between_steps = random_states()

    def state_dict(self) -> dict:
        mine = storable(self.between_steps or random_states())
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return {"ranks": [mine]}
        ranks: list = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
        return {"ranks": ranks}

    def load_state_dict(self, state: dict) -> None:
        self.loaded = list(state["ranks"])
