"""Solutions to the exercises of notebooks/11 (distributed training), each checked against an independent result."""

import numpy as np
import pytest

from cookbook import planning


# Exercise 1: ZeRO-sharded model states per rank, by hand
def zero_gb_per_rank(params: float, stage: int, n_gpus: int, k: int = 12) -> float:
    """Mixed-precision Adam: 2 bytes of bf16 weights, 2 of bf16 gradients, K = 12 of fp32 master, momentum and
    variance per parameter. Stage 1 shards the K bytes over the ranks, stage 2 also the gradients, stage 3 all."""
    weights, grads, states = 2 * params, 2 * params, k * params
    if stage >= 1:
        states /= n_gpus
    if stage >= 2:
        grads /= n_gpus
    if stage >= 3:
        weights /= n_gpus
    return (weights + grads + states) / 1e9


def test_zero_paper_figure_1():
    # Rajbhandari et al. 2020, Figure 1: 7.5B parameters on 64 GPUs
    paper = [120, 31.4, 16.6, 1.9]
    assert [round(zero_gb_per_rank(7.5e9, s, 64), 1) for s in range(4)] == paper


@pytest.mark.parametrize("params,n_gpus", [(7.5e9, 64), (6.7e9, 8), (1e6, 3), (65e9, 1024)])
def test_zero_by_hand_equals_the_planner(params, n_gpus):
    for stage in range(4):
        planned = planning.training_memory(params, zero_stage=stage, n_gpus=n_gpus)["gpu_total"]
        assert zero_gb_per_rank(params, stage, n_gpus) == pytest.approx(planned, rel=1e-12)


def test_only_stage_3_keeps_shrinking():
    floors = [zero_gb_per_rank(7.5e9, s, 10**6) for s in (1, 2, 3)]
    assert floors[0] == pytest.approx(4 * 7.5, rel=1e-4) and floors[1] == pytest.approx(2 * 7.5, rel=1e-4)  # 4Ψ, 2Ψ
    assert floors[2] < 1e-3


# Exercise 2: a ring all-reduce, and the bytes each rank sends
def ring_all_reduce(tensors: list[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """Reduce-scatter then all-gather around a ring of N ranks, each tensor cut into N chunks. At every one of the
    2(N − 1) steps each rank sends one chunk to its right neighbour. Returns every rank's result and the bytes
    each rank sent."""
    n = len(tensors)
    chunks = [list(np.array_split(t.astype(np.float64), n)) for t in tensors]
    sent = [0] * n
    for step in range(n - 1):  # reduce-scatter: after it rank r holds the full sum of chunk (r + 1) mod n
        messages = [(r, (r - step) % n, chunks[r][(r - step) % n].copy()) for r in range(n)]
        for r, c, data in messages:
            chunks[(r + 1) % n][c] += data
            sent[r] += data.size * tensors[r].itemsize
    for step in range(n - 1):  # all-gather: pass the finished chunks around the ring
        messages = [(r, (r + 1 - step) % n, chunks[r][(r + 1 - step) % n].copy()) for r in range(n)]
        for r, c, data in messages:
            chunks[(r + 1) % n][c] = data
            sent[r] += data.size * tensors[r].itemsize
    return [np.concatenate(c) for c in chunks], sent


@pytest.mark.parametrize("n,size", [(2, 10), (4, 1000), (5, 1003), (8, 64)])
def test_ring_all_reduce_sums_and_sends_2_n_minus_1_over_n(n, size):
    rng = np.random.default_rng(n)
    grads = [rng.standard_normal(size).astype(np.float32) for _ in range(n)]
    results, sent = ring_all_reduce(grads)
    total = np.sum(grads, axis=0, dtype=np.float64)
    for result in results:
        np.testing.assert_allclose(result, total, rtol=1e-12, atol=1e-12)
    bound = 2 * (n - 1) * np.ceil(size / n) * 4  # 2(N-1) messages of at most one chunk of float32
    assert max(sent) <= bound and sum(sent) == 2 * (n - 1) * size * 4  # exactly 2(N-1)/N·Ψ per rank on average
    if size % n == 0:
        assert sent == [2 * (n - 1) * size // n * 4] * n


def test_ring_bytes_equal_the_planner_for_ddp():
    params, n = 6.7e9, 8
    per_rank = 2 * (n - 1) / n * params * 2  # bf16 gradients on the wire
    assert planning.communication_volume(params, n, 0) * 1e9 == pytest.approx(per_rank)


# Exercise 3: communication per optimizer step, by counting collectives
def step_volume(stage: int, params: float, n: int, grad_accum: int, bytes_per_value: int = 2) -> float:
    """GB a rank sends per optimizer step. A reduce-scatter or an all-gather of Ψ values sends (N−1)/N·Ψ; an
    all-reduce is one of each. DDP / ZeRO-1: one all-reduce (or reduce-scatter + all-gather of the weights) per
    step; ZeRO-2: a reduce-scatter every micro-step + one all-gather; ZeRO-3: every micro-step gathers the
    weights for forward and again for backward, and reduce-scatters the gradients."""
    one = (n - 1) / n * params * bytes_per_value / 1e9
    collectives = {0: 2, 1: 2, 2: grad_accum + 1, 3: 3 * grad_accum}[stage]
    return collectives * one


@pytest.mark.parametrize("k", [1, 4])
def test_step_volume_against_the_planner_and_the_zero_paper(k):
    for stage in range(4):
        assert step_volume(stage, 13e9, 8, k) == pytest.approx(planning.communication_volume(13e9, 8, stage,
                                                                                          grad_accum=k))
    if k == 1:  # the ZeRO paper, §7: stages 1 and 2 cost DDP's 2Ψ, stage 3 costs 1.5× that
        assert step_volume(2, 13e9, 8, 1) == step_volume(0, 13e9, 8, 1)
        assert step_volume(3, 13e9, 8, 1) == pytest.approx(1.5 * step_volume(0, 13e9, 8, 1))
