"""Every command in the README's code blocks runs, as written, through a subprocess.

Each gets a debug override appended (`DEBUG`: two steps, a few dozen texts, no logger; evaluation on a tiny STS
subset) so it takes seconds. They run in the README's order (stage 2 starts from stage 1's student, report.py and
evaluate.py read the run that train.py wrote) in a sandbox folder that holds the entry points, so the commands'
relative paths (outputs/...) land there and not in the repository. Commands that cannot run here are in `SKIPPED`
with the reason; a README command that is in neither list, or a skip that names no README command, fails.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEV_DATA = REPO.parent / "shared" / "data" / "dev"
ENTRY_POINTS = ["train.py", "report.py", "evaluate.py", "export.py", "precompute.py"]

SKIPPED = {
    "make demo": "the whole embedded demo (about 10 minutes); its three steps are the train.py -m, report.py "
    "and evaluate.py commands tested here",
    "make test": "this test suite itself",
    "python train.py -m stage=1,2,3 experiment=jasper_paper": "needs the hub (NV-Embed-v2, stella 1.5B) and "
    "CUDA GPUs (trainer=deepspeed_zero2)",
    "python precompute.py data=paper_mix teachers=nvembed_stella": "needs the hub (fineweb-edu, "
    "embedding-training-data, NV-Embed-v2, stella 1.5B)",
}
# debug=readme (written into the sandbox's conf/debug/): debug=fast on the docstrings of one stdlib package, so a
# run builds no corpus. A config, not an override: `debug` changes no job folder name
# and no stage a sweep job starts from.
README_DEBUG = f"""# @package _global_
defaults:
  - fast
  - override /data: python_docs
data:
  source:
    root: {Path(sysconfig.get_paths()["stdlib"]) / "email"}
