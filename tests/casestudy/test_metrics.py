import math

import numpy as np
import pytest
from sklearn.metrics import ndcg_score, roc_auc_score

from cookbook import casestudy as cs

RANKED = np.array([[3, 1, 4, 0], [2, 0, 1, 3]])
TARGETS = [{1, 0}, {5}]


def test_recall_by_hand():
    # user 0: top-2 = {3, 1} holds 1 of its 2 targets; user 1's target 5 is never ranked
    assert cs.recall_at_k(RANKED, TARGETS, 2) == pytest.approx((1 / 2 + 0) / 2)
    assert cs.recall_at_k(RANKED, TARGETS, 4) == pytest.approx((2 / 2 + 0) / 2)
    # more targets than k: both of the top 2 hit, but 1 of the 3 targets is missed -> 2/3, not min(|T|, k) = 1
    assert cs.recall_at_k([[0, 1, 2, 3]], [{0, 1, 5}], 2) == pytest.approx(2 / 3, abs=1e-12)


def test_ndcg_by_hand():
    # user 0, k=2: one hit at rank 2 -> DCG = 1/log2(3); ideal: hits at ranks 1, 2 -> 1 + 1/log2(3)
    user0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert cs.ndcg_at_k(RANKED, TARGETS, 2) == pytest.approx((user0 + 0) / 2, abs=1e-12)
    # k=4: hits at ranks 2 and 4
    user0 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert cs.ndcg_at_k(RANKED, TARGETS, 4) == pytest.approx(user0 / 2, abs=1e-12)
    # more targets than k: the ideal DCG stops at k hits
    assert cs.ndcg_at_k([[9, 0, 1]], [{0, 1, 2, 3}], 2) == pytest.approx(
        (1 / math.log2(3)) / (1 + 1 / math.log2(3)), abs=1e-12)
    assert cs.ndcg_at_k([[0, 1]], [{0}], 2) == 1.0


def test_ndcg_matches_scikit_learn():
    rng = np.random.default_rng(0)
    scores = rng.random((30, 40))
    relevance = rng.random((30, 40)) < 0.1
    relevance[:, 0] = True  # every user has a target
    targets = [set(np.flatnonzero(r)) for r in relevance]
    for k in (5, 10):
        ours = cs.ndcg_at_k(cs.top_k(scores, k), targets, k)
        assert ours == pytest.approx(ndcg_score(relevance.astype(float), scores, k=k), abs=1e-9)


