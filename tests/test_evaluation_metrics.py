"""Tests for jasper/evaluation/metrics.py against hand computations and scipy."""

import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from jasper.evaluation.metrics import (
    ndcg_at_k,
    ndcg_at_k_per_query,
    rankdata,
    recall_at_k,
    recall_at_k_per_query,
    spearman,
)


def test_rankdata_ties_get_average_rank():
    assert rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert rankdata([3, 3, 3]).tolist() == [2.0, 2.0, 2.0]


def test_spearman_hand_cases():
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # With ties: ranks x = [1, 2.5, 2.5, 4], y = [1, 2, 3, 4] -> centred x = [-1.5, 0, 0, 1.5],
    # y = [-1.5, -0.5, 0.5, 1.5]; rho = 4.5 / sqrt(4.5 * 5) = 0.948683
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))


def test_spearman_constant_is_nan_and_bad_inputs_raise():
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="differ in length"):
        spearman([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least 2"):
        spearman([1], [1])
    with pytest.raises(ValueError, match="NaN"):
        spearman([1, float("nan"), 2], [1, 2, 3])


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(-5, 5), st.floats(-3, 3, allow_nan=False, allow_subnormal=False)),
        min_size=3,
        max_size=40,
    )
)
def test_spearman_matches_scipy(rows):
    x = np.array([r[0] for r in rows], dtype=float)  # small integer range: many ties
    y = np.array([r[1] for r in rows], dtype=float)
    expected = scipy.stats.spearmanr(x, y).statistic
    got = spearman(x, y)
    if np.isnan(expected):
        assert np.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-9)


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
