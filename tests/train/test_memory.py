"""Measured training memory: saved activations, micro-batch sweep, checkpointing, batch-size finder."""

import pytest
import torch

from cookbook import models
from cookbook.train import memory


def test_saved_activation_bytes_by_hand():
    a = torch.randn(1000, requires_grad=True)
    b = torch.randn(1000, requires_grad=True)
    out, nbytes = memory.saved_activation_bytes(lambda: (a * b).sum())
    assert nbytes == 2 * 1000 * 4  # mul keeps both inputs (4 bytes each); sum keeps none
    _, nbytes = memory.saved_activation_bytes(lambda: (a * b).sum(), exclude=[b])
    assert nbytes == 1000 * 4
    _, nbytes = memory.saved_activation_bytes(lambda: (a * a).sum())
    assert nbytes == 1000 * 4  # the same storage saved twice counts once
    out.backward()
    assert torch.equal(a.grad, b)


@pytest.fixture(scope="module")
def tiny():
    return models.build("tiny", 64, seed=0)


def test_activations_grow_linearly_with_batch_and_checkpointing_cuts_them(tiny):
    table = memory.sweep(tiny, [1, 2, 4], 32)
    plain = table[~table["checkpointing"]].set_index("batch_size")["activations_mb"]
    ckpt = table[table["checkpointing"]].set_index("batch_size")["activations_mb"]
    assert plain[4] == pytest.approx(4 * plain[1], rel=0.15)  # per-example activations dominate
    assert (ckpt < plain / 3).all()
    assert table["peak_mb"].isna().all()  # no CUDA allocator on CPU
    assert not tiny.model.gradient_checkpointing  # the sweep leaves the model as it found it
    assert all(p.grad is None for p in tiny.parameters())


def test_step_cost_rejects_bad_sizes(tiny):
    with pytest.raises(ValueError, match="batch_size"):
        memory.step_cost(tiny, 0, 16)


def _fake_step(limit):
    calls = []

    def step(n):
        calls.append(n)
        if n > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        return {"activations_mb": float(n)}

    return step, calls


@pytest.mark.parametrize("limit", [1, 5, 37, 64, 100])
def test_finder_returns_the_largest_batch_that_fits(limit):
    step, calls = _fake_step(limit)
    found, attempts = memory.find_batch_size(step, max_batch=100)
    assert found == limit
    assert attempts["batch_size"].tolist() == calls
    assert len(calls) <= 2 * 7 + 1  # doubling then bisection: logarithmic, not a linear scan


def test_finder_errors_when_nothing_fits():
    step, _ = _fake_step(0)
    with pytest.raises(RuntimeError, match="even a batch of 1"):
        memory.find_batch_size(step)
    with pytest.raises(ValueError, match="start"):
        memory.find_batch_size(step, start=0)


def test_budget_turns_measured_activations_into_out_of_memory(tiny):
    one = memory.step_cost(tiny, 1, 32)["activations_mb"]
    step = memory.with_budget(lambda n: memory.step_cost(tiny, n, 32), budget_mb=3.5 * one)
    found, attempts = memory.find_batch_size(step, max_batch=16)
    assert found == 3 and attempts["fits"].tolist() == [True, True, False, True]  # 1, 2, 4 (too big), 3
