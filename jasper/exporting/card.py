"""The model card (README.md) of an export: what the model is, how to load each head, its serving files (ONNX,
the query-encoder pairing), the training config and scores. Models are named by their names, never by a path of the
machine that trained them (:func:`display_name`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from jasper.core.tables import load_json, markdown_table
from jasper.models.packaged import packaged_minilm
from jasper.models.student import FC1, Student
from jasper.storage.checkpoints import STUDENT_FILE, stage_number

# Model card: models named by their names, never by a path of the machine that trained them.
GENERIC_PARTS = {"model", "models", "snapshots", "export", "checkpoints", STUDENT_FILE}
PLUMBING_KEYS = ("paths", "callbacks", "hydra")  # where a run wrote its files: nothing about the model


def display_name(value: str) -> str:
    """A model or file as a reader elsewhere knows it: hub ids as they are; the packaged all-MiniLM-L6-v2 by its
    hub name; a Hugging Face cache snapshot by its repo id; any other local path by its last meaningful parts
    (``outputs/mine/stage3/student.pt`` -> ``mine/stage3``)."""
    text = str(value)
    path = Path(text).expanduser()
    if not (text.startswith(("/", "~", "./", "../")) or path.exists()):
        return text  # a hub id (or a plain name)
    try:
        if path.resolve() == Path(packaged_minilm()).resolve():
            return "sentence-transformers/all-MiniLM-L6-v2"
    except ImportError:
        pass
    for part in path.parts:
        if part.startswith("models--"):  # ~/.cache/huggingface/hub/models--org--name/snapshots/<hash>
            return part.removeprefix("models--").replace("--", "/")
    parts = [p for p in path.parts if p not in ("/", "~", ".", "..")]
    named = [p for p in parts if p not in GENERIC_PARTS and not (len(p) == 40 and p.isalnum())]
    keep = (
        named[-2:]
        if parts and (parts[-1] in GENERIC_PARTS or path.suffix in (".pt", ".ckpt"))
        else named[-1:]
    )
    return "/".join(keep) or path.name


def public_config(config: Mapping) -> dict:
    """The training config as the model card shows it: run plumbing (`PLUMBING_KEYS`) left out, every absolute
    path named with `display_name`."""

    def clean(value):
        if isinstance(value, Mapping):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, str) and value.startswith(("/", "~")):
            return display_name(value)
        return value

    return {k: clean(v) for k, v in config.items() if k not in PLUMBING_KEYS}


def student_scores(ckpt: str | Path) -> list:
    """This student's rows of the evaluation tables of its run (``<run>/eval/*/results.json``, as
    ``python evaluate.py run_name=RUN`` writes them), or none: a stage folder's student is the table's ``stageN``
    model (or its path under the run, for sweep jobs)."""
    stage = next((p for p in [Path(ckpt), *Path(ckpt).parents] if stage_number(p.name) is not None), None)
    if stage is None:
        return []
    for run in list(stage.parents)[:3]:
        names = {stage.name, str(stage.relative_to(run))}
        rows = [r for table in sorted(run.glob("eval/*/results.json")) for r in load_json(table)]
        if any(r.model in names for r in rows):
            return [r for r in rows if r.model in names]
    return []


def model_card(
    student: Student,
    info: dict,
    train_config: Mapping | None = None,
    scores: str | Path | Sequence | None = None,
    source: str | None = None,
) -> str:
    """README.md: what the model is, how to load each head, the training config and scores (when given)."""
    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        "tags: [sentence-transformers, feature-extraction, distillation, jasper]",
        "---",
        "",
        "# Jasper/Stella-distilled student",
        "",
        (
            f"Encoder initialised from `{display_name(student.model_name_or_path)}`"
            if student.model_name_or_path
            else f"Encoder built from a `{student.encoder.config.model_type}` config (random initial weights)"
        )
        + f" ({student.encoder.config.num_hidden_layers} layers), "
        f"mean pooling, FC1 to {student.fc1_dim} dimensions, MRL mode `{student.mrl_mode}`"
        + (f", exported from `{source}`." if source else "."),
        "",
        "| head | dim | how to get it |",
        "|---|---|---|",
    ]
    for name, head in info["heads"].items():
        if "truncate_dim" in head:
            how = f"`SentenceTransformer(path, truncate_dim={head['truncate_dim']})`"
        elif name == FC1 or len(info["heads"]) == 1:
            how = "`SentenceTransformer(path).encode(texts)` (default)"
        else:
            how = f'`SentenceTransformer(path).encode(texts, task="{name}")`'
        lines.append(f"| {name} | {head['dim']} | {how} |")
    lines += [
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "model = SentenceTransformer(path)",
        "vectors = model.encode(texts, normalize_embeddings=True)   # FC1",
        "```",
        "",
        *(
            [
                f"Load it with `SentenceTransformer(path, **{info['load_kwargs']!r})`: its tokenizer is not the one "
                f"transformers registers for `{student.encoder.config.model_type}` models.",
                "",
            ]
            if "load_kwargs" in info
            else []
        ),
        f"Prompt prepended to every text (saved as the default prompt): {student.prompt!r}. "
        f"max_seq_length: {student.max_length}.",
        "",
    ]
    lines += serving_notes(info)
    if scores is not None:
        rows = load_json(scores) if isinstance(scores, str | Path) else list(scores)
        lines += ["## Scores", "", markdown_table(rows), ""]
    if train_config is not None:
        lines += [
            "## Training config",
            "",
            "```yaml",
            yaml.safe_dump(dict(train_config), sort_keys=False).rstrip(),
            "```",
            "",
        ]
    return "\n".join(lines)


def serving_notes(info: dict) -> list[str]:
    """The card's sections for the ONNX files and the query-encoder pairing, when the export has them."""
    lines = []
    onnx = info.get("onnx")
    if onnx:
        lines += [
            "## ONNX",
            "",
            "| file | weights | load with | vectors against PyTorch's (probe texts) |",
            "|---|---|---|---|",
        ]
        for name, spec in onnx["files"].items():
            kwargs = "" if name == "onnx/model.onnx" else f', model_kwargs={{"file_name": "{name}"}}'
            lines.append(
                f'| `{name}` | {spec["weights"]} | `SentenceTransformer(path, backend="onnx"{kwargs})` | '
                f"{spec['check']} |"
            )
        lines += [
            "",
            "The ONNX graph is the encoder (token states); pooling, the heads and normalisation run as in PyTorch, "
            "so every head and `task=` work as above. The int8 files are dynamically quantised (weights int8 per "
            "channel, activations quantised at run time), as sentence-transformers' "
            "`export_dynamic_quantized_onnx_model` writes them; their vectors are close to, not equal to, the "
            "float ones (the cosine to the PyTorch vectors is listed).",
            "",
        ]
    pairing = info.get("query_encoder")
    if pairing:
        teachers = ", ".join(
            f"`{t['name']}` (`{t['model']}`, {t['dim']}-d, weight {w:g}"
            f"{', document prompt ' + repr(t['prompt']) if t.get('prompt') else ''})"
            for t, w in zip(pairing["teachers"], pairing["weights"], strict=True)
        )
        lines += [
            "## Query encoder for the teachers' document vectors",
            "",
            f"This model encodes **queries** into the teachers' concatenated {pairing['dim']}-d space (its FC1 head, "
            "trained to match it). Encode the **documents** once with the teachers, in this order: "
            f"{teachers}; normalise each teacher's vectors, multiply by its weight, concatenate, normalise again "
            "(`jasper.models.ensemble.ensemble_vectors`). Score a query against documents by cosine similarity. "
            "Queries then cost this small model's time, and the document index is the teachers' own.",
            "",
            "```python",
            "q = SentenceTransformer(path).encode(queries, normalize_embeddings=True)   # (Q, "
            f"{pairing['dim']})",
            "scores = q @ doc_vectors.T                      # doc_vectors: the teachers' target, as above",
            "```",
            "",
        ]
    return lines
