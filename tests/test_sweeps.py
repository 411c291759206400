"""jasper/training/sweeps.py: readable multirun folders, which stage a swept job starts from, the sweep summary."""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path

from jasper.storage.checkpoints import resolve_init_from
from jasper.training.sweeps import first_stage_changed, readable_subdir, summarise, write_job_metrics


def test_job_folders_are_readable():
    assert readable_subdir("", 2) == "stage2"
    assert readable_subdir("model.mrl_dims=[128,64]", 3) == "mrl_dims=128,64/stage3"
    assert (
        readable_subdir("+loss.similarity=1e+03__loss.margin=0.01", 1)
        == "similarity=1e+03+margin=0.01/stage1"
    )
    lrs = "stages.stage2.module.optimizer.lr=1e-4__stages.stage3.module.optimizer.lr=5e-5"
    assert readable_subdir(lrs, 3) == (
        "stages.stage2.module.optimizer.lr=1e-4+stages.stage3.module.optimizer.lr=5e-5/stage3"
    )
    long = readable_subdir("data.source.paths=[/a/very/long/path/" + "x" * 200 + ".jsonl]", 1)
    assert len(long.split("/")[0]) == 100 and long.endswith("/stage1")


def test_which_stage_the_overrides_change():
    excluded = ["stage", "run_name"]
    assert first_stage_changed(["stage=3", "run_name=r"], excluded) > 3
    first_uses = {"model.mrl_dims": 3}  # conf/stages/3.yaml's first_uses (test_stage3_declares_the_head_keys)
    assert first_stage_changed(["stage=3", "model.mrl_dims=[256]"], excluded, first_uses) == 3
    assert first_stage_changed(["stage=3", "model.mrl_dims=[256]"], excluded) == 1  # undeclared: every stage
    assert first_stage_changed(["stages.stage3.module.optimizer.lr=1e-4", "paths.run_dir=x"], excluded) == 3
    assert first_stage_changed(["stages.stage2.steps=5", "model.mrl_dims=[256]"], excluded, first_uses) == 2
    assert first_stage_changed(["loss.similarity=100"], excluded, first_uses) == 1


def test_stage3_declares_the_head_keys_it_uses_first():
    from hydra import compose, initialize_config_dir

    import jasper.training.resolvers  # noqa: F401  (the ${packaged_minilm:} resolver)

    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose("train")
    assert {name: list(s.first_uses) for name, s in cfg.stages.items()} == {
        "stage1": [],
        "stage2": [],
        "stage3": ["model.mrl_dims", "model.mrl_mode"],
        "stage4": [],
    }


def test_a_swept_job_starts_from_the_runs_previous_stage_when_it_may(tmp_path, caplog):
    run = tmp_path / "run"
    (run / "stage2").mkdir(parents=True)
    (run / "stage2" / "student.pt").touch()
    job = run / "mrl_dims=256" / "stage3"
    with caplog.at_level(logging.INFO, logger="jasper.storage.checkpoints"):
        assert resolve_init_from("auto", 3, job, run, first_changed=3) == run / "stage2" / "student.pt"
    assert "the run's stage 2" in caplog.text
    caplog.clear()
    assert (
        resolve_init_from("auto", 3, job, run, first_changed=1) is None
    )  # stage 2 would differ: not its own
    assert "stages.stage3.init_from=PATH" in caplog.text and "stage.init_from" not in caplog.text.replace(
        "stages.stage3.init_from", ""
    )
    (job.parent / "stage2").mkdir(parents=True)
    (job.parent / "stage2" / "student.pt").touch()  # its own stage 2, beside it, comes first
    assert resolve_init_from("auto", 3, job, run, first_changed=3) == job.parent / "stage2" / "student.pt"


def test_sweep_summary_ranks_the_jobs(tmp_path):
    old = write_job_metrics(
        tmp_path / "stage1" / "metrics.json", "val/s", {"val/s": 0.99}, overrides=["stage=1"]
    )
    os.utime(old, (0, 0))  # an earlier run in the same folder: left out
    since = time.time() - 1
    for dims, value in [("[256]", 0.5), ("[128,64]", 0.7), ("[32]", 0.6)]:
        folder = tmp_path / readable_subdir(f"model.mrl_dims={dims}", 3)
        overrides = ["stage=3", f"model.mrl_dims={dims}"]
        write_job_metrics(
            folder / "metrics.json", "val/s", {"val/s": value, "val/loss": 1.0}, overrides=overrides
        )
    paths = summarise(tmp_path, since=since)
    rows = list(csv.reader(paths["csv"].open()))
    assert rows[0] == ["rank", "val/s", "model.mrl_dims", "job"]
    assert [r[2] for r in rows[1:]] == ["[128,64]", "[32]", "[256]"]
    assert rows[1][3] == "mrl_dims=128,64/stage3"
    assert "| 1 | 0.7000 | [128,64] | mrl_dims=128,64/stage3 |" in paths["md"].read_text()
    assert paths["png"].stat().st_size > 1000
    assert [
        r[2] for r in list(csv.reader(summarise(tmp_path, maximize=False, since=since)["csv"].open()))[1:]
    ] == [
        "[256]",
        "[32]",
        "[128,64]",
    ]


def test_optuna_sweeper_maximises_what_the_jobs_return(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from jasper.training.sweeps import OptunaSweeper

    class Launcher:  # runs a "job" in place: its value peaks at similarity=200
        def __init__(self) -> None:
            self.jobs: list[list[str]] = []

        def launch(self, overrides, initial_job_idx):
            (job,) = overrides
            self.jobs.append(job)
            values = dict(o.split("=", 1) for o in job)
            score = -abs(float(values["loss.similarity"]) - 200) / 100
            return [JobReturn(overrides=job, status=JobStatus.COMPLETED, _return_value=score)]

    params = {"loss.similarity": {"type": "float", "low": 50.0, "high": 800.0, "log": True}}
    sweeper = OptunaSweeper(params, n_trials=12, seed=0)
    sweeper.launcher = Launcher()
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweeper.sweep(["stage=1"])
    assert len(sweeper.launcher.jobs) == 12 and all(job[0] == "stage=1" for job in sweeper.launcher.jobs)
    best = OmegaConf.load(tmp_path / "optuna_best.yaml")
    assert abs(best.params["loss.similarity"] - 200) < 100  # TPE found the peak's neighbourhood


def test_hparams_search_optuna_composes():
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    import jasper.training.resolvers  # noqa: F401

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.jasper_sweeper.optuna_sweeper.JasperOptunaSweeper"
    assert set(cfg.hydra.sweeper.params) >= {
        "loss.similarity",
        "loss.margin",
        "stages.stage1.module.optimizer.lr",
    }
