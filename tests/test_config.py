"""Every config group and experiment composes; the documented command lines compose and instantiate."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import jasper.config  # noqa: F401  (resolvers)
from jasper.packaged import MPNET, packaged_model
from jasper.train import check_stage

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["model", "teachers", "data", "loss", "trainer", "logger", "experiment", "debug", "hparams_search"]


def compose_train(overrides: list[str], tmp_path: Path | None = None):
    output = [f"paths.output_dir={tmp_path}"] if tmp_path else ["paths.output_dir=/nonexistent/stage1"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides + output)


@pytest.mark.parametrize(
    "override",
    [f"{group}={path.stem}" for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))],
)
def test_every_config_composes(override):
    cfg = compose_train([override])
    if override in ("teachers=mpnet_minilm", "experiment=jasper_analogue") and not mpnet_installed():
        with pytest.raises(Exception, match="make install-mpnet"):  # the error names the extra to install
            OmegaConf.to_container(cfg, resolve=True)
        return
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def mpnet_installed() -> bool:
    """The resolver finds all-mpnet-base-v2: reassembled earlier (kept in jasper's cache even if the packages have
    gone since) or reassembled now from the installed packages."""
    try:
        packaged_model(MPNET)
    except ImportError:
        return False
    return True


def test_mpnet_minilm_teachers_instantiate_without_loading_a_model():
    if not mpnet_installed():
        pytest.skip("the mpnet extra is not installed (make install-mpnet)")
    cfg = compose_train(["teachers=mpnet_minilm", "model.num_layers=6"])
    teachers = instantiate(cfg.teachers)
    mpnet, init = teachers.teachers
    assert teachers.dim == 768 + 384  # read from the models' config files
    assert (mpnet.name, init.name, init.num_layers, init.max_length) == (
        "all-mpnet-base-v2",
        "all-MiniLM-L6-v2[:6] (student init)",
        6,
        cfg.model.max_length,
    )
    assert init.model_name_or_path == cfg.model.model_name_or_path  # the student's own initialisation
    assert mpnet.weights is not None and not mpnet.loaded and not init.loaded


def test_jasper_analogue_is_the_full_minilm_student_of_mpnet_and_its_init():
    if not mpnet_installed():
        pytest.skip("the mpnet extra is not installed (make install-mpnet)")
    cfg = compose_train(["experiment=jasper_analogue"])
    assert (cfg.model.num_layers, list(cfg.model.mrl_dims), cfg.data.source._target_) == (
        6,
        [384, 256, 128],
        "jasper.data.EnglishProse",
    )
    assert instantiate(cfg.teachers).dim == 1152 and cfg.stages.stage1.module.closed_form is not None


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_picks_its_own_settings(stage):
    cfg = compose_train([f"stage={stage}", "experiment=jasper_paper"])
    paper = {1: (1e-4, 4000, "Stage1"), 2: (8e-5, 7000, "Stage2"), 3: (7e-5, 2200, "Stage3")}[stage]
    settings = cfg.stage_settings
    assert (settings.module.optimizer.lr, settings.steps, settings.module._target_.split(".")[-1]) == paper
    assert cfg.trainer.max_steps == paper[1]
    assert settings.module.scheduler.num_training_steps == paper[1]


def test_paper_recipe():
    cfg = compose_train(["experiment=jasper_paper"])
    assert [t.model_name_or_path for t in cfg.teachers.teachers] == [
        "nvidia/NV-Embed-v2",
        "NovaSearch/stella_en_1.5B_v5",
    ]
    assert cfg.model.model_name_or_path == "NovaSearch/stella_en_1.5B_v5"
    assert list(cfg.model.mrl_dims) == [1024, 512, 256] and cfg.model.max_length == 512
    assert cfg.trainer.precision == "bf16-mixed"
    assert (
        cfg.trainer.strategy.config.zero_optimization.stage == 2 and cfg.trainer.strategy.config.bf16.enabled
    )
    assert (cfg.loss.cosine, cfg.loss.similarity, cfg.loss.relative_similarity, cfg.loss.margin) == (
        10,
        200,
        20,
        0.015,
    )


def test_stage3_with_custom_heads_composes_and_instantiates(minilm_path):
    cfg = compose_train(["stage=3", "model.mrl_dims=[512,768,1024]"])
    student = instantiate(cfg.model, fc1_dim=768)
    module = instantiate(cfg.stage_settings.module, student=student, loss=instantiate(cfg.loss))
    assert student.head_names == ["fc1", "512", "768", "1024"]
    assert type(module).__name__ == "Stage3"
    optimizer = module.configure_optimizers()["optimizer"]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(
        cfg.stage_settings.module.optimizer.lr * 0.0
    )  # warm-up


def test_unknown_stage_is_refused():
    cfg = compose_train(["stage=5"])
    with pytest.raises(ValueError, match="unknown stage=5"):
        check_stage(cfg)


def test_deepspeed_strategy_instantiates():
    from lightning.pytorch.strategies import DeepSpeedStrategy

    cfg = compose_train(["trainer=deepspeed_zero2"])
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, DeepSpeedStrategy) and strategy.config["zero_optimization"]["stage"] == 2
    assert strategy.config["bf16"] == {
        "enabled": True
    }  # bf16 compute, fp32 master weights in the ZeRO optimiser


@pytest.mark.parametrize("trainer", ["gpu", "deepspeed_zero2"])
def test_gpu_trainers_without_cuda_name_trainer_cpu(trainer, monkeypatch):
    import torch

    from jasper.train import build, check_accelerator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_train([f"trainer={trainer}"])
    with pytest.raises(RuntimeError, match="trainer=cpu") as error:
        check_accelerator(cfg)
    assert "\n" not in str(error.value)  # one line
    with pytest.raises(RuntimeError, match="trainer=cpu"):
        build(cfg)  # checked before anything is loaded
    check_accelerator(compose_train(["trainer=cpu"]))


def test_wandb_logger_is_offline_without_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_train(["logger=wandb"], tmp_path)
    assert cfg.logger.offline is True
    logger = instantiate(cfg.logger)
    assert logger.experiment is not None  # starts an offline run, no network
    logger.experiment.finish()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_batch_that_does_not_fit_says_what_to_change(checkpointing, monkeypatch):
    import torch

    import jasper.train

    cfg = compose_train(
        ["stage=2", "stages.stage2.batch_size=512", f"model.gradient_checkpointing={checkpointing}"]
    )

    class Trainer:
        logger = None

        def fit(self, *args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(jasper.train, "build", lambda cfg: (None, None, Trainer()))
    with pytest.raises(torch.OutOfMemoryError, match="stages.stage2.batch_size=512 does not fit") as error:
        jasper.train.run(cfg)
    assert ("model.gradient_checkpointing=true" in str(error.value)) != checkpointing
    assert "docs/gpu.md" in str(error.value)
