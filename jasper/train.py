"""Train one stage: instantiate everything from the composed config, fit, return the metric a sweep optimises."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf
from omegaconf import DictConfig, OmegaConf

from jasper.checkpoints import load_student_weights, resolve_ckpt_path, resolve_init_from
from jasper.sweeps import METRICS_FILE, first_stage_changed, write_job_metrics

log = logging.getLogger(__name__)
HYDRA_FILES = {".hydra", "train.log"}  # what Hydra writes into a run's folder before the run starts


def check_stage(cfg: DictConfig) -> None:
    available = sorted(int(key.removeprefix("stage")) for key in cfg.stages)
    if cfg.stage not in available:
        raise ValueError(f"unknown stage={cfg.stage!r}: choose one of {available} (python train.py stage=2)")


def check_accelerator(cfg: DictConfig) -> None:
    """``trainer=gpu``/``ddp``-on-GPU/``deepspeed_zero2`` on a machine without CUDA: one line naming ``trainer=cpu``
    (rather than Lightning's or DeepSpeed's own error, deep in the setup)."""
    trainer = cfg.get("trainer") or {}
    accelerator = str(trainer.get("accelerator", "auto"))
    strategy = trainer.get("strategy")
    target = str(strategy.get("_target_", "")) if isinstance(strategy, DictConfig) else str(strategy or "")
    deepspeed = "deepspeed" in target.lower()
    if (accelerator in ("gpu", "cuda") or deepspeed) and not torch.cuda.is_available():
        what = "DeepSpeed (trainer=deepspeed_zero2)" if deepspeed else f"trainer.accelerator={accelerator}"
        raise RuntimeError(
            f"{what} needs a CUDA GPU and none is visible here: use trainer=cpu (or trainer=ddp for several "
            "CPU processes)"
        )


class RunRefused(ValueError):
    """A configuration that cannot run here, found before any model loads; the message is one line naming the
    key to change (train.py prints it without a traceback)."""


def validate(cfg: DictConfig) -> str | None:
    """Everything checked before a model loads; returns the checkpoint to resume from (``ckpt_path``)."""
    try:
        check_accelerator(cfg)
        check_stage(cfg)
        return resolve_ckpt_path(cfg.ckpt_path, Path(cfg.paths.output_dir) / "checkpoints")
    except (RuntimeError, ValueError, FileNotFoundError) as error:
        raise RunRefused(str(error)) from None


def remove_unused_run_folder(output_dir: str | Path, stop_at: str | Path) -> None:
    """After a run that failed before training: remove its folder when it holds only what Hydra put there (and
    then each parent left empty, up to ``stop_at``), so a refused run leaves no stage folder behind."""
    folder, stop_at = Path(output_dir).resolve(), Path(stop_at).resolve()
    if not folder.is_dir() or not {p.name for p in folder.iterdir()} <= HYDRA_FILES:
        return
    shutil.rmtree(folder)
    for parent in folder.parents:
        if parent == stop_at or stop_at not in parent.parents or any(parent.iterdir()):
            break
        parent.rmdir()


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


LOSS_KEYS = ("cosine", "similarity", "relative_similarity", "margin")


def stage_loss(cfg: DictConfig) -> DictConfig:
    """``cfg.loss`` with the running stage's weights (``stages.stageN.loss``: loss='s unless a stage sets its own,
    e.g. ``stages.stage2.loss.similarity=0``), so one run can train stage 2 with the cosine loss alone and stage
    3's heads with the in-batch terms."""
    own = OmegaConf.to_container(cfg.stage_settings.get("loss") or {}, resolve=True)
    unknown = sorted(set(own) - set(LOSS_KEYS))
    if unknown:
        raise ValueError(
            f"stages.stage{cfg.stage}.loss has unknown key(s) {unknown}: it sets the stage's {list(LOSS_KEYS)}"
        )
    return OmegaConf.merge(cfg.loss, own)


def stage_data(cfg: DictConfig) -> DictConfig:
    """``cfg.data``, unless the stage names data of another kind (stage 4: image-caption pairs) and ``data=`` is a
    text corpus: then the stage's own default (``stages.stage4.data``)."""
    own = cfg.stage_settings.get("data")
    if own is None or cfg.data.get("_target_") == own.get("_target_"):
        return cfg.data
    log.info(
        "stage %s trains on %s, not data=%s: using stages.stage%s.data",
        cfg.stage,
        own._target_,
        cfg.data._target_,
        cfg.stage,
    )
    return own


def build(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule, L.Trainer]:
    """The stage module, its data and its trainer, as the config describes them (nothing is fitted yet)."""
    check_accelerator(cfg)
    check_stage(cfg)
    L.seed_everything(cfg.seed, workers=True)
    teachers = instantiate(cfg.teachers)
    student = instantiate(cfg.model, fc1_dim=teachers.dim)
    init_from = resolve_init_from(
        cfg.stage_settings.init_from,
        cfg.stage,
        cfg.paths.output_dir,
        cfg.paths.run_dir,
        job_first_stage_changed(),
    )
    if init_from is not None:
        load_student_weights(student, init_from)
    # stages.stage1.feature_cache: the frozen encoder's pooled states are cached once and FC1 trains on them.
    features = {"features": student} if cfg.stage_settings.get("feature_cache", False) else {}
    datamodule = instantiate(stage_data(cfg), teachers=teachers, tokenize=student.tokenize, **features)
    module = instantiate(cfg.stage_settings.module, student=student, loss=instantiate(stage_loss(cfg)))
    module.save_hyperparameters({"config": OmegaConf.to_container(cfg, resolve=True)}, logger=False)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    return module, datamodule, trainer


def oom_message(cfg: DictConfig) -> str:
    """What to change when a stage's batch does not fit in GPU memory (one line)."""
    batch = cfg.stage_settings.batch_size
    checkpointing = bool(cfg.model.get("gradient_checkpointing", False))
    fix = (
        "lower it"
        if checkpointing
        else "lower it, or set model.gradient_checkpointing=true (far less memory)"
    )
    return (
        f"stages.stage{cfg.stage}.batch_size={batch} does not fit in GPU memory: {fix}; the largest batches that "
        "fit one GPU, measured by benchmarks/gpu_check.py, are in docs/gpu.md"
    )


def job_first_stage_changed() -> int:
    """Under a Hydra multirun, the first stage this job's overrides change (`jasper.sweeps.first_stage_changed`);
    1 otherwise (a single run's stage folder already sits beside the previous stage's)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return 1
    hydra = HydraConfig.get()
    return first_stage_changed(hydra.overrides.task, hydra.job.config.override_dirname.exclude_keys)


def job_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run(cfg: DictConfig) -> float | None:
    try:
        ckpt_path = validate(cfg)
        module, datamodule, trainer = build(cfg)
    except Exception:
        remove_unused_run_folder(cfg.paths.output_dir, stop_at=Path(cfg.paths.run_dir).parent)
        raise
    if trainer.logger is not None:
        trainer.logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except torch.OutOfMemoryError as error:
        raise torch.OutOfMemoryError(oom_message(cfg)) from error
    metric = trainer.callback_metrics.get(cfg.optimized_metric)
    if trainer.is_global_zero:  # the sweep summary reads it; written with or without a logger
        write_job_metrics(
            Path(cfg.paths.output_dir) / METRICS_FILE,
            cfg.optimized_metric,
            trainer.callback_metrics,
            stage=int(cfg.stage),
            run_name=str(cfg.run_name),
            overrides=job_overrides(),
        )
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # or the process can abort at exit (gloo)
    return float(metric) if metric is not None else None
