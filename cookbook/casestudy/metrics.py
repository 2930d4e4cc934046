"""Ranking and classification metrics of the case study: recall@k, NDCG@k (binary relevance), AUC.

    recall_at_k(ranked, targets, k), ndcg_at_k(ranked, targets, k)   # ranked: (users, >= k) item ids, best first
    auc(labels, scores)                                              # ties count one half, as scikit-learn's

Each is a mean over users of a per-user value; a user's targets are the items of the future window.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cookbook.checks import positive_int

__all__ = ["auc", "ndcg_at_k", "rank_metrics", "recall_at_k", "top_k"]


def _check(ranked, targets, k: int) -> np.ndarray:
    positive_int("k", k)
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or ranked.shape[1] < k:
        raise ValueError(f"ranked must be a (users, >= k={k}) array of item ids, got shape {ranked.shape}")
    if len(targets) != len(ranked):
        raise ValueError(f"{len(ranked)} ranked lists but {len(targets)} target sets: one per user")
    empty = [i for i, t in enumerate(targets) if len(t) == 0]
    if empty:
        raise ValueError(f"users {empty[:5]} have no targets: recall and NDCG are undefined for them; leave them out")
    return ranked[:, :k]


def _hits(ranked: np.ndarray, targets) -> np.ndarray:
    return np.array([[item in set_ for item in row] for row, set_ in zip(ranked, map(set, targets), strict=True)],
                    dtype=bool).reshape(ranked.shape)


def recall_at_k(ranked, targets, k: int) -> float:
    """Mean over users of |top-k ∩ targets| / |targets|. Shown in notebooks/14 §5."""
    ranked = _check(ranked, targets, k)
    return float(np.mean(_hits(ranked, targets).sum(1) / np.array([len(set(t)) for t in targets])))


def ndcg_at_k(ranked, targets, k: int) -> float:
    """Mean over users of DCG@k / ideal DCG@k, with DCG = Σ_r hit_r / log2(r + 1) over ranks r = 1..k and the
    ideal ranking putting min(|targets|, k) hits first. Shown in notebooks/14 §5."""
    ranked = _check(ranked, targets, k)
    discount = 1 / np.log2(np.arange(2, k + 2))
    dcg = _hits(ranked, targets) @ discount
    ideal = np.array([discount[: min(len(set(t)), k)].sum() for t in targets])
    return float(np.mean(dcg / ideal))


def auc(labels, scores) -> float:
    """Area under the ROC curve: the chance that a random positive outranks a random negative, ties counted
    one half (Mann-Whitney U / (n_pos x n_neg), from average ranks). Shown in notebooks/14 §5."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels and scores must be 1-d of one length, got shapes {labels.shape}, {scores.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got values {sorted(set(labels.tolist()) - {0, 1})[:5]}")
    if not np.isfinite(scores).all():
        raise ValueError("scores hold NaN or infinite values")
    positive = labels == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes; got {n_pos} positives and {n_neg} negatives")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def top_k(scores, k: int) -> np.ndarray:
    """Item ids of the `k` highest scores of each row of a (users, items) score matrix, best first (ties: the
    smaller item id first). Shown in notebooks/14 §5."""
    positive_int("k", k)
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] < k:
        raise ValueError(f"scores must be a (users, >= k={k} items) matrix, got shape {scores.shape}")
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def rank_metrics(scores, targets, ks, *, labels=None, pair_scores=None) -> dict[str, float]:
    """recall@k and NDCG@k for each k in `ks` from a (users, items) score matrix, plus `auc` when `labels`
    and `pair_scores` (one score per labelled pair) are given. Shown in notebooks/14 §5."""
    ks = tuple(ks)
    ranked = top_k(scores, max(ks))
    out = {}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(ranked, targets, k)
        out[f"ndcg@{k}"] = ndcg_at_k(ranked, targets, k)
    if labels is not None:
        out["auc"] = auc(labels, pair_scores)
    return out
