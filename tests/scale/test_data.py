"""cookbook.scale.data: the ranks of a step see exactly the sequences one process sees, on any world size."""

import pytest
import torch

from cookbook.scale import data


def _ids(batches):
    """The first token of every sequence of a list of micro-batches (the counting data starts at random ids)."""
    return sorted(tuple(row.tolist()) for b in batches for row in b["input_ids"])


def test_grad_accum_makes_up_the_global_batch():
    assert data.grad_accum(32, 2, 4) == 4  # 4 ranks x 4 micro-steps x 2 sequences
    assert data.grad_accum(8, 8, 1) == 1
    with pytest.raises(ValueError, match="global_batch 12 is not a multiple of micro_batch x world_size = 2 x 4"):
        data.grad_accum(12, 2, 4)
    with pytest.raises(ValueError, match="micro_batch must be a positive int, got 0"):
        data.grad_accum(8, 0, 1)


@pytest.mark.parametrize("world_size, micro_batch", [(2, 2), (4, 1), (2, 4)])
def test_ranks_of_a_step_share_out_the_single_process_batch(world_size, micro_batch):
    dataset = data.ragged_counting(70, 12, 50, seed=3)  # 70 // 8 = 8 steps per epoch, 6 sequences dropped
    single = data.StepBatches(dataset, global_batch=8, micro_batch=8)
    shards = [data.StepBatches(dataset, global_batch=8, micro_batch=micro_batch, rank=r, world_size=world_size)
              for r in range(world_size)]
    assert shards[0].grad_accum == 8 // (world_size * micro_batch) and single.steps_per_epoch == 8
    for step in (0, 1, 7, 8, 13):  # 8 and 13 are in the second epoch, reshuffled
        union = [b for shard in shards for b in shard.step(step)]
        assert _ids(union) == _ids(single.step(step))
    assert _ids(single.step(8)) != _ids(single.step(0))


def test_a_jump_to_a_step_equals_walking_to_it():
    dataset = data.ragged_counting(64, 10, 50)
    walked = data.StepBatches(dataset, global_batch=8, micro_batch=2, rank=1, world_size=2)
    for step in range(6):
        expected = walked.step(step)
    jumped = data.StepBatches(dataset, global_batch=8, micro_batch=2, rank=1, world_size=2).step(5)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(expected, jumped, strict=True))


def test_ragged_counting_sequences():
    dataset = data.ragged_counting(200, 16, 40, seed=1)
    rows = dataset.rows
    lengths = rows["attention_mask"].sum(1)
    assert rows["input_ids"].shape == (200, 16) and lengths.min() == 2 and lengths.max() == 16
    assert torch.equal(rows["labels"] == -100, rows["attention_mask"] == 0)  # padding is never a target
    ids = rows["input_ids"][0, : lengths[0]]
    step = (ids[1] - ids[0]) % 40
    assert step in (1, 2, 3) and torch.equal((ids[1:] - ids[:-1]) % 40, torch.full_like(ids[1:], step))
    assert torch.equal(data.ragged_counting(200, 16, 40, seed=1).rows["input_ids"], rows["input_ids"])  # seeded
    with pytest.raises(ValueError, match="seq_len must be >= 2"):
        data.ragged_counting(10, 1, 40)


def test_bad_sizes_are_named():
    dataset = data.ragged_counting(10, 8, 20)
    with pytest.raises(ValueError, match="10 sequences cannot fill one global batch of 16"):
        data.StepBatches(dataset, global_batch=16, micro_batch=8, world_size=2)
    with pytest.raises(ValueError, match="rank must be in 0..1, got 2"):
        data.StepBatches(dataset, global_batch=4, micro_batch=2, rank=2, world_size=2)


@pytest.mark.parametrize("n, micro_batch", [(64, 2), (7, 2), (2, 4)])
def test_validation_batches_see_every_example_once_on_any_world(n, micro_batch):
    dataset = data.ragged_counting(n, 12, 50, seed=5)
    single = data.validation_batches(dataset, micro_batch=micro_batch)
    targets = [row.tolist() for b in single for row in b["labels"]]
    assert len(targets) == n  # one process: every example once, nothing added
    for world_size in (2, 3):
        shards = [data.validation_batches(dataset, micro_batch=micro_batch, rank=r, world_size=world_size)
                  for r in range(world_size)]
        assert len({len(shard) for shard in shards}) == 1  # as many forwards on every rank (FSDP2, ZeRO-3)
        real = [row.tolist() for shard in shards for b in shard for row in b["labels"] if (row != -100).any()]
        assert sorted(real) == sorted(targets)  # no example repeated or lost (DistributedSampler pads by repeating)
    with pytest.raises(ValueError, match="rank must be in 0..2, got 3"):
        data.validation_batches(dataset, micro_batch=2, rank=3, world_size=3)
