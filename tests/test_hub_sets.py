"""jasper/evaluation/hub_sets.py: the dev sets read from their hub copies equal the same sets read from local files;
``evaluate.py eval=demo`` in a clone without the dev sets ends with the table; offline without a copy, the note
names both ways to get them.

The hub copies are replayed offline: small files laid out as the hub repositories hold them (mteb's jsonl.gz STS
files, a parquet retrieval set with its README ``configs``) are written into a temporary Hugging Face cache at the
commits conf/evaluate/eval/dev.yaml pins (`jasper.models.replicas.write_snapshot`), as a first online run leaves it.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from jasper.evaluation.hub_sets import HubSetUnavailable
from jasper.evaluation.loaders import EvaluationDataError
from jasper.evaluation.runner import missing_data_note
from jasper.evaluation.sets import load_sets
from jasper.models.replicas import write_snapshot

REPO = Path(__file__).resolve().parents[1]
HUB = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "evaluate" / "eval" / "dev.yaml").hub)

STSB = [  # (score 0-5, sentence1, sentence2): the validation split, as stsb-dev.tsv would hold it
    (5.0, "A plane is taking off.", "An air plane is taking off."),
    (3.8, "A man is playing a large flute.", "A man is playing a flute."),
    (0.6, "A man is slicing a tomato.", "A dog is running in a field."),
    (2.6, "A woman is dancing.", "A man is talking."),
    (4.2, "Three men are playing chess.", "Two men are playing chess."),
    (1.4, "A cat is playing a piano.", "A man is playing a guitar."),
]
SICK = [  # (score 1-5, ...), with a stray leading space as the SemEval release has some
    (4.5, " A group of kids is playing in a yard.", "A group of children is playing in a yard."),
    (3.2, "A brown dog is attacking another animal.", "Two dogs are fighting."),
    (1.0, "A man is riding a horse.", "The kids are swimming in the pool."),
    (3.9, "A woman is cutting an onion.", "A woman is slicing an onion."),
    (2.1, "A person is folding a sheet.", "A man is playing the drums."),
]
DOCS = {  # id -> (title, text)
    "d0": ("Paris", "Paris is the capital and largest city of France."),
    "d1": ("Berlin", "Berlin is the capital of Germany."),
    "d2": ("", "The guitar is a fretted instrument with six strings."),
    "d3": ("Pasta", "Pasta is cooked in boiling salted water."),
    "d4": ("Eiffel Tower", "A wrought-iron lattice tower in Paris."),
    "d5": ("Violin", "The violin has four strings."),
    "d6": ("Rome", "Rome is the capital of Italy."),
    "d7": ("Football", "Association football is played with a round ball."),
}
QUERIES = {"q0": "capital of France", "q1": "six string instrument", "q2": "cooking pasta", "q3": "unjudged"}
QRELS = [("q0", "d0", 2), ("q0", "d4", 1), ("q1", "d2", 2), ("q1", "d5", 0), ("q2", "d3", 1)]


def _jsonl_gz(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def _sts_rows(pairs) -> list[dict]:
    return [{"sentence1": s1, "sentence2": s2, "score": score} for score, s1, s2 in pairs]


def _parquet(path: Path, columns: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


RETRIEVAL_CARD = """---
configs:
- config_name: corpus
  data_files:
  - split: test
    path: corpus/test-*
- config_name: default
  data_files:
  - split: test
    path: data/test-*
- config_name: queries
  data_files:
  - split: test
    path: queries/test-*
