"""cookbook.train.loss: an external divisor (`n_targets`) for micro-batches seen one at a time or one rank each."""

import contextlib
import math
import re

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


# ----------------------------------------------------------------------------- known counts, by hand
class _Table(torch.nn.Module):
    """Logits read from a fixed random table by position (not by token), so the loss has a closed form."""

    def __init__(self, length=5, vocab=7):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(length, vocab, generator=torch.Generator().manual_seed(0),
                                                    dtype=torch.float64))

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.table[: input_ids.shape[1]].expand(len(input_ids), -1, -1)})


def test_token_loss_is_the_sum_over_targets_of_the_next_token():
    model = _Table()
    batch = train.pad_batch([[1, 2, 3, 4, 5], [6, 0]], pad_id=0)  # 4 + 1 targets: position t predicts t+1
    log_p = torch.log_softmax(model.table, -1)
    by_hand = -(log_p[0, 2] + log_p[1, 3] + log_p[2, 4] + log_p[3, 5] + log_p[0, 0])
    assert train.token_loss(model, batch).item() == pytest.approx(by_hand.item(), rel=1e-12)
    uniform = torch.nn.Module()
    uniform.forward = lambda input_ids, attention_mask=None: type(
        "Out", (), {"logits": torch.zeros(*input_ids.shape, 7)})
    assert train.token_loss(uniform, batch).item() == pytest.approx(5 * math.log(7), rel=1e-6)  # 5 x ln V


class _Weighted(torch.nn.Module):
    """loss_fn(model, batch) = w x (sum of the batch's token ids): gradients and losses a hand can add up."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones((), dtype=torch.float64))
        self.v = torch.nn.Parameter(torch.ones((), dtype=torch.float64))  # the balancer's aux-loss weight

    @staticmethod
    def loss_fn(model, batch):
        return model.w * batch["input_ids"].sum()


class _Balancer:
    def __init__(self, model, values):
        self.model, self.values, self.recorded = model, list(values), 0

    def recording(self):
        self.recorded += 1
        return contextlib.nullcontext()

    def aux_loss(self):
        return self.model.v * self.values.pop(0)


# two micro-batches: one sequence of 3 tokens (ids sum 6, 2 targets) and three of 2 tokens (ids sum 9, 3 targets)
_MICRO = [torch.tensor([[1, 2, 3]]), torch.tensor([[1, 1], [1, 2], [2, 2]])]


def test_tokens_normalisation_divides_by_the_steps_target_count():
    model = _Weighted()
    loss = train.backward_micro_batches(model, _MICRO, device="cpu", loss_fn=_Weighted.loss_fn)
    assert loss.item() == pytest.approx((6 + 9) / 5) and model.w.grad.item() == pytest.approx(15 / 5)


def test_steps_normalisation_is_the_mean_of_micro_batch_means():
    model = _Weighted()
    loss = train.backward_micro_batches(model, _MICRO, device="cpu", loss_fn=_Weighted.loss_fn, normalize="steps")
    assert loss.item() == pytest.approx((6 / 2 + 9 / 3) / 2) and model.w.grad.item() == pytest.approx(3.0)


def test_aux_loss_weighted_by_each_micro_batchs_share_of_sequences_and_the_scaler_applied():
    model = _Weighted()
    balancer = _Balancer(model, [1.0, 10.0])
    scaler = type("Scaler", (), {"scale": staticmethod(lambda loss: 8 * loss)})()
    loss = train.backward_micro_batches(model, _MICRO, device="cpu", loss_fn=_Weighted.loss_fn,
                                        balancer=balancer, scaler=scaler)
    assert loss.item() == pytest.approx(3.0)  # the returned loss is the token loss only, unscaled
    assert balancer.recorded == 2 and model.v.grad.item() == pytest.approx(8 * (1.0 * 1 / 4 + 10.0 * 3 / 4))
    assert model.w.grad.item() == pytest.approx(8 * 3.0)


def test_accumulation_error_tokens_exact_steps_not():
    model = models.build("tiny", VOCAB, seed=0, experts_implementation="eager").double()
    table = train.accumulation_error(model, [_padded([30, 9]), _padded([3], 3)])
    assert table.loc["tokens", "relative_gradient_error"] < 1e-7  # rounding only (padding changes the sums' order)
    assert table.loc["tokens", "loss"] == pytest.approx(table.loc["tokens", "big_batch_loss"], rel=1e-9)
    assert table.loc["steps", "relative_gradient_error"] > 1e-2  # 37 targets vs 2: mean / k is far off
    assert table.loc["steps", "loss"] != pytest.approx(table.loc["tokens", "loss"], rel=1e-3)


def test_concat_batches_pads_right_and_masks_the_padding():
    a = train.pad_batch([[5, 6, 7]])
    b = train.batches.as_batch(torch.tensor([[8, 9]]))  # no mask: all real
    out = train.batches.concat_batches([a, b])
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out["labels"].tolist() == [[5, 6, 7], [8, 9, -100]]


@pytest.mark.parametrize("kwargs, message", [
    (dict(normalize="mean"), "normalize must be 'tokens' or 'steps', got 'mean'"),
    (dict(n_targets=0), "n_targets must be a positive count with normalize='tokens', got 0 with normalize='tokens'"),
])
def test_backward_micro_batches_messages_in_full(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        train.backward_micro_batches(_Weighted(), _MICRO, device="cpu", loss_fn=_Weighted.loss_fn, **kwargs)
    with pytest.raises(ValueError, match=r"^the micro-batches hold no target tokens \(all labels are -100 or"):
        train.backward_micro_batches(_Weighted(), [torch.ones(2, 1, dtype=torch.long)], device="cpu",
                                     loss_fn=_Weighted.loss_fn)
