"""Student weights on disk: what stage k leaves behind and stage k+1 starts from, and the one way to read a student
back (``student.pt``, a Lightning ``.ckpt`` or a DeepSpeed directory) for export and evaluation."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from jasper.core.disk import atomic_write, load_tensors
from jasper.models.student import STUDENT_KEYS, Student

log = logging.getLogger(__name__)
STUDENT_FILE = "student.pt"
# Beside an exported sentence-transformers folder: its heads (jasper.exporting).
EXPORT_FILE = "jasper_export.json"
STAGE_NAME = re.compile(r"stage(\d+)")
HEADS_TRAINED = "heads_trained"  # in student.pt and in every Lightning checkpoint of a stage


def stage_folder(stage: int) -> str:
    """The name of stage ``stage``'s folder in a run (``stage3``), and of its settings in the config
    (``stages.stage3``)."""
    return f"stage{stage}"


def stage_number(name: str) -> int | None:
    """The stage a folder or a ``stages`` key names (``stage3`` -> 3), None for any other name: the one parser of
    stage names."""
    match = STAGE_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def run_inside(folder: str | Path, depth: int = 4) -> Path | None:
    """The first sign of a training run or a repository in ``folder`` or up to ``depth`` levels below it (a sweep's
    stage folders sit 3 levels under ``outputs``): a ``.hydra`` or ``.git`` folder, a stage folder (``stage3``) or
    a Lightning checkpoint (``*.ckpt``); None when there is none. Symbolic links are not followed."""
    level = [Path(folder)]
    for _ in range(depth + 1):
        below = []
        for parent in level:
            try:
                entries = list(os.scandir(parent))
            except OSError:
                continue
            for entry in entries:
                is_dir = entry.is_dir(follow_symlinks=False)
                if entry.name in (".hydra", ".git") or entry.name.endswith(".ckpt"):
                    return Path(entry.path)
                if is_dir and stage_number(entry.name) is not None:
                    return Path(entry.path)
                if is_dir:
                    below.append(entry.path)
        level = below
    return None


def save_student(student: Student, path: str | Path) -> None:
    """``student.pt``: how to rebuild the student, its weights, and which MRL heads a stage has trained. Written
    crash-safe (temporary file, fsync, rename); a student with NaN/inf weights is refused, not written."""
    path = Path(path)
    state = student.state_dict()
    bad = non_finite(state)
    if bad:
        raise ValueError(
            f"the student's weights {bad[:5]} ({len(bad)} tensor(s)) hold NaN/inf: {path} is not written"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": student.describe(),
        "state_dict": state,
        HEADS_TRAINED: sorted(student.heads_trained, key=int),
    }
    atomic_write(path, lambda file: torch.save(payload, file))


def non_finite(state: Mapping[str, object]) -> list[str]:
    """The keys of the floating-point tensors of ``state`` that hold a NaN or an inf."""
    return [
        key
        for key, value in state.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(value.isfinite().all())
    ]


@dataclass(frozen=True)
class StoredStudent:
    """A student as a checkpoint holds it: ``config`` (the Student's kwargs; None in a Lightning checkpoint, which
    holds the run's ``train_config`` instead), its ``state`` dict, the MRL heads some stage trained, and the
    training config (the checkpoint's hyper-parameters, or the run's ``.hydra/config.yaml`` beside a student.pt)."""

    config: dict | None
    state: dict[str, torch.Tensor]
    heads_trained: set[str]
    train_config: dict | None


def read_student(path: str | Path) -> StoredStudent:
    """The one reader of a stored student: a ``student.pt``, a Lightning ``.ckpt`` of a stage module, or a DeepSpeed
    checkpoint directory (consolidated first); each file is loaded once."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no student at {path}: give a student.pt, a Lightning .ckpt or a DeepSpeed checkpoint directory "
            "(for a stage's start: stages.stageN.init_from=PATH)"
        )
    if path.is_dir():
        if not is_deepspeed_dir(path):
            raise ValueError(
                f"{path} is a directory but not a DeepSpeed checkpoint (no 'latest', no */*model_states.pt)"
            )
        with tempfile.TemporaryDirectory() as tmp:
            return read_student(convert_deepspeed(path, Path(tmp) / "fp32.ckpt"))
    payload = load_tensors(path)  # weights_only: a shared checkpoint cannot run code
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise ValueError(f"{path} holds neither a student.pt payload nor a Lightning checkpoint")
    heads_trained = set(payload.get(HEADS_TRAINED, ()))
    if "config" in payload:  # student.pt
        hydra_config = path.parent / ".hydra" / "config.yaml"
        train_config = yaml.safe_load(hydra_config.read_text()) if hydra_config.is_file() else None
        stored = StoredStudent(payload["config"], payload["state_dict"], heads_trained, train_config)
    else:  # a Lightning checkpoint of a stage module: the student's keys carry a prefix, the config is a hparam
        weights = payload["state_dict"]
        state = {k.removeprefix("student."): v for k, v in weights.items() if k.startswith("student.")}
        train_config = (payload.get("hyper_parameters") or {}).get("config")
        stored = StoredStudent(None, state, heads_trained, train_config)
    bad = non_finite(stored.state)
    if bad:
        raise ValueError(
            f"{path} holds NaN/inf weights in {bad[:5]} ({len(bad)} tensor(s)): the stage that wrote it diverged. "
            "Use an earlier checkpoint of that stage, or train it again with a lower "
            "stages.stageN.module.optimizer.lr"
        )
    return stored


