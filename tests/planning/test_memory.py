"""cookbook.planning.memory against the ZeRO paper's worked example, Korthikanti et al.'s formula and hand counts."""

import pytest
from transformers import DeepseekV3Config

from cookbook import planning
from tests.planning.configs import llama


@pytest.mark.parametrize("stage, per_gpu", [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_paper_worked_example(stage, per_gpu):
    # ZeRO paper (Rajbhandari et al. 2020), Figure 1: 7.5B parameters, K = 12, 64 GPUs
    for precision in ("fp16-mixed", "bf16-mixed"):
        est = planning.training_memory(7_500_000_000, precision=precision, zero_stage=stage, n_gpus=64)
        assert round(est["gpu_total"], 1) == per_gpu
        assert est["cpu_total"] == est["activations"] == est["gathered"] == 0


def test_bytes_per_parameter():
    def per_param(**kw):
        return planning.training_memory(10**9, **kw)["gpu_total"]  # GB per 1e9 params = bytes/param

    assert per_param(precision="fp32") == 4 + 4 + 8  # the same 16 bytes as mixed precision
    assert per_param(precision="bf16-mixed") == 2 + 2 + 4 + 8
    assert per_param(precision="bf16") == 2 + 2 + 2 + 2  # pure bf16: no master, bf16 moments
    assert per_param(precision="bf16-mixed", optimizer="adamw-8bit") == 2 + 2 + 4 + 1 + 1
    assert per_param(precision="bf16-mixed", optimizer="sgd") == 2 + 2 + 4 + 4
    assert per_param(precision="fp32", optimizer="adafactor") == 4 + 4
    frozen = planning.training_memory(10**9, trainable=10**6)  # LoRA-like: 0.1% trainable
    assert frozen["params"] == 2 and frozen["grads"] == pytest.approx(0.002) and frozen["optimizer"] == 0.012


def test_offload_moves_states_to_cpu():
    total = 10**9
    base = planning.training_memory(total, zero_stage=2, n_gpus=4)
    off = planning.training_memory(total, zero_stage=2, n_gpus=4, offload_optimizer=True)
    assert off["optimizer"] == off["grads"] == 0 and off["params"] == base["params"] == 2
    assert off["cpu_total"] == pytest.approx(12 + 2)  # all optimizer states + all gradient shards, in GB
    both = planning.training_memory(total, zero_stage=3, n_gpus=4, offload_optimizer=True, offload_params=True)
    assert both["params"] == both["grads"] == both["optimizer"] == 0
    assert both["cpu_total"] == pytest.approx(16)


def test_activation_memory_korthikanti():
    config = llama()
    s, b, h, a, layers, v = 8, 2, 16, 4, 2, 100
    logits = 4 * s * b * v
    full = layers * s * b * h * (34 + 5 * a * s / h) + logits
    got = planning.activation_memory(config, b, s, checkpointing=False, flash_attention=False) * 1e9
    assert got == pytest.approx(full)
    assert planning.activation_memory(config, b, s, checkpointing=False) * 1e9 == pytest.approx(
        layers * 34 * s * b * h + logits)
    assert planning.activation_memory(config, b, s) * 1e9 == pytest.approx(
        layers * 2 * s * b * h + 34 * s * b * h + logits)


def test_training_memory_from_config_adds_layers_and_activations():
    config = planning.llama1_config("7B")
    est = planning.training_memory(config, zero_stage=3, n_gpus=8, seq_len=2048)
    layer = 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096
    assert est["gathered"] == pytest.approx(2 * layer * 2 / 1e9)  # two bf16 layers in flight
    assert est["activations"] == pytest.approx(planning.activation_memory(config, 1, 2048))
    parts = est.drop(["gpu_total", "cpu_total"])
    assert est["gpu_total"] == pytest.approx(parts.sum())
    one = planning.training_memory(config, zero_stage=3, n_gpus=1)
    assert one["gathered"] == 0  # a single GPU holds the whole model: nothing to gather


def test_kv_cache():
    assert planning.kv_cache_memory(planning.llama1_config("7B"), 1, 2048) == 32 * 2 * 32 * 128 * 2048 * 2 / 1e9
    v3 = DeepseekV3Config()  # MLA caches the 512-dim latent + 64-dim rope key per token and layer
    assert planning.kv_cache_memory(v3, 1, 4096) == 61 * (512 + 64) * 4096 * 2 / 1e9


@pytest.mark.parametrize("kwargs, match", [
    (dict(zero_stage=4), "zero_stage"),
    (dict(zero_stage=True), "zero_stage"),
    (dict(zero_stage=2, offload_params=True), "zero_stage=3"),
    (dict(offload_optimizer=True), "zero_stage >= 1"),
    (dict(n_gpus=0), "n_gpus"),
    (dict(precision="fp8"), "unknown precision"),
    (dict(optimizer="lion"), "unknown optimizer"),
    (dict(trainable=2 * 10**9), "trainable"),
    (dict(seq_len=128), "pass a config"),
])
def test_training_memory_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        planning.training_memory(10**9, **kwargs)


def test_training_memory_bad_model():
    with pytest.raises(ValueError, match="positive parameter count"):
        planning.training_memory(0)
    with pytest.raises(ValueError, match="positive parameter count"):
        planning.training_memory(float("inf"))
    assert planning.training_memory(7.5e9)["gpu_total"] == 120.0  # a float count is fine
    with pytest.raises(ValueError, match="micro_batch"):
        planning.activation_memory(llama(), 0, 8)
