"""cookbook.train.loss: an external divisor (`n_targets`) for micro-batches seen one at a time or one rank each."""

import pytest
import torch

from cookbook import models, train
from tests.blocks import VOCAB


def _padded(lengths, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return train.pad_batch([torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in lengths])


def _grad(model):
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]).clone()
    model.zero_grad(set_to_none=True)
    return grad


def test_micro_batches_one_call_each_and_ranks_averaged_equal_the_big_batch():
    """Four micro-batches with 37, 9, 20 and 2 targets: one call each with the step's count, and two simulated
    ranks whose gradients are averaged (as DDP does) with count / 2, both give the one-call gradient."""
    model = models.build("tiny", VOCAB, seed=0, experts_implementation="eager").double()
    micro = [_padded([30, 9]), _padded([4, 7], 3), _padded([21], 4), _padded([2, 2], 5)]
    total = sum(train.batches.target_count(train.batches.as_batch(b)) for b in micro)
    assert total == 29 + 8 + 3 + 6 + 20 + 1 + 1  # hand count: length - 1 targets per sequence

    reference_loss = train.backward_micro_batches(model, micro, device="cpu")
    reference = _grad(model)
    losses = [train.backward_micro_batches(model, [b], device="cpu", n_targets=total) for b in micro]
    one_each = _grad(model)
    assert torch.stack(losses).sum().item() == pytest.approx(reference_loss.item(), rel=1e-12)
    assert ((one_each - reference).norm() / reference.norm()).item() < 1e-12

    ranks = []
    for part in (micro[:2], micro[2:]):  # rank 0 and rank 1, each dividing by the global count / 2
        train.backward_micro_batches(model, part, device="cpu", n_targets=total / 2)
        ranks.append(_grad(model))
    averaged = (ranks[0] + ranks[1]) / 2
    assert ((averaged - reference).norm() / reference.norm()).item() < 1e-12
    # dividing each rank by its own count instead is wrong: rank 1 holds 24 of the 68 targets, not half
    naive = [None, None]
    for i, part in enumerate((micro[:2], micro[2:])):
        train.backward_micro_batches(model, part, device="cpu")
        naive[i] = _grad(model)
    assert ((sum(naive) / 2 - reference).norm() / reference.norm()).item() > 1e-2


def test_a_part_without_targets_is_allowed_with_an_external_count():
    model = models.build("tiny", VOCAB, seed=0)
    empty = torch.zeros(2, 1, dtype=torch.long)  # length-1 sequences: no next token to predict
    assert train.backward_micro_batches(model, [empty], device="cpu", n_targets=5).item() == 0.0


@pytest.mark.parametrize("kwargs", [dict(n_targets=0), dict(n_targets=-3.0), dict(n_targets=4, normalize="steps")])
def test_bad_external_counts_are_rejected(kwargs):
    model = models.build("tiny", VOCAB, seed=0)
    with pytest.raises(ValueError, match="n_targets must be a positive count"):
        train.backward_micro_batches(model, [torch.zeros(2, 4, dtype=torch.long)], device="cpu", **kwargs)
