"""Image-caption pairs for stage 4: sources, up-front validation, a held-out split and the DataModule.

Every source yields ``(image path, caption)`` pairs: a folder with a jsonl/csv index (:class:`ImageFolderPairs`), a
``datasets`` source written to a cache folder (:class:`HubImageCaptions`, e.g. BAAI/Infinity-MM), or generated
shapes with captions that describe them (:class:`SyntheticShapes`, the offline default). Before training, every
pair is checked (:func:`validate_pairs`): a missing, empty or undecodable image, or an empty caption, is dropped
as a *pair*, counted by reason and logged with its path, so an epoch never meets a bad file and an image never
slides against another image's caption.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import lightning as L
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)
Pair = tuple[str, str]  # (image path, caption)


# ---------------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------------
class ImageFolderPairs:
    """Pairs from a folder: ``index`` (``.jsonl`` rows or a ``.csv`` with a header) names each image (relative to
    ``root``, or absolute) and its caption."""

    def __init__(
        self, root: str, index: str = "index.jsonl", image_key: str = "image", caption_key: str = "caption"
    ) -> None:
        self.root = Path(root).expanduser()
        self.index = self.root / index
        self.image_key = image_key
        self.caption_key = caption_key

    def __iter__(self) -> Iterator[Pair]:
        if not self.index.is_file():
            raise FileNotFoundError(
                f"no index at {self.index}: data.source.root must hold {self.index.name} "
                f"(rows with '{self.image_key}' and '{self.caption_key}')"
            )
        with self.index.open(encoding="utf-8", newline="") as f:
            if self.index.suffix == ".csv":
                rows: Iterator[dict] = csv.DictReader(f)
            else:
                rows = (json.loads(line) for line in f if line.strip())
            for row in rows:
                image = str(row.get(self.image_key) or "")
                path = Path(image) if Path(image).is_absolute() else self.root / image
                yield (str(path) if image else ""), row.get(self.caption_key)


COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 20),
    "purple": (140, 40, 180),
    "orange": (250, 140, 10),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}
BACKGROUNDS = ("white", "black", "grey")
BACKGROUND_RGB = {"white": (250, 250, 250), "black": (10, 10, 10), "grey": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle", "cross")
CELLS = (
    "top left",
    "top",
    "top right",
    "left",
    "centre",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
NUMBERS = {1: "one", 2: "two", 3: "three"}


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "cross":
        w = max(1, (x1 - x0) // 3)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle((cx - w // 2, y0, cx + w // 2, y1), fill=fill)
        draw.rectangle((x0, cy - w // 2, x1, cy + w // 2), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def describe_scene(objects: Sequence[tuple[str, str, str]], background: str) -> str:
    """Caption of ``(colour, shape, cell)`` objects: ``two red circles at the top left and the centre, ...``."""
    groups: dict[tuple[str, str], list[str]] = {}
    for colour, shape, cell in objects:
        groups.setdefault((colour, shape), []).append(cell)
    parts = []
    for (colour, shape), cells in groups.items():
        count = len(cells)
        noun = shape if count == 1 else ("crosses" if shape == "cross" else shape + "s")
        where = " and ".join(f"the {c}" for c in sorted(cells, key=CELLS.index))
        lead = "a" if count == 1 else NUMBERS[count]
        parts.append(f"{lead} {colour} {noun} at {where}")
    return ", ".join(parts) + f", on a {background} background"


def synthetic_scene(rng: random.Random, size: int) -> tuple[Image.Image, str]:
    """One image of 1-3 shapes in distinct cells of a 3x3 grid, and the caption that describes it."""
    background = rng.choice(BACKGROUNDS)
    colours = [c for c in COLOURS if c != background]
    cells = rng.sample(CELLS, rng.randint(1, 3))
    objects = [(rng.choice(colours), rng.choice(SHAPES), cell) for cell in cells]
    image = Image.new("RGB", (size, size), BACKGROUND_RGB[background])
    draw = ImageDraw.Draw(image)
    step = size / 3
    for colour, shape, cell in objects:
        row, col = divmod(CELLS.index(cell), 3)
        margin = step * rng.uniform(0.08, 0.2)
        box = (
            int(col * step + margin),
            int(row * step + margin),
            int((col + 1) * step - margin),
            int((row + 1) * step - margin),
        )
        draw_shape(draw, shape, box, COLOURS[colour])
    return image, describe_scene(objects, background)


def _write_index(folder: Path, rows: list[dict]) -> None:
    partial = folder / "index.jsonl.tmp"
    partial.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    partial.replace(folder / "index.jsonl")  # written last and atomically: a folder with an index is complete


class SyntheticShapes:
    """``count`` generated images (PNG, ``image_size`` pixels) of coloured shapes, each with a distinct caption
    naming colours, shapes, counts, positions and background; written once to ``cache_dir`` (seeded)."""

    def __init__(self, count: int = 3000, image_size: int = 64, seed: int = 0, cache_dir: str | None = None):
        self.count = count
        self.image_size = image_size
        self.seed = seed
        key = hashlib.sha256(f"shapes-v1:{count}:{image_size}:{seed}".encode()).hexdigest()[:12]
        self.folder = Path(cache_dir or "outputs/cache") / f"synthetic_shapes-{key}"

    def generate(self) -> Path:
        if (self.folder / "index.jsonl").is_file():
            return self.folder
        self.folder.mkdir(parents=True, exist_ok=True)
        rng = random.Random(self.seed)
        rows, seen = [], set()
        while len(rows) < self.count:
            image, caption = synthetic_scene(rng, self.image_size)
            if caption in seen:  # distinct captions: retrieval has exactly one right answer
                continue
            seen.add(caption)
            name = f"{len(rows):06d}.png"
            image.save(self.folder / name)
            rows.append({"image": name, "caption": caption})
        _write_index(self.folder, rows)
        log.info("%d synthetic image-caption pairs written to %s", self.count, self.folder)
        return self.folder

    def __iter__(self) -> Iterator[Pair]:
        return iter(ImageFolderPairs(str(self.generate())))


def caption_text(value: object) -> str | None:
    """A caption from a plain string or from a conversation (the first assistant turn: LLaVA/Infinity-MM style
    ``[{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        for turn in value:
            if isinstance(turn, dict) and turn.get("from", turn.get("role")) in ("gpt", "assistant"):
                text = turn.get("value", turn.get("content"))
                return text if isinstance(text, str) else None
    return None


class HubImageCaptions:
    """Pairs from a ``datasets`` source (hub id or local path), streamed; the first ``max_pairs`` images are written
    to ``cache_dir`` once, then read like a folder. ``caption_column`` may hold a conversation (see
    :func:`caption_text`). Example: BAAI/Infinity-MM (``conf/data/infinity_mm.yaml``)."""

    def __init__(
        self,
        path: str,
        name: str | None = None,
        split: str = "train",
        data_dir: str | None = None,
        image_column: str = "image",
        caption_column: str = "caption",
        max_pairs: int = 10000,
        streaming: bool = True,
        cache_dir: str | None = None,
    ) -> None:
        self.args = {"path": path, "name": name, "split": split, "data_dir": data_dir, "streaming": streaming}
        self.image_column = image_column
        self.caption_column = caption_column
        self.max_pairs = max_pairs
        key = hashlib.sha256(json.dumps([self.args, image_column, caption_column, max_pairs]).encode())
        self.folder = Path(cache_dir or "outputs/cache") / f"hub_images-{key.hexdigest()[:12]}"

    def download(self) -> Path:
        if (self.folder / "index.jsonl").is_file():
            return self.folder
        import datasets

        rows_in = datasets.load_dataset(**{k: v for k, v in self.args.items() if v is not None})
        self.folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i, row in enumerate(rows_in):
            if len(rows) >= self.max_pairs:
                break
            name = f"{i:08d}.png"
            image = row.get(self.image_column)
            try:
                if isinstance(image, dict) and image.get("bytes"):
                    (self.folder / name).write_bytes(image["bytes"])
                elif isinstance(image, Image.Image):
                    image.save(self.folder / name)
                else:
                    name = ""
            except (OSError, ValueError) as error:  # kept as a bad pair: validate_pairs counts and logs it
                log.warning("cannot write image of row %d: %s", i, error)
            rows.append({"image": name, "caption": caption_text(row.get(self.caption_column))})
        _write_index(self.folder, rows)
        return self.folder

    def __iter__(self) -> Iterator[Pair]:
        return iter(ImageFolderPairs(str(self.download())))


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
            f"data.val_pairs={count} leaves no training pair: only {len(captions)} distinct captions; lower it"
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
        from jasper.vision import load_rgb

        if self.transform is None:
            raise RuntimeError(
                "no image transform: the stage-4 module sets the vision tower's transform on the DataModule "
                "(datamodule.transform = tower.transform) before the loaders are built"
            )
        path, caption = self.pairs[index]
        return self.transform(load_rgb(path)), caption


class ImageCaptionDataModule(L.LightningDataModule):
    """Validated pairs, ``val_pairs`` of them held out (distinct captions), batches of
    ``{"pixels", "input_ids", "attention_mask", "captions"}``.

    ``transform``: the vision tower's preprocessing (set by the stage-4 module at setup). ``tokenize``: the student's
    tokenizer for captions. ``teachers`` is accepted and ignored: in stage 4 the teacher is the student's own text
    path. ``max_texts``: cap on the pairs read (the captions are the texts).
    """

    def __init__(
        self,
        source: object,
        val_pairs: int = 100,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        max_texts: int | None = None,
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
        self.max_texts = max_texts
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
            if self.max_texts is not None and len(rows) >= self.max_texts:
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
        return self._loader(self.train_pairs, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_pairs_list, shuffle=False)
