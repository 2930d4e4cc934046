"""Solutions to the exercises of notebooks/07 (LoRA fine-tuning), each checked against an independent result."""

import math

import numpy as np
import peft
import pytest
import torch


# Exercise 1: merge by hand
def merge(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float, r: int) -> torch.Tensor:
    """The weight of a merged LoRA layer: W + (alpha / r) · B A."""
    return W + (alpha / r) * B @ A


def test_merge_equals_peft_merge_and_unload():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 10))
    W = model[0].weight.detach().clone()
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0"]))
    layer = wrapped.base_model.model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()  # not zero, so the merge changes W
    A, B = layer.lora_A["default"].weight.detach().clone(), layer.lora_B["default"].weight.detach().clone()
    x = torch.randn(5, 12)
    with torch.no_grad():
        adapter_out = wrapped(x)
    merged = merge(W, A, B, alpha=8, r=4)
    unloaded = wrapped.merge_and_unload()
    torch.testing.assert_close(merged, unloaded[0].weight.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x @ merged.T + unloaded[0].bias.detach(), adapter_out, rtol=1e-5, atol=1e-5)
    assert (merged - W).abs().max() > 1e-3  # the merge did something


# Exercise 2: when does LoRA stop saving?
def lora_params(d_in: int, d_out: int, r: int) -> int:
    """Parameters of a rank-r adapter on a d_out × d_in weight: A is r × d_in, B is d_out × r."""
    return r * (d_in + d_out)


def break_even_rank(d_in: int, d_out: int) -> int:
    """The smallest rank whose adapter has at least as many parameters as the weight itself."""
    return math.ceil(d_in * d_out / (d_in + d_out))


@pytest.mark.parametrize("d_in,d_out,r", [(12, 10, 4), (64, 16, 3), (7, 300, 5)])
def test_lora_params_equal_peft_count(d_in, d_out, r):
    wrapped = peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(d_in, d_out)),
                                  peft.LoraConfig(r=r, lora_alpha=r, target_modules=["0"]))
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert lora_params(d_in, d_out, r) == trainable


@pytest.mark.parametrize("d_in,d_out", [(12, 10), (64, 16), (7, 300), (256, 256)])
def test_break_even_rank_by_search(d_in, d_out):
    search = next(r for r in range(1, d_in * d_out + 1) if lora_params(d_in, d_out, r) >= d_in * d_out)
    assert break_even_rank(d_in, d_out) == search
    assert break_even_rank(256, 256) == 128  # a square weight: half its width


# Exercise 3: a paired bootstrap over held-out examples
def paired_bootstrap(sums_a, sums_b, counts, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of (token-weighted loss of a) - (of b), resampling examples with replacement, both runs alike."""
    sums_a, sums_b, counts = np.asarray(sums_a, float), np.asarray(sums_b, float), np.asarray(counts, float)
    draws = np.random.default_rng(seed).integers(0, len(counts), size=(resamples, len(counts)))
    gaps = (sums_a[draws].sum(1) - sums_b[draws].sum(1)) / counts[draws].sum(1)
    return float(np.quantile(gaps, 0.025)), float(np.quantile(gaps, 0.975))


def test_paired_bootstrap_identities():
    rng = np.random.default_rng(1)
    counts = rng.integers(5, 40, size=48)
    sums = rng.gamma(2.0, 1.0, size=48) * counts
    assert paired_bootstrap(sums, sums, counts) == (0.0, 0.0)  # the same run: no gap on any resample
    lo, hi = paired_bootstrap(sums + 0.25 * counts, sums, counts)  # worse by 0.25 nats on every token
    assert lo == pytest.approx(0.25) and hi == pytest.approx(0.25)


def test_paired_bootstrap_against_the_normal_approximation():
    # independent check: for many examples the interval matches the delta-method normal interval of a ratio
    rng = np.random.default_rng(2)
    counts = rng.integers(5, 40, size=2000).astype(float)
    diff_per_token = rng.normal(0.05, 0.3, size=2000)
    sums_b = rng.gamma(2.0, 1.0, size=2000) * counts
    sums_a = sums_b + diff_per_token * counts
    lo, hi = paired_bootstrap(sums_a, sums_b, counts, resamples=4000)
    d = sums_a - sums_b
    ratio = d.sum() / counts.sum()
    se = np.sqrt(np.sum((d - ratio * counts) ** 2)) / counts.sum()
    assert lo == pytest.approx(ratio - 1.96 * se, abs=0.25 * se)
    assert hi == pytest.approx(ratio + 1.96 * se, abs=0.25 * se)
    assert lo > 0  # a true gap of 0.05 nats on 2000 examples is resolved
