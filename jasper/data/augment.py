"""The paper's text augmentation: some texts cut into chunks of 1-10 sentences, a few with shuffled words.

Applied once, before the teachers encode, so teacher and student always see the same string.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def chunk_sentences(
    text: str, rng: random.Random, min_sentences: int = 1, max_sentences: int = 10
) -> list[str]:
    """Cut ``text`` into consecutive chunks of ``min..max`` sentences each; every sentence lands in one chunk."""
    sentences = split_sentences(text)
    chunks = []
    start = 0
    while start < len(sentences):
        size = rng.randint(min_sentences, max_sentences)
        chunks.append(" ".join(sentences[start : start + size]))
        start += size
    return chunks or [text]


def shuffle_words(text: str, rng: random.Random) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def augment(
    texts: Sequence[str],
    chunk_share: float = 0.3,
    shuffle_share: float = 0.0008,
    min_sentences: int = 1,
    max_sentences: int = 10,
    seed: int = 0,
) -> list[str]:
    """A share of texts replaced by their sentence chunks, a share with shuffled word order; same seed, same output."""
    for name, share in [("chunk_share", chunk_share), ("shuffle_share", shuffle_share)]:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"data.augment.{name}={share} must be a share between 0 and 1")
    if not 1 <= min_sentences <= max_sentences:
        raise ValueError(
            f"data.augment needs 1 <= min_sentences <= max_sentences, got {min_sentences}, {max_sentences}"
        )
    rng = random.Random(seed)
    out: list[str] = []
    for text in texts:
        pieces = (
            chunk_sentences(text, rng, min_sentences, max_sentences) if rng.random() < chunk_share else [text]
        )
        out.extend(shuffle_words(p, rng) if rng.random() < shuffle_share else p for p in pieces)
    return out
