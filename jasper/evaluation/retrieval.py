"""Dense retrieval evaluation: exact (brute-force) cosine search with a running top-k, then nDCG@k / recall@k.

The retrieval metrics are trec_eval's, computed by pytrec_eval (as BEIR and MTEB do), so the numbers are
comparable with published BEIR and MTEB tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytrec_eval
import torch
from tqdm.auto import tqdm

from jasper.evaluation.encoder import Encoder, encode_texts

Run = Mapping[str, Sequence[str]]
"""A retrieval run: query id -> document ids, best first."""

Qrels = Mapping[str, Mapping[str, int]]
"""Relevance judgements: query id -> {document id: grade}; grade 0 = judged non-relevant."""


def _trec_eval(run: Run, qrels: Qrels, measure: str, k: int) -> dict[str, float]:
    """pytrec_eval's ``measure.k`` (``ndcg_cut`` or ``recall``) for each query of `qrels`; 0 for a query that is
    absent from `run` or has an empty ranking (pytrec_eval leaves those out).

    pytrec_eval ranks by score and breaks ties by document id, so each ranking is given the distinct scores
    n, n-1, ..., 1 (exact in float64): its order is kept as it is. Run entries for queries without judgements are
    ignored.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    scored = {}
    for qid in qrels:
        ranking = list(run.get(qid, ()))
        if len(set(ranking)) != len(ranking):
            raise ValueError(f"the ranking of query {qid!r} lists a document more than once")
        scored[qid] = {doc: float(len(ranking) - i) for i, doc in enumerate(ranking)}
    judged = {qid: {doc: max(int(g), 0) for doc, g in docs.items()} for qid, docs in qrels.items()}
    results = pytrec_eval.RelevanceEvaluator(judged, {f"{measure}.{k}"}).evaluate(scored)
    return {qid: results.get(qid, {}).get(f"{measure}_{k}", 0.0) for qid in qrels}


def ndcg_at_k_per_query(run: Run, qrels: Qrels, k: int) -> dict[str, float]:
    """nDCG@k for each query of `qrels` (trec_eval `ndcg_cut.k`, as used by BEIR and MTEB; pytrec_eval computes it).

        DCG@k  = sum_{i=1..k} rel(d_i) / log2(i + 1)      (d_i: document at rank i of the run; rel = judged grade,
                                                             0 for judged-non-relevant and for unjudged documents)
        IDCG@k = DCG@k of all judged grades of the query sorted descending
        nDCG@k = DCG@k / IDCG@k                            (0 when the query has no relevant document)

    A query of `qrels` that is absent from `run` scores 0. Run entries for queries without judgements are ignored.
    """
    return _trec_eval(run, qrels, "ndcg_cut", k)


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
    """Recall@k for each query of `qrels` (trec_eval `recall.k`, as used by BEIR and MTEB; pytrec_eval computes it).

        recall@k = |{relevant docs in the top k of the run}| / |{relevant docs}|,   relevant = grade > 0

    0 when the query has no relevant document (trec_eval's convention); 0 for a query absent from `run`.
    """
    return _trec_eval(run, qrels, "recall", k)


def recall_at_k(run: Run, qrels: Qrels, k: int) -> float:
    """Mean over the queries of `qrels` of recall@k (see `recall_at_k_per_query`).

    Example: qrels {"q": {"a": 2, "b": 1, "c": 0}}, run {"q": ["c", "a", "x"]}, k=2: 1 of 2 relevant found -> 0.5
    """
    if not qrels:
        raise ValueError("recall_at_k: qrels is empty")
    per_query = recall_at_k_per_query(run, qrels, k)
    return sum(per_query.values()) / len(per_query)


def encode_corpus(
    encode: Encoder,
    corpus: Mapping[str, str],
    doc_prompt: str | None = None,
    batch_size: int = 64,
    show_progress: bool | None = None,
) -> torch.Tensor:
    """Encode the whole corpus, rows in `list(corpus)` order: (N, d). Used to reuse document vectors across
    query-prompt variants (instruction robustness); `search` itself never needs all of them at once."""
    texts = list(corpus.values())
    show = len(texts) > 10_000 if show_progress is None else show_progress
    chunks = []
    with tqdm(total=len(texts), unit="doc", desc="encode corpus", disable=not show) as bar:
        for start in range(0, len(texts), 10 * batch_size):
            part = texts[start : start + 10 * batch_size]
            chunks.append(encode_texts(encode, part, prompt=doc_prompt, batch_size=batch_size))
            bar.update(len(part))
    return torch.cat(chunks)


