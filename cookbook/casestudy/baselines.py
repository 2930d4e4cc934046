"""The baselines every recommender must beat, and the in-process serving measurement.

    popularity_scores(counts, n_items)                        # one score per item: its past interactions
    user_f, item_f = svd_factors(counts, n_users, n_items, rank=32)   # matrix factorisation: scores = user_f @ item_f.T
    serving_benchmark(model, requests, batch_requests=16)     # latency per call and requests per second

Popularity is the baseline a power-law catalogue makes strong. Matrix factorisation is the truncated SVD of the
log-scaled user x item interaction matrix (`torch.svd_lowrank`, randomised and seeded, on a sparse matrix).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pandas as pd
import torch

from cookbook.checks import positive_int

__all__ = ["popularity_scores", "serving_benchmark", "svd_factors"]


def _pairs(counts: pd.DataFrame, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    for column in ("user_id", "item_id", "interactions"):
        if column not in counts.columns:
            raise ValueError(f"counts has no column {column!r} (interaction_counts makes it); columns are "
                             f"{list(counts.columns)}")
    users, items = counts["user_id"].to_numpy(np.int64), counts["item_id"].to_numpy(np.int64)
    if len(users) and (users.min() < 0 or users.max() >= n_users or items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"user ids must lie in [0, {n_users}) and item ids in [0, {n_items}); got users "
                         f"{users.min()}..{users.max()}, items {items.min()}..{items.max()}")
    return users, items, counts["interactions"].to_numpy(np.float64)


def popularity_scores(counts: pd.DataFrame, n_items: int) -> np.ndarray:
    """Each item's total interactions in `counts` (float64, length n_items): the same ranking for every user.
    Shown in notebooks/14 §5."""
    positive_int("n_items", n_items)
    _, items, values = _pairs(counts, 1 << 62, n_items)
    return np.bincount(items, weights=values, minlength=n_items)


def svd_factors(counts: pd.DataFrame, n_users: int, n_items: int, rank: int = 32, *, seed: int = 0):
    """(user factors U·S, item factors V), each (n, rank) float32, of the rank-`rank` truncated SVD of the
    matrix log(1 + interactions); a user's scores are `user_f[u] @ item_f.T`. Shown in notebooks/14 §5."""
    for name, value in (("n_users", n_users), ("n_items", n_items), ("rank", rank)):
        positive_int(name, value)
    if rank > min(n_users, n_items):
        raise ValueError(f"rank {rank} exceeds min(n_users, n_items) = {min(n_users, n_items)}")
    users, items, values = _pairs(counts, n_users, n_items)
    matrix = torch.sparse_coo_tensor(np.stack([users, items]), np.log1p(values), (n_users, n_items),
                                     dtype=torch.float32, check_invariants=True).coalesce()
    with torch.random.fork_rng(devices=[]):  # svd_lowrank draws its random projection from torch's RNG
        torch.manual_seed(seed)
        u, s, v = torch.svd_lowrank(matrix, q=rank, niter=6)
    return (u * s).numpy(), v.numpy()


@torch.no_grad()
def serving_benchmark(model, requests: torch.Tensor, *, batch_requests: int, repeats: int = 20,
                      warmup: int = 2) -> dict[str, float]:
    """Score `requests` ((R, candidates, features): one user's candidate items each) `batch_requests` at a time,
    as a server that batches requests would: `warmup` untimed calls, then `repeats` timed ones, cycling through
    the requests. Returns p50/p99 latency of one call in ms and requests per second at the median
    (`batch_requests` / p50). Single process, no network. Shown in notebooks/14 §6."""
    positive_int("batch_requests", batch_requests)
    positive_int("repeats", repeats)
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup!r}")
    if requests.dim() != 3 or len(requests) < batch_requests:
        raise ValueError(f"requests must be (R >= batch_requests={batch_requests}, candidates, features), got "
                         f"shape {tuple(requests.shape)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n_batches = len(requests) // batch_requests
    batches = [requests[i * batch_requests:(i + 1) * batch_requests].flatten(0, 1).to(device)
               for i in range(n_batches)]
    times = []
    try:
        for i in range(warmup + repeats):
            start = time.perf_counter()
            model(batches[i % n_batches])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    p50 = statistics.median(times)
    p99 = float(np.percentile(times, 99))
    return {"p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "qps": batch_requests / p50,
            "candidates": int(requests.shape[1])}
