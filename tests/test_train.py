"""jasper/training/run.py: what is refused before any model loads, and how (one line, no stage folder left behind);
which checkpoint a resume starts from; the stage's progress bar."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir

import jasper.training.resolvers  # noqa: F401  (resolvers)
from jasper.storage.checkpoints import newest_checkpoint
from jasper.training.callbacks import StageCheckpoint, StageProgressBar
from jasper.training.command_line import RunRefused, check_overrides
from jasper.training.preflight import remove_unused_run_folder, validate
from jasper.training.run import run, stage_loss

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


def lightning_deepspeed_checkpoint(path: Path, step: int, when_ns: int, latest: bool = True) -> None:
    """A ``.ckpt`` directory laid out as Lightning's DeepSpeed strategy writes it (``engine.save_checkpoint(path,
    client_state=..., tag="checkpoint")``, DeepSpeed 0.19): the tag folder's model and ZeRO optimizer states, the
    recovery scripts, then ``latest`` naming the tag. Every file (re)written at ``when_ns``; the directories keep
    the time they were made at (rewriting files in place adds no entry to them)."""
    tag = path / "checkpoint"
    tag.mkdir(parents=True, exist_ok=True)
    files = {
        tag / "mp_rank_00_model_states.pt": {"global_steps": step, "module": {}},
        tag / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt": {"optimizer_state_dict": {}},
    }
    for file, payload in files.items():
        torch.save(payload, file)
    for script in ("zero_to_fp32.py", "zero_to_torch.py"):
        (path / script).write_text("# DeepSpeed's recovery script\n")
    written = [*files, path / "zero_to_fp32.py", path / "zero_to_torch.py"]
    if latest:
        (path / "latest").write_text("checkpoint")
        written.append(path / "latest")
    for file in written:
        os.utime(file, ns=(when_ns, when_ns))


def test_resume_finds_lightnings_deepspeed_checkpoint_directories(tmp_path):
    """Under DeepSpeed, last.ckpt and step=N.ckpt are directories: ckpt_path=last takes the one whose `latest`
    DeepSpeed wrote last, not the one whose directory is newer (last.ckpt/ rewritten in place keeps its first
    mtime), and the path it gives is one Lightning's DeepSpeed strategy accepts."""
    from lightning.fabric.strategies.deepspeed import _validate_checkpoint_directory

    folder = tmp_path / "checkpoints"
    second = 10**18  # nanoseconds: explicit times, no sleeping
    lightning_deepspeed_checkpoint(folder / "last.ckpt", step=2, when_ns=1 * second)
    lightning_deepspeed_checkpoint(folder / "epoch=0-step=4.ckpt", step=4, when_ns=2 * second)
    (folder / "notes.ckpt").mkdir()  # a directory that is not a checkpoint is never taken
    for directory in (folder / "last.ckpt", folder / "last.ckpt" / "checkpoint"):
        os.utime(directory, ns=(1 * second, 1 * second))
    os.utime(folder / "epoch=0-step=4.ckpt", ns=(2 * second, 2 * second))
    os.utime(folder / "notes.ckpt", ns=(9 * second, 9 * second))
    # Interrupted after step=4 was written and before last.ckpt was written again:
    assert newest_checkpoint(folder).name == "epoch=0-step=4.ckpt"
    lightning_deepspeed_checkpoint(folder / "last.ckpt", step=4, when_ns=3 * second)  # rewritten in place
    os.utime(folder / "last.ckpt", ns=(1 * second, 1 * second))
    assert newest_checkpoint(folder).name == "last.ckpt"
    cfg = compose_train(["ckpt_path=last", f"paths.output_dir={tmp_path}"])
    resumed = validate(cfg)
    assert resumed == str(folder / "last.ckpt")
    _validate_checkpoint_directory(resumed)  # what DeepSpeedStrategy.load_checkpoint checks first
    # Without a `latest` (another writer's layout), a directory is as new as its newest file.
    lightning_deepspeed_checkpoint(folder / "epoch=0-step=6.ckpt", step=6, when_ns=4 * second, latest=False)
    assert newest_checkpoint(folder).name == "epoch=0-step=6.ckpt"


def test_only_a_folder_that_holds_nothing_but_hydra_files_is_removed(tmp_path):
    run = tmp_path / "outputs" / "r" / "overrides" / "stage2"
    (run / ".hydra").mkdir(parents=True)
    (run / "train.log").touch()
    remove_unused_run_folder(run, stop_at=tmp_path / "outputs")
    assert not (tmp_path / "outputs" / "r").exists() and (tmp_path / "outputs").is_dir()
    (run / "checkpoints").mkdir(parents=True)  # an earlier run's work: kept
    remove_unused_run_folder(run, stop_at=tmp_path / "outputs")
    assert (run / "checkpoints").is_dir()


