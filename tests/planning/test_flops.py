"""cookbook.planning.flops against torch's FLOP counter, PaLM's formula and NVIDIA's datasheets."""

import math
import re
import types

import pytest
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM, DeepseekV3Config, LlamaConfig, MixtralConfig

from cookbook import planning
from cookbook.planning.flops import head_dims
from tests.planning.configs import LLAMA, llama, mla
from tests.planning.test_params import MOE_FAMILIES


def measured_flops(model, batch, seq, backward):
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        out = model(input_ids=ids, labels=ids if backward else None)
        if backward:
            out.loss.backward()
    return counter.get_total_flops()


def moe(family):
    return getattr(transformers, f"{family}Config")(**MOE_FAMILIES[family][0])


@pytest.mark.parametrize("make", [llama, mla, lambda: moe("Mixtral"), lambda: moe("Qwen2Moe")],
                         ids=["llama", "deepseek-v3", "mixtral", "qwen2-moe"])
def test_flops_match_torch_flop_counter(make):
    config = make()
    config._attn_implementation = "eager"  # explicit matmuls: torch counts CPU SDPA kernels as 0 FLOPs
    config._experts_implementation = "eager"  # the counter has no formula for grouped_mm
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    batch, seq = 2, 16
    # the eager experts multiply each token by its k experts only: the counter sees exactly the active weights
    forward = measured_flops(model, batch, seq, backward=False)
    assert forward == batch * seq * planning.flops_per_token(config, seq, training=False)
    # backward = 2x forward (grads of inputs and of weights), so a training step is exactly 3x here
    assert measured_flops(model, batch, seq, backward=True) == batch * seq * planning.flops_per_token(config, seq)


def test_mixtral_flops_count_two_of_eight_experts():
    config = MixtralConfig()  # Mixtral-8x7B
    d, i, layers, vocab, seq = 4096, 14336, 32, 32000, 4096
    n = layers * (2 * d * d + 2 * d * 1024 + 2 * 3 * d * i + 8 * d) + vocab * d  # attention, 2 experts, router, head
    assert planning.matmul_params(config) == n == 12_748_587_008
    attention = 2 * layers * 32 * seq * (128 + 128)
    assert planning.flops_per_token(config, seq) == 3 * (2 * n + attention)
    # counting all 8 experts (the bug: the expert count was read only from n_routed_experts) made N, and the
    # Trainer's MFU, 3.65x too high
    all_experts = n + layers * 6 * 3 * d * i
    assert all_experts / planning.matmul_params(config) == pytest.approx(3.653, abs=1e-3)


def test_flops_formula_terms():
    config = planning.llama1_config("7B")
    n, seq = planning.matmul_params(config), 2048
    attention = 2 * 32 * 32 * seq * (128 + 128)  # 2 x layers x heads x context x (qk dim + v dim)
    assert planning.flops_per_token(config, seq, training=False) == 2 * n + attention
    assert planning.flops_per_token(config, seq) == 6 * n + 12 * 32 * 4096 * seq  # PaLM's 6N + 12LHQT
    assert planning.flops_per_token(config, seq, causal=True) == 6 * n + 3 * attention / 2
    v3 = DeepseekV3Config()  # MLA: scores over 192 dims (128 nope + 64 rope), values 128
    assert planning.flops_per_token(v3, 4096, training=False) - 2 * planning.matmul_params(v3) == (
        2 * 61 * 128 * 4096 * (192 + 128))


def test_mfu_and_peaks():
    assert planning.mfu(1000.0, 6e9, 1e13) == pytest.approx(0.6)
    assert planning.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989.4e12
    assert planning.peak_flops("NVIDIA H100 PCIe", "bf16-mixed") == 756e12
    assert planning.peak_flops("NVIDIA A100-SXM4-80GB", "tf32") == 156e12
    assert planning.peak_flops("NVIDIA A100-SXM4-40GB", "fp16") == 312e12
    assert planning.peak_flops("NVIDIA GeForce RTX 4090", "fp16") == 165.2e12
    assert planning.peak_flops("NVIDIA L4", "fp32") == 30.3e12
    assert planning.peak_flops("NVIDIA A10G", "bf16") == 125e12  # not mistaken for an A100
    assert planning.peak_flops("NVIDIA L40S", "bf16") == 362e12  # not mistaken for an L4
    assert planning.peak_flops("NVIDIA H800", "bf16") == 989.4e12
    with pytest.raises(ValueError, match="unknown GPU"):
        planning.peak_flops("NVIDIA L40")  # a different card: no silent match on "L4"
    for gpu in planning.GPUS.values():  # tensor cores beat plain fp32 wherever they exist
        assert all(gpu[p] is None or gpu[p] >= gpu["fp32"] for p in ("tf32", "bf16", "fp16"))


