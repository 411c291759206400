"""Image-caption pairs checked before training and split for held-out retrieval: a missing, empty or undecodable
image, or an empty caption, is dropped as a *pair*, counted by reason and logged with its path, so an epoch never
meets a bad file and an image never slides against another image's caption. Free of Lightning: evaluate.py scores
images with it without importing the trainer."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from jasper.data.image_sources import Pair

log = logging.getLogger(__name__)


def check_image(path: str) -> str | None:
    """``None`` when ``path`` decodes to an image, else the reason (``missing``, ``empty``, ``corrupt``)."""
    if not path:
        return "missing"
    file = Path(path)
    if not file.is_file():
        return "missing"
    if file.stat().st_size == 0:
        return "empty"
    try:
        with Image.open(file) as image:
            image.load()  # a full decode: a truncated file fails here, not mid-epoch
            if image.width < 1 or image.height < 1:
                return "empty"
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return "corrupt"
    return None


def validate_pairs(pairs: Sequence[tuple[object, object]]) -> tuple[list[Pair], Counter]:
    """Keep pairs whose caption is a non-empty string and whose image decodes; count and log the others (by path)."""
    kept: list[Pair] = []
    rejected: Counter = Counter()
    for path, caption in pairs:
        reason = None
        if not isinstance(caption, str) or not caption.strip():
            reason = "no caption"
        else:
            reason = check_image(str(path or ""))
        if reason is None:
            kept.append((str(path), caption.strip()))
        else:
            rejected[reason] += 1
            log.warning("image-caption pair rejected (%s): %s", reason, path or "<no image path>")
    if rejected:
        log.warning(
            "%d of %d image-caption pairs rejected: %s", sum(rejected.values()), len(pairs), dict(rejected)
        )
    return kept, rejected


def caption_key(caption: str, seed: int) -> str:
    return hashlib.blake2b(f"{seed}:{caption}".encode(), digest_size=8).hexdigest()


def split_pairs(pairs: Sequence[Pair], count: int, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """Hold out ``count`` pairs with distinct captions (chosen by a seeded hash of the caption); training keeps no
    pair whose caption is held out, so retrieval on the held-out pairs sees only unseen captions."""
    captions = sorted({c for _, c in pairs}, key=lambda c: caption_key(c, seed))
    if count >= len(captions):
        raise ValueError(
            f"images.val_pairs={count} leaves no training pair: only {len(captions)} distinct captions; lower it"
        )
    held_captions = set(captions[:count])
    held, seen, train = [], set(), []
    for path, caption in pairs:
        if caption not in held_captions:
            train.append((path, caption))
        elif caption not in seen:
            seen.add(caption)
            held.append((path, caption))
    return train, held
