"""Where stage 4's image-caption pairs come from: a folder with a jsonl/csv index (:class:`ImageFolderPairs`) or a
``datasets`` source written once to a cache folder (:class:`HubImageCaptions`, e.g. BAAI/Infinity-MM). Each yields
``(image path, caption)`` pairs; generated shapes are in :mod:`jasper.data.shapes`."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from jasper.data.hub_files import load_mirror, local_mirror

log = logging.getLogger(__name__)
Pair = tuple[str, str]  # (image path, caption)


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
                f"no index at {self.index}: images.source.root (or eval.images.folder) must hold {self.index.name} "
                f"(rows with '{self.image_key}' and '{self.caption_key}')"
            )
        with self.index.open(encoding="utf-8", newline="") as f:
            rows: Iterator[dict] = csv.DictReader(f) if self.index.suffix == ".csv" else self._json_rows(f)
            for row in rows:
                image = str(row.get(self.image_key) or "")
                path = Path(image) if Path(image).is_absolute() else self.root / image
                yield (str(path) if image else ""), row.get(self.caption_key)

    def _json_rows(self, lines: Iterator[str]) -> Iterator[dict]:
        """The index's JSON objects; a line that is not one fails, naming the index file and the line."""
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                row = error
            if not isinstance(row, dict):
                problem = row if isinstance(row, json.JSONDecodeError) else f"a JSON {type(row).__name__}"
                raise ValueError(
                    f"{self.index}:{number} is not a JSON object ({problem}): each line of the index is one object "
                    f"with '{self.image_key}' and '{self.caption_key}'; fix or delete that line"
                )
            yield row


def _write_index(folder: Path, rows: list[dict]) -> None:
    partial = folder / "index.jsonl.tmp"
    partial.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    partial.replace(folder / "index.jsonl")  # written last and atomically: a folder with an index is complete


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


def column(row: dict, name: str) -> object:
    """``row[name]``, where a dotted name reaches into nested records: ``json.conversations`` is the
    ``conversations`` of a webdataset sample's ``.json`` member."""
    value: object = row
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


class HubImageCaptions:
    """Pairs from a ``datasets`` source (hub id or local path), streamed; the first ``max_pairs`` images are written
    to ``cache_dir`` once, then read like a folder. Columns may be dotted (:func:`column`); ``caption_column`` may
    hold a conversation (see :func:`caption_text`). Offline, or with ``mirror``, the repository's files are read
    from a local copy (:mod:`jasper.data.hub_files`). Example: BAAI/Infinity-MM (``conf/images/infinity_mm.yaml``)."""

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
        mirror: str | None = None,
    ) -> None:
        self.args = {"path": path, "name": name, "split": split, "data_dir": data_dir, "streaming": streaming}
        self.mirror = mirror  # not in the folder's key: the same pairs, wherever the files were read
        self.image_column = image_column
        self.caption_column = caption_column
        self.max_pairs = max_pairs
        key = hashlib.sha256(json.dumps([self.args, image_column, caption_column, max_pairs]).encode())
        self.folder = Path(cache_dir or "outputs/cache") / f"hub_images-{key.hexdigest()[:12]}"

    def download(self) -> Path:
        if (self.folder / "index.jsonl").is_file():
            return self.folder
        import datasets  # heavy (pyarrow, fsspec): only a hub image source that is not yet downloaded needs it

        a = self.args
        local = local_mirror(a["path"], mirror=self.mirror)
        if local is None:
            rows_in = datasets.load_dataset(**{k: v for k, v in a.items() if v is not None})
        else:
            rows_in = load_mirror(local, a["name"], a["split"], a["data_dir"], a["streaming"])
        self.folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i, row in enumerate(rows_in):
            if len(rows) >= self.max_pairs:
                break
            name = f"{i:08d}.png"
            image = column(row, self.image_column)
            try:
                if isinstance(image, dict) and image.get("bytes"):
                    (self.folder / name).write_bytes(image["bytes"])
                elif isinstance(image, Image.Image):
                    image.save(self.folder / name)
                else:
                    name = ""
            except (OSError, ValueError) as error:  # kept as a bad pair: validate_pairs counts and logs it
                log.warning("cannot write image of row %d: %s", i, error)
            rows.append({"image": name, "caption": caption_text(column(row, self.caption_column))})
        _write_index(self.folder, rows)
        return self.folder

    def __iter__(self) -> Iterator[Pair]:
        return iter(ImageFolderPairs(str(self.download())))
