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