def is_deepspeed_dir(path: str | Path) -> bool:
    """A DeepSpeed checkpoint directory (Lightning writes ``<name>.ckpt/`` as one): a ``latest`` file or a tag
    folder holding ``*model_states.pt``."""
    path = Path(path)
    return path.is_dir() and ((path / "latest").is_file() or any(path.glob("*/*model_states.pt")))


def convert_deepspeed(path: str | Path, output_file: str | Path) -> Path:
    """Consolidate a ZeRO-2/3 checkpoint directory into one fp32 Lightning checkpoint file (needs deepspeed)."""
    # deepspeed: heavy (CUDA extensions) and needed only for a DeepSpeed checkpoint directory
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    path = Path(path)
    if (path / "latest").is_file():
        convert_zero_checkpoint_to_fp32_state_dict(str(path), str(output_file))
        return Path(output_file)
    # No `latest` pointer: the single tag folder holding the states. Lightning's converter reads `latest` even when
    # given the tag, so it converts a view of the directory that has one (the tag folder linked, not copied).
    tags = sorted({p.parent.name for p in path.glob("*/*model_states.pt")})
    if len(tags) != 1:
        raise ValueError(f"{path}: no 'latest' file and tag folders {tags}; point at one checkpoint")
    with tempfile.TemporaryDirectory() as view:
        (Path(view) / tags[0]).symlink_to((path / tags[0]).resolve(), target_is_directory=True)
        (Path(view) / "latest").write_text(tags[0])
        convert_zero_checkpoint_to_fp32_state_dict(view, str(output_file))
    return Path(output_file)


def student_config(stored: StoredStudent) -> dict:
    """The Student's kwargs: as stored, else from the training config's ``model`` section and the weights' shapes.
    Separate heads present in the weights win over the config (a stage-1/2 student has none yet)."""
    state = stored.state
    if stored.config is not None:
        config = dict(stored.config)
    else:
        model = dict((stored.train_config or {}).get("model") or {})
        if not model.get("model_name_or_path") and not model.get("encoder_config"):
            raise ValueError(
                "the checkpoint has no student config and no training config naming model.model_name_or_path: "
                "export from the stage's student.pt, or a .ckpt written by train.py (save_hyperparameters)"
            )
        config = {k: model[k] for k in STUDENT_KEYS if k in model}
        config["fc1_dim"] = int(state["fc1.weight"].shape[0])
    heads = {int(k.split(".")[1]) for k in state if k.startswith("heads.")}
    if config.get("mrl_mode", "separate") == "separate" and set(config.get("mrl_dims") or ()) != heads:
        config["mrl_dims"] = sorted(heads, reverse=True)
    return config


