"""Train one stage: instantiate everything from the composed config, fit, return the metric a sweep optimises."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from jasper.core.losses import SETTINGS, DistillLoss
from jasper.storage.checkpoints import stage_number
from jasper.training.assembly import assemble
from jasper.training.preflight import remove_unused_run_folder, stage_settings, validate
from jasper.training.sweeps import METRICS_FILE, first_stage_changed, write_job_metrics


def stage_loss(loss: DictConfig, weights: DictConfig | None, stage: int) -> DistillLoss:
    """``loss=`` with the stage's own weights on top: ``stages.stage<N>.loss`` follows ``loss=`` unless the stage
    sets its own (``stages.stage2.loss.similarity=0``), so one run can train stage 2 with the cosine term alone and
    stage 3's heads with the in-batch terms."""
    weights = (
        OmegaConf.to_container(weights, resolve=True) if isinstance(weights, DictConfig) else weights or {}
    )
    unknown = sorted(set(weights) - set(SETTINGS))
    if unknown:
        raise ValueError(f"stages.stage{stage}.loss has unknown key(s) {unknown}: it sets {list(SETTINGS)}")
    return instantiate(loss, **weights)


def build(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule, L.Trainer]:
    """The stage module, its data and its trainer, as the config describes them (nothing is fitted yet; ``validate``
    has checked the config)."""
    parts = assemble(cfg, init_from=job_first_stage_changed(cfg))
    settings = parts.settings
    module_extra = {"vision": parts.tower} if parts.tower is not None else {}
    loss = stage_loss(cfg.loss, settings.get("loss"), cfg.stage)
    module = instantiate(settings.module, student=parts.student, loss=loss, **module_extra)
    module.save_hyperparameters({"config": OmegaConf.to_container(cfg, resolve=True)}, logger=False)
    configured = [*(cfg.get("callbacks") or {}).values(), *(settings.get("callbacks") or {}).values()]
    callbacks = [instantiate(c) for c in configured if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    return module, parts.datamodule, trainer


def oom_message(cfg: DictConfig) -> str:
    """What to change when a stage's batch does not fit in GPU memory (one line)."""
    batch = stage_settings(cfg).batch_size
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


def job_first_stage_changed(cfg: DictConfig) -> int:
    """Under a Hydra multirun, the first stage this job's overrides change (`jasper.training.sweeps.first_stage_changed`);
    1 otherwise (a single run's stage folder already sits beside the previous stage's)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return 1
    hydra = HydraConfig.get()
    first_uses = {
        key: stage_number(name) for name, s in cfg.stages.items() for key in s.get("first_uses", ())
    }
    return first_stage_changed(
        hydra.overrides.task, hydra.job.config.override_dirname.exclude_keys, first_uses
    )


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
        # weights_only: a resumed checkpoint holds tensors and plain values only, and cannot run code on load
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
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
