"""jasper/training/run.py: what is refused before any model loads, and how (one line, no stage folder left behind);
which checkpoint a resume starts from; the stage's progress bar."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import jasper.training.resolvers  # noqa: F401  (resolvers)
from jasper.storage.checkpoints import newest_checkpoint
from jasper.training.callbacks import StageProgressBar
from jasper.training.run import (
    RunRefused,
    check_overrides,
    remove_unused_run_folder,
    stage_loss,
    validate,
)

REPO = Path(__file__).resolve().parents[1]


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_trainer_without_cuda_fails_at_once_and_leaves_no_folder(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "trainer=gpu", f"paths.run_dir={tmp_path / 'run'}"],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: trainer.accelerator=gpu needs a CUDA GPU")
    assert "use trainer=cpu" in lines[0]
    assert not (tmp_path / "run").exists()  # Hydra's stage folder is removed with the refused run


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_deepspeed_without_cuda_and_resume_without_checkpoint_are_refused(tmp_path):
    with pytest.raises(RunRefused, match="DeepSpeed .* use trainer=cpu"):
        validate(compose_train(["trainer=deepspeed_zero2", f"paths.output_dir={tmp_path}"]))
    with pytest.raises(RunRefused, match="ckpt_path=last but .* holds no checkpoint"):
        validate(compose_train(["ckpt_path=last", f"paths.output_dir={tmp_path}"]))
    with pytest.raises(RunRefused, match="unknown stage=7"):
        validate(compose_train(["stage=7", f"paths.output_dir={tmp_path}"]))
    assert validate(compose_train([f"paths.output_dir={tmp_path}"])) is None


def test_resume_takes_the_newest_checkpoint(tmp_path):
    assert newest_checkpoint(tmp_path) is None
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("last.ckpt", "epoch=0-step=4.ckpt"):  # interrupted before last.ckpt was written again
        (folder / name).write_bytes(b"x")
        time.sleep(0.01)
    assert newest_checkpoint(folder).name == "epoch=0-step=4.ckpt"
    cfg = compose_train(["ckpt_path=last", f"paths.output_dir={tmp_path}"])
    assert validate(cfg) == str(folder / "epoch=0-step=4.ckpt")


def test_only_a_folder_that_holds_nothing_but_hydra_files_is_removed(tmp_path):
    run = tmp_path / "outputs" / "r" / "overrides" / "stage2"
    (run / ".hydra").mkdir(parents=True)
    (run / "train.log").touch()
    remove_unused_run_folder(run, stop_at=tmp_path / "outputs")
    assert not (tmp_path / "outputs" / "r").exists() and (tmp_path / "outputs").is_dir()
    (run / "checkpoints").mkdir(parents=True)  # an earlier run's work: kept
    remove_unused_run_folder(run, stop_at=tmp_path / "outputs")
    assert (run / "checkpoints").is_dir()


def test_progress_bar_counts_the_stage_steps():
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return (batch.float() - self.weight).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    bar = StageProgressBar("stage 2")
    trainer = L.Trainer(max_steps=7, callbacks=[bar], logger=False, enable_checkpointing=False)
    trainer.fit(Module(), train_dataloaders=torch.utils.data.DataLoader(list(range(6)), batch_size=2))
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (7, 7)  # over 3 epochs of 3 batches
    assert bar.train_progress_bar.desc.startswith("stage 2")


def test_each_stage_takes_loss_weights_unless_it_sets_its_own():
    overrides = [
        "loss.similarity=100",
        "stages.stage2.loss.similarity=0",
        "stages.stage2.loss.relative_similarity=0",
    ]
    weights = {}
    for stage in (1, 2, 3):
        cfg = compose_train([f"stage={stage}", *overrides])
        weights[stage] = stage_loss(cfg.loss, cfg.stages[f"stage{stage}"].loss, stage).weights
    assert weights[1]["similarity"] == weights[3]["similarity"] == 100
    assert weights[2]["similarity"] == weights[2]["relative_similarity"] == 0
    assert weights[1]["cosine"] == weights[2]["cosine"] == weights[3]["cosine"] == 10


def test_a_stage_loss_key_that_is_not_a_weight_is_refused():
    cfg = compose_train(["stage=2", "+stages.stage2.loss.temperature=0.1"])
    with pytest.raises(ValueError, match=r"stages.stage2.loss has unknown key\(s\) \['temperature'\]"):
        stage_loss(cfg.loss, cfg.stages.stage2.loss, 2)


def test_an_override_of_the_stage_settings_view_is_refused_naming_the_key():
    with pytest.raises(RunRefused, match=r"override stages\.stage2\.steps=5 instead"):
        check_overrides(["stage=2", "stage_settings.steps=5"])
    with pytest.raises(RunRefused, match=r"stages\.stage1\.module\.optimizer\.lr=1e-3 instead"):
        check_overrides(["+stage_settings.module.optimizer.lr=1e-3"])
    check_overrides(["-m", "stage=1,2", "stages.stage2.steps=5"])  # the key itself passes