def load_student(path: str | Path, weights: bool = True, **overrides) -> tuple[Student, dict | None]:
    """``(Student with the checkpoint's weights, training config or None)`` from student.pt / .ckpt / DeepSpeed dir.

    ``overrides`` replace rebuild kwargs (e.g. ``max_length=128`` for faster evaluation). ``weights=False`` builds
    the same student fresh (pretrained encoder layers, randomly initialised FC1 and heads): the run's init.
    """
    stored = read_student(path)
    student = Student(**{**student_config(stored), **overrides})
    if weights:
        result = student.load_state_dict(stored.state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{path} does not fit the student it describes: missing {result.missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )
        student.heads_trained = stored.heads_trained & set(student.heads)
    return student.eval(), stored.train_config


def stage_students(run_dir: str | Path) -> list[tuple[str, Path]]:
    """``(stageN, student.pt)`` for every stage of the run that has finished, in stage order (a sweep's jobs
    nest their stage folders one level deeper: the name is then the path under the run)."""
    run_dir = Path(run_dir)
    found = [p for p in run_dir.glob(f"**/stage*/{STUDENT_FILE}") if stage_number(p.parent.name) is not None]
    found.sort(key=lambda p: (stage_number(p.parent.name), str(p)))
    return [(str(p.parent.relative_to(run_dir)), p) for p in found]


def load_student_weights(student: Student, path: str | Path) -> None:
    """Load weights into ``student``. Only MRL heads may be missing (new heads start fresh) or extra (dropped).
    ``student.heads_trained`` becomes the loaded heads that a stage had trained."""
    stored = read_student(path)
    if stored.config is not None and stored.config["fc1_dim"] != student.fc1_dim:
        raise ValueError(
            f"{path} has FC1 of dimension {stored.config['fc1_dim']} but the configured teachers give "
            f"{student.fc1_dim}: use the same teachers as the stage that wrote it, or start from the pretrained "
            "encoder (stages.stageN.init_from=null)"
        )
    result = student.load_state_dict(stored.state, strict=False)
    wrong = [k for k in [*result.missing_keys, *result.unexpected_keys] if not k.startswith("heads.")]
    if wrong:
        raise ValueError(
            f"{path} does not fit this student (model.* differs from the stage that wrote it): {wrong[:5]}"
        )
    if result.missing_keys:
        log.info(
            "heads not in %s start fresh: %s", path, sorted({k.split(".")[1] for k in result.missing_keys})
        )
    student.heads_trained = stored.heads_trained & set(student.heads)
    log.info("student initialised from %s", path)


def resolve_init_from(
    init_from: str | None,
    stage_index: int,
    output_dir: str | Path,
    run_dir: str | Path | None = None,
    first_changed: int = 1,
) -> Path | None:
    """``auto``: the previous stage's ``student.pt`` beside this stage's output folder, if that stage has run; else
    (a swept job whose overrides change no stage below this one: ``first_changed >= stage_index``) the run's own
    ``<run_dir>/stage<k-1>/student.pt``. Logs which student the stage starts from. A previous stage whose folder
    exists without a student (it failed or was stopped, e.g. in the same multirun) is refused: starting from the
    pretrained encoder instead would silently train another recipe."""
    if init_from is None:
        log.info(
            "stage %d starts from the pretrained encoder (stages.stage%d.init_from=null)",
            stage_index,
            stage_index,
        )
        return None
    if init_from != "auto":
        log.info("stage %d starts from %s (stages.stage%d.init_from)", stage_index, init_from, stage_index)
        return Path(init_from)
    if stage_index <= 1:
        return None
    previous = Path(output_dir).parent / stage_folder(stage_index - 1) / STUDENT_FILE
    if previous.is_file():
        log.info("stage %d starts from %s (the previous stage beside it)", stage_index, previous)
        return previous
    # it started (a multirun's earlier job, or an earlier command) and did not finish
    if previous.parent.is_dir():
        raise FileNotFoundError(
            f"stage {stage_index} starts from stage {stage_index - 1} of this run, but {previous.parent} holds no "
            f"{STUDENT_FILE}: stage {stage_index - 1} failed or was stopped. Finish it first (the same command with "
            f"stage={stage_index - 1} ckpt_path=last resumes it), or set stages.stage{stage_index}.init_from=PATH "
            "(null: the pretrained encoder)"
        )
    runs = Path(run_dir) / stage_folder(stage_index - 1) / STUDENT_FILE if run_dir is not None else None
    if runs is not None and first_changed >= stage_index and runs.is_file():
        log.info(
            "stage %d starts from %s: the run's stage %d (this job's overrides change no stage below %d)",
            stage_index,
            runs,
            stage_index - 1,
            stage_index,
        )
        return runs
    log.warning(
        "stage %d starts from the pretrained encoder: %s does not exist (run stage %d first in the same run_name, "
        "or set stages.stage%d.init_from=PATH)",
        stage_index,
        previous,
        stage_index - 1,
        stage_index,
    )
    return None


def newest_checkpoint(folder: str | Path) -> Path | None:
    """The Lightning checkpoint written last under ``folder`` (``last.ckpt``, a link to the newest ``step=N``
    one, or a copy of it; a link left dangling by an interrupt between Lightning's removing the old file and linking
    the new one is skipped), or None. The link wins a tie with its target: Lightning never removes the file a run
    resumed from, so resuming from the target would leave two checkpoints. A checkpoint is a ``.ckpt`` file or,
    under DeepSpeed, a ``.ckpt`` directory (:func:`is_deepspeed_dir`), dated by :func:`written_at`."""
    found = [p for p in Path(folder).glob("*.ckpt") if p.is_file() or is_deepspeed_dir(p)]
    return max(found, key=lambda p: (written_at(p), p.name == "last.ckpt")) if found else None


def written_at(checkpoint: Path) -> int:
    """When a checkpoint was last written whole (ns). A file: its mtime. A DeepSpeed directory (Lightning's
    strategy calls ``engine.save_checkpoint(path, tag="checkpoint")``: ``checkpoint/*model_states.pt``,
    ``checkpoint/*optim_states.pt``, ``zero_to_fp32.py``, then ``latest``): its ``latest`` file, which DeepSpeed
    writes after every state file, or without one its newest file. Not the directory's own mtime: rewriting
    ``last.ckpt/`` in place adds no entry to it, so that mtime stays at the first save."""
    if checkpoint.is_file():
        return checkpoint.stat().st_mtime_ns
    latest = checkpoint / "latest"
    files = [latest] if latest.is_file() else [p for p in checkpoint.rglob("*") if p.is_file()]
    return max(p.stat().st_mtime_ns for p in files)


def resolve_ckpt_path(ckpt_path: str | None, checkpoints: str | Path) -> str | None:
    """``last``: the newest checkpoint in this stage's ``checkpoints`` folder, an error when there is none; a path
    must exist."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        newest = newest_checkpoint(checkpoints)
        finished = Path(checkpoints).parent / STUDENT_FILE
        if newest is None and finished.is_file():
            raise FileNotFoundError(
                f"ckpt_path=last but the stage finished ({finished} is written; a finished stage keeps no "
                f"checkpoint in {checkpoints}): drop ckpt_path to train it again"
            )
        if newest is None:
            raise FileNotFoundError(
                f"ckpt_path=last but {checkpoints} holds no checkpoint: drop ckpt_path to start the stage fresh"
            )
        return str(newest)
    if not Path(ckpt_path).exists():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path} does not exist: give a .ckpt path (a DeepSpeed .ckpt directory under "
            "trainer=deepspeed_zero2), or ckpt_path=last"
        )
    return ckpt_path
