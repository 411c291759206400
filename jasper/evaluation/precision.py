"""Every head at lower precision: float32, int8 and binary vectors scored on the STS and retrieval sets, with the
bytes one vector costs at each precision.

Quantisation is sentence-transformers' ``quantize_embeddings`` (https://sbert.net/examples/sentence_transformer/
applications/embedding-quantization/README.html):

- ``int8``: per dimension, the calibration texts' [min, max] cut into 256 buckets. The ranges come from a fixed
  calibration set that is not an evaluation set (``eval.precision.calibration``: GCIDE texts by default), as
  sentence-transformers advises, so no score is calibrated on the texts it scores. STS: cosine of the int8 vectors.
  Retrieval: ``semantic_search_usearch`` (exact) over the int8 documents, then the float32 query rescores the top
  ``rescore_multiplier * k`` against the dequantised documents.
- ``ubinary``: one bit per dimension (> 0), packed. STS: the Hamming similarity (bits that agree). Retrieval:
  exact Hamming search in usearch, then float32 rescoring of the top ``rescore_multiplier * k``, as documented.
- ``float32``: the same search path at full precision (exact cosine): equal to the main table's scores.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from jasper.core.metrics import spearman
from jasper.data.corpus import gcide_texts
from jasper.evaluation.encoder import Encoder, encode_texts
from jasper.evaluation.retrieval import ndcg_at_k, recall_at_k
from jasper.evaluation.sets import EvalSets, read_texts, resolve

PRECISIONS = ("float32", "int8", "ubinary")
BITS = {"float32": 32, "int8": 8, "ubinary": 1}


def bytes_per_vector(dim: int, precision: str) -> int:
    """What one ``dim``-d vector costs stored at ``precision`` (binary packs 8 dimensions a byte)."""
    return math.ceil(dim * BITS[precision] / 8)


@dataclass
class PrecisionRow:
    """One head of one model at one precision: ``bytes`` per vector and its scores."""

    model: str
    head: str
    precision: str
    dim: int
    bytes: int
    metrics: dict[str, float] = field(default_factory=dict)


def calibration_texts(ccfg: Mapping | None, repo: Path) -> tuple[list[str], str]:
    """The int8 calibration texts and a line saying which: ``{texts: gcide | FILE, max_texts, seed}``. ``gcide``
    (the default): a seeded sample of GCIDE's definitions and quotations (the embedded recipe's training corpus,
    general English, disjoint from the evaluation sets); a file: its first ``max_texts`` lines (or .jsonl "text")."""
    ccfg = dict(ccfg or {})
    source, count, seed = (
        str(ccfg.get("texts") or "gcide"),
        int(ccfg.get("max_texts") or 1000),
        int(ccfg.get("seed", 0)),
    )
    if source == "gcide":
        texts = sorted(set(gcide_texts()))
        chosen = random.Random(seed).sample(texts, min(count, len(texts)))
        return chosen, f"{len(chosen)} GCIDE texts (seeded sample, seed {seed})"
    chosen = read_texts(resolve(source, repo), count)
    return chosen, f"the first {len(chosen)} texts of {source}"


def quantize(vectors: np.ndarray, precision: str, calibration: np.ndarray) -> np.ndarray:
    # sentence-transformers: heavy to import, and only the precision table needs it here
    from sentence_transformers.util.quantization import quantize_embeddings

    if precision == "float32":
        return vectors.astype(np.float32)
    return quantize_embeddings(vectors, precision=precision, calibration_embeddings=calibration)


def hamming_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that agree between packed rows ``a[i]`` and ``b[i]`` (uint8, ``(N, d/8)``) -> ``(N,)``."""
    return (8 * a.shape[1] - np.unpackbits(np.bitwise_xor(a, b), axis=1).sum(axis=1)).astype(np.float64)


def sts_score(vectors: dict[str, np.ndarray], pairs, precision: str, calibration: np.ndarray) -> float:
    """Spearman of the pairs' similarity at ``precision`` with the gold scores (``vectors``: text -> float row)."""
    texts = list(vectors)
    index = {t: i for i, t in enumerate(texts)}
    q = quantize(np.stack([vectors[t] for t in texts]), precision, calibration)
    a, b = q[[index[s1] for s1, _, _ in pairs]], q[[index[s2] for _, s2, _ in pairs]]
    if precision == "ubinary":
        similarity = hamming_similarity(a, b)
    else:
        a, b = a.astype(np.float64), b.astype(np.float64)
        similarity = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return spearman(similarity, [float(s) for _, _, s in pairs])