---
"""


def write_hub_copies(cache: Path, staging: Path) -> None:
    """The three repositories of ``eval.hub`` in the hub cache ``cache``, at their pinned commits."""
    stsb = staging / "stsb"
    _jsonl_gz(stsb / "validation.jsonl.gz", _sts_rows(STSB))
    _jsonl_gz(stsb / "train.jsonl.gz", _sts_rows([(1.0, "Not the dev split.", "Another split.")]))
    _jsonl_gz(stsb / "test.jsonl.gz", _sts_rows([(2.0, "Nor this one.", "The test split.")]))
    sickr = staging / "sickr"
    _jsonl_gz(sickr / "test.jsonl.gz", _sts_rows(SICK))
    (sickr / "README.md").write_text("---\nlicense: cc-by-nc-sa-3.0\n---\n")
    dbpedia = staging / "dbpedia"
    ids = list(DOCS)
    _parquet(
        dbpedia / "corpus" / "test-00000-of-00001.parquet",
        {"_id": ids, "title": [DOCS[i][0] for i in ids], "text": [DOCS[i][1] for i in ids]},
    )
    _parquet(
        dbpedia / "queries" / "test-00000-of-00001.parquet",
        {"_id": list(QUERIES), "text": list(QUERIES.values())},
    )
    qrels = [*QRELS, ("q2", "d-not-in-corpus", 1)]  # a judgement the corpus lacks: dropped
    _parquet(
        dbpedia / "data" / "test-00000-of-00001.parquet",
        {
            "query-id": [q for q, _, _ in qrels],
            "corpus-id": [d for _, d, _ in qrels],
            "score": [g for *_, g in qrels],
        },
    )
    (dbpedia / "README.md").write_text(RETRIEVAL_CARD)
    for name, folder in (("stsb-dev", stsb), ("sickr", sickr), ("dbpedia", dbpedia)):
        write_snapshot(cache, HUB[name]["repo"], folder, HUB[name]["revision"], repo_type="dataset")


def write_local_copies(folder: Path) -> Path:
    """The same sets as the dev folder holds them: STS TSVs and a BEIR folder."""
    for file, pairs in (("stsb-dev.tsv", STSB), ("sickr.tsv", SICK)):
        rows = "".join(f"{score}\t{s1.strip()}\t{s2.strip()}\n" for score, s1, s2 in pairs)
        (folder / file).write_text("score\tsentence1\tsentence2\n" + rows)
    beir = folder / "dbpedia-entity-5k"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, (t, x) in DOCS.items())
    )
    (beir / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items())
    )
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in QRELS)
    )
    return folder


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("hub")
    write_hub_copies(cache, tmp_path_factory.mktemp("staging"))
    return cache


def _use_cache(monkeypatch, hub: Path, datasets_cache: Path) -> None:
    """This test's Hugging Face caches (huggingface_hub and datasets read them at call time), offline."""
    import datasets.config
    import huggingface_hub.constants

    for key, value in {"HF_HUB_CACHE": hub, "HF_DATASETS_CACHE": datasets_cache, "HF_HUB_OFFLINE": 1}.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", datasets_cache)


def _demo_sets(data_dir: Path, hub=HUB) -> dict:
    """conf/evaluate/eval/demo.yaml's sets, subsets shrunk to the small copies."""
    return {
        "data_dir": str(data_dir),
        "seed": 0,
        "skip_if_missing": True,
        "sts": ["stsb-dev.tsv", {"name": "sickr", "path": "sickr.tsv", "max_pairs": 4}],
        "retrieval": [{"name": "dbpedia", "path": "dbpedia-entity-5k", "max_docs": 5}],
        "hub": hub,
    }


