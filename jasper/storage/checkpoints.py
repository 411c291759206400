"""Student weights on disk: what stage k leaves behind and stage k+1 starts from, and the one way to read a student
back (``student.pt``, a Lightning ``.ckpt`` or a DeepSpeed directory) for export and evaluation."""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
import yaml

from jasper.models.student import STUDENT_KEYS, Student

log = logging.getLogger(__name__)
STUDENT_FILE = "student.pt"
# Beside an exported sentence-transformers folder: its heads (jasper.exporting).
EXPORT_FILE = "jasper_export.json"
HEADS_TRAINED_FROM_STAGE = (
    3  # a checkpoint that records no trained heads: from this stage on, its heads trained
)


def save_student(student: Student, path: str | Path) -> None:
    """``student.pt``: how to rebuild the student, its weights, and which MRL heads a stage has trained."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": student.describe(),
        "state_dict": student.state_dict(),
        "heads_trained": sorted(student.heads_trained, key=int),
    }
    torch.save(payload, path)


def _read_payload(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no student weights at {path}: point stages.stageN.init_from at a student.pt or .ckpt file"
        )
    return torch.load(path, map_location="cpu", weights_only=False)


def heads_trained(payload: dict, path: str | Path) -> set[str]:
    """The MRL heads of a checkpoint that some stage trained: as ``student.pt`` records them; for a Lightning
    ``.ckpt`` or an older ``student.pt`` (no record), every head when its stage (the config's ``stage``, or a
    ``stageN`` folder) is ``HEADS_TRAINED_FROM_STAGE`` or later, else none."""
    if "heads_trained" in payload:
        return set(payload["heads_trained"])
    config = (payload.get("hyper_parameters") or {}).get("config") or {}
    stage = config.get("stage")
    if stage is None:
        folder = Path(path).parent.name
        stage = int(folder.removeprefix("stage")) if re.fullmatch(r"stage\d+", folder) else 0
    if int(stage) < HEADS_TRAINED_FROM_STAGE:
        return set()
    state = payload["state_dict"]
    return {k.split(".")[-2] for k in state if k.removeprefix("student.").startswith("heads.")}


def read_student_state(path: str | Path) -> tuple[dict | None, dict[str, torch.Tensor]]:
    """``(student config or None, student state dict)`` from a ``student.pt`` or a Lightning ``.ckpt`` file."""
    return _student_state(_read_payload(path), path)


def _student_state(payload: dict, path: str | Path) -> tuple[dict | None, dict[str, torch.Tensor]]:
    if "state_dict" in payload and "config" in payload:
        return payload["config"], payload["state_dict"]
    if "state_dict" in payload:  # a Lightning checkpoint of a stage module: the student's keys carry a prefix
        state = {
            k.removeprefix("student."): v
            for k, v in payload["state_dict"].items()
            if k.startswith("student.")
        }
        return None, state
    raise ValueError(f"{path} holds neither a student.pt payload nor a Lightning checkpoint")


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


def read_checkpoint(path: str | Path) -> tuple[dict | None, dict[str, torch.Tensor], dict | None]:
    """``(student config or None, student state dict, training config or None)`` from any supported source.

    The training config is the checkpoint's ``hyper_parameters["config"]`` (Lightning / DeepSpeed) or the run's
    ``.hydra/config.yaml`` beside a ``student.pt`` when it exists.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no checkpoint at {path}: give a student.pt, a Lightning .ckpt or a DeepSpeed checkpoint directory"
        )
    if path.is_dir():
        if not is_deepspeed_dir(path):
            raise ValueError(
                f"{path} is a directory but not a DeepSpeed checkpoint (no 'latest', no */*model_states.pt)"
            )
        with tempfile.TemporaryDirectory() as tmp:
            converted = convert_deepspeed(path, Path(tmp) / "fp32.ckpt")
            return read_checkpoint(converted)
    student_config, state = read_student_state(path)
    train_config = None
    payload_hparams = None
    if student_config is None:  # Lightning checkpoint: the full run config is in its hyper-parameters
        payload = torch.load(path, map_location="cpu", weights_only=False)
        payload_hparams = (payload.get("hyper_parameters") or {}).get("config")
        train_config = payload_hparams
    hydra_config = path.parent / ".hydra" / "config.yaml"
    if train_config is None and hydra_config.is_file():
        train_config = yaml.safe_load(hydra_config.read_text())
    return student_config, state, train_config


