"""The one assembly of a run's parts from its config: teachers, student (with its tower) and data, for training
(:func:`jasper.training.run.build`), the fidelity report (``report.py``) and ``precompute.py``, with the same seed,
the same texts and the same teacher cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from jasper.models.ensemble import TeacherEnsemble
from jasper.models.student import Student
from jasper.models.vision import VisionTower, load_vision_weights
from jasper.storage.checkpoints import load_student_weights, resolve_init_from
from jasper.training.preflight import stage_settings


def stage_data(cfg: DictConfig, settings: DictConfig) -> DictConfig:
    """The stage's own data when it names one (stage 4: ``images=``, image-caption pairs), else ``data=`` (the text
    corpus of stages 1-3), so one multirun chains all four stages, each on its kind of data."""
    if "data" not in settings:
        return cfg.data
    if settings.data is None or "_target_" not in settings.data:  # debug=fast alone adds images.max_pairs
        raise ValueError(
            f"stage {cfg.stage} trains on image-caption pairs but none are selected: add images=synthetic_shapes "
            "(offline), images=folder images.source.root=DIR or images=infinity_mm (conf/images/)"
        )
    return settings.data


def build_tower(settings: DictConfig, student: Student, stage: int) -> VisionTower | None:
    """The stage's vision tower (``stages.stage<N>.vision``, stage 4: from ``vision=``) in the student's input
    space, continued from ``vision_init_from`` when set; None for a stage without one."""
    if "vision" not in settings:
        return None
    if settings.vision is None:
        raise ValueError(
            f"stage {stage} needs a vision tower but no vision config is selected for model "
            f"{student.model_name_or_path}: add vision=tiny (or vision=siglip_so400m) to the command line"
        )
    tower = instantiate(settings.vision)
    if not isinstance(tower, VisionTower):  # the configs' _partial_ tower: it takes the student's hidden size
        tower = tower(embed_dim=student.encoder.config.hidden_size)
    if settings.get("vision_init_from"):
        load_vision_weights(tower, settings.vision_init_from)
    return tower


def check_feature_cache(settings: DictConfig, stage: int) -> None:
    """Cached pooled states are a fixed function of the text only while the encoder does not train: stage 1, or
    stage 3 with ``module.train_encoder=false``. Refused before anything is encoded."""
    frozen = stage == 1 or (stage == 3 and not settings.module.get("train_encoder", True))
    if not frozen:
        fix = (
            "add stages.stage3.module.train_encoder=false or set stages.stage3.feature_cache=false"
            if stage == 3
            else f"set stages.stage{stage}.feature_cache=false"
        )
        raise ValueError(
            f"stages.stage{stage}.feature_cache=true but stage {stage} trains the encoder, so its pooled states "
            f"change every step and cannot be cached: {fix}"
        )


@dataclass
class Parts:
    """What :func:`assemble` builds: the stage's settings, the teachers, the student (None for precompute), the
    stage's vision tower (stage 4) and the data module."""

    settings: DictConfig
    teachers: TeacherEnsemble
    student: Student | None
    tower: VisionTower | None
    datamodule: L.LightningDataModule


def assemble(cfg: DictConfig, student: bool = True, init_from: int | None = 1) -> Parts:
    """The run's parts, seeded by ``cfg.seed`` before anything random is drawn (the same FC1 and heads in every
    command). ``student=False``: teachers and texts only (precompute). ``init_from``: the first stage this job
    changes (:func:`jasper.training.sweeps.first_stage_changed`) to resolve ``stages.stageN.init_from``, or None
    for the untrained init with plain text data (the fidelity report's baseline)."""
    settings = stage_settings(cfg)
    L.seed_everything(cfg.seed, workers=True)
    teachers = instantiate(cfg.teachers)
    if not student:
        data = instantiate(cfg.data, teachers=teachers, tokenize=None, batch_size=settings.batch_size)
        return Parts(settings, teachers, None, None, data)
    model = instantiate(cfg.model, fc1_dim=teachers.dim)
    if init_from is None:
        data = instantiate(
            cfg.data, teachers=teachers, tokenize=model.tokenize, batch_size=settings.batch_size
        )
        return Parts(settings, teachers, model, None, data)
    start = resolve_init_from(
        settings.init_from, cfg.stage, cfg.paths.output_dir, cfg.paths.run_dir, init_from
    )
    if start is not None:
        load_student_weights(model, start)
    tower = build_tower(settings, model, cfg.stage)
    extra: dict[str, Any] = {}
    # feature_cache: the frozen encoder's pooled states are cached once and FC1 (and stage 3's heads) train on them.
    if settings.get("feature_cache", False):
        check_feature_cache(settings, cfg.stage)
        extra["features"] = model
    if tower is not None:  # image data: the tower's own preprocessing
        extra["transform"] = tower.transform
    data = instantiate(
        stage_data(cfg, settings),
        teachers=teachers,
        tokenize=model.tokenize,
        batch_size=settings.batch_size,
        **extra,
    )
    return Parts(settings, teachers, model, tower, data)