@pytest.mark.parametrize("call, match", [
    (lambda: planning.peak_flops("Radeon 7900"), "unknown GPU"),
    (lambda: planning.peak_flops("V100", "bf16"), "no bf16"),
    (lambda: planning.peak_flops("H100 SXM", "int8"), "unknown precision"),
    (lambda: planning.mfu(-1.0, 6e9, 1e13), "tokens_per_s"),
    (lambda: planning.mfu(1.0, 6e9, 0), "peak_flops"),
    (lambda: planning.mfu(1.0, float("nan"), 1e12), "flops_per_token"),
    (lambda: planning.flops_per_token(llama(), 0), "seq_len"),
    (lambda: planning.flops_per_token({"hidden_size": 8}, 16), "transformers model config"),
])
def test_bad_inputs_flops(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_peak_flops_of_current_device_needs_cuda():
    if torch.cuda.is_available():
        try:
            assert planning.peak_flops() > 0
        except ValueError as err:  # a GPU missing from the table must say so
            assert "unknown GPU" in str(err)
    else:
        with pytest.raises(ValueError, match="no CUDA device"):
            planning.peak_flops()


def test_mfu_boundaries_and_messages():
    assert planning.mfu(0, 6e9, 1e13) == 0.0  # an idle run: zero tokens/s is a valid measurement
    assert planning.mfu(4.0, 0.5, 1.0) == 2.0  # values below 1 are fine (the check is > 0, not >= 1)
    for args, name, value in [((-1.0, 6e9, 1e13), "tokens_per_s", -1.0), ((1.0, 0, 1e13), "flops_per_token", 0),
                              ((1.0, 6e9, math.inf), "peak_flops", math.inf)]:
        with pytest.raises(ValueError, match=f"^{name} must be a positive finite number, got {value!r}$"):
            planning.mfu(*args)


def test_peak_flops_defaults_case_and_messages():
    assert planning.peak_flops("H100 SXM") == planning.peak_flops("H100 SXM", "bf16") == 989.4e12  # bf16 default
    assert planning.peak_flops("nvidia h100 80gb hbm3") == 989.4e12  # device names match case-insensitively
    known = ", ".join(planning.GPUS)
    with pytest.raises(ValueError, match="^" + re.escape(f"unknown GPU 'TPU v5'; known: {known}") + "$"):
        planning.peak_flops("TPU v5")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=f"^{re.escape('no CUDA device: pass gpu= one of ' + known)}$"):
            planning.peak_flops()


def test_head_dims_use_an_explicit_head_dim():
    config = LlamaConfig(**{**LLAMA, "head_dim": 8})  # 4 heads of 8, not hidden 16 / 4 heads = 4
    assert head_dims(config) == (4, 8, 8)
    plain = types.SimpleNamespace(num_attention_heads=4, hidden_size=16)  # a config without head_dim
    assert head_dims(plain) == (4, 4, 4) and all(isinstance(d, int) for d in head_dims(plain))  # counts: ints


def test_peak_flops_reads_the_current_cuda_devices_name(monkeypatch):
    """gpu=None asks torch for the device's name: an H100 SXM's ("NVIDIA H100 80GB HBM3") gets the datasheet's
    989.4 TFLOP/s of dense bf16 and 66.9 of fp32 (checked here without a GPU: torch's answers stand in)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert planning.peak_flops() == 989.4e12 and planning.peak_flops(precision="fp32") == 66.9e12


def test_flops_per_token_seq_len_bounds():
    """One token of context is the smallest: its attention term is 2 x layers x heads x 1 x (qk + v dims)."""
    config = llama()
    heads, qk, v = head_dims(config)
    one = 2 * planning.matmul_params(config) + 2 * config.num_hidden_layers * heads * 1 * (qk + v)
    assert planning.flops_per_token(config, 1, training=False) == one
    with pytest.raises(ValueError, match="^seq_len must be a positive int, got 0$"):
        planning.flops_per_token(config, 0)
