"""Ranking and classification metrics of the case study: recall@k, NDCG@k (binary relevance), AUC (scikit-learn).

    recall_at_k(ranked, targets, k), ndcg_at_k(ranked, targets, k)   # ranked: (users, >= k) item ids, best first
    auc(labels, scores)                                              # ties count one half, as scikit-learn's

Each is a mean over users of a per-user value; a user's targets are the items of the future window.
"""

from __future__ import annotations

import numpy as np

from cookbook.checks import positive_int

__all__ = ["auc", "ndcg_at_k", "rank_metrics", "recall_at_k", "top_k"]


def _check(ranked, targets, k: int) -> np.ndarray:
    positive_int("k", k)
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or ranked.shape[1] < k:
        raise ValueError(f"ranked must be a (users, >= k={k}) array of item ids, got shape {ranked.shape}")
    if len(ranked) == 0:
        raise ValueError("no users: recall and NDCG are means over users, undefined for none")
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
    """Mean over users of DCG@k / ideal DCG@k (scikit-learn's `ndcg_score`), binary relevance: DCG = Σ_r hit_r /
    log2(r + 1) over ranks r = 1..k, the ideal ranking putting min(|targets|, k) hits first. Shown in
    notebooks/14 §5."""
    from sklearn.metrics import ndcg_score  # optional, heavy: the `casestudy` extra

    ranked = _check(ranked, targets, k)
    # one row per user over its k ranked items then its targets left out of them (scored below every ranked
    # one); a ragged tail is padded with relevance 0 at the lowest score
    rows = [list(row) + sorted(set(t) - set(row.tolist())) for row, t in zip(ranked, targets, strict=True)]
    width = max(map(len, rows))
    relevance = np.zeros((len(rows), width))
    scores = np.full((len(rows), width), -1.0)
    for i, (row, t) in enumerate(zip(rows, map(set, targets), strict=True)):
        relevance[i, :len(row)] = [item in t for item in row]
        scores[i, :k] = np.arange(k, 0, -1)
        scores[i, k:len(row)] = 0.0
    return float(ndcg_score(relevance, scores, k=k))


def auc(labels, scores) -> float:
    """Area under the ROC curve (scikit-learn's `roc_auc_score`): the chance that a random positive outranks a
    random negative, ties counted one half. Shown in notebooks/14 §5."""
    from sklearn.metrics import roc_auc_score  # optional, heavy: the `casestudy` extra

    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels and scores must be 1-d of one length, got shapes {labels.shape}, {scores.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got values {sorted(set(labels.tolist()) - {0, 1})[:5]}")
    if not np.isfinite(scores).all():
        raise ValueError("scores hold NaN or infinite values")
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes; got {n_pos} positives and {n_neg} negatives")
    return float(roc_auc_score(labels, scores))


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
