"""The fused linear cross-entropy: token_loss's value and gradients without the (tokens x vocabulary) logits."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from cookbook import models, train
from cookbook.train.loss import _LinearCrossEntropy, decoder_and_head
from tests.blocks import VOCAB, loader


def _reference(hidden, weight, targets):
    return F.cross_entropy(hidden @ weight.T, targets, ignore_index=-100, reduction="sum")


@pytest.mark.parametrize("chunk", [7, 30, 4096])  # uneven chunks, one chunk per token block, all in one
def test_linear_cross_entropy_equals_the_materialised_logits_in_float64(chunk):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(30, 16, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, generator=gen, requires_grad=True)
    targets = torch.randint(0, 50, (30,), generator=gen)
    targets[[0, 11, 12, 29]] = -100  # ignored positions add nothing and get no gradient
    loss = train.linear_cross_entropy(hidden, weight, targets, chunk_tokens=chunk)
    (2.5 * loss).backward()  # a non-unit incoming gradient reaches both inputs
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    expected = _reference(hidden, weight, targets)
    (2.5 * expected).backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert torch.allclose(grads[0], hidden.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(grads[1], weight.grad, rtol=1e-10, atol=1e-12)
    assert grads[0][[0, 11, 12, 29]].abs().max() == 0


def test_no_gradient_wanted_gives_the_value_only():
    gen = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(9, 8, generator=gen), torch.randn(20, 8, generator=gen)
    targets = torch.randint(0, 20, (9,), generator=gen)
    with torch.no_grad():
        loss = train.linear_cross_entropy(hidden, weight, targets, chunk_tokens=4)
    assert loss.item() == pytest.approx(_reference(hidden, weight, targets).item(), rel=1e-5)


def _model_grads(model, loss_fn, batch, autocast):
    model = copy.deepcopy(model)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.enable_grad()
    with context:
        loss = loss_fn(model, batch)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("family", ["moe", "dense"])
def test_fused_token_loss_equals_token_loss_on_a_padded_batch(family):
    """Same sum and gradients as token_loss: float32 to rounding, bf16 autocast to bf16 tolerance."""
    moe = models.build("tiny", VOCAB, seed=0)
    model = moe if family == "moe" else models.build_dense(moe.config, seed=0)
    gen = torch.Generator().manual_seed(3)
    batch = train.pad_batch([torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in (17, 5, 12)])
    for autocast, loss_tol, grad_tol in ((False, 1e-6, 1e-5), (True, 1e-2, 2e-2)):
        ref_loss, ref = _model_grads(model, train.token_loss, batch, autocast)
        loss, grads = _model_grads(model, lambda m, b: train.fused_token_loss(m, b, chunk_tokens=8), batch, autocast)
        assert loss == pytest.approx(ref_loss, rel=loss_tol)
        assert ((grads - ref).norm() / ref.norm()).item() < grad_tol


def test_trainer_with_the_fused_loss_trains_like_the_plain_one():
    """Four float32 steps: identical losses to 1e-5, through the Trainer switch."""
    def run(**switch):
        config = train.TrainConfig(steps=4, lr=3e-3, log_interval=1, progress=False, device="cpu", **switch)
        return train.Trainer(models.build("tiny", VOCAB, seed=0), loader(), config=config).fit()["loss"]
    plain, fused = run(), run(fused_cross_entropy=True)
    assert plain.tolist() == pytest.approx(fused.tolist(), rel=1e-5)


def test_bad_inputs_are_refused():
    hidden, weight = torch.zeros(4, 8), torch.zeros(10, 8)
    with pytest.raises(ValueError, match="need hidden"):
        train.linear_cross_entropy(hidden, torch.zeros(10, 7), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="need hidden"):
        train.linear_cross_entropy(hidden, weight, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_tokens"):
        train.linear_cross_entropy(hidden, weight, torch.zeros(4, dtype=torch.long), chunk_tokens=0)
    with pytest.raises(TypeError, match="use token_loss"):
        decoder_and_head(torch.nn.Linear(4, 4))
    model = models.build("tiny", VOCAB, seed=0)
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(VOCAB))
    with pytest.raises(TypeError, match="bias-free head"):
        decoder_and_head(model)
    with pytest.raises(ValueError, match="fused_cross_entropy replaces token_loss"):
        train.Trainer(models.build("tiny", VOCAB, seed=0), loader(),
                      config=train.TrainConfig(fused_cross_entropy=True, device="cpu"), loss_fn=lambda m, b: 0)


def test_the_weights_gradient_is_summed_over_chunks_in_float32():
    """1024 one-token chunks of a bf16 head: each chunk's share of W.grad is about 2/3, and a bf16 running sum stops
    growing at 256 (its spacing there is 2). By hand, with W = 0 every softmax is 1/3: W.grad[0] = 1024 x (1/3 - 1)
    and W.grad[1] = W.grad[2] = 1024 / 3 per hidden unit (h = 1); the loss is 1024 ln 3."""
    hidden = torch.ones(1024, 4, dtype=torch.bfloat16)
    weight = torch.zeros(3, 4, dtype=torch.bfloat16, requires_grad=True)
    loss = train.linear_cross_entropy(hidden, weight, torch.zeros(1024, dtype=torch.long), chunk_tokens=1)
    loss.backward()
    assert loss.item() == pytest.approx(1024 * math.log(3), rel=1e-3)
    assert weight.grad[0].float().tolist() == pytest.approx([1024 * (1 / 3 - 1)] * 4, rel=1e-2)
    assert weight.grad[1:].float().flatten().tolist() == pytest.approx([1024 / 3] * 8, rel=1e-2)


def test_the_sum_stays_on_the_hidden_states_device():
    """The running sum starts on the hidden states' device, not the CPU (the meta device, shapes only, stands in for
    a GPU; the Function is called directly because autocast knows no meta device)."""
    hidden = torch.zeros(6, 4, device="meta", requires_grad=True)
    weight = torch.zeros(5, 4, device="meta", requires_grad=True)
    targets = torch.zeros(6, dtype=torch.long, device="meta")
    loss = _LinearCrossEntropy.apply(hidden, weight, targets, 4, torch.float32)
    loss.backward()
    assert loss.device.type == hidden.grad.device.type == weight.grad.device.type == "meta"
