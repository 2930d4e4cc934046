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


@pytest.mark.parametrize("sizes, name", [((0, 2, 4), "global_batch"), ((8, 2, 0), "world_size")])
def test_grad_accum_names_the_bad_size(sizes, name):
    with pytest.raises(ValueError, match=f"^{name} must be a positive int, got 0$"):
        data.grad_accum(*sizes)


@pytest.mark.parametrize("sizes, name", [((0, 8, 20), "n"), ((4, 0, 20), "seq_len"), ((4, 8, 0), "vocab")])
def test_ragged_counting_names_the_bad_size(sizes, name):
    with pytest.raises(ValueError, match=f"^{name} must be a positive int, got 0$"):
        data.ragged_counting(*sizes)


def test_ragged_counting_pads_short_sets_to_seq_len_with_masked_padding():
    # 4 sequences of at most 40 tokens: none reaches 40 here, so the final F.pad really pads
    rows = data.ragged_counting(4, 40, 1000, seed=0).rows
    mask = rows["attention_mask"]
    assert rows["input_ids"].shape == (4, 40) and mask.sum(1).max() < 40
    assert torch.equal(mask, (torch.arange(40) < mask.sum(1, keepdim=True)).long())  # 1s then 0s
    assert (rows["input_ids"][mask == 0] == 0).all()  # pad id 0, as pad_batch pads
    assert torch.equal(rows["labels"], rows["input_ids"].masked_fill(mask == 0, -100))  # padding is never a target


def test_ragged_counting_draws_lengths_starts_and_strides_from_their_ranges():
    # the docstring's ranges: lengths uniform on 2..seq_len, starts on 0..vocab-1, strides 1..3
    rows = data.ragged_counting(3000, 3, 50, seed=4).rows
    lengths = rows["attention_mask"].sum(1)
    assert set(lengths.tolist()) == {2, 3}
    assert abs((lengths == 3).float().mean().item() - 0.5) < 0.04  # 2..4 cropped to 3 would give 2/3
    assert set(rows["input_ids"][:, 0].tolist()) == set(range(50))  # start 0 included
    assert set(((rows["input_ids"][:, 1] - rows["input_ids"][:, 0]) % 50).tolist()) == {1, 2, 3}
    assert data.ragged_counting(5, 2, 10).rows["attention_mask"].sum().item() == 10  # seq_len 2: one target each


def test_ragged_counting_seed():
    first = data.ragged_counting(50, 12, 40).rows["input_ids"]
    assert torch.equal(first, data.ragged_counting(50, 12, 40, seed=0).rows["input_ids"])  # the signature's default
    assert torch.equal(first, data.RaggedCounting(50, 12, 40).rows["input_ids"])
    assert not torch.equal(first, data.ragged_counting(50, 12, 40, seed=1).rows["input_ids"])


@pytest.mark.parametrize("seed", [None, 5])
def test_step_batches_are_distributed_sampler_s_indices(seed):
    # reference: torch's DistributedSampler with its own defaults (shuffle, seed 0) or the seed given, read in order
    from torch.utils.data import DistributedSampler

    dataset = data.ragged_counting(30, 6, 1000, seed=2)
    kwargs = {} if seed is None else {"seed": seed}
    for rank in (0, 1):
        batches = data.StepBatches(dataset, global_batch=6, micro_batch=3, rank=rank, world_size=2, **kwargs)
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, **kwargs)
        sampler.set_epoch(1)
        order = list(sampler)
        got = torch.cat([b["input_ids"] for b in batches.step(5)])  # epoch 1's first step (5 steps an epoch)
        assert torch.equal(got, dataset.rows["input_ids"][order[:3]])


def test_any_order_of_steps_equals_fresh_readers():
    dataset = data.ragged_counting(40, 8, 1000, seed=6)  # 5 steps an epoch
    reader = data.StepBatches(dataset, global_batch=8, micro_batch=2, rank=1, world_size=2)
    for step in (0, 3, 1, 6, 2, 7, 7):  # jumps ahead and back, across epochs (0 -> 6: step 1 of epoch 1)
        fresh = data.StepBatches(dataset, global_batch=8, micro_batch=2, rank=1, world_size=2).step(step)
        assert all(torch.equal(a["input_ids"], b["input_ids"])
                   for a, b in zip(reader.step(step), fresh, strict=True)), step


@pytest.mark.parametrize("kwargs, message", [
    (dict(micro_batch=0), "^micro_batch must be a positive int, got 0$"),
    (dict(micro_batch=1, world_size=0), "^world_size must be a positive int, got 0$"),
])
def test_validation_batches_name_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.validation_batches(data.ragged_counting(4, 6, 20), **kwargs)


def test_validation_batches_of_one_example_and_of_none():
    dataset = data.ragged_counting(1, 6, 20, seed=1)
    (own,) = data.validation_batches(dataset, micro_batch=1)
    assert torch.equal(own["labels"], dataset.rows["labels"][:1])
    # two ranks: slices [r*n//N, (r+1)*n//N) give rank 0 nothing and rank 1 the example; rank 0 runs a filler of
    # the example's shape with no targets
    (filler,) = data.validation_batches(dataset, micro_batch=1, rank=0, world_size=2)
    (real,) = data.validation_batches(dataset, micro_batch=1, rank=1, world_size=2)
    assert torch.equal(real["labels"], dataset.rows["labels"][:1])
    assert torch.equal(filler["input_ids"], dataset.rows["input_ids"][:1])
    assert (filler["labels"] == -100).all()
    with pytest.raises(ValueError, match="^the validation set is empty$"):
        data.validation_batches(torch.utils.data.Subset(dataset, []), micro_batch=1)


def test_walking_through_the_steps_reads_each_sequence_once():
    # a walk continues the epoch's loader; only a new epoch or a jump restarts it and skips ahead
    class Counted(torch.utils.data.Dataset):
        def __init__(self, dataset):
            self.dataset, self.reads = dataset, 0

        def __len__(self):
            return len(self.dataset)

        def __getitem__(self, i):
            self.reads += 1
            return self.dataset[i]

    dataset = Counted(data.ragged_counting(40, 8, 1000, seed=6))  # 5 steps an epoch, 4 sequences a step a rank
    reader = data.StepBatches(dataset, global_batch=8, micro_batch=2, rank=0, world_size=2)
    for step in range(10):  # two epochs
        reader.step(step)
    assert dataset.reads == 10 * 4
    reader.step(12)  # a jump: epoch 2 restarts and skips its first two steps (8 reads) to return the third
    assert dataset.reads == 10 * 4 + 8 + 4
