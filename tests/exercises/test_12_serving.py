"""Solutions to the exercises of notebooks/12 (export and serving), each checked against an independent result."""

import math
import types

import numpy as np
import prometheus_client
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from cookbook import deploy


# Exercise 1: p99 from a latency list
def percentile(latencies_ms, q: float) -> float:
    """The q-th percentile with linear interpolation between the two nearest ranks (numpy's default method)."""
    xs = sorted(latencies_ms)
    rank = q / 100 * (len(xs) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (rank - lo) * (xs[hi] - xs[lo])


@pytest.mark.parametrize("n", [1, 2, 7, 100, 501])
def test_percentile_equals_numpy(n):
    latencies = np.random.default_rng(n).lognormal(3.5, 0.4, n).tolist()  # long right tail, like real latencies
    for q in (50, 90, 99):
        assert percentile(latencies, q) == pytest.approx(np.percentile(latencies, q), rel=1e-12)


def test_p99_of_one_slow_request_in_a_hundred():
    latencies = [10.0] * 99 + [500.0]  # p99 sits between the 99th and the 100th value: 10 + 0.01 * 490
    assert percentile(latencies, 99) == pytest.approx(14.9)
    assert percentile(latencies, 50) == 10.0  # the median never sees the slow one


# Exercise 2: the largest micro-batch a KV-cache budget allows
def cached_positions(prompt_lengths, max_tokens) -> int:
    """Positions the KV cache holds at its largest in one `deploy.generate` call: every row is left-padded to the
    longest prompt and the cache grows by one column per step; the last token is chosen without a forward."""
    return len(prompt_lengths) * (max(prompt_lengths) + max(max_tokens) - 1)


def largest_batch(queue, budget: int) -> int:
    """How many requests from the head of `queue` [(prompt length, max_tokens)] fit in `budget` cached positions."""
    batch = 0
    while batch < len(queue) and cached_positions(*zip(*queue[:batch + 1], strict=True)) <= budget:
        batch += 1
    return batch


class _CountingModel(torch.nn.Module):
    """A stand-in causal LM that never emits end-of-text and records the attention mask of every forward: the
    mask spans exactly the positions cached so far plus the new one."""

    def __init__(self, vocab: int = 11):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.masks = vocab, []

    def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=True):
        self.masks.append(tuple(attention_mask.shape))
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., 1] = 1.0  # always token 1; end-of-text is 0
        return types.SimpleNamespace(logits=logits, past_key_values=None)


@pytest.mark.parametrize(("prompts", "max_tokens"), [([3], [1]), ([3, 5, 2], [4, 1, 6]), ([1] * 4, [8] * 4)])
def test_cached_positions_match_generate(prompts, max_tokens):
    model = _CountingModel()
    out = deploy.generate(model, [[2] * n for n in prompts], max_tokens, eos_id=0)
    assert [len(g.tokens) for g in out] == max_tokens
    batch, width = max(model.masks, key=lambda shape: shape[1])
    assert cached_positions(prompts, max_tokens) == batch * width


def test_largest_batch_by_search():
    queue = [(20, 8), (12, 8), (40, 16), (8, 8), (30, 4)]
    for budget in (0, 27, 54, 100, 165, 220, 275, 10_000):
        fits = [b for b in range(len(queue) + 1)
                if b == 0 or cached_positions(*zip(*queue[:b], strict=True)) <= budget]
        assert largest_batch(queue, budget) == max(fits)  # the cost only grows with the batch: the prefix test is exact
    assert largest_batch(queue, 27) == 1 and largest_batch(queue, 54) == 2  # one long prompt pads every row


# Exercise 3: the guide's histogram_quantile by hand
def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus's estimate from cumulative bucket counts {upper edge: count} (the last edge +Inf): find the bucket
    the q-th observation falls in and interpolate linearly inside it (the first bucket starts at 0)."""
    edges = sorted(buckets)
    total = buckets[edges[-1]]
    rank = q * total
    lower_edge, lower_count = 0.0, 0.0
    for edge in edges:
        if buckets[edge] >= rank:
            if math.isinf(edge):
                return lower_edge  # Prometheus returns the highest finite edge
            return lower_edge + (edge - lower_edge) * (rank - lower_count) / (buckets[edge] - lower_count)
        lower_edge, lower_count = edge, buckets[edge]
    raise ValueError("empty histogram")


def _service_buckets(latencies_s) -> dict[float, float]:
    """The cumulative buckets the service exports for these latencies, through prometheus_client's text format."""
    registry = prometheus_client.CollectorRegistry()
    histogram = prometheus_client.Histogram("inference_latency_seconds", "test", buckets=deploy.LATENCY_BUCKETS,
                                            registry=registry)
    for seconds in latencies_s:
        histogram.observe(seconds)
    text = prometheus_client.generate_latest(registry).decode()
    return {float(s.labels["le"]): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name.endswith("_bucket")}


def test_histogram_quantile_lands_in_the_bucket_of_the_exact_p99():
    latencies = np.random.default_rng(0).lognormal(math.log(0.04), 0.5, 2000)
    estimate = histogram_quantile(0.99, _service_buckets(latencies))
    exact = np.quantile(latencies, 0.99)
    edges = (0.0, *deploy.LATENCY_BUCKETS)
    k = next(i for i, edge in enumerate(edges) if exact <= edge)
    assert edges[k - 1] <= estimate <= edges[k]


def test_histogram_quantile_is_exact_for_evenly_spread_observations():
    # 100 observations spread evenly inside (0.05, 0.075]: interpolation puts the 99th at 0.05 + 0.99 * 0.025
    latencies = 0.05 + 0.025 * (np.arange(100) + 0.5) / 100
    assert histogram_quantile(0.99, _service_buckets(latencies)) == pytest.approx(0.05 + 0.99 * 0.025)
    assert histogram_quantile(0.5, {0.1: 0.0, 0.2: 10.0, math.inf: 10.0}) == pytest.approx(0.15)
    assert histogram_quantile(0.99, {0.1: 5.0, math.inf: 10.0}) == 0.1  # beyond the last finite edge