"""
TRAIN_DEBUG = ["debug=readme"]
DEBUG = {
    "train.py": TRAIN_DEBUG,
    "report.py": TRAIN_DEBUG,
    "precompute.py": TRAIN_DEBUG,
    "evaluate.py": [
        f"eval.data_dir={DEV_DATA}",
        "eval.sts=[{name: stsb-dev, path: stsb-dev.tsv, max_pairs: 16}]",
        "eval.retrieval=[]",
    ],
    "export.py": [],
}
# Before a command, what it needs that the README's earlier commands do not leave (debug=fast writes no
# Lightning checkpoint): an interrupted stage 2 to resume.
SETUP = {
    "python train.py stage=2 ckpt_path=last": [
        "python train.py stage=2 trainer.enable_checkpointing=true trainer.max_steps=1 "
        "'+callbacks.resume={_target_: lightning.pytorch.callbacks.ModelCheckpoint, "
        "dirpath: ${paths.output_dir}/checkpoints, save_last: true, every_n_train_steps: 1}'"
    ],
}


def readme_commands() -> list[str]:
    """The commands of the README's ```bash blocks, in order, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    lines = [line.split(" #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def run(command: str, sandbox: Path) -> subprocess.CompletedProcess:
    args = shlex.split(command)
    assert args[0] == "python" and args[1] in ENTRY_POINTS, command
    args = [sys.executable, *args[1:], *DEBUG[args[1]]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.update({"WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)})
    return subprocess.run(args, cwd=sandbox, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture
def sandbox(tmp_path) -> Path:
    """The entry points (copies: evaluate.py resolves relative paths against its own folder) and conf/ (links to
    the repository's, plus debug/readme.yaml)."""
    for name in ENTRY_POINTS:
        shutil.copy(REPO / name, tmp_path / name)
    for item in (REPO / "conf").iterdir():
        if item.name != "debug":
            (tmp_path / "conf" / item.name).parent.mkdir(exist_ok=True)
            (tmp_path / "conf" / item.name).symlink_to(item)
    (tmp_path / "conf" / "debug").mkdir()
    for item in (REPO / "conf" / "debug").iterdir():
        (tmp_path / "conf" / "debug" / item.name).symlink_to(item)
    (tmp_path / "conf" / "debug" / "readme.yaml").write_text(README_DEBUG)
    return tmp_path


def test_skips_name_readme_commands():
    commands = readme_commands()
    assert not set(SKIPPED) - set(commands), "a skipped command is no longer in the README"
    assert not set(SETUP) - set(commands)


def chain(command: str) -> str:
    """The run a command belongs to: the README's commands on `run_name=mine` chain on each other (train -> report ->
    evaluate -> export), the rest on the default run (stage 1 -> 2 -> 3 -> resume -> sweep -> stage 4). The two
    chains share nothing, so they run as two tests in their own sandboxes (two workers take one each)."""
    return "mine" if "run_name=mine" in command or "outputs/mine/" in command else "default"


def test_every_readme_command_is_in_a_chain():
    chains = {chain(command) for command in readme_commands() if command not in SKIPPED}
    assert chains == {"default", "mine"}


# ~15 processes in all; in `make test`, so a documented command that breaks fails CI.
@pytest.mark.parametrize("run_name", ["default", "mine"])
def test_every_readme_command_runs(run_name, sandbox, capsys):
    timings = []
    for command in readme_commands():
        if command in SKIPPED or chain(command) != run_name:
            continue
        for setup in SETUP.get(command, []):
            result = run(setup, sandbox)
            assert result.returncode == 0, f"setup of {command}: {setup}\n{result.stderr[-3000:]}"
        start = time.perf_counter()
        result = run(command, sandbox)
        timings.append(f"{time.perf_counter() - start:5.1f} s  {command}")
        assert result.returncode == 0, f"README command failed: {command}\n{result.stderr[-3000:]}"
        check(command, result, sandbox)
    assert timings, f"no README command on the {run_name} run"
    with capsys.disabled():
        print("\n" + "\n".join(timings))


def check(command: str, result: subprocess.CompletedProcess, sandbox: Path) -> None:
    """What each command must leave behind, beyond exiting 0."""
    outputs = sandbox / "outputs"
    log = result.stdout + result.stderr
    if command == "python train.py":
        assert (outputs / "default" / "stage1" / "student.pt").is_file()
        assert not list(outputs.glob("**/*.ckpt"))  # debug=fast writes no Lightning checkpoint
        assert "stage 1: 100%" in log and "2/2" in log  # the bar counts the stage's steps
    elif command == "python train.py stage=2":
        assert "student initialised from" in (outputs / "default" / "stage2" / "train.log").read_text()
    elif command.startswith("python train.py -m stage=1,2,3"):
        assert [(outputs / "mine" / f"stage{k}" / "student.pt").is_file() for k in (1, 2, 3)] == [True] * 3
        assert "sweep_summary.md" in {p.name for p in (outputs / "mine").iterdir()}
    elif "ckpt_path=last" in command:
        assert "Restoring states from the checkpoint path" in log
    elif command.startswith("python train.py -m stage=3 model.mrl_dims="):  # chains from the run's stage 2
        for job in ("mrl_dims=256", "mrl_dims=128,64"):
            started = (outputs / "default" / job / "stage3" / "train.log").read_text()
            assert "stage 3 starts from outputs/default/stage2/student.pt: the run's stage 2" in started
        summary = (outputs / "default" / "sweep_summary.md").read_text()
        assert "mrl_dims=256/stage3" in summary and "mrl_dims=128,64/stage3" in summary
    elif command.startswith("python report.py"):
        assert (outputs / "mine" / "fidelity.json").is_file()
    elif command.startswith("python evaluate.py"):
        if DEV_DATA.is_dir():
            assert (outputs / "mine" / "eval" / "demo" / "results.json").is_file()
    elif command.startswith("python export.py"):
        card = (outputs / "mine" / "export" / "README.md").read_text()
        assert (
            str(sandbox) not in card and "sentence-transformers/all-MiniLM-L6-v2" in card
        )  # names, not paths
        assert ("## Scores" in card) == DEV_DATA.is_dir()  # evaluate.py's table for this student
    elif command == "python train.py stage=4":
        assert (outputs / "default" / "stage4" / "vision.pt").is_file()