class OneWeight(L.LightningModule):
    """The smallest module Lightning trains: one weight pulled towards the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (batch.float() - self.weight).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_progress_bar_counts_the_stage_steps():
    bar = StageProgressBar("stage 2")
    trainer = L.Trainer(max_steps=7, callbacks=[bar], logger=False, enable_checkpointing=False)
    trainer.fit(OneWeight(), train_dataloaders=torch.utils.data.DataLoader(list(range(6)), batch_size=2))
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (7, 7)  # over 3 epochs of 3 batches
    assert bar.train_progress_bar.desc.startswith("stage 2")


def test_a_stage_keeps_one_checkpoint_and_none_once_its_student_pt_replaces_it(tmp_path):
    """StageCheckpoint (conf/callbacks/default.yaml): while a stage runs, one checkpoint file with last.ckpt a
    link to it; after all of ``stage_steps``, with student.pt written, none (and no empty folder); stopped
    earlier, the checkpoint stays."""

    student = tmp_path / "student.pt"
    student.touch()  # as SaveStudent leaves it (it runs before checkpoint callbacks)
    folder = tmp_path / "checkpoints"
    for max_steps, left in [(4, ["epoch=1-step=4.ckpt", "last.ckpt"]), (6, None)]:
        checkpoint = StageCheckpoint(
            dirpath=str(folder),
            save_last="link",
            enable_version_counter=False,
            every_n_train_steps=2,
            stage_steps=6,
            superseded_by=str(student),
        )
        trainer = L.Trainer(
            max_steps=max_steps, callbacks=[checkpoint], logger=False, enable_progress_bar=False
        )
        data = torch.utils.data.DataLoader(list(range(6)), batch_size=2)
        trainer.fit(OneWeight(), train_dataloaders=data, ckpt_path=newest_checkpoint(folder))
        if left is None:
            assert not folder.exists()
        else:
            assert sorted(p.name for p in folder.iterdir()) == left
            assert (folder / "last.ckpt").readlink() == Path(left[0])


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


def train_py(*args: str, cwd: Path = REPO, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``python [FLAGS] train.py ARGS`` offline, its exit status and output (not checked here)."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [sys.executable, *flags, str(REPO / "train.py"), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def tiny_run(tmp_path: Path, *args: str) -> list[str]:
    """debug=fast (2 steps of batch 4, 32 texts) in ``tmp_path/run``, with a cache of its own."""
    return ["debug=fast", f"paths.run_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}", *args]


EVERY_STEP_CHECKPOINT = (
    "callbacks.checkpoint={_target_: lightning.pytorch.callbacks.ModelCheckpoint, "
    "dirpath: '${paths.output_dir}/checkpoints', save_last: true, every_n_train_steps: 1}"
)


def test_a_non_finite_loss_stops_the_stage_naming_it_and_keeps_the_last_good_checkpoint(tmp_path):
    """Stage 2 at lr 1e30: step 1 is finite, its update sends the attention to inf, and step 2's loss is NaN. The
    stage stops there (exit status 1), naming stage, step, head and term; no student.pt; the step-1 checkpoint
    stays and reads back (finite)."""
    from jasper.storage.checkpoints import read_student

    result = train_py(
        *tiny_run(tmp_path, "stage=2", "stages.stage2.init_from=null", "stages.stage2.steps=4"),
        "stages.stage2.module.optimizer.lr=1e30",
        EVERY_STEP_CHECKPOINT,
        "trainer.enable_checkpointing=true",
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "error: stage 2, step 2: the loss is not finite (term cos of head fc1 = nan" in result.stderr
    assert "Traceback" not in result.stderr  # one line a user can act on
    assert "stages.stage2.module.optimizer.lr" in result.stderr
    stage = tmp_path / "run" / "stage2"
    assert not (stage / "student.pt").exists()
    assert sorted(p.name for p in (stage / "checkpoints").iterdir()) == ["epoch=0-step=1.ckpt", "last.ckpt"]
    assert read_student(stage / "checkpoints" / "last.ckpt").state  # finite, so read_student accepts it


def test_a_stage_that_cannot_train_fails_naming_both_numbers(tmp_path, caplog):
    """Fewer training texts than the batch: an error naming both numbers, no student.pt (Lightning alone warns
    "No training batches" and the stage passes on its start as its student). Stage 1 with steps=0 and its closed
    form is the solution alone: it still runs, on as few texts (these two in this process, through run()).
    steps=0 elsewhere is refused at once, in one line (through train.py)."""
    stage1 = [
        *tiny_run(tmp_path, "stages.stage1.batch_size=64"),
        f"paths.output_dir={tmp_path / 'run' / 'stage1'}",
    ]
    with pytest.raises(ValueError, match="32 training texts .* but the batch size is 64"):
        run(compose_train(stage1))
    assert not (tmp_path / "run" / "stage1" / "student.pt").exists()
    caplog.set_level("INFO", logger="jasper.training.stages.stage1")
    run(compose_train([*stage1, "stages.stage1.steps=0"]))
    assert "FC1 solved in closed form" in caplog.text
    assert (tmp_path / "run" / "stage1" / "student.pt").is_file()
    zero = train_py(*tiny_run(tmp_path, "stage=2", "stages.stage2.steps=0"))
    assert zero.returncode == 1
    assert zero.stderr.strip().splitlines() == [
        "error: stages.stage2.steps=0: stage 2 would train nothing and pass on the student it starts from as its "
        "own; give it 1 or more steps (0 steps suits only a stage whose module solves FC1 in closed form: "
        "stages.stage1.module.closed_form)"
    ]
    assert not (tmp_path / "run" / "stage2").exists()


def test_train_py_refuses_a_config_it_cannot_run_before_it_imports_lightning(tmp_path):
    """validate() runs before the trainer is imported (Lightning costs ~3.5 s a start on 2 cores): python -X
    importtime lists every module the refused run imported."""
    result = train_py(*tiny_run(tmp_path, "stage=2", "stages.stage2.steps=0"), flags=("-X", "importtime"))
    assert result.returncode == 1
    assert "error: stages.stage2.steps=0: stage 2 would train nothing" in result.stderr
    assert_no_lightning(result)
    # the default student names its layers: a layer count alone disagrees with them, and the message says what to do
    result = train_py(*tiny_run(tmp_path, "model.num_layers=2"), flags=("-X", "importtime"))
    assert result.returncode == 1
    assert (
        "error: model.num_layers=2 but model.layers=[0, 1, 3, 5] names 4: set model.layers=null to keep the first 2"
        in result.stderr
    )
    assert_no_lightning(result)
    assert not (tmp_path / "run" / "stage1").exists()


def assert_no_lightning(result: subprocess.CompletedProcess) -> None:
    imported = {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "torch" in imported  # the check sees the imports
    assert not imported & {"lightning", "torchmetrics", "pytorch_lightning"}


def test_zero_steps_are_refused_before_anything_loads_unless_a_closed_form_runs(tmp_path):
    out = f"paths.output_dir={tmp_path}"
    with pytest.raises(RunRefused, match=r"stages\.stage1\.steps=0: stage 1 would train nothing"):
        validate(compose_train([out, "stages.stage1.steps=0", "stages.stage1.module.closed_form=null"]))
    with pytest.raises(RunRefused, match=r"trainer\.max_steps=0"):
        validate(compose_train([out, "stage=3", "trainer.max_steps=0"]))
    assert validate(compose_train([out, "stages.stage1.steps=0"])) is None  # the embedded default solves FC1


@pytest.mark.parametrize("name", ["..", "../elsewhere", "a/../../b", "/tmp/x"])
def test_a_run_name_that_would_leave_outputs_is_refused(name, tmp_path):
    with pytest.raises(RunRefused, match="run_name=.* cannot name a folder"):
        validate(compose_train([f"paths.output_dir={tmp_path}", f"run_name={name}"]))
    assert validate(compose_train([f"paths.output_dir={tmp_path}", "run_name=ablations/s1"])) is None


def test_train_py_refuses_a_run_name_outside_outputs_and_a_mistyped_hub_id(tmp_path):
    """Through train.py, run from an empty folder: run_name=.. would put the stage folder beside outputs/ (here:
    in the working directory); it is refused in one line and leaves nothing. A mistyped hub id fails before any
    model loads, naming the id (transformers' own error took 29 s of retries)."""
    work = tmp_path / "work"
    work.mkdir()
    climbing = train_py("debug=fast", "run_name=..", f"paths.cache_dir={tmp_path / 'cache'}", cwd=work)
    assert climbing.returncode == 1
    assert climbing.stderr.strip().splitlines()[-1].startswith("error: run_name='..' cannot name a folder")
    assert [p.name for p in work.iterdir()] in ([], ["outputs"]) and not (work / "stage1").exists()
    started = time.monotonic()
    typo = train_py(
        *tiny_run(tmp_path, "teachers.teachers.0.model_name_or_path=sentence-transformers/all-MiniLM-L6-v3")
    )
    assert typo.returncode == 1
    assert (
        "model sentence-transformers/all-MiniLM-L6-v3 is not a local folder and not in the local Hugging Face "
        "cache, and the hub is off (HF_HUB_OFFLINE=1)" in typo.stderr
    )
    assert time.monotonic() - started < 120 and not (tmp_path / "run").exists()


def test_a_path_with_equals_signs_needs_no_quotes(tmp_path):
    """A multirun's job folder (``mrl_dims=128,64/stage2``) on train.py's command line as it is: Hydra alone
    refuses the ``=`` ("mismatched input '='") and reads the ``,`` as a sweep; train.py passes the whole path."""
    path = tmp_path / "run" / "mrl_dims=128,64" / "stage2" / "checkpoints" / "step=3.ckpt"
    result = train_py(*tiny_run(tmp_path), f"ckpt_path={path}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: ckpt_path={path} does not exist")
