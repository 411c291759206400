"""Export a student as a sentence-transformers folder that plain ``SentenceTransformer(path)`` loads, every head kept.

Layout (only standard sentence-transformers 6 modules, so loading needs no jasper code)::

    Transformer (the student's encoder and tokenizer, max_seq_length = model.max_length)
    -> Pooling(mean, prompt tokens included, as the student pools them)
    -> separate mode: Router({"fc1": [Dense], "256": [Dense], ...}, default route "fc1")   (one Dense per head)
       prefix mode:   Dense (FC1); every MRL head is a prefix: SentenceTransformer(path, truncate_dim=d)
    -> Normalize

The Router sits after pooling, so the encoder is stored once and shared by every head; a head is picked with
``model.encode(texts, task="256")``. ``encode_query``/``encode_document`` route to FC1. The training prompt is
saved as the model's default prompt. ``jasper_export.json`` records the heads, and README.md is a model card with
the training config and, when given, measured scores.

Sources: a ``student.pt``, a Lightning ``.ckpt`` file, or a DeepSpeed (ZeRO) checkpoint directory (converted with
Lightning's ``convert_zero_checkpoint_to_fp32_state_dict``). The folder is written beside ``out`` and swapped in
whole; an ``out`` that is not empty is replaced only when it is an earlier export (`EXPORT_MARKER`) or
``overwrite=true``, and never when it holds the checkpoint, a run or the working directory (`check_out`).
Serving options (docs/export.md): ``onnx`` adds the encoder as ONNX graphs, float32 and dynamically quantised
int8 (:mod:`jasper.exporting.onnx`, loaded with ``SentenceTransformer(path, backend="onnx")``); ``query_encoder``
ships FC1 alone, with a card that says how to pair it with the teachers' document vectors.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from torch import nn

from jasper.core.disk import replaced_folder
from jasper.evaluation.run_teachers import teacher_pairing
from jasper.exporting.card import display_name, model_card, public_config, student_scores
from jasper.exporting.onnx import write_onnx
from jasper.models.encoders import tokenizer_type
from jasper.models.student import FC1, Student
from jasper.models.vision import VISION_FILE, MultimodalStudent, load_vision
from jasper.storage.checkpoints import EXPORT_FILE, STUDENT_FILE, load_student, run_inside

log = logging.getLogger(__name__)


MULTIMODAL_DIR = "multimodal"
# In every export: export.py may replace a folder that holds it (an earlier export) without overwrite=true.
EXPORT_MARKER = ".jasper-export"


class ExportRefused(ValueError):
    """An ``out`` folder that export will not replace (export.py prints the message as one line)."""


# Writing the sentence-transformers folder.
def _dense(linear: nn.Linear):
    # sentence-transformers: heavy, see build_sentence_transformer
    from sentence_transformers.sentence_transformer.modules import Dense

    dense = Dense(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        activation_function=nn.Identity(),
    )
    dense.linear.load_state_dict(linear.state_dict())
    return dense


def build_sentence_transformer(student: Student, workdir: str | Path, query_encoder: bool = False):
    """The student as an in-memory ``SentenceTransformer`` (its encoder is written to ``workdir`` and reloaded);
    ``query_encoder``: FC1 alone (the head that lives in the teachers' space), no other head."""
    # sentence-transformers: heavy to import (seconds), and only writing the folder needs it
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Router, Transformer

    workdir = Path(workdir)
    student.encoder.save_pretrained(workdir)
    student.tokenizer.save_pretrained(workdir)
    kind = tokenizer_type(student.tokenizer, student.encoder.config.model_type)
    load = {"processor_kwargs": {"tokenizer_type": kind}} if kind else {}
    transformer = Transformer(str(workdir), max_seq_length=student.max_length, **load)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean", include_prompt=True)
    if student.mrl_mode == "separate" and student.mrl_dims and not query_encoder:
        routes = {FC1: [_dense(student.fc1)]}
        routes.update({name: [_dense(student.heads[name])] for name in student.head_names[1:]})
        heads = Router(
            routes,
            default_route=FC1,
            route_mappings={("query", None): FC1, ("document", None): FC1},
        )
    else:
        heads = _dense(student.fc1)
    # encode_query / encode_document pick the "query" / "document" prompt (sentence-transformers adds empty
    # ones otherwise, which would override the default): the student uses one prompt for every text.
    prompts = {name: student.prompt for name in ("default", "query", "document")} if student.prompt else None
    return SentenceTransformer(
        modules=[transformer, pooling, heads, Normalize()],
        prompts=prompts,
        default_prompt_name="default" if prompts else None,
        device="cpu",
    )


def export_info(student: Student, query_encoder: bool = False) -> dict:
    """What ``jasper_export.json`` holds: how each head is reached, and the student's rebuild kwargs."""
    if query_encoder:
        heads = {FC1: {"dim": student.fc1_dim}}
    elif student.mrl_mode == "prefix":
        heads = {FC1: {"dim": student.fc1_dim}}
        heads.update({str(d): {"dim": d, "truncate_dim": d} for d in student.mrl_dims})
    else:
        heads = {name: {"dim": student.head_dim(name), "task": name} for name in student.head_names}
    info = {"format": "jasper-sentence-transformers/1", "heads": heads, "student": student.describe()}
    kind = tokenizer_type(student.tokenizer, student.encoder.config.model_type)
    if kind:  # SentenceTransformer(path, processor_kwargs={"tokenizer_type": kind})
        info["load_kwargs"] = {"processor_kwargs": {"tokenizer_type": kind}}
    return info


def export_student(
    student: Student,
    out_dir: str | Path,
    train_config: Mapping | None = None,
    scores: str | Path | Sequence | None = None,
    source: str | None = None,
    overwrite: bool = False,
    keep: Sequence[Path] = (),
    also: Callable[[Path], None] | None = None,
    onnx: bool = False,
    onnx_quantize: Sequence[str] = ("avx512_vnni",),
    query_encoder: bool = False,
) -> Path:
    """Write ``student`` as a sentence-transformers folder (see the module docstring) and return its path: written
    beside ``out_dir`` with `EXPORT_MARKER`, then swapped in whole (`check_out`: which ``out_dir`` may be replaced,
    ``keep`` the files it must not hold). ``also(folder)`` adds files before the swap (the vision tower).

    ``scores``: a results JSON written by evaluate.py / ``write_report`` (or a list of ``ResultRow``) to put in
    the model card. ``onnx``: also the ONNX graphs (float32, and int8 for each of ``onnx_quantize``), each checked
    against PyTorch (:func:`jasper.exporting.onnx.write_onnx`). ``query_encoder``: FC1 alone, and the card says how
    to pair it with the teachers' document vectors (the teachers of ``train_config``, which it then needs).
    """
    out_dir = Path(out_dir)
    check_out(out_dir, keep, overwrite)
    info = export_info(student, query_encoder)
    if query_encoder:
        info["query_encoder"] = teacher_pairing(train_config, student.fc1_dim)
        for teacher in info["query_encoder"]["teachers"]:  # by its name, not a path of this machine
            teacher["model"] = display_name(teacher["model"])
    train_config = public_config(train_config) if train_config is not None else None
    source = display_name(source) if source else None
    with replaced_folder(out_dir) as folder, tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        model = build_sentence_transformer(student, tmp, query_encoder)
        model.save(str(folder), create_model_card=False)
        if onnx:
            info["onnx"] = write_onnx(model, folder, onnx_quantize)
        (folder / EXPORT_FILE).write_text(json.dumps(info, indent=2) + "\n")
        (folder / "README.md").write_text(model_card(student, info, train_config, scores, source))
        (folder / EXPORT_MARKER).write_text(
            "Written by jasper's export.py, which replaces this folder whole.\n"
        )
        if also is not None:
            also(folder)
    log.info("exported %s with heads %s to %s", source or "student", list(info["heads"]), out_dir)
    return out_dir


def export_checkpoint(
    ckpt: str | Path,
    out_dir: str | Path,
    scores: str | Path | Sequence | None = None,
    overwrite: bool = False,
    **serving,
) -> Path:
    """Export a student.pt, Lightning .ckpt or DeepSpeed checkpoint directory (python export.py ckpt=... out=...);
    ``serving``: `export_student`'s ``onnx``, ``onnx_quantize`` and ``query_encoder``."""
    ckpt = Path(ckpt)
    check_out(Path(out_dir), [ckpt], overwrite)  # before the student loads: refused in a second
    student, train_config = load_student(ckpt)
    tower = ckpt.parent / VISION_FILE
    also = (lambda folder: export_vision(ckpt, tower, folder)) if ckpt.is_file() and tower.is_file() else None
    scores = (student_scores(ckpt) or None) if scores is None else scores
    return export_student(
        student, out_dir, train_config, scores, str(ckpt), overwrite, [ckpt], also, **serving
    )


def check_out(out: Path, keep: Sequence[Path] = (), overwrite: bool = False) -> None:
    """Refuse an ``out`` whose replacement would delete what export did not make. Always refused: a file, the
    working directory or a folder above it, a folder that is or holds one of ``keep`` (the checkpoint exported),
    one that holds a run (:func:`jasper.storage.checkpoints.run_inside`). A folder that is not empty is replaced
    only when it holds `EXPORT_MARKER` (an earlier export) or with ``overwrite``."""
    out = Path(out).expanduser()
    if not out.exists() and not out.is_symlink():
        return
    where = out.resolve()
    new = "choose a new folder (e.g. out=outputs/<run>/export)"
    if not out.is_dir():
        raise ExportRefused(f"out={out} is a file, not a folder: {new}")
    if where == Path.cwd().resolve() or where in Path.cwd().resolve().parents:
        raise ExportRefused(f"out={out} is the working directory or a folder above it: {new}")
    held = [k for k in keep if Path(k).resolve() == where or where in Path(k).resolve().parents]
    if held:
        raise ExportRefused(f"out={out} holds the checkpoint being exported ({held[0]}): {new}")
    run = run_inside(where)
    if run is not None:
        raise ExportRefused(f"out={out} holds a run or a repository ({run}): export never replaces it; {new}")
    if (out / EXPORT_MARKER).is_file() or overwrite or not any(out.iterdir()):
        return
    raise ExportRefused(
        f"out={out} is not empty and is not an earlier export (no {EXPORT_MARKER} in it): {new}, or give "
        "overwrite=true to replace it whole"
    )


def export_vision(student_file: Path, tower_file: Path, out_dir: Path) -> None:
    """Put a stage-4 student and its vision tower beside the text model. sentence-transformers has no module
    that feeds image tokens to the encoder, so images need jasper: :func:`load_multimodal`."""
    multimodal = out_dir / MULTIMODAL_DIR
    multimodal.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(student_file, multimodal / STUDENT_FILE)
    shutil.copyfile(tower_file, multimodal / VISION_FILE)
    info_file = out_dir / EXPORT_FILE
    info = json.loads(info_file.read_text())
    info["multimodal"] = {
        "student": f"{MULTIMODAL_DIR}/{STUDENT_FILE}",
        "vision": f"{MULTIMODAL_DIR}/{VISION_FILE}",
    }
    info_file.write_text(json.dumps(info, indent=2) + "\n")
    log.info("exported the vision tower (load with jasper.exporting.load_multimodal)")


def load_multimodal(export_dir: str | Path) -> MultimodalStudent:
    """The exported student with its vision tower: ``encode(texts)`` and ``encode(images=[...])``."""
    info = json.loads((Path(export_dir) / EXPORT_FILE).read_text())
    if "multimodal" not in info:
        raise ValueError(
            f"{export_dir} holds no vision tower: export a stage-4 student.pt (vision.pt beside it)"
        )
    student, _ = load_student(Path(export_dir) / info["multimodal"]["student"])
    return MultimodalStudent(student, load_vision(Path(export_dir) / info["multimodal"]["vision"])).eval()
