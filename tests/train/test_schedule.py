"""cookbook.train.schedule against hand values: warm-up + cosine multipliers, AdamW's parameter groups."""

import math
import re

import pytest
import torch

from cookbook import models, train
from tests.blocks import VOCAB


@pytest.mark.parametrize("step, expected", [
    (0, 1 / 4), (1, 2 / 4), (3, 1.0),  # linear warm-up from 1/warmup to 1 over 4 steps
    (4, 1.0),  # the first decay step: cos(0)
    (6, 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 2 / 8))),  # a quarter of the way: 0.2 + 0.8 x 0.854
    (8, 0.6),  # half-way: (1 + 0.2) / 2
    (12, 0.2), (20, 0.2),  # the end and past it: min_ratio
])
def test_cosine_schedule_by_hand(step, expected):
    assert train.cosine_schedule(step, steps=12, warmup_steps=4, min_ratio=0.2) == pytest.approx(expected, abs=1e-12)


def test_cosine_schedule_without_warmup_and_with_all_warmup():
    assert train.cosine_schedule(0, steps=10, warmup_steps=0, min_ratio=0.0) == 1.0
    assert train.cosine_schedule(5, steps=10, warmup_steps=0, min_ratio=0.0) == pytest.approx(0.5, abs=1e-12)
    # warm-up as long as the run: the decay has no steps left, so it divides by 1, not 0
    assert train.cosine_schedule(10, steps=10, warmup_steps=10, min_ratio=0.1) == pytest.approx(1.0)
    assert train.cosine_schedule(11, steps=10, warmup_steps=10, min_ratio=0.1) == pytest.approx(0.1)


def test_adamw_groups_decay_only_matrices_and_routers_learn_at_their_ratio():
    model = models.build("tiny", VOCAB, seed=0)
    opt = train.adamw(model, lr=0.01, weight_decay=0.05, betas=(0.8, 0.9), eps=1e-6, router_lr_ratio=0.5)
    matrices, vectors, routers = opt.param_groups
    router_params = {id(p) for _, r in models.routers(model) for p in r.parameters()}
    assert {id(p) for p in routers["params"]} == router_params and len(router_params) > 0
    assert all(p.ndim >= 2 for p in matrices["params"]) and all(p.ndim < 2 for p in vectors["params"])
    assert len(matrices["params"]) + len(vectors["params"]) + len(routers["params"]) == len(list(model.parameters()))
    assert (matrices["weight_decay"], vectors["weight_decay"], routers["weight_decay"]) == (0.05, 0.0, 0.05)
    assert (matrices["lr"], vectors["lr"], routers["lr"]) == (0.01, 0.01, 0.005)
    assert matrices["betas"] == (0.8, 0.9) and matrices["eps"] == 1e-6 and matrices["fused"] is True
    assert opt.defaults["lr"] == 0.01


def test_adamw_defaults_frozen_parameters_and_the_unfused_loop():
    model = models.build_dense(models.config("tiny", VOCAB))  # no routers: two groups
    model.model.embed_tokens.weight.requires_grad_(False)
    opt = train.adamw(model, lr=1e-3, fused=False)
    assert len(opt.param_groups) == 2 and not opt.param_groups[0]["fused"]
    group = opt.param_groups[0]
    assert (group["weight_decay"], group["betas"], group["eps"]) == (0.1, (0.9, 0.95), 1e-8)
    assert all(p is not model.model.embed_tokens.weight for g in opt.param_groups for p in g["params"])
    assert not train.adamw(model, lr=1e-3, device="meta").param_groups[0]["fused"]  # fused only on cuda and cpu


def test_adamw_bad_inputs():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=f"^{re.escape('router_lr_ratio must be > 0, got 0.0')}$"):
        train.adamw(model, lr=1e-3, router_lr_ratio=0.0)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="^the model has no trainable parameters$"):
        train.adamw(model, lr=1e-3)


def test_adamw_router_default_ratio_and_fused_on_cuda_by_name():
    model = models.build("tiny", VOCAB, seed=0)
    groups = train.adamw(model, lr=0.02).param_groups
    assert groups[-1]["lr"] == groups[0]["lr"] == 0.02  # router_lr_ratio defaults to 1
    assert train.adamw(model, lr=0.02, device="cuda").param_groups[0]["fused"] is True  # named device, not moved
