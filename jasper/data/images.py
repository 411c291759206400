"""Image-caption pairs for stage 4: up-front validation, a held-out split and the DataModule.

Every source yields ``(image path, caption)`` pairs: a folder with a jsonl/csv index (:class:`ImageFolderPairs`), a
``datasets`` source written to a cache folder (:class:`HubImageCaptions`, e.g. BAAI/Infinity-MM; both in
:mod:`jasper.data.image_sources`), or generated shapes with captions that describe them (:class:`SyntheticShapes`
in :mod:`jasper.data.shapes`, the offline default). Before training, every
pair is checked (:func:`validate_pairs`): a missing, empty or undecodable image, or an empty caption, is dropped
as a *pair*, counted by reason and logged with its path, so an epoch never meets a bad file and an image never
slides against another image's caption.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from jasper.data.batching import check_full_batch
from jasper.data.image_sources import Pair
from jasper.models.vision import load_rgb

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Validation and split
# ---------------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------------
# Dataset and DataModule
# ---------------------------------------------------------------------------------------------------------------
class PairDataset(Dataset):
    """``(image path, caption)`` pairs, loaded as (transformed RGB image, caption)."""

    def __init__(self, pairs: Sequence[Pair], transform: Callable | None) -> None:
        self.pairs = list(pairs)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, str]:
        if self.transform is None:
            raise RuntimeError(
                "no image transform: give the DataModule the vision tower's preprocessing "
                "(transform=tower.transform; jasper.training.run.build does) before the loaders are built"
            )
        path, caption = self.pairs[index]
        return self.transform(load_rgb(path)), caption


class ImageCaptionDataModule(L.LightningDataModule):
    """Validated pairs, ``val_pairs`` of them held out (distinct captions), batches of
    ``{"pixels", "input_ids", "attention_mask", "captions"}``.

    ``transform``: the vision tower's preprocessing (``jasper.training.run.build`` passes it). ``tokenize``: the student's
    tokenizer for captions. ``teachers`` is accepted and ignored: in stage 4 the teacher is the student's own text
    path. ``max_pairs``: cap on the pairs read.
    """

    def __init__(
        self,
        source: object,
        val_pairs: int = 100,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        max_pairs: int | None = None,
        tokenize: Callable[[Sequence[str]], dict[str, Tensor]] | None = None,
        teachers: object | None = None,
        transform: Callable | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.val_pairs = val_pairs
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.max_pairs = max_pairs
        self.tokenize = tokenize
        self.transform = transform
        self.train_pairs: list[Pair] = []
        self.val_pairs_list: list[Pair] = []
        self.rejected: Counter = Counter()

    def setup(self, stage: str | None = None) -> None:
        if self.train_pairs:
            return
        rows = []
        for row in self.source:
            if self.max_pairs is not None and len(rows) >= self.max_pairs:
                break
            rows.append(row)
        pairs, self.rejected = validate_pairs(rows)
        if not pairs:
            raise ValueError(
                f"no usable image-caption pair in {self.source!r}: rejected {dict(self.rejected)}"
            )
        self.train_pairs, self.val_pairs_list = split_pairs(pairs, self.val_pairs, self.seed)
        log.info(
            "image-caption pairs: %d train, %d held out, %d rejected",
            len(self.train_pairs),
            len(self.val_pairs_list),
            sum(self.rejected.values()),
        )

    def collate(self, batch: list[tuple[Tensor, str]]) -> dict[str, object]:
        pixels = torch.stack([image for image, _ in batch])
        captions = [caption for _, caption in batch]
        out: dict[str, object] = {"pixels": pixels, "captions": captions}
        if self.tokenize is not None:
            tokens = self.tokenize(captions)
            out["input_ids"] = tokens["input_ids"]
            out["attention_mask"] = tokens["attention_mask"]
        return out

    def _loader(self, pairs: Sequence[Pair], shuffle: bool, batch_size: int | None = None) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            PairDataset(pairs, self.transform),
            batch_size=batch_size or self.batch_size,
            shuffle=shuffle,
            drop_last=shuffle,  # similarity losses want full batches
            num_workers=self.num_workers,
            collate_fn=self.collate,
            generator=generator,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        check_full_batch(
            len(self.train_pairs),
            self.batch_size,
            self.trainer,
            "image-caption pairs (after holding out images.val_pairs)",
            "give the stage more pairs (images.max_pairs, images.source)",
        )
        return self._loader(self.train_pairs, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_pairs_list, shuffle=False)