def student_config_from(state: Mapping[str, torch.Tensor], train_config: Mapping | None) -> dict:
    """Rebuild kwargs of a Student from a training config's ``model`` section and the state dict's shapes."""
    model = dict((train_config or {}).get("model") or {})
    if not model.get("model_name_or_path") and not model.get("encoder_config"):
        raise ValueError(
            "the checkpoint has no student config and no training config naming model.model_name_or_path: "
            "export from the stage's student.pt, or a .ckpt written by train.py (save_hyperparameters)"
        )
    config = {k: model[k] for k in STUDENT_KEYS if k in model}
    config["fc1_dim"] = int(state["fc1.weight"].shape[0])
    heads = sorted({int(k.split(".")[1]) for k in state if k.startswith("heads.")}, reverse=True)
    if heads:  # separate heads present in the weights win over the config (stage 1/2 .ckpt have none yet)
        config["mrl_dims"] = heads
    return config


def load_student(path: str | Path, weights: bool = True, **overrides) -> tuple[Student, dict | None]:
    """``(Student with the checkpoint's weights, training config or None)`` from student.pt / .ckpt / DeepSpeed dir.

    ``overrides`` replace rebuild kwargs (e.g. ``max_length=128`` for faster evaluation). ``weights=False`` builds
    the same student fresh (pretrained encoder layers, randomly initialised FC1 and heads): the run's init.
    """
    student_config, state, train_config = read_checkpoint(path)
    config = dict(student_config) if student_config is not None else student_config_from(state, train_config)
    if student_config is not None and not any(k.startswith("heads.") for k in state):
        if config.get("mrl_mode") == "separate":
            config["mrl_dims"] = []  # a stage-1/2 student.pt saved before its heads existed
    config.update(overrides)
    student = Student(**config)
    if not weights:
        return student.eval(), train_config
    result = student.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fit the student it describes: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    student.eval()
    return student, train_config


def stage_students(run_dir: str | Path) -> list[tuple[str, Path]]:
    """``(stageN, student.pt)`` for every stage of the run that has finished, in stage order (a sweep's jobs
    nest their stage folders one level deeper: the name is then the path under the run)."""
    run_dir = Path(run_dir)
    found = sorted(run_dir.glob(f"**/stage*/{STUDENT_FILE}"), key=lambda p: (p.parent.name, str(p)))
    return [(str(p.parent.relative_to(run_dir)), p) for p in found]


def load_student_weights(student: Student, path: str | Path) -> None:
    """Load weights into ``student``. Only MRL heads may be missing (new heads start fresh) or extra (dropped).
    ``student.heads_trained`` becomes the loaded heads that a stage had trained (:func:`heads_trained`)."""
    payload = _read_payload(path)
    config, state = _student_state(payload, path)
    if config is not None and config["fc1_dim"] != student.fc1_dim:
        raise ValueError(
            f"{path} has FC1 of dimension {config['fc1_dim']} but the configured teachers give {student.fc1_dim}: "
            "use the same teachers as the stage that wrote it, or start from the pretrained encoder (stages.stageN.init_from=null)"
        )
    result = student.load_state_dict(state, strict=False)
    wrong = [k for k in [*result.missing_keys, *result.unexpected_keys] if not k.startswith("heads.")]
    if wrong:
        raise ValueError(
            f"{path} does not fit this student (model.* differs from the stage that wrote it): {wrong[:5]}"
        )
    if result.missing_keys:
        log.info(
            "heads not in %s start fresh: %s", path, sorted({k.split(".")[1] for k in result.missing_keys})
        )
    student.heads_trained = heads_trained(payload, path) & set(student.heads)
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
    ``<run_dir>/stage<k-1>/student.pt``. Logs which student the stage starts from."""
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
    previous = Path(output_dir).parent / f"stage{stage_index - 1}" / STUDENT_FILE
    if previous.is_file():
        log.info("stage %d starts from %s (the previous stage beside it)", stage_index, previous)
        return previous
    runs = Path(run_dir) / f"stage{stage_index - 1}" / STUDENT_FILE if run_dir is not None else None
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
    """The Lightning checkpoint written last under ``folder`` (``last.ckpt`` or a ``step=N`` one: an interrupt
    between the two writes leaves the other one older), or None."""
    found = [p for p in Path(folder).glob("*.ckpt") if p.is_file()]
    return max(found, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt")) if found else None


def resolve_ckpt_path(ckpt_path: str | None, checkpoints: str | Path) -> str | None:
    """``last``: the newest checkpoint in this stage's ``checkpoints`` folder, an error when there is none; a path
    must exist."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        newest = newest_checkpoint(checkpoints)
        if newest is None:
            raise FileNotFoundError(
                f"ckpt_path=last but {checkpoints} holds no checkpoint: drop ckpt_path to start the stage fresh"
            )
        return str(newest)
    if not Path(ckpt_path).exists():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist: give a .ckpt path, or ckpt_path=last")
    return ckpt_path
