"""Solutions to the exercises of notebooks/14 (the recommender case study), each checked against an independent result."""

import numpy as np
import pytest
import torch

from cookbook import casestudy as cs
from cookbook import evaluate, profiles


def _ranking_case(seed: int, users: int = 120, items: int = 40):
    rng = np.random.default_rng(seed)
    scores = rng.random((users, items))
    targets = [set(rng.choice(items, size=rng.integers(1, 6), replace=False).tolist()) for _ in range(users)]
    return scores, targets


# Exercise 1: hit rate
def hit_rate_at_k(scores, targets, k: int) -> float:
    """Share of users with at least one of their targets among their k highest-scored items."""
    ranked = cs.top_k(scores, k)
    return float(np.mean([bool(set(row.tolist()) & set(t)) for row, t in zip(ranked, targets, strict=True)]))


def test_hit_rate_by_brute_force_and_against_recall():
    scores, targets = _ranking_case(0)
    for k in (1, 5, 10):
        brute = np.mean([any(scores[u, i] > np.sort(scores[u])[-k - 1] for i in t) if k < scores.shape[1] else True
                         for u, t in enumerate(targets)])  # a target scores above the (k+1)-th best: it is in the top k
        assert hit_rate_at_k(scores, targets, k) == pytest.approx(brute)
        assert hit_rate_at_k(scores, targets, k) >= cs.recall_at_k(cs.top_k(scores, k), targets, k)
    single = [{min(t)} for t in targets]  # one target per user: a hit is the whole recall
    assert hit_rate_at_k(scores, single, 5) == pytest.approx(cs.recall_at_k(cs.top_k(scores, 5), single, 5))


# Exercise 2: a paired bootstrap interval by hand
def bootstrap_difference(a, b, *, resamples: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of mean(b) - mean(a), resampling users (pairs stay together)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(a), (resamples, len(a)))
    diffs = b[idx].mean(1) - a[idx].mean(1)
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def test_bootstrap_by_hand_matches_the_library():
    rng = np.random.default_rng(1)
    a = rng.binomial(5, 0.3, 300) / 5  # per-user recall of model A (5 targets each)
    b = np.clip(a + rng.normal(0.05, 0.2, 300), 0, 1)  # model B: a little better, noisily
    low, high = bootstrap_difference(a, b)
    lib = evaluate.paired_bootstrap(a, b, resamples=4000, seed=0)
    assert low == pytest.approx(lib["low"], abs=0.005) and high == pytest.approx(lib["high"], abs=0.005)
    assert low < b.mean() - a.mean() < high
    # paired matters: the same values with the pairs broken give a wider interval (a and b are correlated)
    shuffled_low, shuffled_high = bootstrap_difference(rng.permutation(a), b)
    assert shuffled_high - shuffled_low > high - low


# Exercise 3: where the bytes flip from the MLP to the embedding tables
def flip_users(items: int, categories: int, dim: int, item_dim: int, hidden: tuple[int, ...]) -> int:
    """Fewest users at which cs.WideDeep's embedding tables (wide table included) outweigh its nn.Linear layers."""
    widths = [3 * dim + item_dim, *hidden, 1]
    linear = sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))
    fixed = items * item_dim + categories * dim + (categories + 1) * dim + items + (categories + 1) * categories
    per_user = dim + categories  # a user embedding row, and a wide row per (user, category)
    return max(1, (linear - fixed) // per_user + 1)


def _counts(users: int, C) -> tuple[int, int]:
    model = cs.WideDeep(users, C.items, C.categories, dim=C.dim, hidden=C.hidden,
                        item_vectors=np.ones((C.items, C.embed_dim), np.float32))
    linear = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters())
    tables = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return linear, tables


def test_flip_point_by_counting_parameters():
    C = profiles.profile("smoke").case
    users = flip_users(C.items, C.categories, C.dim, C.embed_dim, C.hidden)
    linear, tables = _counts(users, C)
    assert tables > linear
    linear, tables = _counts(users - 1, C)
    assert tables <= linear
    assert C.users < users  # the notebook's smoke model sits below the flip: nn.Linear holds most of its bytes
