"""Solutions to the exercises of notebooks/08 (knowledge distillation), each checked against an independent result."""

import math

import pytest
import torch
import torch.nn.functional as F

from cookbook import finetune, models, planning


# Exercise 1: Hinton's high-temperature limit
def high_temperature_gradient(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The limit, as T grows, of d/dz of T²·KL(softmax(v/T) ‖ softmax(z/T)) for zero-mean logits: (z − v) / N."""
    return (z - v) / z.shape[-1]


def test_high_temperature_gradient_is_the_limit():
    gen = torch.Generator().manual_seed(0)
    z, v = torch.randn(2, 1, 20, generator=gen, dtype=torch.float64).unbind(0)
    z, v = z - z.mean(), v - v.mean()  # zero-mean logits, as Hinton assumes
    limit = high_temperature_gradient(z, v)
    errors = []
    for T in (10.0, 100.0, 1000.0):
        s = z.clone().requires_grad_()
        finetune.soft_target_loss(s, v, T).backward()  # one position: the mean is that position's loss
        errors.append((s.grad - limit).abs().max().item())
    assert errors[0] > errors[1] > errors[2]  # closer as T grows ...
    assert errors[2] < 1e-3 * limit.abs().max().item()  # ... and there at T = 1000
    s = z.clone().requires_grad_()
    finetune.soft_target_loss(s, v, 1.0).backward()  # at T = 1 the limit is not the gradient
    assert (s.grad - limit).abs().max() > 10 * errors[2]


# Exercise 2: equal compute
def equal_compute_steps(steps: int, student_train_flops: float, teacher_forward_flops: float) -> int:
    """Scratch steps that cost as much as `steps` distilled steps (student training + teacher forward per token)."""
    return round(steps * (1 + teacher_forward_flops / student_train_flops))


@pytest.mark.parametrize("student,teacher", [("tiny", "smoke"), ("tiny", "full"), ("smoke", "full")])
def test_equal_compute_steps(student, teacher):
    s_cfg, t_cfg = models.config(student, 512), models.config(teacher, 512)
    s_train = planning.flops_per_token(s_cfg, 128)
    t_fwd = planning.flops_per_token(t_cfg, 128, training=False)
    steps = equal_compute_steps(40, s_train, t_fwd)
    # independent check: the forward is a third of training for the same model, so 3·t_fwd / t_train = 1
    assert t_fwd * 3 == pytest.approx(planning.flops_per_token(t_cfg, 128))
    assert abs(steps * s_train - 40 * (s_train + t_fwd)) <= s_train / 2  # the budgets match to half a step
    assert steps > 40  # a larger teacher always makes a distilled step dearer
    assert equal_compute_steps(40, s_train, 0.0) == 40  # no teacher: nothing to make up


# Exercise 3: reverse KL by hand
def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T²·KL(student_T ‖ teacher_T), averaged over positions, from log_softmax alone."""
    log_q = F.log_softmax(student_logits / T, -1)
    log_p = F.log_softmax(teacher_logits / T, -1)
    return (log_q.exp() * (log_q - log_p)).sum(-1).mean() * T**2


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_reverse_kl_by_hand(T):
    gen = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 3, 5, 30, generator=gen, dtype=torch.float64).unbind(0)
    mine = reverse_kl(s, t, T)
    torch.testing.assert_close(mine, finetune.reverse_kl_loss(s, t, T), rtol=1e-10, atol=1e-12)
    forward = finetune.soft_target_loss(s, t, T)
    assert abs(mine.item() - forward.item()) > 1e-3  # KL is not symmetric
    assert reverse_kl(t, t, T).item() == pytest.approx(0.0, abs=1e-12)
    assert math.isfinite(mine.item()) and mine.item() > 0
