"""The optimizer and the learning-rate schedule: AdamW with decay on matrices only, warm-up + cosine."""

from __future__ import annotations

import math

import torch

from cookbook.models import routers

__all__ = ["adamw", "cosine_schedule"]


def cosine_schedule(step: int, *, steps: int, warmup_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up from 1/warmup_steps to 1, then cosine decay to `min_ratio` at `steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw(model, *, lr: float, weight_decay: float = 0.1, betas=(0.9, 0.95), eps: float = 1e-8,
          device: torch.device | str = "cpu", router_lr_ratio: float = 1.0, fused: bool = True) -> torch.optim.AdamW:
    """AdamW with decay on matrices only (not norms or biases), fused (one kernel over all parameters) on CUDA and
    CPU unless `fused=False` (torch's default per-tensor loop, for comparison).

    MoE router weights (`models.routers`) get a group of their own that learns at `router_lr_ratio` x lr;
    it is the last group, so `param_groups[0]["lr"]` stays the model's learning rate. On CPU the default
    per-tensor loop is ~50x slower than the fused kernel for a model with many small tensors.
    """
    if not router_lr_ratio > 0:
        raise ValueError(f"router_lr_ratio must be > 0, got {router_lr_ratio}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    router = {id(p) for _, r in routers(model) for p in r.parameters() if p.requires_grad}
    rest = [p for p in params if id(p) not in router]
    groups = [dict(params=[p for p in rest if p.ndim >= 2], weight_decay=weight_decay),
              dict(params=[p for p in rest if p.ndim < 2], weight_decay=0.0),
              dict(params=[p for p in params if id(p) in router], weight_decay=weight_decay, lr=lr * router_lr_ratio)]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas), eps=eps,
                             fused=fused and torch.device(device).type in ("cuda", "cpu"))
