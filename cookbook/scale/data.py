"""Per-rank data: each optimizer step's global batch, split over ranks and micro-steps by `DistributedSampler`.

A step of `global_batch` sequences is `world_size` ranks x `grad_accum` micro-steps x `micro_batch`
sequences. Every rank draws the same seeded permutation of the dataset per epoch and takes every N-th
index from its rank on (`DistributedSampler`), so the ranks of one step together see exactly the
sequences a single process sees in that step, on any world size. The position of a step depends only on
its number, which is what lets a checkpoint resume on a different world size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from cookbook.checks import positive_int
from cookbook.train.batches import as_batch, pad_batch

__all__ = ["StepBatches", "grad_accum", "ragged_counting", "validation_batches"]


def grad_accum(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Micro-steps per optimizer step so that world_size x grad_accum x micro_batch = global_batch."""
    for name, value in (("global_batch", global_batch), ("micro_batch", micro_batch), ("world_size", world_size)):
        positive_int(name, value)
    per_step = micro_batch * world_size
    if global_batch % per_step:
        raise ValueError(f"global_batch {global_batch} is not a multiple of micro_batch x world_size = "
                         f"{micro_batch} x {world_size}; valid global batches: multiples of {per_step}")
    return global_batch // per_step


class RaggedCounting(torch.utils.data.Dataset):
    """Seeded sequences of different lengths (2..seq_len tokens) that count mod `vocab` from a random start,
    right-padded to `seq_len`: micro-batches hold very different numbers of targets, which is where naive
    accumulation goes wrong, and a tiny model learns them in a few steps."""

    def __init__(self, n: int, seq_len: int, vocab: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        lengths = torch.randint(2, seq_len + 1, (n,), generator=gen)
        start = torch.randint(0, vocab, (n,), generator=gen)
        stride = torch.randint(1, 4, (n,), generator=gen)
        rows = [((s + d * torch.arange(int(n_))) % vocab).tolist() for s, d, n_ in zip(start, stride, lengths, strict=True)]
        fills = {"input_ids": 0, "attention_mask": 0, "labels": -100}  # padding is masked out of the loss
        self.rows = {k: F.pad(v, (0, seq_len - v.shape[1]), value=fills[k]) for k, v in pad_batch(rows).items()}

    def __len__(self) -> int:
        return len(self.rows["input_ids"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.rows.items()}


def ragged_counting(n: int, seq_len: int, vocab: int, seed: int = 0) -> RaggedCounting:
    """`n` ragged counting sequences (see `RaggedCounting`): the demo data of notebooks/11 §3."""
    for name, value in (("n", n), ("seq_len", seq_len), ("vocab", vocab)):
        positive_int(name, value)
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (one input and one target), got {seq_len}")
    return RaggedCounting(n, seq_len, vocab, seed)


class StepBatches:
    """This rank's micro-batches for optimizer step s: `batches.step(s)` is a list of `grad_accum` batches.

    `dataset` yields dicts of equal-length tensors (packed blocks, or padded rows with an attention_mask).
    Steps per epoch = len(dataset) // global_batch on every world size (the tail of each epoch is dropped).
    Shown in notebooks/11 §3.
    """

    def __init__(self, dataset, *, global_batch: int, micro_batch: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0):
        self.grad_accum = grad_accum(global_batch, micro_batch, world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        self.steps_per_epoch = len(dataset) // global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(dataset)} sequences cannot fill one global batch of {global_batch}")
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                          drop_last=True)
        self.loader = DataLoader(dataset, batch_size=micro_batch, sampler=self.sampler, drop_last=True)
        self._epoch, self._next_step, self._iter = None, None, None

    def step(self, s: int) -> list[dict[str, torch.Tensor]]:
        """The `grad_accum` micro-batches of optimizer step `s` (0-based) on this rank."""
        epoch, in_epoch = divmod(s, self.steps_per_epoch)
        if epoch != self._epoch or in_epoch != self._next_step:  # a new epoch, or a jump (resume)
            self.sampler.set_epoch(epoch)  # the permutation of epoch e is seeded with seed + e on every rank
            self._iter = iter(self.loader)
            for _ in range(in_epoch * self.grad_accum):
                next(self._iter)
            self._epoch = epoch
        self._next_step = in_epoch + 1
        return [next(self._iter) for _ in range(self.grad_accum)]


def validation_batches(dataset, *, micro_batch: int, rank: int = 0, world_size: int = 1) -> list[dict[str, torch.Tensor]]:
    """This rank's validation micro-batches: every example exactly once over all ranks, on any world size.

    Rank r takes the contiguous slice [r*n//N, (r+1)*n//N): slices differ by at most one example and nothing is
    repeated (a `DistributedSampler` pads an uneven split by repeating examples, so the loss would depend on N).
    Every rank gets the same number of batches: a rank with fewer examples gets filler batches whose labels are
    all -100 (zero targets, zero loss), because FSDP2 and ZeRO-3 gather weights in every forward and all ranks
    must run as many. Sum the losses and target counts over ranks and divide once: uneven slices are then
    weighted by their token counts. Shown in notebooks/11 §3.
    """
    positive_int("micro_batch", micro_batch), positive_int("world_size", world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
    n = len(dataset)
    if n == 0:
        raise ValueError("the validation set is empty")
    mine = range(rank * n // world_size, (rank + 1) * n // world_size)
    largest = -(-n // world_size)  # ceil(n / N): the largest slice
    most = -(-largest // micro_batch)
    collate = torch.utils.data.default_collate
    batches = [as_batch(collate([dataset[i] for i in mine[k:k + micro_batch]])) for k in range(0, len(mine), micro_batch)]
    while len(batches) < most:  # filler: a real example's shape, no targets
        filler = as_batch(collate([dataset[0]]))
        batches.append({**filler, "labels": torch.full_like(filler["labels"], -100)})
    return batches