def search(
    encode: Encoder,
    corpus: Mapping[str, str],
    queries: Mapping[str, str],
    top_k: int,
    query_prompt: str | None = None,
    doc_prompt: str | None = None,
    corpus_chunk: int = 10_000,
    batch_size: int = 64,
    doc_vectors: torch.Tensor | None = None,
    show_progress: bool | None = None,
) -> dict[str, list[str]]:
    """Exact cosine search: for each query, the ids of its `top_k` nearest documents, best first.

    The corpus is encoded `corpus_chunk` documents at a time; each chunk's (Q, chunk) score block is reduced with
    `torch.topk` and merged into a running (Q, top_k) best list, so memory is O(Q * (chunk + top_k)), never
    O(Q * N). `doc_vectors` (rows in `list(corpus)` order, e.g. from `encode_corpus`) skips document encoding.
    A progress bar shows for corpora over 10,000 documents (or as `show_progress` says).
    """
    if top_k < 1 or corpus_chunk < 1:
        raise ValueError(f"top_k and corpus_chunk must be >= 1, got {top_k}, {corpus_chunk}")
    doc_ids = list(corpus)
    query_ids = list(queries)
    if doc_vectors is not None and doc_vectors.shape[0] != len(doc_ids):
        raise ValueError(f"doc_vectors has {doc_vectors.shape[0]} rows for {len(doc_ids)} documents")
    q = encode_texts(
        encode, [queries[i] for i in query_ids], prompt=query_prompt, batch_size=batch_size
    )  # (Q, d)
    k = min(top_k, len(doc_ids))
    best_scores = torch.full((len(query_ids), 0), float("-inf"))
    best_index = torch.zeros((len(query_ids), 0), dtype=torch.long)
    show = len(doc_ids) > 10_000 if show_progress is None else show_progress
    with tqdm(total=len(doc_ids), unit="doc", desc="search", disable=not show) as bar:
        for start in range(0, len(doc_ids), corpus_chunk):
            stop = min(start + corpus_chunk, len(doc_ids))
            if doc_vectors is None:
                texts = [corpus[i] for i in doc_ids[start:stop]]
                d = encode_texts(encode, texts, prompt=doc_prompt, batch_size=batch_size)  # (C, d)
            else:
                d = torch.nn.functional.normalize(doc_vectors[start:stop].float(), dim=-1)
            if d.shape[1] != q.shape[1]:
                raise ValueError(f"query dim {q.shape[1]} != document dim {d.shape[1]}")
            scores = q @ d.T  # (Q, C)
            chunk_scores, chunk_index = scores.topk(min(k, stop - start), dim=1)
            merged_scores = torch.cat([best_scores, chunk_scores], dim=1)
            merged_index = torch.cat([best_index, chunk_index + start], dim=1)
            best_scores, pos = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
            best_index = merged_index.gather(1, pos)
            bar.update(stop - start)
    return {qid: [doc_ids[j] for j in row] for qid, row in zip(query_ids, best_index.tolist(), strict=True)}


def evaluate_retrieval(
    encode: Encoder,
    corpus: Mapping[str, str],
    queries: Mapping[str, str],
    qrels: Qrels,
    query_prompt: str | None = None,
    doc_prompt: str | None = None,
    k_values: Sequence[int] = (10, 100),
    corpus_chunk: int = 10_000,
    batch_size: int = 64,
    doc_vectors: torch.Tensor | None = None,
    show_progress: bool | None = None,
) -> dict[str, float]:
    """nDCG@k and recall@k (for every k in `k_values`) of exact cosine search, averaged over the judged queries.

    Only queries that have judgements are searched (use `load_beir`, which drops the others). Returns e.g.
    {"ndcg@10": ..., "ndcg@100": ..., "recall@10": ..., "recall@100": ...}.
    """
    if not k_values:
        raise ValueError("k_values is empty")
    missing = [qid for qid in qrels if qid not in queries]
    if missing:
        raise ValueError(f"{len(missing)} judged queries have no text, e.g. {missing[0]!r}")
    judged_queries = {qid: queries[qid] for qid in qrels}
    run = search(
        encode,
        corpus,
        judged_queries,
        top_k=max(k_values),
        query_prompt=query_prompt,
        doc_prompt=doc_prompt,
        corpus_chunk=corpus_chunk,
        batch_size=batch_size,
        doc_vectors=doc_vectors,
        show_progress=show_progress,
    )
    results = {f"ndcg@{k}": ndcg_at_k(run, qrels, k) for k in k_values}
    results.update({f"recall@{k}": recall_at_k(run, qrels, k) for k in k_values})
    return results
