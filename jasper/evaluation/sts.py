"""Semantic textual similarity: Spearman correlation between cosine similarity and the gold score."""

from __future__ import annotations

from collections.abc import Sequence

from jasper.core.metrics import spearman
from jasper.evaluation.encoder import Encoder, encode_texts


def evaluate_sts(
    encode: Encoder,
    pairs: Sequence[tuple[str, str, float]],
    prompt: str | None = None,
    batch_size: int = 64,
) -> float:
    """Spearman(cos(e(p + s1), e(p + s2)), gold) over `pairs` of (s1, s2, score); p = `prompt` (or nothing).

    Each distinct sentence is encoded once. Example:
        evaluate_sts(encode, load_sts_tsv(dev / "stsb-dev.tsv"))  # all-MiniLM-L6-v2: ~0.87
    """
    if len(pairs) < 2:
        raise ValueError(f"evaluate_sts: needs at least 2 pairs, got {len(pairs)}")
    unique = list(dict.fromkeys(s for s1, s2, _ in pairs for s in (s1, s2)))
    index = {s: i for i, s in enumerate(unique)}
    vectors = encode_texts(encode, unique, prompt=prompt, batch_size=batch_size)  # (U, d), unit rows
    a = vectors[[index[s1] for s1, _, _ in pairs]]
    b = vectors[[index[s2] for _, s2, _ in pairs]]
    cosine = (a * b).sum(dim=-1)  # (P,)
    return spearman(cosine.double().numpy(), [float(score) for _, _, score in pairs])
