"""Stage 4's offline default: generated images of coloured shapes with captions that describe them (colours,
shapes, counts, positions, background), seeded and written once to a cache folder (:class:`SyntheticShapes`)."""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from jasper.data.image_sources import ImageFolderPairs, Pair, _write_index

log = logging.getLogger(__name__)


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
