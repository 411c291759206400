"""Dense retrieval evaluation: exact (brute-force) cosine search with a running top-k, then nDCG@k / recall@k."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from jasper.evaluation.encoder import Encoder, encode_texts
from jasper.evaluation.metrics import ndcg_at_k, recall_at_k


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
    qrels: Mapping[str, Mapping[str, int]],
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
