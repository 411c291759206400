"""Image-caption pairs for stage 4: the DataModule over the checked pairs and its held-out split.

Every source yields ``(image path, caption)`` pairs: a folder with a jsonl/csv index (:class:`ImageFolderPairs`), a
``datasets`` source written to a cache folder (:class:`HubImageCaptions`, e.g. BAAI/Infinity-MM; both in
:mod:`jasper.data.image_sources`), or generated shapes with captions that describe them (:class:`SyntheticShapes`
in :mod:`jasper.data.shapes`, the offline default). Before training, every pair is checked and the held-out
captions are chosen (:mod:`jasper.data.image_pairs`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from jasper.data.batching import check_full_batch
from jasper.data.image_pairs import split_pairs, validate_pairs
from jasper.data.image_sources import Pair
from jasper.models.vision import load_rgb

log = logging.getLogger(__name__)


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
