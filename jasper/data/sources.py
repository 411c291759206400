"""Where training texts come from: a shipped offline corpus, local files, or any `datasets` source.

A source is an iterable of raw rows (anything); the DataModule decides what counts as a usable text and counts
what it rejects, so no source can slip an empty or non-text row into a model.
"""

from __future__ import annotations

import ast
import inspect
import logging
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from jasper.data.hub_files import load_mirror, local_mirror

log = logging.getLogger(__name__)

# Folders of the standard library that hold tests, demos or vendored code rather than documentation.
_SKIP_PARTS = {
    "test",
    "tests",
    "idle_test",
    "site-packages",
    "dist-packages",
    "lib2to3",
    "__pycache__",
    "turtledemo",
}


class PythonDocstrings:
    """Docstrings of the installed Python standard library: English technical prose that every machine has.

    Module, class and function docstrings, cleaned with ``inspect.cleandoc``, in a fixed file order, so the same
    Python version always yields the same corpus. No network, no download.
    """

    def __init__(self, min_chars: int = 64, root: str | None = None) -> None:
        self.min_chars = min_chars
        self.root = Path(root or sysconfig.get_paths()["stdlib"])
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"Python standard library not found at {self.root}; set +data.source.root=PATH"
            )

    def __iter__(self) -> Iterator[str]:
        for path in sorted(self.root.rglob("*.py")):
            if _SKIP_PARTS & set(path.relative_to(self.root).parts):
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue  # a few stdlib files are deliberately invalid (test fixtures, other encodings)
            for node in ast.walk(tree):
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                    doc = ast.get_docstring(node, clean=False)
                    if doc and len(doc) >= self.min_chars:
                        yield inspect.cleandoc(doc)


class TextFiles:
    """Local files: ``.txt`` (one text per line), ``.jsonl``/``.json``, ``.parquet`` or ``.csv`` (column ``text_field``)."""

    FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}

    def __init__(self, paths: Sequence[str], text_field: str = "text") -> None:
        if isinstance(paths, str):
            paths = [paths]
        self.paths = [Path(p).expanduser() for p in paths]
        missing = [str(p) for p in self.paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"data file(s) not found: {missing}; fix data.source.paths")
        suffixes = {p.suffix for p in self.paths}
        unknown = suffixes - set(self.FORMATS)
        if unknown or len(suffixes) != 1:
            raise ValueError(
                f"data.source.paths must share one format out of {sorted(self.FORMATS)}, got suffixes {sorted(suffixes)}"
            )
        self.format = self.FORMATS[suffixes.pop()]
        self.text_field = text_field

    def __iter__(self) -> Iterator[object]:
        from datasets import load_dataset  # heavy (pyarrow): only this source needs it

        dataset = load_dataset(self.format, data_files=[str(p) for p in self.paths], split="train")
        field = self.text_field if self.format != "text" else "text"
        if field not in dataset.column_names:
            raise KeyError(
                f"column {field!r} not in {self.paths[0]} (columns: {dataset.column_names}); set data.source.text_field"
            )
        yield from dataset[field]


class HubDataset:
    """Any `datasets` source by name (e.g. ``HuggingFaceFW/fineweb-edu``), streamed where the source allows.

    Reads the hub; offline (``HF_HUB_OFFLINE=1``) the repository's copy in the Hugging Face cache, or the folder
    ``mirror`` names (its files in the repository's layout, an ``hf download`` of it), config ``name`` found by the
    dataset card (:mod:`jasper.data.hub_files`). ``max_rows`` bounds what is read.
    """

    def __init__(
        self,
        path: str,
        name: str | None = None,
        split: str = "train",
        text_field: str = "text",
        streaming: bool = True,
        max_rows: int | None = None,
        revision: str | None = None,
        mirror: str | None = None,
    ) -> None:
        self.path, self.name, self.split, self.mirror = path, name, split, mirror
        self.text_field, self.streaming, self.max_rows, self.revision = (
            text_field,
            streaming,
            max_rows,
            revision,
        )

    def __iter__(self) -> Iterator[object]:
        from datasets import load_dataset  # heavy (pyarrow): only a hub source needs it

        folder = local_mirror(self.path, self.revision, self.mirror)
        if folder is None:
            dataset = load_dataset(
                self.path, self.name, split=self.split, streaming=self.streaming, revision=self.revision
            )
        else:
            dataset = load_mirror(folder, self.name, self.split, None, self.streaming)
        for index, row in enumerate(dataset):
            if self.max_rows is not None and index >= self.max_rows:
                return
            if self.text_field not in row:
                raise KeyError(
                    f"column {self.text_field!r} not in {self.path} (columns: {list(row)}); set data.source.text_field"
                )
            yield row[self.text_field]


def python_roots() -> list[Path]:
    """The standard library and the site-packages of the running interpreter."""
    paths = sysconfig.get_paths()
    return sorted({Path(paths[k]) for k in ("stdlib", "purelib", "platlib") if Path(paths[k]).is_dir()})


# Besides _SKIP_PARTS: test helpers and vendored copies inside installed packages.
_PACKAGE_SKIP_PARTS = {
    "test",
    "tests",
    "testing",
    "idle_test",
    "__pycache__",
    "turtledemo",
    "lib2to3",
    "_vendor",
    "vendor",
}


def docstring_texts(roots: Sequence[Path]) -> Iterator[str]:
    """Prose paragraphs (blank-line separated) of module, class and function docstrings under ``roots``."""
    files = sorted(
        path
        for root in roots
        for path in root.rglob("*.py")
        if not _PACKAGE_SKIP_PARTS & set(path.relative_to(root).parts[:-1])
    )
    for path in tqdm(files, desc="docstrings", unit="file", mininterval=2.0):
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError):
            continue  # fixtures in other encodings or Python versions: not ours to read
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    yield from doc.split("\n\n")
