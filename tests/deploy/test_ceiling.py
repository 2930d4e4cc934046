"""deploy.generation_ceiling: the batches it times, what it asks `generate` for, and the row it returns."""

import time

import numpy as np
import pytest
import torch

from cookbook import deploy


class _Tok:
    eos_token_id = 7

    def encode(self, text, add_special_tokens=False):
        return [len(text)]  # one id per prompt, so a call's prompts can be told apart


def test_generation_ceiling_times_whole_batches_after_the_warmup(monkeypatch):
    calls, durations = [], iter([0.05, 0.05] + [0.010, 0.020, 0.030, 0.040])  # two warm-up batches, then four
    threads_seen = []

    def fake_generate(model, prompts, max_tokens, *, eos_id):
        calls.append((prompts, max_tokens, eos_id))
        threads_seen.append(torch.get_num_threads())
        time.sleep(next(durations))

    monkeypatch.setattr("cookbook.deploy.load.generate", fake_generate)
    before = torch.get_num_threads()
    row = deploy.generation_ceiling(None, _Tok(), 3, requests=10, max_tokens=5, warmup=2, threads=1)
    assert torch.get_num_threads() == before and set(threads_seen) == {1}  # restored after
    assert len(calls) == 2 + 4  # ceil(10 / 3) = 4 timed batches of 3
    expected_prompts = [[len(deploy.PROMPTS[i])] for i in range(3)]  # the load test's prompts, in its order
    assert all(c == (expected_prompts, [5, 5, 5], 7) for c in calls)
    assert row["setup"] == "ceiling (generate)" and row["concurrency"] == 3 and row["n"] == 12
    # sleeps are at least as long as asked: rates from the four timed batches, by hand, with slack for the OS
    assert 12 / 0.100 * 0.7 < row["qps"] <= 12 / 0.100
    assert np.percentile([10, 20, 30, 40], 50) <= row["p50_ms"] < 25 + 10
    assert np.percentile([10, 20, 30, 40], 99) <= row["p99_ms"] < 40 + 15


@pytest.mark.parametrize("bad", [dict(concurrency=0), dict(requests=0), dict(warmup=-1), dict(warmup=True),
                                 dict(threads=0)])
def test_generation_ceiling_bad_arguments(bad, monkeypatch):
    monkeypatch.setattr("cookbook.deploy.load.generate", lambda *a, **k: None)
    args = dict(concurrency=2, requests=4, warmup=0, threads=None) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        deploy.generation_ceiling(None, _Tok(), args.pop("concurrency"), max_tokens=1, **args)
