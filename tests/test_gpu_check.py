"""benchmarks/gpu_check.py: its CPU smoke runs every phase of the GPU check (docs/gpu.md), so the check does not rot
between GPU loans; a run cut short still leaves a table; a batch that does not fit says what to change."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_smoke_runs_every_phase(tmp_path):
    """Steps of stages 2 and 3 with and without checkpointing, checkpoint -> resume -> export -> reload with equal
    vectors, the relative-similarity loss against its reference, the loader against the step rate."""
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), "--cpu-smoke"],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - start
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "error" not in result
    configs = {(r["stage"], r["checkpointing"]) for r in result["steps"] if r["fits"] and r["step_s"] > 0}
    assert configs == {(2, False), (2, True), (3, False), (3, True)}
    assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in result["steps"])
    checks = {r["check"]: r["ok"] for r in result["checkpoint"]}
    assert len(checks) == 9 and all(checks.values()), checks
    assert result["resim"][0]["max_rel_error_vs_reference"] < 1e-4
    assert [r["batch"] for r in result["resim"][1:]] == [64, 128, 256]
    assert {r["what"].split(",")[0] for r in result["loader"]} == {
        "teacher cache read (12288-d rows)",
        "train loader",
    }
    assert result["data"][0]["teacher_dim"] == 12288 and result["data"][0]["verified"]
    table = (tmp_path / "gpu_check.md").read_text()
    assert "## steps" in table and "## checkpoint" in table
    print(f"CPU smoke: {seconds:.0f} s wall ({result['total'][0]['seconds']:.0f} s inside the script)")


def test_a_run_cut_short_still_leaves_a_table(gpu_check, tmp_path):
    gpu_check.record(tmp_path, "env", device="X", mode="gpu")
    gpu_check.record(tmp_path, "steps", stage=2, checkpointing=False, batch=8, fits=True, step_s=0.5, mfu=0.4)
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| 2 | no | 8 | yes | 0.5 |" in table
    assert json.loads((tmp_path / "gpu_check.json").read_text())["steps"][0]["batch"] == 8


def test_a_batch_that_does_not_fit_names_the_largest_and_checkpointing(gpu_check):
    advice = gpu_check.oom_advice(3, False, 32, 64)
    assert "largest found: 32" in advice and "stages.stage3.batch_size=32" in advice
    assert "model.gradient_checkpointing=true" in advice
    assert "gradient_checkpointing" not in gpu_check.oom_advice(3, True, 256, 512)
    assert gpu_check.oom_advice(2, False, 64, None) == ""


def test_without_cuda_it_points_at_the_cpu_smoke(gpu_check, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([str(tmp_path)]) == 2
    assert "--cpu-smoke" in capsys.readouterr().err


def test_the_gpu_settings_compose(gpu_check, tmp_path, minilm_path):
    """What the GPU run composes (it cannot run here): bf16 ZeRO-2 on one device, the 1.5B shape at 512 tokens, and
    the checkpoint phase's 2-layer cut of it."""
    import torch
    from hydra.utils import instantiate

    settings = gpu_check.GPU
    steps = gpu_check.compose(
        settings, minilm_path, tmp_path, "steps3", ["stage=3", "model.gradient_checkpointing=true"]
    )
    assert steps.trainer.devices == 1 and steps.trainer.precision == "bf16-mixed"
    assert (
        steps.trainer.strategy.config.zero_optimization.stage == 2
        and steps.trainer.strategy.config.bf16.enabled
    )
    assert steps.model.max_length == 512 and steps.model.encoder_config.num_hidden_layers == 28
    assert steps.model.gradient_checkpointing and steps.data.max_texts is None
    assert steps.paths.cache_dir == str(tmp_path / "cache")
    overrides = ["stage=3", *settings["checkpoint_model"], "+callbacks.checkpoint.save_top_k=0"]
    checkpoint = gpu_check.compose(settings, minilm_path, tmp_path, "checkpoint", overrides)
    assert checkpoint.callbacks.checkpoint.save_top_k == 0
    with torch.device("meta"):  # the shape only
        student = instantiate(checkpoint.model, fc1_dim=12288)
    assert len(student.layers) == 2 and student.encoder.config.vocab_size == 30522
    assert 1.5e8 < sum(p.numel() for p in student.parameters()) < 1.8e8


@pytest.mark.parametrize(
    ("limit", "tried", "largest"),
    [
        (300, [8, 32, 128, 512, 256], 256),  # 4x until it does not fit, then the midpoint
        (200, [8, 32, 128, 512, 256], 128),
        (10_000, [8, 32, 128, 512, 2048, 4096], 4096),  # the cap: as many texts as there are
        (4, [8], None),
    ],
)
def test_batch_search(gpu_check, limit, tried, largest):
    batch, found, failing, seen = 8, None, None, []
    while batch is not None:
        seen.append(batch)
        if batch <= limit:
            found = batch
        else:
            failing = batch if failing is None else min(failing, batch)
        batch, _ = gpu_check.next_batch(found, failing, cap=4096)
    assert seen == tried and found == largest
