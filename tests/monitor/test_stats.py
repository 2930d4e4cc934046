"""Gradient statistics: per-layer grouping, gradient norms and update ratios against hand computations."""

import math

import pytest
import torch
from torch import nn

from cookbook.monitor import GradientStats, TrainingMonitor, layer_of
from tests.monitor.loops import data, mlp


def test_layer_of_groups_parameters_by_block():
    assert layer_of("model.layers.3.self_attn.q_a_proj.weight") == "layers.3.self_attn"
    assert layer_of("model.layers.3.mlp.experts.gate_up_proj") == "layers.3.mlp"
    assert layer_of("model.layers.0.post_attention_layernorm.weight") == "layers.0.norm"
    assert layer_of("model.embed_tokens.weight") == "embed_tokens"
    assert layer_of("lm_head.weight") == "lm_head"
    assert layer_of("4.bias") == "4"
    assert layer_of("transformer.h.11.attn.c_attn.weight") == "h.11.attn"


def test_grad_norms_match_clip_grad_norm_and_hand_computation():
    model = mlp()
    x, y = data()
    nn.functional.mse_loss(model(x), y).backward()
    mon = TrainingMonitor(hardware=False)
    mon.step(model, torch.tensor(1.0), step=0)
    reference = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf).item()
    assert mon.history.loc[0, "grad_norm"] == pytest.approx(reference, rel=1e-6)
    layers = mon.layer_grad_norms.loc[0]
    for index in ("0", "2", "6"):
        module = model[int(index)]
        expected = math.sqrt(module.weight.grad.square().sum().item() + module.bias.grad.square().sum().item())
        assert layers[index] == pytest.approx(expected, rel=1e-6)
    assert list(layers.index) == ["0", "2", "4", "6"]  # activations have no parameters


def test_update_ratio_is_the_step_size_over_the_weight_norm():
    """Plain SGD moves each weight by lr * grad, so the ratio is lr * ||g|| / ||w|| exactly."""
    model, lr = mlp(), 0.05
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    mon = TrainingMonitor(hardware=False)
    flat = lambda tensors: torch.cat([t.flatten() for t in tensors])  # noqa: E731
    grads, weights, first = [], [], []
    for step in range(3):
        nn.functional.mse_loss(model(x), y).backward()
        grads.append(flat(p.grad for p in model.parameters()).clone())
        weights.append(flat(p.detach() for p in model.parameters()).clone())
        first.append((flat(p.grad for p in model[0].parameters()).norm(), flat(model[0].parameters()).norm()))
        mon.step(model, 1.0, step=step, optimizer=opt)
        opt.step()
        opt.zero_grad()
    history = mon.history.set_index("step")
    for step in (0, 1):  # a step's update is only seen at the next call
        expected = (lr * grads[step].norm() / weights[step].norm()).item()
        assert history.loc[step, "update_ratio"] == pytest.approx(expected, rel=1e-5)
        g, w = first[step]
        assert mon.update_ratios.loc[step, "0"] == pytest.approx((lr * g / w).item(), rel=1e-5)
    assert math.isnan(history.loc[2, "update_ratio"])
    assert history.loc[0, "lr"] == lr
    assert list(mon.update_ratios.columns) == ["0", "2", "4", "6"]


def test_gradient_stats_on_their_own():
    model = mlp()
    stats = GradientStats(model)
    assert stats.groups == ["0", "2", "4", "6"]
    assert stats.norms(torch.tensor([2.5])) == (2.5, None, {})  # no gradients yet: only the loss
    x, y = data()
    nn.functional.mse_loss(model(x), y).backward()
    loss, total, per_layer = stats.norms(torch.tensor([1.0]))
    assert total == pytest.approx(math.sqrt(sum(v**2 for v in per_layer.values())), rel=1e-6)
    assert stats.update_ratios(0, snapshot=True) is None  # nothing to compare with yet
    stats.skip_update()  # a skipped step: the snapshot is dropped, so no ratio at the next call
    assert stats.update_ratios(1, snapshot=False) is None
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        GradientStats(model)
