"""Tests for jasper/evaluation/loaders.py: well-formed files round-trip, malformed ones fail naming file:line."""

import json
import logging
from pathlib import Path

import pytest

from jasper.evaluation.loaders import EvaluationDataError, load_beir, load_sts_tsv

DEV = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "dev"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_sts_reads_rows_and_keeps_quotes(tmp_path):
    p = write(tmp_path / "s.tsv", 'score\tsentence1\tsentence2\n4.5\tA "quoted" cat.\tA cat.\n0\tx\ty\n')
    pairs = load_sts_tsv(p)
    assert pairs == [('A "quoted" cat.', "A cat.", 4.5), ("x", "y", 0.0)]
    assert pairs[0].score == 4.5


@pytest.mark.parametrize(
    "body, line, message",
    [
        ("score\tsentence1\n", 1, "header"),
        ("score\tsentence1\tsentence2\n1.0\tonly one\n", 2, "3 tab-separated columns"),
        ("score\tsentence1\tsentence2\n1.0\ta\tb\nhigh\ta\tb\n", 3, "not a number"),
        ("score\tsentence1\tsentence2\nnan\ta\tb\n", 2, "not finite"),
        ("score\tsentence1\tsentence2\n1\t \tb\n", 2, "empty sentence"),
        ("score\tsentence1\tsentence2\n1\ta\tb\textra\n", 2, "columns"),
    ],
)
def test_sts_malformed(tmp_path, body, line, message):
    p = write(tmp_path / "bad.tsv", body)
    with pytest.raises(EvaluationDataError, match=message) as err:
        load_sts_tsv(p)
    assert f"{p}:{line}" in str(err.value)


def test_sts_missing_and_empty(tmp_path):
    with pytest.raises(EvaluationDataError, match="not found"):
        load_sts_tsv(tmp_path / "nope.tsv")
    with pytest.raises(EvaluationDataError, match="no STS pairs"):
        load_sts_tsv(write(tmp_path / "h.tsv", "score\tsentence1\tsentence2\n"))


def make_beir(root: Path, corpus=None, queries=None, qrels=None) -> Path:
    corpus = (
        corpus
        if corpus is not None
        else [
            {"_id": "d1", "title": "Cats", "text": "Cats purr."},
            {"_id": "d2", "title": "", "text": "Dogs bark."},
            {"_id": "d3", "text": "No title field."},
        ]
    )
    queries = (
        queries
        if queries is not None
        else [
            {"_id": "q1", "text": "purring animal"},
            {"_id": "q2", "text": "barking"},
            {"_id": "q3", "text": "never judged"},
        ]
    )
    qrels = qrels if qrels is not None else "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq2\td2\t1\n"
    lines = lambda rows: "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)  # noqa: E731
    write(root / "corpus.jsonl", lines(corpus))
    write(root / "queries.jsonl", lines(queries))
    write(root / "qrels" / "test.tsv", qrels)
    return root


def test_beir_reads_and_drops_unjudged_queries_with_a_log(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="jasper.evaluation.loaders"):
        data = load_beir(make_beir(tmp_path))
    corpus, queries, qrels = data
    assert corpus == {"d1": "Cats Cats purr.", "d2": "Dogs bark.", "d3": "No title field."}
    assert queries == {"q1": "purring animal", "q2": "barking"}
    assert qrels == {"q1": {"d1": 2, "d2": 0}, "q2": {"d2": 1}}
    assert "dropped 1 of 3 queries" in caplog.text


@pytest.mark.parametrize(
    "kwargs, file, line, message",
    [
        ({"corpus": [{"_id": "d1", "text": "a"}, "{not json"]}, "corpus.jsonl", 2, "bad JSON"),
        (
            {"corpus": [{"_id": "d1", "text": "a"}, {"_id": "d1", "text": "b"}]},
            "corpus.jsonl",
            2,
            "duplicate id",
        ),
        ({"corpus": [{"_id": "d1", "title": " ", "text": ""}]}, "corpus.jsonl", 1, "empty title and text"),
        ({"corpus": [{"title": "t", "text": "a"}]}, "corpus.jsonl", 1, "'_id'"),
        ({"corpus": [{"_id": "d1", "title": "t"}]}, "corpus.jsonl", 1, "'text'"),
        ({"corpus": ["[1, 2]"]}, "corpus.jsonl", 1, "JSON object"),
        ({"queries": [{"_id": "q1", "text": ""}]}, "queries.jsonl", 1, "empty text"),
        (
            {"queries": [{"_id": "q1", "text": "a"}, {"_id": "q1", "text": "b"}]},
            "queries.jsonl",
            2,
            "duplicate",
        ),
        ({"qrels": "query-id\tcorpus-id\n"}, "test.tsv", 1, "header"),
        ({"qrels": "query-id\tcorpus-id\tscore\nq1\td1\n"}, "test.tsv", 2, "columns"),
        ({"qrels": "query-id\tcorpus-id\tscore\nq1\td1\tyes\n"}, "test.tsv", 2, "not a number"),
        ({"qrels": "query-id\tcorpus-id\tscore\nq1\td1\t1.5\n"}, "test.tsv", 2, "non-negative integer"),
        ({"qrels": "query-id\tcorpus-id\tscore\nq1\td1\t-1\n"}, "test.tsv", 2, "non-negative integer"),
        ({"qrels": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td9\t1\n"}, "test.tsv", 3, "unknown corpus id"),
        ({"qrels": "query-id\tcorpus-id\tscore\nq9\td1\t1\n"}, "test.tsv", 2, "unknown query id"),
        (
            {"qrels": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t2\n"},
            "test.tsv",
            3,
            "duplicate judgement",
        ),
        ({"qrels": "query-id\tcorpus-id\tscore\n"}, "test.tsv", None, "no judgements"),
    ],
)
def test_beir_malformed(tmp_path, kwargs, file, line, message):
    root = make_beir(tmp_path, **kwargs)
    with pytest.raises(EvaluationDataError, match=message) as err:
        load_beir(root)
    where = file if line is None else f"{file}:{line}"
    assert where in str(err.value)


def test_beir_missing_folder_and_split(tmp_path):
    with pytest.raises(EvaluationDataError, match="not found"):
        load_beir(tmp_path / "nothing")
    with pytest.raises(EvaluationDataError, match="dev.tsv: file not found"):
        load_beir(make_beir(tmp_path), split="dev")


@pytest.mark.skipif(not DEV.is_dir(), reason=f"development data not found at {DEV}")
def test_dev_data_loads():
    assert len(load_sts_tsv(DEV / "stsb-dev.tsv")) == 1500
    assert len(load_sts_tsv(DEV / "sickr.tsv")) == 9840
    corpus, queries, qrels = load_beir(DEV / "dbpedia-entity-5k")
    assert (len(corpus), len(queries), sum(map(len, qrels.values()))) == (5000, 40, 3709)
