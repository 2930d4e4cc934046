import numpy as np
import pandas as pd
import pytest
import torch

from cookbook import casestudy as cs

COUNTS = pd.DataFrame({"user_id": [0, 0, 1, 2], "item_id": [1, 2, 1, 0], "interactions": [3, 1, 2, 1]})


def test_popularity_by_hand():
    assert cs.popularity_scores(COUNTS, 4).tolist() == [1.0, 5.0, 1.0, 0.0]


def test_svd_factors_match_numpy_at_full_rank_and_are_seeded():
    dense = np.zeros((3, 4))
    dense[COUNTS["user_id"], COUNTS["item_id"]] = np.log1p(COUNTS["interactions"])
    user_f, item_f = cs.svd_factors(COUNTS, 3, 4, rank=3, seed=0)
    np.testing.assert_allclose(user_f @ item_f.T, dense, atol=1e-5)  # rank 3 of a 3 x 4 matrix: exact
    u, s, vt = np.linalg.svd(dense)
    best = (u[:, :1] * s[:1]) @ vt[:1]
    user_f, item_f = cs.svd_factors(COUNTS, 3, 4, rank=1, seed=0)
    np.testing.assert_allclose(user_f @ item_f.T, best, atol=1e-4)  # Eckart-Young: the best rank-1 approximation
    again = cs.svd_factors(COUNTS, 3, 4, rank=1, seed=0)
    assert np.array_equal(user_f, again[0])


def test_serving_benchmark_counts_calls_and_rows():
    calls = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            calls.append(tuple(x.shape))
            return x.sum(1).float()

    requests = torch.zeros(10, 7, 4, dtype=torch.long)
    out = cs.serving_benchmark(Spy(), requests, batch_requests=4, repeats=5, warmup=1)
    assert calls == [(28, 4)] * 6  # 4 requests x 7 candidates per call; 1 warm-up + 5 timed
    assert out["candidates"] == 7 and out["p99_ms"] >= out["p50_ms"] > 0
    assert out["qps"] == pytest.approx(4 / (out["p50_ms"] / 1e3))


@pytest.mark.parametrize("call, match", [
    (lambda: cs.svd_factors(COUNTS, 3, 4, rank=4), r"rank 4 exceeds min\(n_users, n_items\) = 3"),
    (lambda: cs.svd_factors(COUNTS, 2, 4, rank=1), r"user ids must lie in \[0, 2\)"),
    (lambda: cs.popularity_scores(COUNTS.drop(columns="interactions"), 4), "no column 'interactions'"),
    (lambda: cs.serving_benchmark(torch.nn.Linear(1, 1), torch.zeros(2, 3, 4), batch_requests=4),
     r"requests must be \(R >= batch_requests=4"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
