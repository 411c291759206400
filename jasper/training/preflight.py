"""What a training run checks before it builds anything, kept free of Lightning: ``train.py`` refuses a config this
machine cannot run before it imports the trainer (seconds per start on 2 cores), and :func:`jasper.training.run.run`
checks the same for callers that come in through Python."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig

from jasper.core.disk import check_name
from jasper.models.encoders import check_layer_count
from jasper.storage.checkpoints import resolve_ckpt_path, stage_folder, stage_number
from jasper.training.command_line import RunRefused

HYDRA_FILES = {".hydra", "train.log"}  # what Hydra writes into a run's folder before the run starts


def _check_stage(cfg: DictConfig) -> None:
    available = sorted(stage_number(key) for key in cfg.stages)
    if cfg.stage not in available:
        raise ValueError(f"unknown stage={cfg.stage!r}: choose one of {available} (python train.py stage=2)")


def stage_settings(cfg: DictConfig) -> DictConfig:
    """The running stage's settings, ``stages.stage<stage>``: the one place Python reads them; everything else
    receives what it needs from them (``stage_settings`` in the YAML is a view for interpolations)."""
    _check_stage(cfg)
    return cfg.stages[stage_folder(cfg.stage)]


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


def check_steps(cfg: DictConfig) -> None:
    """A stage of 0 steps trains nothing and would hand on the student it started from as its own: refused, except
    where the module solves something in closed form first (stage 1's ``closed_form``: the solution alone)."""
    settings = stage_settings(cfg)
    closed_form = (settings.get("module") or {}).get("closed_form")
    max_steps = (cfg.get("trainer") or {}).get("max_steps", settings.steps)
    for key, steps in ((f"stages.stage{cfg.stage}.steps", settings.steps), ("trainer.max_steps", max_steps)):
        if steps == 0 and closed_form is None:
            raise ValueError(
                f"{key}=0: stage {cfg.stage} would train nothing and pass on the student it starts from as its "
                f"own; give it 1 or more steps (0 steps suits only a stage whose module solves FC1 in closed "
                f"form: stages.stage1.module.closed_form)"
            )


def validate(cfg: DictConfig) -> str | None:
    """Everything checked before a model loads; returns the checkpoint to resume from (``ckpt_path``)."""
    try:
        check_accelerator(cfg)
        check_steps(cfg)  # and an unknown stage
        check_name(cfg.run_name, "run_name", subfolders=True)
        check_layer_count(cfg.model.get("num_layers"), cfg.model.get("layers"))
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
