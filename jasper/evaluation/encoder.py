"""The one thing every evaluation needs from a model: `encode(texts) -> (N, d)` L2-normalised vectors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from jasper.models.encoders import encode_sorted

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

Encoder = Callable[[list[str]], torch.Tensor]
"""`encode(texts)` -> float tensor (len(texts), d), rows L2-normalised and aligned with `texts`.

Any model goes in the evaluation table through such a callable: the student (one per head), a teacher, or a plain
sentence-transformers model via `from_sentence_transformer`. Prompts/instructions are not the encoder's business:
the evaluation functions prepend them to the texts before calling it.
"""


def from_sentence_transformer(model: SentenceTransformer, batch_size: int = 64) -> Encoder:
    """Wrap a `SentenceTransformer` as an `Encoder` (normalised, float32 tensor on the CPU).

    Example:
        encode = from_sentence_transformer(SentenceTransformer(path))
        encode(["a cat", "a dog"]).shape  # (2, 384)
    """

    def encode(texts: list[str]) -> torch.Tensor:
        vectors = model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_tensor=True,
            show_progress_bar=False,
        )
        return vectors.float().cpu()

    return encode


def with_prompt(texts: Sequence[str], prompt: str | None) -> list[str]:
    """Prepend `prompt` verbatim (it carries its own separator, e.g. a trailing space or ": ")."""
    if prompt is None:
        return list(texts)
    return [prompt + t for t in texts]


def encode_texts(
    encode: Encoder, texts: Sequence[str], prompt: str | None = None, batch_size: int = 64
) -> torch.Tensor:
    """Call `encode` on `texts` (with `prompt` prepended) in batches; check and return (N, d) unit float32 rows.

    Texts are batched longest first (:func:`jasper.models.encoders.encode_sorted`: less padding for transformer encoders);
    rows come back in input order.

    Fails loudly when the encoder returns the wrong number of rows, not a 2-D tensor, or non-finite values.
    Rows are normalised again (cheap, and cosine similarity is what every metric here uses).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    texts = with_prompt(texts, prompt)
    if not texts:
        raise ValueError("encode_texts: no texts to encode")

    def checked(batch: list[str]) -> torch.Tensor:
        out = encode(batch)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(out)
        if out.ndim != 2 or out.shape[0] != len(batch):
            raise ValueError(
                f"encoder returned shape {tuple(out.shape)} for {len(batch)} texts; expected ({len(batch)}, d)"
            )
        return out.detach()

    vectors = encode_sorted(checked, texts, batch_size, dim=0)
    if not torch.isfinite(vectors).all():
        raise ValueError("encoder returned NaN or infinite values")
    return F.normalize(vectors, dim=-1)
