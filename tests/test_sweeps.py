"""jasper/training/sweeps.py: readable multirun folders, which stage a swept job starts from, the sweep summary."""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path

import pytest

from jasper.storage.checkpoints import resolve_init_from
from jasper.training.sweeps import first_stage_changed, readable_subdir, summarise, write_job_metrics


def test_job_folders_are_readable():
    assert readable_subdir("", 2) == "stage2"
    assert readable_subdir("paths.cache_dir=/tmp/c__paths.run_dir=/tmp/r", 1) == "stage1"  # where, not what
    assert readable_subdir("model.mrl_dims=[128,64]__paths.cache_dir=/tmp/c", 3) == "mrl_dims=128,64/stage3"
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


def test_a_stage_whose_previous_stage_did_not_finish_is_refused(tmp_path):
    run = tmp_path / "run"
    (run / "stage2").mkdir(parents=True)  # what a failed stage 2 of a multirun leaves: its folder, no student
    with pytest.raises(FileNotFoundError, match="stage 2 failed or was stopped") as error:
        resolve_init_from("auto", 3, run / "stage3", run)
    assert "stage=2 ckpt_path=last" in str(error.value) and "stages.stage3.init_from=PATH" in str(error.value)
    assert resolve_init_from(None, 3, run / "stage3", run) is None  # an explicit choice still goes


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


def test_stage_chain_launches_each_stage_after_the_one_before():
    """The submitit launchers' chaining (hydra_plugins/jasper_sweeper/submitit_launchers.py) over a launcher that
    records its batches: stage 1's jobs, then stage 2's, then stage 3's, whatever the sweep's order; returns in the
    jobs' order; a failed job stops the chain before the next stage."""
    import pytest
    from hydra.core.utils import JobReturn, JobStatus

    from hydra_plugins.jasper_sweeper.submitit_launchers import StageChain
    from jasper.training.sweeps import stage_batches

    class Recorder:
        def __init__(self, failing: str | None = None) -> None:
            self.batches: list[tuple[list[list[str]], int]] = []
            self.failing = failing

        def launch(self, job_overrides, initial_job_idx):
            self.batches.append(([list(job) for job in job_overrides], initial_job_idx))
            return [
                JobReturn(overrides=job, status=JobStatus.FAILED, _return_value=RuntimeError("diverged"))
                if self.failing in job
                else JobReturn(overrides=job, status=JobStatus.COMPLETED, _return_value=" ".join(job))
                for job in job_overrides
            ]

    class Launcher(StageChain, Recorder):
        pass

    jobs = [[f"a={a}", f"stage={s}"] for a in ("x", "y") for s in (3, 1, 2)]  # `a` swept before `stage`
    assert stage_batches(jobs) == [[1, 4], [2, 5], [0, 3]]
    assert stage_batches([["a=x"], ["a=y"]]) == [[0, 1]]  # no stage named: one batch
    launcher = Launcher()
    returns = launcher.launch(jobs, initial_job_idx=10)
    assert [[job[1] for job in batch] for batch, _ in launcher.batches] == [
        ["stage=1", "stage=1"],
        ["stage=2", "stage=2"],
        ["stage=3", "stage=3"],
    ]
    assert [start for _, start in launcher.batches] == [10, 12, 14]
    assert [r.return_value for r in returns] == [" ".join(job) for job in jobs]
    failing = Launcher(failing="stage=2")
    with pytest.raises(RuntimeError, match="diverged"):
        failing.launch(jobs, initial_job_idx=0)
    assert len(failing.batches) == 2  # stage 3 never launched


def test_local_launcher_runs_each_stage_as_its_own_process_after_the_one_before(tmp_path, corpus_file):
    """`python train.py -m stage=1,2 hydra/launcher=local`: two submitit jobs (two processes: submitit's local job id
    is the process id), stage 2 submitted after stage 1's result was written, and initialised from its student."""
    from tests.test_pipeline import train

    train(
        [
            "-m",
            "stage=1,2",
            "hydra/launcher=local",
            "debug=fast",
            f"paths.run_dir={tmp_path}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "data=local_files",
            f"data.source.paths=[{corpus_file}]",
        ]
    )
    jobs = sorted((tmp_path / ".submitit").glob("*/*_submitted.pkl"), key=lambda p: p.stat().st_mtime)
    assert len(jobs) == 2 and jobs[0].parent != jobs[1].parent and int(jobs[0].parent.name) != os.getpid()
    (first_result,) = jobs[0].parent.glob("*_0_result.pkl")
    assert first_result.stat().st_mtime <= jobs[1].stat().st_mtime  # stage 2 waited for stage 1
    (run,) = {p.parent for p in tmp_path.glob("**/stage2")}
    assert (
        f"student initialised from {run / 'stage1' / 'student.pt'}"
        in (run / "stage2" / "train.log").read_text()
    )
    assert {p.parent.name for p in jobs[0].parent.glob("*_0_log.out")}  # submitit's own logs are kept


def test_slurm_launcher_composes_the_papers_8_gpu_jobs(tmp_path, monkeypatch):
    """docs/gpu.md's SLURM command as it composes (no cluster here): the launcher is built from the config and
    launched up to the point of submitting (submitit's map_array, stopped), with a stand-in `srun` on PATH so that
    submitit's SLURM executor can be made; the sbatch file it would submit asks for one node, 8 GPUs and 8 tasks
    (one per GPU, as Lightning reads SLURM), and only stage 1 is submitted first."""
    import pytest
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import jasper.training.resolvers  # noqa: F401

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    conf = Path(__file__).resolve().parents[1] / "conf"
    overrides = ["experiment=jasper_paper", "hydra/launcher=slurm", "hydra.launcher.partition=gpu"]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(
            "train", overrides=[*overrides, f"paths.run_dir={tmp_path / 'run'}"], return_hydra_config=True
        )
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "JasperSlurmLauncher"
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    submitted = []

    def map_array(executor, function, *args):
        submitted.append((executor, args))
        raise InterruptedError("stop before sbatch")

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    with pytest.raises(InterruptedError):
        launcher.launch([[f"stage={s}", *overrides] for s in (1, 2, 3, 4)], initial_job_idx=0)
    ((executor, args),) = submitted
    assert [overrides[0] for overrides in args[0]] == ["stage=1"]  # stage 1 alone, the others wait
    sbatch = executor._executor._make_submission_file_text("python -u -m submitit.core._submit", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --nodes=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --time=1440",
    ):
        assert line in sbatch, sbatch
    (tmp_path / "sbatch.txt").write_text(sbatch)