def test_auc_by_hand_and_against_scikit_learn():
    # positives 0.9, 0.4; negatives 0.5, 0.1: pairs won (0.9>0.5, 0.9>0.1, 0.4>0.1) = 3 of 4
    assert cs.auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1]) == 0.75
    assert cs.auc([1, 0], [0.3, 0.3]) == 0.5  # a tie counts one half
    rng = np.random.default_rng(1)
    labels = rng.random(500) < 0.3
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: many ties
    assert cs.auc(labels.astype(int), scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_top_k_and_rank_metrics():
    scores = np.array([[0.1, 0.9, 0.5, 0.5], [1.0, 0.0, 0.2, 0.3]])
    assert cs.top_k(scores, 3).tolist() == [[1, 2, 3], [0, 3, 2]]  # a tie keeps the smaller id first
    out = cs.rank_metrics(scores, [{2}, {3}], (1, 2), labels=[1, 0], pair_scores=[0.8, 0.2])
    assert out == pytest.approx({"recall@1": 0.0, "ndcg@1": 0.0, "recall@2": 1.0,
                                 "ndcg@2": 1 / math.log2(3), "auc": 1.0})


@pytest.mark.parametrize("call, match", [
    (lambda: cs.recall_at_k(RANKED, TARGETS, 5), r"ranked must be a \(users, >= k=5\)"),
    (lambda: cs.recall_at_k(RANKED, TARGETS[:1], 2), "2 ranked lists but 1 target sets"),
    (lambda: cs.ndcg_at_k(RANKED, [{1}, set()], 2), r"users \[1\] have no targets"),
    (lambda: cs.recall_at_k(RANKED, TARGETS, 0), "k must be a positive int"),
    (lambda: cs.auc([1, 1], [0.2, 0.3]), "AUC needs both classes; got 2 positives and 0 negatives"),
    (lambda: cs.auc([1, 2], [0.2, 0.3]), r"labels must be 0 or 1, got values \[2\]"),
    (lambda: cs.auc([1, 0], [0.2, float("nan")]), "scores hold NaN"),
    (lambda: cs.auc([1, 0, 1], [0.2, 0.3]), "labels and scores must be 1-d of one length"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_recall_denominator_is_every_target_not_min_of_targets_and_k():
    # issue 30's bug: |targets| capped at k. Top-2 of user 0 holds 2 of its 3 targets (2/3); user 1's top-2
    # holds 1 of its 1 (1/1); user 2's holds 2 of its 4 (1/2). By hand: (2/3 + 1 + 1/2) / 3 = 13/18.
    ranked = [[0, 1, 7], [4, 8, 9], [2, 3, 6]]
    targets = [{0, 1, 5}, {8}, {2, 3, 10, 11}]
    assert cs.recall_at_k(ranked, targets, 2) == pytest.approx(13 / 18, abs=1e-12)  # capped at k: 3/3 = 1.0


def _top_k_by_sorting(scores, k):
    """Reference: Python's sort on (-score, item id), row by row."""
    return [sorted(range(len(row)), key=lambda i: (-row[i], i))[:k] for row in np.asarray(scores).tolist()]


def test_top_k_breaks_ties_by_item_id_like_a_sort_on_score_then_id():
    rng = np.random.default_rng(2)
    scores = np.round(rng.random((3, 200)), 1)  # 11 distinct values over 200 items: long runs of ties
    for k in (1, 17, 200):  # k = the number of items is allowed
        assert cs.top_k(scores, k).tolist() == _top_k_by_sorting(scores, k)


@pytest.mark.parametrize("scores, k, match", [
    (np.zeros((2, 3)), 4, r"^scores must be a \(users, >= k=4 items\) matrix, got shape \(2, 3\)$"),
    (np.zeros(5), 2, r"^scores must be a \(users, >= k=2 items\) matrix, got shape \(5,\)$"),
    (np.zeros((2, 3)), 0, r"^k must be a positive int, got 0$"),
])
def test_top_k_bad_input(scores, k, match):
    with pytest.raises(ValueError, match=match):
        cs.top_k(scores, k)


def test_users_without_targets_are_named_first_five():
    ranked = np.arange(16).reshape(8, 2)
    targets = [set(), {2}, set(), set(), set(), set(), set(), set()]  # users 0 and 2..7 have none
    with pytest.raises(ValueError, match=r"^users \[0, 2, 3, 4, 5\] have no targets"):
        cs.recall_at_k(ranked, targets, 2)


@pytest.mark.parametrize("metric", [cs.recall_at_k, cs.ndcg_at_k])
def test_no_users_is_refused(metric):
    # a mean over no users is undefined: named, not NaN with a RuntimeWarning (recall) or max() of nothing (NDCG)
    with pytest.raises(ValueError, match="^no users: recall and NDCG are means over users, undefined for none$"):
        metric(np.zeros((0, 3), dtype=int), [], 2)


@pytest.mark.parametrize("labels, scores, match", [
    ([0, 2, 1], [0.1, 0.2, 0.3], r"^labels must be 0 or 1, got values \[2\]$"),  # 0 is a valid label
    ([0, 1, 2, 3, 4, 5, 6, 7, 8], [0.0] * 9, r"^labels must be 0 or 1, got values \[2, 3, 4, 5, 6\]$"),
    ([1, 0], [0.2, float("inf")], "^scores hold NaN or infinite values$"),
    ([1, 0], [0.2, None], "^scores hold NaN or infinite values$"),  # a missing score reads as NaN
])
def test_auc_bad_input_messages(labels, scores, match):
    with pytest.raises(ValueError, match=match):
        cs.auc(labels, scores)
