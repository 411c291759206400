"""Local text files whose bad rows are rejected and counted with their ``file:line``, not raised deep inside a
reader: `LocalFiles` is `TextFiles` with ``.jsonl`` read line by line (other formats as `TextFiles` reads them).

A JSONL line that is not valid UTF-8, not JSON, not an object, has no ``text_field`` or a value that is not a string
(a number, null, a list) becomes a `RejectedRow`; the DataModule counts it by reason and logs where the first few
were. A file whose first lines are none of them JSON objects is not JSONL at all: it fails at once, naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from jasper.data.sources import TextFiles

PROBE_LINES = 5  # a file none of whose first PROBE_LINES non-blank lines is a JSON object is not JSONL


@dataclass(frozen=True)
class RejectedRow:
    """A row a source could not read as a text: ``reason`` is its rejection count's key, ``where`` its place."""

    reason: str
    where: str


INVALID_UTF8 = "invalid UTF-8"  # a line's rejection reason when its bytes do not decode


def decoded_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """``(line number, text)`` of every non-blank line of ``path``; the text is None where the line's bytes are not
    valid UTF-8 (never replaced by U+FFFD: such a row is rejected, not trained on with a replacement character)."""
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None
                continue
            if line.strip():
                yield number, line


def _parse(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) else None


def check_jsonl(path: Path, field: str) -> None:
    """Fail naming ``path`` when it is not JSONL, or when none of its first rows has ``field``."""
    probe = []
    for _, line in decoded_lines(path):
        if line is not None:  # a line that is not UTF-8 is a bad row, counted later, not a sign of the format
            probe.append(_parse(line))
        if len(probe) == PROBE_LINES:
            break
    parsed = [row for row in probe if row is not None]
    if probe and not parsed:
        raise ValueError(
            f"{path} is not JSONL: none of its first {len(probe)} non-blank lines is a JSON object "
            '(one object per line, e.g. {"text": "..."}); fix data.source.paths'
        )
    if parsed and not any(field in row for row in parsed):
        raise KeyError(
            f"column {field!r} not in {path} (keys: {sorted(parsed[0])}); set data.source.text_field"
        )


def jsonl_texts(path: Path, field: str) -> Iterator[str | RejectedRow]:
    """``row[field]`` of every line of ``path`` that holds a string there; a `RejectedRow` for every other line
    (blank lines are skipped; a line that is not UTF-8 is rejected as ``invalid UTF-8``)."""
    for number, line in decoded_lines(path):
        where = f"{path}:{number}"
        row = _parse(line) if line is not None else None
        if line is None:
            yield RejectedRow(INVALID_UTF8, where)
        elif row is None:
            yield RejectedRow("broken JSON", where)
        elif field not in row:
            yield RejectedRow(f"no {field!r}", where)
        elif not isinstance(row[field], str):
            yield RejectedRow("non-text", where)
        else:
            yield row[field]


class LocalFiles(TextFiles):
    """`TextFiles`, with ``.jsonl`` files read line by line: every file is checked when the source is made (a file
    that is not JSONL fails then, naming it), and a bad line is a counted `RejectedRow` with its ``file:line``."""

    def __init__(self, paths, text_field: str = "text") -> None:
        super().__init__(paths, text_field)
        self.jsonl = self.paths[0].suffix == ".jsonl"
        for path in self.paths if self.jsonl else []:
            check_jsonl(path, self.text_field)

    def __iter__(self) -> Iterator[object]:
        if not self.jsonl:
            yield from super().__iter__()
            return
        for path in self.paths:
            yield from jsonl_texts(path, self.text_field)
