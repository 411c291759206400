"""Run an `Encoder` callable through MTEB 2.x, and build MTEB tasks from local files (no hub access).

    model = MTEBEncoder(encode, name="jasper/student-fc2", prompts={"Retrieval-query": "Represent ...: "})
    task = local_sts_task("StsbDevLocal", load_sts_tsv(dev / "stsb-dev.tsv"))
    result = mteb.evaluate(model, task, cache=None)      # result.task_results[0].get_score() -> cosine Spearman

Prompts follow MTEB's lookup order (most specific first): "<TaskName>-<query|document>", "<TaskName>",
"<TaskType>-<query|document>", "<TaskType>" (e.g. "STS", "Retrieval"), "<query|document>". The chosen prompt is
prepended verbatim, as in the rest of `jasper.evaluation`. Importing this module imports mteb (slow); it is not
imported by `jasper.evaluation`'s `__init__`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.models.abs_encoder import AbsEncoder, get_prompt
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from jasper.evaluation.encoder import Encoder, encode_texts
from jasper.evaluation.loaders import BeirData


class MTEBEncoder(AbsEncoder):
    """MTEB 2.x encoder (`mteb.models.EncoderProtocol`) around an `Encoder` callable.

    Args:
        encode: texts -> (N, d) L2-normalised tensor.
        name: "organisation/model" (MTEB requires the slash), used in result files.
        prompts: prompt key -> string prepended to the text (see the module docstring for the keys).
        batch_size: texts per `encode` call (MTEB's own batch size only sets how it feeds us).
    """

    def __init__(
        self,
        encode: Encoder,
        name: str = "jasper/local",
        revision: str = "local",
        prompts: Mapping[str, str] | None = None,
        embed_dim: int | None = None,
        batch_size: int = 64,
    ) -> None:
        self.model = encode
        self.batch_size = batch_size
        self.model_prompts = dict(prompts) if prompts else None
        self.mteb_model_meta = ModelMeta.create_empty(
            {
                "name": name,
                "revision": revision,
                "embed_dim": embed_dim,
                "similarity_fn_name": ScoringFunction.COSINE,
                "framework": ["PyTorch"],
                "use_instructions": bool(prompts),
            }
        )

    def encode(
        self,
        inputs,
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Encode every text of the `inputs` DataLoader (batches with a "text" list) -> (N, d) float32 array."""
        texts = [text for batch in inputs for text in batch["text"]]
        # mteb's `AbsEncoder.get_prompt` returns the prompt's key, not its text; the module function gives the text.
        prompt = get_prompt(self.model_prompts, task_metadata, prompt_type)
        return encode_texts(self.model, texts, prompt=prompt, batch_size=self.batch_size).numpy()


_LOCAL_METADATA = {
    "reference": None,
    "category": "t2t",
    "eval_splits": ["test"],
    "eval_langs": ["eng-Latn"],
    "date": None,
    "dialect": [],
    "domains": [],
    "task_subtypes": [],
    "license": "not specified",
    "annotations_creators": "derived",
    "modalities": ["text"],
    "sample_creation": "found",
    "bibtex_citation": "",
}


def _metadata(name: str, task_type: str, main_score: str, description: str) -> TaskMetadata:
    return TaskMetadata(
        name=name,
        type=task_type,
        main_score=main_score,
        description=description,
        dataset={"path": f"local/{name}", "revision": "local"},
        **_LOCAL_METADATA,
    )


def local_sts_task(
    name: str, pairs: Sequence[tuple[str, str, float]], min_score: float = 0.0, max_score: float = 5.0
) -> AbsTaskSTS:
    """An MTEB STS task (split "test", main score cosine Spearman) over in-memory (s1, s2, score) pairs."""
    data = DatasetDict(
        {
            "test": Dataset.from_dict(
                {
                    "sentence1": [p[0] for p in pairs],
                    "sentence2": [p[1] for p in pairs],
                    "score": [float(p[2]) for p in pairs],
                }
            )
        }
    )

    class LocalSTS(AbsTaskSTS):
        metadata = _metadata(name, "STS", "cosine_spearman", f"Local STS task {name} ({len(pairs)} pairs).")

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            self.dataset = {"default": data}
            self.data_loaded = True

    LocalSTS.min_score, LocalSTS.max_score = min_score, max_score
    return LocalSTS()


def local_retrieval_task(name: str, data: BeirData) -> AbsTaskRetrieval:
    """An MTEB retrieval task (split "test", main score nDCG@10) over a loaded BEIR folder (`load_beir`).

    Documents go in with an empty title and the already-joined "title text" string, so MTEB sees exactly the text
    `evaluate_retrieval` sees.
    """
    corpus, queries, qrels = data
    split = RetrievalSplitData(
        queries=Dataset.from_list([{"id": q, "text": t} for q, t in queries.items()]),
        corpus=Dataset.from_list([{"id": d, "text": t, "title": ""} for d, t in corpus.items()]),
        relevant_docs={q: dict(j) for q, j in qrels.items()},
        top_ranked=None,
    )

    class LocalRetrieval(AbsTaskRetrieval):
        metadata = _metadata(name, "Retrieval", "ndcg_at_10", f"Local retrieval task {name}.")

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

    return LocalRetrieval()
