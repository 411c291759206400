"""Train one stage: instantiate everything from the composed config, fit, return the metric a sweep optimises."""

from __future__ import annotations

import logging

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from jasper.checkpoints import load_student_weights, resolve_init_from

log = logging.getLogger(__name__)


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
    init_from = resolve_init_from(cfg.stage_settings.init_from, cfg.stage, cfg.paths.output_dir)
    if init_from is not None:
        load_student_weights(student, init_from)
    # stages.stage1.feature_cache: the frozen encoder's pooled states are cached once and FC1 trains on them.
    features = {"features": student} if cfg.stage_settings.get("feature_cache", False) else {}
    datamodule = instantiate(stage_data(cfg), teachers=teachers, tokenize=student.tokenize, **features)
    module = instantiate(cfg.stage_settings.module, student=student, loss=instantiate(cfg.loss))
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


def run(cfg: DictConfig) -> float | None:
    module, datamodule, trainer = build(cfg)
    if trainer.logger is not None:
        trainer.logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    except torch.OutOfMemoryError as error:
        raise torch.OutOfMemoryError(oom_message(cfg)) from error
    metric = trainer.callback_metrics.get(cfg.optimized_metric)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # or the process can abort at exit (gloo)
    return float(metric) if metric is not None else None
