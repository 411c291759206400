"""The real pipeline, small: train.py runs stages 1 -> 2 -> 3 on the packaged MiniLM; the student gets closer to
its teachers. Also Hydra multirun chaining, resuming with ckpt_path=last, and two-process DDP (gloo)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import jasper.config  # noqa: F401  (resolvers)
from jasper.evaluation.report import load_json
from jasper.run_report import report

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """Teacher vectors shared by the runs of this module (same texts, same teachers: computed once)."""
    return tmp_path_factory.mktemp("teacher_cache")


def small_run(run_dir: Path, corpus_file: str, cache: Path, steps: int = 30, batch: int = 16) -> list[str]:
    settings = {
        "steps": steps,
        "batch_size": batch,
        "val_every": steps,
        "checkpoint_every": steps,
        "warmup_steps": 2,
    }
    stages = [f"stages.stage{k}.{key}={value}" for k in (1, 2, 3) for key, value in settings.items()]
    return [
        *stages,
        f"paths.run_dir={run_dir}",
        f"paths.cache_dir={cache}",
        "data=local_files",
        f"data.source.paths=[{corpus_file}]",
        "data.val_texts=96",
        "data.max_texts=400",
        "model.max_length=64",
        "model.mrl_dims=[128,32]",
        "logger=csv",
    ]


def train(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    result = subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_stages_1_to_3_bring_the_student_closer_to_its_teachers(tmp_path, corpus_file, cache_dir):
    overrides = small_run(tmp_path, corpus_file, cache_dir)
    result = train(["--multirun", "stage=1,2,3", *overrides])
    log = result.stdout + result.stderr
    (job_dir,) = {p.parent for p in tmp_path.glob("**/stage1")}  # overrides other than stage pick one folder
    assert "student initialised from" in (job_dir / "stage2" / "train.log").read_text(), log[
        -2000:
    ]  # auto init_from
    assert "student initialised from" in (job_dir / "stage3" / "train.log").read_text()
    summary = (tmp_path / "sweep_summary.md").read_text()  # the multirun's summary, one row per stage job
    assert all(f"/stage{k} |" in summary for k in (1, 2, 3)) and "val/spearman_fc1" in summary
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "paths.output_dir=unused"])
    report(cfg)
    rows = {row.model.split("/")[-1]: row.metrics for row in load_json(tmp_path / "fidelity.json")}
    assert list(rows) == ["init", "stage1", "stage2", "stage3"]
    init = rows["init"]
    for stage in ("stage1", "stage2", "stage3"):  # a random FC1 starts near 0
        assert rows[stage]["cos fc1"] > init["cos fc1"] + 0.3
    assert rows["stage1"]["spearman fc1"] > init["spearman fc1"] + 0.005
    for head in ("128", "32"):  # trained only in stage 3
        assert rows["stage3"][f"spearman {head}"] > init[f"spearman {head}"] + 0.003


def test_resume_from_last_checkpoint_equals_an_uninterrupted_run(tmp_path, corpus_file, cache_dir):
    """Stage 1 stopped at step 2 of 4 (trainer.max_steps=2: the schedule is still the 4-step one) and resumed
    with ckpt_path=last ends with the weights of a run that was never interrupted: the same batches, in order
    (tests/test_batching.py checks the batches themselves)."""
    overrides = [
        *small_run(tmp_path, corpus_file, cache_dir, steps=4, batch=8),
        "stage=1",
        "callbacks.lr_monitor=null",
        "stages.stage1.checkpoint_every=2",
    ]
    train([*overrides, "trainer.max_steps=2"])
    first = torch.load(tmp_path / "stage1" / "checkpoints" / "last.ckpt", weights_only=False)
    assert first["global_step"] == 2
    result = train([*overrides, "ckpt_path=last"])
    assert "Restoring states from the checkpoint path" in result.stdout + result.stderr
    resumed = torch.load(tmp_path / "stage1" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == 4
    whole = tmp_path / "whole"
    train([*overrides, f"paths.run_dir={whole}"])
    expected = torch.load(whole / "stage1" / "student.pt")["state_dict"]
    torch.testing.assert_close(
        torch.load(tmp_path / "stage1" / "student.pt")["state_dict"], expected, rtol=0, atol=0
    )


def test_ddp_two_cpu_processes(tmp_path, corpus_file, cache_dir):
    overrides = [
        *small_run(tmp_path, corpus_file, cache_dir, steps=3, batch=8),
        "stage=2",
        "trainer=ddp",
        "callbacks.lr_monitor=null",
        "stages.stage2.init_from=null",
    ]
    result = train(overrides)
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stdout + result.stderr
    assert (tmp_path / "stage2" / "student.pt").is_file()
