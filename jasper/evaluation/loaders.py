"""Loaders for the local evaluation files: STS pairs (TSV) and BEIR retrieval folders.

Every malformed input fails with an `EvaluationDataError` naming the file and line. Paths are always passed in
by the caller; nothing is read from the current directory.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import NamedTuple

logger = logging.getLogger(__name__)

STS_HEADER = ("score", "sentence1", "sentence2")
QRELS_HEADER = ("query-id", "corpus-id", "score")


class EvaluationDataError(ValueError):
    """An evaluation file is malformed; the message names the file and line."""


class StsPair(NamedTuple):
    s1: str
    s2: str
    score: float


class BeirData(NamedTuple):
    corpus: dict[str, str]  # doc id -> title + " " + text (just text when the title is empty)
    queries: dict[str, str]  # query id -> text (only queries with at least one judgement)
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: grade}


def _fail(path: Path, line_no: int | None, msg: str) -> EvaluationDataError:
    where = f"{path}:{line_no}" if line_no is not None else str(path)
    return EvaluationDataError(f"{where}: {msg}")


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise EvaluationDataError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise EvaluationDataError(f"{path}: not valid UTF-8 ({err})") from err
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def _tsv_rows(path: Path, header: tuple[str, ...]):
    """Yield (line number, fields) of a header-first TSV without quoting; checks header and column count."""
    lines = _read_lines(path)
    if not lines or lines[0].rstrip("\r") == "":
        raise _fail(path, 1, f"empty file; expected header {'<TAB>'.join(header)}")
    got = tuple(lines[0].rstrip("\r").split("\t"))
    if got != header:
        raise _fail(path, 1, f"header is {'<TAB>'.join(got)!r}; expected {'<TAB>'.join(header)!r}")
    for line_no, line in enumerate(lines[1:], start=2):
        fields = line.rstrip("\r").split("\t")
        if len(fields) != len(header):
            raise _fail(path, line_no, f"expected {len(header)} tab-separated columns, got {len(fields)}")
        yield line_no, fields


def _parse_score(path: Path, line_no: int, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise _fail(path, line_no, f"score {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise _fail(path, line_no, f"score {raw!r} is not finite")
    return value


def load_sts_tsv(path: str | Path) -> list[StsPair]:
    """Read an STS file `score<TAB>sentence1<TAB>sentence2` (header line, no quoting) into (s1, s2, score) rows."""
    path = Path(path)
    pairs = []
    for line_no, (raw_score, s1, s2) in _tsv_rows(path, STS_HEADER):
        score = _parse_score(path, line_no, raw_score)
        if not s1.strip() or not s2.strip():
            raise _fail(path, line_no, "empty sentence")
        pairs.append(StsPair(s1, s2, score))
    if not pairs:
        raise _fail(path, None, "no STS pairs after the header")
    return pairs


def _read_jsonl(path: Path):
    for line_no, line in enumerate(_read_lines(path), start=1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise _fail(path, line_no, f"bad JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise _fail(path, line_no, f"expected a JSON object, got {type(obj).__name__}")
        yield line_no, obj


def _get_id(path: Path, line_no: int, obj: dict, seen: dict) -> str:
    raw = obj.get("_id")
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise _fail(path, line_no, f"missing or invalid '_id' ({raw!r})")
    doc_id = str(raw)
    if not doc_id.strip():
        raise _fail(path, line_no, "empty '_id'")
    if doc_id in seen:
        raise _fail(path, line_no, f"duplicate id {doc_id!r}")
    return doc_id


def _get_str(path: Path, line_no: int, obj: dict, key: str, required: bool) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise _fail(path, line_no, f"field {key!r} must be a string, got {value!r}")
    return value


def load_beir(folder: str | Path, split: str = "test") -> BeirData:
    """Read a BEIR folder: `corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`.

    corpus: {id: title + " " + text} (just the text when the title is empty or missing); queries: {id: text};
    qrels: {query id: {doc id: grade}}. Queries without any judgement are dropped (BEIR convention) and the
    number dropped is logged. Raises `EvaluationDataError` on missing columns, non-integer or negative grades,
    duplicate ids or judgements, empty texts, judgements for unknown documents or queries, and bad JSON.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationDataError(f"{folder}: BEIR folder not found")

    corpus_path = folder / "corpus.jsonl"
    corpus: dict[str, str] = {}
    for line_no, obj in _read_jsonl(corpus_path):
        doc_id = _get_id(corpus_path, line_no, obj, corpus)
        title = _get_str(corpus_path, line_no, obj, "title", required=False).strip()
        text = _get_str(corpus_path, line_no, obj, "text", required=True).strip()
        full = f"{title} {text}" if title and text else (title or text)
        if not full:
            raise _fail(corpus_path, line_no, f"document {doc_id!r} has empty title and text")
        corpus[doc_id] = full
    if not corpus:
        raise _fail(corpus_path, None, "empty corpus")

    queries_path = folder / "queries.jsonl"
    queries: dict[str, str] = {}
    for line_no, obj in _read_jsonl(queries_path):
        qid = _get_id(queries_path, line_no, obj, queries)
        text = _get_str(queries_path, line_no, obj, "text", required=True).strip()
        if not text:
            raise _fail(queries_path, line_no, f"query {qid!r} has empty text")
        queries[qid] = text

    qrels_path = folder / "qrels" / f"{split}.tsv"
    qrels: dict[str, dict[str, int]] = {}
    for line_no, (qid, doc_id, raw_grade) in _tsv_rows(qrels_path, QRELS_HEADER):
        grade_f = _parse_score(qrels_path, line_no, raw_grade)
        if grade_f != int(grade_f) or grade_f < 0:
            raise _fail(qrels_path, line_no, f"grade {raw_grade!r} is not a non-negative integer")
        if qid not in queries:
            raise _fail(qrels_path, line_no, f"unknown query id {qid!r} (not in {queries_path.name})")
        if doc_id not in corpus:
            raise _fail(qrels_path, line_no, f"unknown corpus id {doc_id!r} (not in {corpus_path.name})")
        judged = qrels.setdefault(qid, {})
        if doc_id in judged:
            raise _fail(qrels_path, line_no, f"duplicate judgement for ({qid!r}, {doc_id!r})")
        judged[doc_id] = int(grade_f)
    if not qrels:
        raise _fail(qrels_path, None, "no judgements")

    dropped = len(queries) - len(qrels)
    if dropped:
        logger.warning(
            "%s: dropped %d of %d queries without judgements in %s", folder, dropped, len(queries), split
        )
    queries = {qid: text for qid, text in queries.items() if qid in qrels}
    return BeirData(corpus, queries, qrels)
