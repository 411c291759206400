"""Model-independent evaluation suite: STS, retrieval, teacher fidelity, instruction robustness, reports.

Every evaluation takes an `encode(texts) -> (N, d)` callable (see `Encoder`), so the student (per head), the
teachers and plain sentence-transformers models all go in the same table. `mteb_adapter` (imported on demand,
it pulls in mteb) runs the same callables through MTEB.
"""

from jasper.core.metrics import spearman, teacher_fidelity
from jasper.evaluation.encoder import Encoder, encode_texts, from_sentence_transformer, with_prompt
from jasper.evaluation.loaders import BeirData, EvaluationDataError, StsPair, load_beir, load_sts_tsv
from jasper.evaluation.retrieval import encode_corpus, evaluate_retrieval, ndcg_at_k, recall_at_k, search
from jasper.evaluation.sts import evaluate_sts

__all__ = [
    "BeirData",
    "Encoder",
    "EvaluationDataError",
    "StsPair",
    "encode_corpus",
    "encode_texts",
    "evaluate_retrieval",
    "evaluate_sts",
    "from_sentence_transformer",
    "load_beir",
    "load_sts_tsv",
    "ndcg_at_k",
    "recall_at_k",
    "search",
    "spearman",
    "teacher_fidelity",
    "with_prompt",
]
