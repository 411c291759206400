"""Evaluation metrics: nDCG@k and recall@k (Spearman, which training also needs, lives in :mod:`jasper.core.metrics`).

Plain, obviously-correct reference implementations (numpy / pure Python). The retrieval metrics follow the
trec_eval / BEIR (pytrec_eval) definitions so that numbers are comparable with published BEIR and MTEB tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from jasper.core.metrics import rankdata, spearman  # noqa: F401  (part of the evaluation suite's API)

Run = Mapping[str, Sequence[str]]
"""A retrieval run: query id -> document ids, best first."""

Qrels = Mapping[str, Mapping[str, int]]
"""Relevance judgements: query id -> {document id: grade}; grade 0 = judged non-relevant."""


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def dcg(grades: Sequence[float]) -> float:
    """Discounted cumulative gain of grades listed in rank order: sum_i grade_i / log2(i + 1), i = 1..n."""
    return sum(g / math.log2(i + 1) for i, g in enumerate(grades, start=1))


def ndcg_at_k_per_query(run: Run, qrels: Qrels, k: int) -> dict[str, float]:
    """nDCG@k for each query of `qrels` (trec_eval `ndcg_cut.k`, as used by BEIR and MTEB).

        DCG@k  = sum_{i=1..k} rel(d_i) / log2(i + 1)      (d_i: document at rank i of the run; rel = judged grade,
                                                             0 for judged-non-relevant and for unjudged documents)
        IDCG@k = DCG@k of all judged grades of the query sorted descending
        nDCG@k = DCG@k / IDCG@k                            (0 when the query has no relevant document)

    A query of `qrels` that is absent from `run` scores 0. Run entries for queries without judgements are ignored.
    """
    _check_k(k)
    out = {}
    for qid, judged in qrels.items():
        ranking = list(run.get(qid, ()))[:k]
        gains = [max(float(judged.get(doc, 0)), 0.0) for doc in ranking]
        ideal = sorted((max(float(g), 0.0) for g in judged.values()), reverse=True)[:k]
        idcg = dcg(ideal)
        out[qid] = dcg(gains) / idcg if idcg > 0 else 0.0
    return out


def ndcg_at_k(run: Run, qrels: Qrels, k: int) -> float:
    """Mean over the queries of `qrels` of nDCG@k (see `ndcg_at_k_per_query` for the formula).

    Example: qrels {"q": {"a": 2, "b": 1, "c": 0}}, run {"q": ["c", "a"]}, k=2:
             DCG = 0/log2(2) + 2/log2(3) = 1.262;  IDCG = 2/log2(2) + 1/log2(3) = 2.631;  nDCG@2 = 0.480
    """
    if not qrels:
        raise ValueError("ndcg_at_k: qrels is empty")
    per_query = ndcg_at_k_per_query(run, qrels, k)
    return sum(per_query.values()) / len(per_query)


def recall_at_k_per_query(run: Run, qrels: Qrels, k: int) -> dict[str, float]:
    """Recall@k for each query of `qrels` (trec_eval `recall.k`, as used by BEIR and MTEB).

        recall@k = |{relevant docs in the top k of the run}| / |{relevant docs}|,   relevant = grade > 0

    0 when the query has no relevant document (trec_eval's convention); 0 for a query absent from `run`.
    """
    _check_k(k)
    out = {}
    for qid, judged in qrels.items():
        relevant = {doc for doc, g in judged.items() if g > 0}
        if not relevant:
            out[qid] = 0.0
            continue
        top = set(list(run.get(qid, ()))[:k])
        out[qid] = len(top & relevant) / len(relevant)
    return out


def recall_at_k(run: Run, qrels: Qrels, k: int) -> float:
    """Mean over the queries of `qrels` of recall@k (see `recall_at_k_per_query`).

    Example: qrels {"q": {"a": 2, "b": 1, "c": 0}}, run {"q": ["c", "a", "x"]}, k=2: 1 of 2 relevant found -> 0.5
    """
    if not qrels:
        raise ValueError("recall_at_k: qrels is empty")
    per_query = recall_at_k_per_query(run, qrels, k)
    return sum(per_query.values()) / len(per_query)
