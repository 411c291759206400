"""Student weights between stages: what stage k leaves behind and stage k+1 starts from."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from jasper.student import Student

log = logging.getLogger(__name__)
STUDENT_FILE = "student.pt"


def save_student(student: Student, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"config": student.describe(), "state_dict": student.state_dict()}
    torch.save({**payload, "fresh_heads": sorted(student.fresh_heads)}, path)


def read_student_state(path: str | Path) -> tuple[dict | None, dict[str, torch.Tensor]]:
    """``(student config or None, student state dict)`` from a ``student.pt`` or a Lightning ``.ckpt`` file."""
    path = Path(path)
    return _split_payload(_load_payload(path), path)


def _load_payload(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(
            f"no student weights at {path}: point stages.stageN.init_from at a student.pt or .ckpt file"
        )
    return torch.load(path, map_location="cpu", weights_only=False)


def _split_payload(payload: dict, path: Path) -> tuple[dict | None, dict[str, torch.Tensor]]:
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


def load_student_weights(student: Student, path: str | Path) -> None:
    """Load weights into ``student``. Only MRL heads may be missing (new heads start fresh) or extra (dropped)."""
    payload = _load_payload(Path(path))
    config, state = _split_payload(payload, Path(path))
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
    missing = {k.split(".")[1] for k in result.missing_keys}
    student.fresh_heads = (set(student.heads) & _fresh_heads_in(payload)) | missing
    if result.missing_keys:
        log.info(
            "heads not in %s start fresh: %s", path, sorted({k.split(".")[1] for k in result.missing_keys})
        )
    log.info("student initialised from %s", path)


def _fresh_heads_in(payload: dict) -> set[str]:
    """Heads of a saved student that never trained: as recorded by `save_student`; for a Lightning checkpoint,
    none from stage 3 on (stage 3 trains every head); for a file that records nothing, all of them."""
    if "fresh_heads" in payload:
        return set(payload["fresh_heads"])
    config = (payload.get("hyper_parameters") or {}).get("config") or {}
    if int(config.get("stage", 0) or 0) >= 3:
        return set()
    return {k.split(".")[1] for k in payload["state_dict"] if k.removeprefix("student.").startswith("heads.")}


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


class SaveStudent(L.Callback):
    """At the end of fit, write the student alone (weights + how to rebuild it) for the next stage and export."""

    def __init__(self, path: str) -> None:
        self.path = path

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        save_student(module.student, self.path)
        log.info("student saved to %s", self.path)