def search_run(
    queries: np.ndarray, docs: np.ndarray, precision: str, calibration: np.ndarray, top_k: int, rescore: int
) -> np.ndarray:
    """Exact search of float32 ``queries`` over ``docs`` stored at ``precision`` (usearch, through
    sentence-transformers), rescored as the module docstring says -> ``(Q, top_k)`` document indices, best first."""
    # sentence-transformers: see quantize
    from sentence_transformers.util.quantization import semantic_search_usearch

    if precision == "float32":  # exact cosine on unit rows: the plain search, with no index in between
        return np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :top_k]
    results, _ = semantic_search_usearch(
        queries.astype(np.float32),
        corpus_embeddings=quantize(docs, precision, calibration),
        corpus_precision=precision,
        top_k=top_k,
        calibration_embeddings=calibration,
        rescore=True,
        rescore_multiplier=rescore,
        exact=True,
    )
    return np.array([[hit["corpus_id"] for hit in hits] for hits in results])


def precision_rows(
    encode: Encoder,
    sets: EvalSets,
    ecfg: Mapping,
    calibration_texts: Sequence[str],
    model: str,
    head: str,
    dim: int,
    batch_size: int,
) -> list[PrecisionRow]:
    """The head at every precision of ``eval.precision.precisions`` on every STS and retrieval set."""
    pcfg = ecfg.get("precision") or {}
    precisions = list(pcfg.get("precisions") or PRECISIONS)
    rescore = int(pcfg.get("rescore_multiplier") or 4)
    calibration = encode_texts(encode, list(calibration_texts), batch_size=batch_size).numpy()
    rows = [PrecisionRow(model, head, p, dim, bytes_per_vector(dim, p)) for p in precisions]
    for name, pairs in sets.sts.items():
        unique = list(dict.fromkeys(s for s1, s2, _ in pairs for s in (s1, s2)))
        vectors = dict(zip(unique, encode_texts(encode, unique, batch_size=batch_size).numpy(), strict=True))
        for row in rows:
            row.metrics[name] = sts_score(vectors, pairs, row.precision, calibration)
    for name, (corpus, queries, qrels) in sets.retrieval.items():
        wanted = list((ecfg.get("retrieval") or {})[name].get("metrics") or ["ndcg@10"])
        top_k = max(int(m.split("@")[1]) for m in wanted)
        doc_ids, query_ids = list(corpus), list(qrels)
        docs = encode_texts(encode, [corpus[d] for d in doc_ids], batch_size=batch_size).numpy()
        q = encode_texts(encode, [queries[i] for i in query_ids], batch_size=batch_size).numpy()
        for row in rows:
            found = search_run(q, docs, row.precision, calibration, min(top_k, len(doc_ids)), rescore)
            run = {qid: [doc_ids[j] for j in hits] for qid, hits in zip(query_ids, found, strict=True)}
            for metric in wanted:
                kind, k = metric.split("@")
                score = ndcg_at_k if kind == "ndcg" else recall_at_k
                row.metrics[f"{name} {metric}"] = score(run, qrels, int(k))
    return rows


def precision_table(rows: Sequence[PrecisionRow], digits: int = 4) -> str:
    """Markdown: model, head, precision, dim, bytes/vector, then one column per metric."""
    names = list(dict.fromkeys(k for r in rows for k in r.metrics))
    header = ["model", "head", "precision", "dim", "bytes/vector", *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        scores = [f"{r.metrics[n]:.{digits}f}" if n in r.metrics else "-" for n in names]
        lines.append(
            "| " + " | ".join([r.model, r.head, r.precision, str(r.dim), str(r.bytes), *scores]) + " |"
        )
    return "\n".join(lines) + "\n"


def as_json(rows: Sequence[PrecisionRow]) -> list[dict]:
    return [asdict(r) for r in rows]
