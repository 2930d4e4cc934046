"""Solutions to the exercises of notebooks/04 (pretraining with mixed precision), each checked against an independent
result."""

import math

import numpy as np
import pytest
import torch

from cookbook import train


# Exercise 1: bf16 rounding by hand, and its error bound
def to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (round to nearest, ties to even) by keeping the top 16 bits of each float32."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    lsb = (bits >> 16) & 1  # the last bit bf16 keeps: a tie goes to the even neighbour
    rounded = ((bits + 0x7FFF + lsb) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32)


def finite_floats(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-30, 30, n)).astype(np.float32)
    ties = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 2**-126 * (1 + 2**-8)], np.float32)  # exact halfway
    return np.concatenate([x, ties])


def test_bf16_by_hand_equals_torch():
    x = finite_floats(100_000, 0)
    assert np.array_equal(to_bf16(x), torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    assert to_bf16(np.array([1 + 2**-8], np.float32))[0] == 1.0  # a tie rounds to the even 1.0 ...
    assert to_bf16(np.array([1 + 3 * 2**-8], np.float32))[0] == 1 + 2**-6  # ... and here up, to the even neighbour


def test_bf16_relative_error_is_at_most_half_an_ulp():
    x = finite_floats(100_000, 1)
    x = x[np.abs(x) >= np.finfo(np.float32).tiny]  # normal numbers: below them the bound is absolute, not relative
    rel = np.abs(to_bf16(x).astype(np.float64) - x) / np.abs(x)
    u = 2.0**-8  # 8 significant bits (7 stored): unit roundoff 2^-8 = epsilon / 2
    assert rel.max() <= u
    assert rel.max() > 0.99 * u  # and the bound is reached: it is tight


# Exercise 2: a dynamic loss scaler by hand
class LossScaler:
    """Multiply the loss by `scale`; if a gradient is inf or nan, skip the step and halve the scale; after
    `interval` good steps in a row, double it."""

    def __init__(self, scale: float = 2.0**16, interval: int = 2000):
        self.scale, self.interval, self.good = scale, interval, 0

    def step(self, grads_finite: bool) -> bool:
        if not grads_finite:
            self.scale, self.good = self.scale / 2, 0
            return False
        self.good += 1
        if self.good == self.interval:
            self.scale, self.good = self.scale * 2, 0
        return True


def test_scaler_follows_torch_grad_scaler():
    # a loss w·c: with c = 1e34 the scaled gradient c·2^16 overflows float32, so that step must be skipped
    cs = [1.0, 1.0, 1.0, 1e34, 1.0, 1.0, 1.0, 1.0, 1e34, 1e34, 1.0, 1.0, 1.0]
    w = torch.nn.Parameter(torch.tensor(1.0))
    opt = torch.optim.SGD([w], lr=0.1)
    theirs = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=3)
    mine = LossScaler(2.0**16, interval=3)
    for c in cs:
        before = w.item()
        theirs.scale(w * c).backward()
        theirs.step(opt)
        theirs.update()
        opt.zero_grad()
        stepped = mine.step(c * mine.scale <= torch.finfo(torch.float32).max)  # the float32 gradient is finite
        assert stepped == (w.item() != before)
        assert mine.scale == theirs.get_scale()
    assert mine.scale == 2.0**16  # up after steps 3 and 7, down at steps 4, 9 and 10, up again after step 13


def test_scaling_rescues_a_gradient_fp16_would_flush():
    tiny = 1e-8  # below fp16's smallest subnormal, 2^-24 ≈ 6e-8
    assert torch.tensor(tiny).half().item() == 0.0
    rescued = (torch.tensor(tiny) * 2**16).half().float().item() / 2**16
    assert abs(rescued - tiny) / tiny < 2**-11  # fp16 keeps 11 significant bits once the value is normal


# Exercise 3: warm-up and cosine decay
def lr_multiplier(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up from 1/warmup to 1 over `warmup` steps, then half a cosine from 1 down to `min_ratio`."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / (steps - warmup)
    return min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * t)) / 2


@pytest.mark.parametrize("steps,warmup,min_ratio", [(60, 18, 0.1), (100, 10, 0.0), (7, 2, 0.5)])
def test_schedule_equals_torch_schedulers_and_the_cookbook(steps, warmup, min_ratio):
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=1.0)
    schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps - warmup, eta_min=min_ratio)]
    if warmup > 1:
        schedulers.insert(0, torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / warmup, end_factor=1.0,
                                                               total_iters=warmup - 1))
    sched = (torch.optim.lr_scheduler.SequentialLR(opt, schedulers, milestones=[warmup])
             if warmup > 1 else schedulers[0])
    torch_lrs = []
    for _ in range(steps):
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    mine = [lr_multiplier(s, steps, warmup, min_ratio) for s in range(steps)]
    np.testing.assert_allclose(mine, torch_lrs, rtol=1e-9, atol=1e-12)
    ours = [train.cosine_schedule(s, steps=steps, warmup_steps=warmup, min_ratio=min_ratio) for s in range(steps)]
    np.testing.assert_allclose(mine, ours, rtol=1e-12)
