"""The paper's text augmentation: some texts cut into chunks of 1-10 sentences, a few with shuffled words; and,
beyond the paper, minimal edits: a share of texts gets a twin one word away from it (deleted, swapped with its
neighbour, replaced, or negated), as sentence-similarity benchmarks such as SICK pair a sentence with its edits.
The teacher's vector of the twin shows the student how far each edit should move the meaning.

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


# Auxiliaries a negation follows ("is" -> "is not"); a text without one is negated by "not" before a word.
_AUXILIARIES = frozenset(
    "is are was were can could will would should may might must does do did has have had".split()
)
EDITS = ("delete", "swap", "substitute", "negate")


def edit_words(text: str, rng: random.Random, vocabulary: Sequence[str]) -> str:
    """``text`` one edit away: a word deleted, two neighbours swapped, a word replaced from ``vocabulary``, or negated.

    A text of one word cannot lose or swap one, so it gets a substitution or a negation."""
    words = text.split()
    kinds = EDITS if len(words) > 1 else ("substitute", "negate")
    kind = rng.choice(kinds)
    at = rng.randrange(len(words))
    if kind == "delete":
        del words[at]
    elif kind == "swap":
        at = min(at, len(words) - 2)
        words[at], words[at + 1] = words[at + 1], words[at]
    elif kind == "substitute":
        words[at] = rng.choice(vocabulary)
    else:
        auxiliary = next((i for i, w in enumerate(words) if w.lower() in _AUXILIARIES), None)
        if auxiliary is None:
            words.insert(at, "not")
        else:
            words.insert(auxiliary + 1, "not")
    return " ".join(words)


def add_edits(texts: Sequence[str], share: float, seed: int) -> list[str]:
    """Each text, followed (for ``share`` of them) by its one-word edit; the replacement words come from the texts.

    An edit that gives back a text already there (its own, or another's) is not added twice."""
    if share == 0.0:
        return list(texts)
    # Its own generator, so a run without edits keeps the chunks and shuffles it always had.
    rng = random.Random(f"edits-{seed}")
    vocabulary = sorted({w for text in texts for w in text.split()})
    seen = set(texts)
    out: list[str] = []
    for text in texts:
        out.append(text)
        if rng.random() < share:
            edited = edit_words(text, rng, vocabulary)
            if edited not in seen:
                seen.add(edited)
                out.append(edited)
    return out


def augment(
    texts: Sequence[str],
    chunk_share: float = 0.3,
    shuffle_share: float = 0.0008,
    min_sentences: int = 1,
    max_sentences: int = 10,
    seed: int = 0,
    edit_share: float = 0.0,
) -> list[str]:
    """A share of texts replaced by their sentence chunks, a share with shuffled word order, a share followed by
    a one-word edit (:func:`edit_words`, after chunking); same seed, same output."""
    checked = [("chunk_share", chunk_share), ("shuffle_share", shuffle_share), ("edit_share", edit_share)]
    for name, share in checked:
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
    return add_edits(out, edit_share, seed)
