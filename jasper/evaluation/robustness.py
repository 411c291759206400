"""Instruction robustness (PAPER.md): score a model under several rephrasings of its instruction.

Instruction-prefixed models can be sensitive to the exact wording of the instruction. Each task is evaluated once
per variant in `instructions.yaml` (or a caller-given set) and summarised by mean, standard deviation and worst case.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import yaml

from jasper.evaluation.encoder import Encoder
from jasper.evaluation.loaders import BeirData
from jasper.evaluation.retrieval import encode_corpus, evaluate_retrieval
from jasper.evaluation.sts import evaluate_sts

TASK_TYPES = ("sts", "retrieval_query")
MIN_VARIANTS = 8


def load_instructions(path: str | Path | None = None) -> dict[str, list[str]]:
    """Instruction variants per task type from a YAML file (default: the packaged `instructions.yaml`).

    The file maps each of `TASK_TYPES` to a list of at least `MIN_VARIANTS` distinct non-empty strings.
    """
    if path is None:
        source = "jasper/evaluation/instructions.yaml"
        text = resources.files("jasper.evaluation").joinpath("instructions.yaml").read_text(encoding="utf-8")
    else:
        source = str(path)
        text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of task type -> list of instructions")
    out = {}
    for task in TASK_TYPES:
        variants = data.get(task)
        if not isinstance(variants, list) or not all(isinstance(v, str) and v.strip() for v in variants):
            raise ValueError(f"{source}: {task!r} must be a list of non-empty strings")
        if len(variants) < MIN_VARIANTS or len(set(variants)) != len(variants):
            raise ValueError(f"{source}: {task!r} needs at least {MIN_VARIANTS} distinct variants")
        out[task] = variants
    return out


def summarise(per_variant: Mapping[str, float]) -> dict:
    """{"mean", "std" (population), "worst" (min), "best" (max), "per_variant": {instruction: score}}."""
    scores = list(per_variant.values())
    return {
        "mean": statistics.fmean(scores),
        "std": statistics.pstdev(scores),
        "worst": min(scores),
        "best": max(scores),
        "per_variant": dict(per_variant),
    }


def instruction_robustness(
    encode: Encoder,
    sts_sets: Mapping[str, Sequence[tuple[str, str, float]]] | None = None,
    retrieval_sets: Mapping[str, BeirData] | None = None,
    instructions: Mapping[str, Sequence[str]] | None = None,
    doc_prompt: str | None = None,
    retrieval_metric: str = "ndcg@10",
    batch_size: int = 64,
) -> dict[str, dict]:
    """Evaluate every STS set and retrieval set under each instruction variant of its task type.

    STS: the variant is prepended to both sentences; score = Spearman. Retrieval: the variant is the query prompt,
    documents keep `doc_prompt` (encoded once and reused); score = `retrieval_metric`.
    Returns {"sts/<name>": summary, "retrieval/<name>": summary} with `summarise`'s fields.
    Example:
        instruction_robustness(encode, {"stsb-dev": pairs}, {"dbpedia-5k": load_beir(dev / "dbpedia-entity-5k")})
    """
    instructions = load_instructions() if instructions is None else instructions
    results: dict[str, dict] = {}
    for name, pairs in (sts_sets or {}).items():
        scores = {
            p: evaluate_sts(encode, pairs, prompt=p, batch_size=batch_size) for p in instructions["sts"]
        }
        results[f"sts/{name}"] = summarise(scores)
    for name, (corpus, queries, qrels) in (retrieval_sets or {}).items():
        k = int(retrieval_metric.split("@")[1])
        doc_vectors = encode_corpus(encode, corpus, doc_prompt=doc_prompt, batch_size=batch_size)
        scores = {}
        for p in instructions["retrieval_query"]:
            metrics = evaluate_retrieval(
                encode, corpus, queries, qrels, query_prompt=p, k_values=(k,), doc_vectors=doc_vectors
            )
            scores[p] = metrics[retrieval_metric]
        results[f"retrieval/{name}"] = summarise(scores)
    if not results:
        raise ValueError("instruction_robustness: give at least one STS or retrieval set")
    return results
