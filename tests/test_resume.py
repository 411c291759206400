"""Resuming a stage with ckpt_path=last ends as the uninterrupted run would: stage 2 (dropout on, the top layers
training) cut after step 2 of 4, in one process and in two DDP processes (gloo), through jasper.training.run.run,
the function train.py calls. Compared bitwise (tolerance 0: on CPU the same inputs give the same floats): the
batches in order, the final training loss, the weights, the optimiser state and the schedule."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir

import jasper.training.resolvers  # noqa: F401  (resolvers)
from jasper.training.run import run
from tests.record_batches import read as read_batches

REPO = Path(__file__).resolve().parents[1]
STEPS = 4  # the schedule; the cut run stops after STEPS // 2 with a checkpoint there


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("teacher_cache")


class RankStreams(L.Callback):
    """Each rank draws ``rank + 1`` numbers at the start of a fresh fit, so the ranks' generators differ (the run
    seeds every rank alike): a resumed rank that took another rank's saved states would train differently."""

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.ckpt_path is None:
            torch.rand(trainer.global_rank + 1)


def stage2(run_dir: Path, corpus_file: str, cache: Path, *extra: str) -> list[str]:
    """Stage 2 from the pretrained encoder, 4 steps of 8 texts; a checkpoint and a validation pass after step 2
    (validation draws from torch's generator between the steps: the resumed run must not see that draw)."""
    settings = {"steps": STEPS, "batch_size": 8, "val_every": 2, "checkpoint_every": 2, "warmup_steps": 1}
    return [
        "stage=2",
        *[f"stages.stage2.{key}={value}" for key, value in settings.items()],
        "stages.stage2.init_from=null",
        f"paths.run_dir={run_dir}",
        f"paths.output_dir={run_dir}/stage2",
        f"paths.cache_dir={cache}",
        "data=local_files",
        f"data.source.paths=[{corpus_file}]",
        "data.val_texts=8",
        "data.max_texts=32",
        "model.max_length=32",
        "~logger",
        "callbacks.lr_monitor=null",
        "callbacks.progress_bar=null",
        "callbacks.checkpoint.superseded_by=null",  # keep the finished stage's checkpoint to compare
        f"+callbacks.record={{_target_: tests.record_batches.RecordBatches, path: '{run_dir}.batches'}}",
        *extra,
    ]


def train(overrides: list[str]) -> None:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    run(cfg)


def assert_same_tensors(got, expected, where: str = "") -> None:
    """Nested dicts/lists of tensors and numbers, bitwise equal."""
    if isinstance(expected, dict):
        assert set(got) == set(expected), where
        for key in expected:
            assert_same_tensors(got[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, list | tuple):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_same_tensors(a, b, f"{where}/{i}")
    elif isinstance(expected, torch.Tensor):
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=where)
    else:
        assert got == expected, where


def assert_resumed_equals_whole(cut: Path, whole: Path, ranks: int) -> None:
    """The run cut after step 2 and resumed, against the uninterrupted one: batches, final loss, weights,
    optimiser and schedule."""
    for rank in range(ranks):
        batches = read_batches(f"{cut}.batches.rank{rank}")
        assert [b["step"] for b in batches] == list(range(STEPS))  # two steps, then the resumed two
        assert batches == read_batches(f"{whole}.batches.rank{rank}")
    metrics = [json.loads((r / "stage2" / "metrics.json").read_text())["metrics"] for r in (cut, whole)]
    assert metrics[0]["train/loss"] == metrics[1]["train/loss"], metrics  # the last step's loss, with dropout
    resumed, expected = (torch.load(r / "stage2" / "checkpoints" / "last.ckpt") for r in (cut, whole))
    assert resumed["global_step"] == expected["global_step"] == STEPS
    assert_same_tensors(resumed["state_dict"], expected["state_dict"], "state_dict")
    assert_same_tensors(resumed["optimizer_states"], expected["optimizer_states"], "optimizer")
    assert_same_tensors(resumed["lr_schedulers"], expected["lr_schedulers"], "lr_schedulers")
    assert_same_tensors(
        torch.load(cut / "stage2" / "student.pt")["state_dict"],
        torch.load(whole / "stage2" / "student.pt")["state_dict"],
        "student.pt",
    )


def test_stage2_resumed_from_last_equals_an_uninterrupted_run(tmp_path, corpus_file, cache_dir):
    """One process. The checkpoint holds the generators' states; without them the resumed steps redraw the first
    steps' dropout masks (the issue: 0.554 against 0.502 after a kill at step 33)."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(stage2(whole, corpus_file, cache_dir))
    # Stopped at step 2 of 4, the stage is unfinished: it keeps its checkpoint beside the student.pt it wrote.
    superseded = "callbacks.checkpoint.superseded_by=${paths.output_dir}/student.pt"
    train(stage2(cut, corpus_file, cache_dir, "trainer.max_steps=2", superseded))
    assert (cut / "stage2" / "student.pt").is_file()
    checkpoints = cut / "stage2" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert (checkpoints / "last.ckpt").readlink() == Path("epoch=0-step=2.ckpt")  # one file on disk
    saved = torch.load(checkpoints / "last.ckpt", weights_only=True)  # as train.py loads it
    assert saved["global_step"] == 2 and len(saved["callbacks"]["RandomState"]["ranks"]) == 1
    train(stage2(cut, corpus_file, cache_dir, "ckpt_path=last"))
    # The resumed run replaced the step-2 file it resumed from (through the link) with its own.
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch=0-step=4.ckpt", "last.ckpt"]
    assert_resumed_equals_whole(cut, whole, ranks=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank: int, port: int, overrides: list[str]) -> None:
    """One rank of trainer=ddp, started here rather than by Lightning (its launcher would start pytest again):
    LOCAL_RANK tells Lightning the processes exist; run() destroys the process group at its end."""
    os.environ.update(
        {"LOCAL_RANK": str(rank), "NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    torch.set_num_threads(1)
    train(overrides)


def train_ddp(overrides: list[str]) -> None:
    # fork: the ranks share this process's imports (seconds each) instead of importing them again
    mp.start_processes(_ddp_rank, args=(_free_port(), overrides), nprocs=2, start_method="fork")


def test_ddp_stage2_resumed_from_last_equals_an_uninterrupted_run(tmp_path, corpus_file, cache_dir):
    """Two gloo processes whose generators differ (`RankStreams`): the checkpoint holds both ranks' states and
    each resumed rank takes its own; its rows continue where the cut run stopped."""
    ddp = ["trainer=ddp", "+callbacks.streams={_target_: tests.test_resume.RankStreams}"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train_ddp(stage2(whole, corpus_file, cache_dir, *ddp))
    train_ddp(stage2(cut, corpus_file, cache_dir, *ddp, "trainer.max_steps=2"))
    saved = torch.load(cut / "stage2" / "checkpoints" / "last.ckpt", weights_only=True)
    ranks = saved["callbacks"]["RandomState"]["ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])
    train_ddp(stage2(cut, corpus_file, cache_dir, *ddp, "ckpt_path=last"))
    assert_resumed_equals_whole(cut, whole, ranks=2)
