"""cookbook.train.loss: an external divisor (`n_targets`) for micro-batches seen one at a time or one rank each."""

import contextlib
import math
import re
import types

import pytest
import torch
import torch.nn.functional as F

from cookbook import models, train
from cookbook.train.loss import decoder_and_head
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


def test_steps_normalisation_of_a_single_target_micro_batch_and_a_fractional_external_count():
    model = _Weighted()
    one_target = [torch.tensor([[4, 5]])]  # ids sum 9, one target
    assert train.backward_micro_batches(model, one_target, device="cpu", loss_fn=_Weighted.loss_fn,
                                        normalize="steps").item() == 9.0
    # a rank's share of the step's targets can be fractional (global count / ranks): 0.5 is a valid divisor
    assert train.backward_micro_batches(model, one_target, device="cpu", loss_fn=_Weighted.loss_fn,
                                        n_targets=0.5).item() == 18.0


def test_the_attention_mask_reaches_the_model():
    """Left padding: with the mask passed, the padded sequence's loss is the unpadded one's (RoPE is relative);
    without it the padding would be attended to."""
    model = models.build("tiny", VOCAB, seed=0, experts_implementation="eager").double().eval()
    ids = torch.tensor([[5, 9, 2, 7, 3]])
    padded = {"input_ids": torch.tensor([[0, 0, 5, 9, 2, 7, 3]]), "attention_mask": torch.tensor([[0, 0, 1, 1, 1, 1, 1]]),
              "labels": torch.tensor([[-100, -100, -100, 9, 2, 7, 3]])}  # the first real token is no target
    with torch.no_grad():
        alone = train.token_loss(model, {"input_ids": ids, "labels": ids}).item()
        assert train.token_loss(model, padded).item() == pytest.approx(alone, rel=1e-9)
        assert train.fused_token_loss(model, padded).item() == pytest.approx(alone, rel=1e-9)
        unmasked = {k: v for k, v in padded.items() if k != "attention_mask"}
        assert train.token_loss(model, unmasked).item() != pytest.approx(alone, rel=1e-6)  # the check can fail


def test_accumulation_error_is_the_relative_norm_by_hand():
    model = models.build("tiny", VOCAB, seed=0, experts_implementation="eager").double()
    micro = [_padded([12, 3]), _padded([2], 3)]
    train.backward_micro_batches(model, [_padded([30, 9], 7)])  # stale gradients from an earlier step
    table = train.accumulation_error(model, micro)
    assert all(p.grad is None for p in model.parameters())  # stale ones discarded, none left behind
    assert table.equals(train.accumulation_error(model, micro))  # the same as from a clean start
    train.backward_micro_batches(model, [train.batches.concat_batches([train.batches.as_batch(b) for b in micro])])
    reference = _grad(model)
    train.backward_micro_batches(model, micro, normalize="steps")
    steps = _grad(model)
    expected = ((steps - reference).norm() / reference.norm()).item()
    assert table.loc["steps", "relative_gradient_error"] == pytest.approx(expected, rel=1e-6)


def test_fused_loss_checks_in_full():
    hidden, weight, targets = torch.zeros(2, 4, 4), torch.zeros(5, 4), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match=re.escape("need hidden (tokens, h), weight (vocab, h) and targets (tokens,); "
                                                   "got (2, 4, 4), (5, 4), (2,)")):
        train.linear_cross_entropy(hidden, weight, targets)  # a 3-D hidden whose dims happen to fit elsewhere
    with pytest.raises(ValueError, match="^chunk_tokens must be a positive int, got 0$"):
        train.fused_token_loss(models.build("tiny", VOCAB, seed=0), _padded([4]), chunk_tokens=0)

    class HeadOnly(torch.nn.Module):  # an output head but no decoder stack
        def get_output_embeddings(self):
            return torch.nn.Linear(4, 4, bias=False)

    with pytest.raises(TypeError, match=r"^fused_token_loss needs .* bias-free head; HeadOnly is not one: use token_loss$"):
        decoder_and_head(HeadOnly())


def test_decoder_and_head_of_a_compiled_wrapper_and_a_head_without_a_bias_attribute():
    model = models.build("tiny", VOCAB, seed=0)
    wrapper = types.SimpleNamespace(_orig_mod=model)  # what torch.compile returns keeps the module here
    body, head = decoder_and_head(wrapper)
    assert body is model.model and head is model.lm_head
    tied = types.SimpleNamespace(model=model.model, get_output_embeddings=lambda: model.model.embed_tokens)
    assert decoder_and_head(tied)[1] is model.model.embed_tokens  # an nn.Embedding has no bias attribute at all


