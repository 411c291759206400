"""Tests for the metrics evaluation reports: `spearman` (jasper/core/metrics.py, scipy underneath) and nDCG@k /
recall@k (jasper/evaluation/retrieval.py, pytrec_eval underneath): our checks, hand computations, and the plain
trec_eval definitions on random graded runs."""

import math
import random
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jasper.core.metrics import spearman
from jasper.evaluation.retrieval import ndcg_at_k, ndcg_at_k_per_query, recall_at_k, recall_at_k_per_query


def test_spearman_hand_cases():
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # With ties: ranks x = [1, 2.5, 2.5, 4], y = [1, 2, 3, 4] -> centred x = [-1.5, 0, 0, 1.5],
    # y = [-1.5, -0.5, 0.5, 1.5]; rho = 4.5 / sqrt(4.5 * 5) = 0.948683
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))


def test_spearman_constant_is_nan_without_a_warning_and_bad_inputs_raise():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's ConstantInputWarning must not leak
        assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
        assert math.isnan(spearman([1, 2, 3], [5.0, 5.0, 5.0]))
    with pytest.raises(ValueError, match="differ in length"):
        spearman([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least 2"):
        spearman([1], [1])
    with pytest.raises(ValueError, match="NaN"):
        spearman([1, float("nan"), 2], [1, 2, 3])
    with pytest.raises(ValueError, match="infinite"):
        spearman([1, 2, 3], [1, float("inf"), 2])


QRELS = {"q": {"a": 2, "b": 1, "c": 0}}


def test_ndcg_hand_case():
    # run c, a: DCG@2 = 0/log2(2) + 2/log2(3); ideal 2, 1: IDCG@2 = 2/log2(2) + 1/log2(3)
    expected = (2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert ndcg_at_k({"q": ["c", "a", "b"]}, QRELS, 2) == pytest.approx(expected)
    # k=3 adds b at rank 3; ideal has 2, 1, 0
    dcg3 = 2 / math.log2(3) + 1 / math.log2(4)
    idcg3 = 2 + 1 / math.log2(3)
    assert ndcg_at_k({"q": ["c", "a", "b"]}, QRELS, 3) == pytest.approx(dcg3 / idcg3)
    assert ndcg_at_k({"q": ["a", "b", "c"]}, QRELS, 3) == pytest.approx(1.0)


def test_ndcg_ideal_uses_all_judged_grades_not_only_retrieved():
    # Only "b" (grade 1) is retrieved; the ideal still counts "a" (grade 2) even though it was not retrieved.
    got = ndcg_at_k({"q": ["b", "x"]}, QRELS, 2)
    assert got == pytest.approx(1.0 / (2 + 1 / math.log2(3)))


def test_ndcg_unjudged_and_grade_zero_are_non_relevant_and_mean_over_queries():
    qrels = {"q1": {"a": 1}, "q2": {"a": 0, "b": 1}, "q3": {"z": 0}}
    run = {"q1": ["x", "a"], "q2": ["a", "b"], "q3": ["z"]}
    per = ndcg_at_k_per_query(run, qrels, 10)
    assert per["q1"] == pytest.approx(1 / math.log2(3))
    assert per["q2"] == pytest.approx(1 / math.log2(3))
    assert per["q3"] == 0.0  # no relevant doc: 0 (trec_eval)
    assert ndcg_at_k(run, qrels, 10) == pytest.approx(2 / math.log2(3) / 3)
    # A judged query missing from the run counts as 0.
    assert ndcg_at_k({"q1": ["a"]}, {"q1": {"a": 1}, "q2": {"b": 1}}, 10) == pytest.approx(0.5)


def test_recall_hand_case():
    assert recall_at_k({"q": ["c", "a", "x"]}, QRELS, 2) == pytest.approx(0.5)
    assert recall_at_k({"q": ["c", "a", "b"]}, QRELS, 3) == pytest.approx(1.0)
    assert recall_at_k({"q": ["c"]}, QRELS, 10) == 0.0
    per = recall_at_k_per_query({"q1": ["a"], "q2": ["b"]}, {"q1": {"a": 1, "b": 1}, "q2": {"b": 0}}, 5)
    assert per == {"q1": 0.5, "q2": 0.0}


def test_bad_k_and_empty_qrels_raise():
    with pytest.raises(ValueError, match="positive integer"):
        ndcg_at_k({"q": ["a"]}, QRELS, 0)
    with pytest.raises(ValueError, match="empty"):
        recall_at_k({}, {}, 10)


def test_ndcg_and_recall_keep_the_run_order_on_what_would_be_score_ties():
    # pytrec_eval ranks by score and breaks ties by document id (descending): the wrapper must keep our order.
    qrels = {"q": {"a": 1}}
    assert ndcg_at_k({"q": ["a", "b", "c"]}, qrels, 1) == 1.0
    assert ndcg_at_k({"q": ["c", "b", "a"]}, qrels, 1) == 0.0
    assert recall_at_k({"q": ["a", "z"]}, qrels, 1) == 1.0


def test_empty_rankings_unjudged_queries_and_repeated_documents():
    qrels = {"q1": {"a": 1}, "q2": {}, "q3": {"b": 2}}
    run = {"q1": [], "q2": ["a"], "q3": ["b"], "other": ["a"]}
    assert ndcg_at_k_per_query(run, qrels, 10) == {"q1": 0.0, "q2": 0.0, "q3": 1.0}
    assert recall_at_k_per_query(run, qrels, 10) == {"q1": 0.0, "q2": 0.0, "q3": 1.0}
    with pytest.raises(ValueError, match="more than once"):
        ndcg_at_k({"q1": ["a", "b", "a"]}, qrels, 10)


def test_docstring_example():
    assert ndcg_at_k({"q": ["c", "a"]}, QRELS, 2) == pytest.approx(0.480, abs=5e-4)


def plain_ndcg(ranking, judged, k):
    """trec_eval's ndcg_cut.k written out (the definition in the docstring)."""
    dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]))
    ideal = sorted(judged.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def plain_recall(ranking, judged, k):
    relevant = {d for d, g in judged.items() if g > 0}
    return len(set(ranking[:k]) & relevant) / len(relevant) if relevant else 0.0


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 3, 10, 100]))
def test_ndcg_and_recall_equal_the_plain_definitions_on_random_graded_runs(seed, k):
    """Graded judgements (0, 1, 2), unjudged documents, judged queries missing from the run, run queries without
    judgements; equal to 1e-12 (measured: bitwise equal to the former hand-written version)."""
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(rng.randint(5, 200))]
    qrels, run = {}, {}
    for q in range(rng.randint(1, 12)):
        qrels[f"q{q}"] = {
            d: rng.choice([0, 1, 1, 2]) for d in rng.sample(docs, rng.randint(0, min(30, len(docs))))
        }
        if rng.random() > 0.1:
            run[f"q{q}"] = rng.sample(docs, rng.randint(0, min(150, len(docs))))
    run["unjudged"] = docs[:3]
    ndcg, recall = ndcg_at_k_per_query(run, qrels, k), recall_at_k_per_query(run, qrels, k)
    for qid, judged in qrels.items():
        assert ndcg[qid] == pytest.approx(plain_ndcg(run.get(qid, []), judged, k), abs=1e-12)
        assert recall[qid] == pytest.approx(plain_recall(run.get(qid, []), judged, k), abs=1e-12)
    assert ndcg_at_k(run, qrels, k) == pytest.approx(sum(ndcg.values()) / len(qrels), abs=1e-15)