def test_hub_copies_read_as_the_local_files(hub_cache, tmp_path, monkeypatch):
    _use_cache(monkeypatch, hub_cache, tmp_path / "datasets")
    local = load_sets(_demo_sets(write_local_copies(tmp_path)), REPO)
    hub = load_sets(_demo_sets(tmp_path / "absent"), REPO)
    assert hub.sts == local.sts and len(hub.sts["stsb-dev"]) == len(STSB) and len(hub.sts["sickr"]) == 4
    assert hub.sts["sickr"][0].s1 == "A group of kids is playing in a yard."  # stripped, as the local file
    assert hub.retrieval == local.retrieval and "d-not-in-corpus" not in hub.retrieval["dbpedia"].qrels["q2"]
    assert hub.retrieval["dbpedia"].corpus["d2"] == DOCS["d2"][1]  # no title: the text alone
    for note, local_note, name in zip(hub.notes, local.notes, ("stsb-dev", "sickr", "dbpedia"), strict=True):
        where = f". Read from the hub, {HUB[name]['repo']}@{HUB[name]['revision'][:7]} {HUB[name]['split']} ("
        assert note.startswith(local_note) and where in note and HUB[name]["note"] in note, note
        assert "hub" not in local_note
    with pytest.raises(EvaluationDataError, match="does not exist"):  # no hub copy under that name: as before
        load_sets({**_demo_sets(tmp_path / "absent"), "retrieval": ["dbpedia-entity-5k"]}, REPO)
    # The hub's own reduction (as dbpedia-entity-5k reduces DBPedia-Entity) comes first, and the caption says so.
    small = {**HUB, "dbpedia": {**HUB["dbpedia"], "max_queries": 2, "max_docs": 6}}
    reduced = load_sets(_demo_sets(tmp_path / "absent", small), REPO)
    data = reduced.retrieval["dbpedia"]
    assert len(data.qrels) == 2 and len(data.corpus) == 5  # 2 queries in 6 docs, then demo's max_docs 5
    assert "test, its 3 judged queries and 8 docs reduced (seed 0) to 2 queries with" in reduced.notes[-1]


def test_offline_without_a_copy_the_note_names_both_ways(tmp_path, monkeypatch):
    _use_cache(monkeypatch, tmp_path / "empty-hub", tmp_path / "datasets")
    cfg = _demo_sets(tmp_path / "absent")
    note = missing_data_note({"eval": cfg}, REPO)
    assert note.startswith("note: evaluation skipped") and str(tmp_path / "absent") in note
    assert "eval.data_dir=PATH" in note and "HF_HUB_OFFLINE=0" in note
    assert (
        f"{HUB['sickr']['repo']}@{HUB['sickr']['revision'][:7]} test is not in the Hugging Face cache" in note
    )
    with pytest.raises(HubSetUnavailable, match="stsb-dev: stsb-dev.tsv is not under .*HF_HUB_OFFLINE=0"):
        load_sets(cfg, REPO)
    assert "no hub copy: eval.hub.sickr is not set" in missing_data_note({"eval": {**cfg, "hub": None}}, REPO)
    assert (
        missing_data_note({"eval": {**cfg, "skip_if_missing": False}}, REPO) is None
    )  # eval=dev: load_sets fails
    write_local_copies(tmp_path)  # the dev sets on this machine: nothing from the hub is needed
    assert missing_data_note({"eval": {**cfg, "data_dir": str(tmp_path)}}, REPO) is None


def test_evaluate_py_demo_without_the_dev_sets_ends_with_the_table(hub_cache, tiny_bert, tmp_path):
    """``evaluate.py eval=demo`` (as `make demo` runs it, offline) in a clone without ../shared/data/dev."""
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(hub_cache),
        "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    result = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            "eval=demo",
            f"eval.data_dir={tmp_path / 'no-dev-sets'}",
            "eval.sts.1.max_pairs=4",
            "eval.retrieval.0.max_docs=5",
            f"model={tiny_bert}",
            f"out_dir={tmp_path / 'out'}",
            "batch_size=8",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "evaluation skipped" not in result.stdout
    for name in ("stsb-dev", "sickr", "dbpedia"):
        assert f"Read from the hub, {HUB[name]['repo']}@{HUB[name]['revision'][:7]}" in result.stdout
    (row,) = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(row["metrics"]) == {"stsb-dev", "sickr", "dbpedia ndcg@10"}
    assert all(math.isfinite(v) for v in row["metrics"].values())