def test_linear_cross_entropy_projects_in_the_autocast_dtype():
    gen = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(6, 8, generator=gen), torch.randn(11, 8, generator=gen)
    targets = torch.tensor([1, 2, 3, -100, 4, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = train.linear_cross_entropy(hidden, weight, targets)
    logits = (hidden.bfloat16() @ weight.bfloat16().T).float()  # bf16 matmul, float32 softmax
    assert got.item() == pytest.approx(F.cross_entropy(logits, targets, reduction="sum").item(), rel=1e-5)
    assert got.item() != pytest.approx(F.cross_entropy(hidden @ weight.T, targets, reduction="sum").item(), rel=1e-5)


@pytest.mark.parametrize("hidden_grad, weight_grad", [(True, False), (False, True)])
def test_linear_cross_entropy_with_only_one_gradient_wanted(hidden_grad, weight_grad):
    """A frozen head (LoRA) or frozen inputs: the one gradient asked for still equals the materialised logits'."""
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(7, 5, generator=gen, dtype=torch.float64).requires_grad_(hidden_grad)
    weight = torch.randn(9, 5, generator=gen, dtype=torch.float64).requires_grad_(weight_grad)
    targets = torch.tensor([0, 8, 3, -100, 4, 4, 1])
    train.linear_cross_entropy(hidden, weight, targets, chunk_tokens=3).backward()
    got = hidden.grad if hidden_grad else weight.grad
    hidden.grad = weight.grad = None
    F.cross_entropy(hidden @ weight.T, targets, reduction="sum").backward()
    expected = hidden.grad if hidden_grad else weight.grad
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_linear_cross_entropy_casts_to_the_weights_dtype_and_returns_its_gradient_dtype():
    gen = torch.Generator().manual_seed(4)
    hidden = torch.randn(6, 4, generator=gen, requires_grad=True)  # float32 activations, float64 head
    weight = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 3, 4, 0])
    loss = train.linear_cross_entropy(hidden, weight, targets)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(F.cross_entropy(hidden.double() @ weight.T, targets, reduction="sum").item(),
                                        rel=1e-12)
    half = torch.randn(5, 4, generator=gen).bfloat16().requires_grad_()
    train.linear_cross_entropy(hidden.detach().bfloat16(), half, targets).backward()
    assert half.grad.dtype == torch.bfloat16  # accumulated in float32, handed back in the weight's dtype


def test_token_loss_in_float32_for_16_bit_logits():
    model = _Table()
    model.table.data = model.table.data.bfloat16()
    batch = train.pad_batch([[1, 2, 3, 4, 5]])
    loss = train.token_loss(model, batch)
    log_p = torch.log_softmax(model.table.float(), -1)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(-(log_p[0, 2] + log_p[1, 3] + log_p[2, 4] + log_p[3, 5]).item(), rel=1e-6)


def test_each_micro_batchs_loss_runs_under_the_precisions_autocast():
    """precision="bf16" runs every loss_fn call under torch.autocast(cpu, bfloat16); the default, fp32, under none."""
    seen = []

    def loss_fn(model, batch):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return _Weighted.loss_fn(model, batch)

    train.backward_micro_batches(_Weighted(), _MICRO, device="cpu", loss_fn=loss_fn, precision="bf16")
    train.backward_micro_batches(_Weighted(), _MICRO, device="cpu", loss_fn=loss_fn)
    assert seen == [torch.bfloat16, torch.bfloat16, None, None]


class _Gated(_Table):
    """_Table plus a parameter that only batches holding token 6 use: some steps give it a gradient, others none."""

    def __init__(self):
        super().__init__()
        self.six = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, input_ids, attention_mask=None):
        out = super().forward(input_ids)
        if (input_ids == 6).any():
            out.logits = out.logits + self.six
        return out


def test_accumulation_error_drops_the_gradients_of_parameters_an_earlier_step_used():
    """A stale gradient of a parameter these micro-batches never reach must not enter the comparison as zeros."""
    model, micro = _Gated(), [torch.tensor([[1, 2, 3, 4]]), torch.tensor([[2, 3]])]
    clean = train.accumulation_error(model, micro)
    train.backward_micro_batches(model, [torch.tensor([[6, 1, 2]])])  # the step before used `six`
    assert model.six.grad is not None
    assert train.accumulation_error(model, micro).equals(clean)
    assert clean.loc["tokens", "relative_gradient_error"] < 1e-15  # float64: exact up to rounding


def test_the_micro_batches_reach_the_loss_on_the_given_device():
    """device= moves every micro-batch there before loss_fn sees it, whatever device the model is on (the meta
    device, shapes only, stands in for a GPU here)."""
    seen = []

    def loss_fn(model, batch):
        seen.append({key: value.device.type for key, value in batch.items()})
        return model.w * 1.0

    train.backward_micro_batches(_Weighted(), _MICRO, device="meta", loss_fn=loss_fn)
    assert seen == [{"input_ids": "meta", "labels": "meta"}] * 2


class _FirstParameterElsewhere(torch.nn.Module):
    """_Table behind a first parameter on another device (meta here, like an offloaded one): the model's first
    parameter does not say where the batches belong, device= does."""

    def __init__(self):
        super().__init__()
        self.offloaded = torch.nn.Parameter(torch.zeros(1, device="meta"))
        self.table = _Table()

    def forward(self, input_ids, attention_mask=None):
        return self.table(input_ids)


def test_accumulation_error_sends_the_batches_to_its_device():
    table = train.accumulation_error(_FirstParameterElsewhere(), [torch.tensor([[1, 2, 3, 4]]), torch.tensor([[2, 3]])],
                                     device="cpu")
    assert table.loc["tokens", "relative_gradient_error"] < 1e-15  # float64: exact up to rounding
    assert table.loc["steps", "relative_gradient_error"] > 0.1  # 3 targets and 1: mean / k weighs them unevenly
