"""cookbook.planning.memory against the ZeRO paper's worked example, Korthikanti et al.'s formula and hand counts."""

import re
import types

import pytest
from transformers import DeepseekV3Config, LlamaConfig

from cookbook import planning
from tests.planning.configs import LLAMA, llama


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


# Every ZeRO stage x offload x GPU count for 1e9 parameters in bf16-mixed AdamW, written out by hand from the
# ZeRO paper's 2 + 2 + 12 bytes: stage 1 splits the 12, stage 2 also the 2 of gradients, stage 3 also the 2 of
# weights; an offloaded optimizer takes every state shard and every gradient shard to CPU (12 + 2 = 14 GB for the
# whole job, whatever the stage); offloaded weights add their 2 GB.
@pytest.mark.parametrize("stage, n, off_opt, off_par, params, grads, optimizer, cpu", [
    (0, 1, False, False, 2, 2, 12, 0), (0, 4, False, False, 2, 2, 12, 0),
    (1, 1, False, False, 2, 2, 12, 0), (1, 4, False, False, 2, 2, 3, 0),
    (1, 1, True, False, 2, 0, 0, 14), (1, 4, True, False, 2, 0, 0, 14),  # not 20: the gradient shards, not 4 copies
    (2, 1, False, False, 2, 2, 12, 0), (2, 4, False, False, 2, 0.5, 3, 0), (2, 8, True, False, 2, 0, 0, 14),
    (3, 1, False, False, 2, 2, 12, 0), (3, 4, False, False, 0.5, 0.5, 3, 0), (3, 8, False, False, 0.25, 0.25, 1.5, 0),
    (3, 4, True, False, 0.5, 0, 0, 14), (3, 4, True, True, 0, 0, 0, 16), (3, 1, False, True, 0, 2, 12, 2),
])
def test_every_stage_offload_and_gpu_count_by_hand(stage, n, off_opt, off_par, params, grads, optimizer, cpu):
    est = planning.training_memory(10**9, zero_stage=stage, n_gpus=n, offload_optimizer=off_opt,
                                   offload_params=off_par)
    got = est[["params", "grads", "optimizer", "cpu_total"]].tolist()
    assert got == pytest.approx([params, grads, optimizer, cpu])
    assert est["gpu_total"] == pytest.approx(params + grads + optimizer) and est.name == "GB"


def test_defaults_are_one_gpu_without_offload():
    assert planning.training_memory(10**9, zero_stage=3)["gpu_total"] == 16  # n_gpus=1: nothing is split
    assert planning.training_memory(1)["gpu_total"] == pytest.approx(16e-9)  # the smallest model: one parameter


@pytest.mark.parametrize("trainable, grads, optimizer", [(0, 0, 0), (10**9, 2, 12), (0.5e9, 1, 6)])
def test_trainable_bounds_are_inclusive(trainable, grads, optimizer):
    est = planning.training_memory(10**9, trainable=trainable)
    assert (est["params"], est["grads"], est["optimizer"]) == (2, grads, optimizer)


@pytest.mark.parametrize("trainable", [-1, 10**9 + 1, True, "all"])
def test_trainable_out_of_range(trainable):
    message = f"trainable must be an int between 0 and the 1000000000 parameters, got {trainable!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        planning.training_memory(10**9, trainable=trainable)


def test_training_memory_passes_activation_options_on():
    config = llama()
    for checkpointing, flash in [(False, False), (False, True), (True, False)]:
        est = planning.training_memory(config, seq_len=8, micro_batch=2, checkpointing=checkpointing,
                                       flash_attention=flash)
        assert est["activations"] == planning.activation_memory(config, 2, 8, checkpointing=checkpointing,
                                                                flash_attention=flash)


@pytest.mark.parametrize("kwargs, message", [
    (dict(zero_stage=4), "zero_stage must be 0, 1, 2 or 3, got 4"),
    (dict(n_gpus=0), "n_gpus must be a positive int, got 0"),
    (dict(zero_stage=2, offload_params=True), "offload_params needs zero_stage=3 (only stage 3 partitions the weights)"),
    (dict(offload_optimizer=True),
     "offload_optimizer needs zero_stage >= 1 (ZeRO-Offload works on partitioned states)"),
    (dict(precision="fp8"), "unknown precision 'fp8'; valid: fp32, bf16-mixed, fp16-mixed, bf16"),
    (dict(optimizer="lion"), "unknown optimizer 'lion'; valid: adamw, adamw-8bit, sgd, adafactor"),
    (dict(seq_len=128), "activations need the model's shape: pass a config, not a parameter count"),
])
def test_training_memory_error_messages_in_full(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        planning.training_memory(10**9, **kwargs)


def test_inference_memory_splits_weights_and_cache_over_gpus():
    config = planning.llama1_config("65B")
    # LLaMA-65B by hand: 80 layers of 4·h² (attention) + 3·h·ffn (SwiGLU) + 2·h (norms), embedding + lm_head, norm
    h, ffn = 8192, 22016
    total = 80 * (4 * h * h + 3 * h * ffn + 2 * h) + 2 * 32000 * h + h
    cache = 80 * 2 * 64 * 128 * 2048 * 2 / 1e9  # K and V, 64 heads x 128 dims, 2048 tokens, 2 bytes: 5.37 GB
    two = planning.inference_memory(config, n_gpus=2)
    assert two["params"] == pytest.approx(total * 2 / 1e9 / 2)
    assert two["kv_cache"] == pytest.approx(cache / 2) and round(two["kv_cache"], 2) == 2.68  # not 5.37
    assert two["gpu_total"] == pytest.approx(two["params"] + two["kv_cache"]) and two.name == "GB"
    one = planning.inference_memory(config, batch=3, seq_len=100, bytes_per_param=1)
    assert one["params"] == pytest.approx(total / 1e9)
    assert one["kv_cache"] == pytest.approx(80 * 2 * 64 * 128 * 3 * 100 * 2 / 1e9)
    with pytest.raises(ValueError, match="^n_gpus must be a positive int, got 0$"):
        planning.inference_memory(config, n_gpus=0)


def test_kv_cache_batch_and_bytes_per_value():
    config = llama()  # 2 layers, 2 KV heads (GQA) of 16 / 4 = 4 dims
    assert planning.kv_cache_memory(config, 3, 5, bytes_per_value=1) == 2 * 2 * 2 * 4 * 3 * 5 / 1e9
    with pytest.raises(ValueError, match="^batch must be a positive int, got 0$"):
        planning.kv_cache_memory(config, 0, 5)
    with pytest.raises(ValueError, match="^seq_len must be a positive int, got 0$"):
        planning.kv_cache_memory(config, 1, 0)


def test_gathered_layers_counted_exactly_from_two_gpus_on():
    config = llama()  # per layer: q 16x16, k and v 16x8, o 16x16, gate/up 16x24, down 24x16, two norms of 16
    layer = 2 * 16 * 16 + 2 * 16 * 8 + 3 * 16 * 24 + 2 * 16
    est = planning.training_memory(config, zero_stage=3, n_gpus=2)
    assert est["gathered"] == pytest.approx(2 * layer * 2 / 1e9, rel=1e-12)  # two bf16 layers, not 1 + layer
    offloaded = planning.training_memory(config, zero_stage=3, n_gpus=1, offload_optimizer=True, offload_params=True)
    assert offloaded["gathered"] == est["gathered"]  # one GPU but weights on the CPU: they are gathered too
    no_layers = LlamaConfig(**{**LLAMA, "num_hidden_layers": 0})
    assert planning.training_memory(no_layers, zero_stage=3, n_gpus=2)["gathered"] == 0


def test_kv_cache_without_a_kv_head_count_uses_the_attention_heads():
    config = types.SimpleNamespace(num_hidden_layers=2, num_attention_heads=4, hidden_size=16)  # GPT-2 style
    assert planning.kv_cache_memory(config, 1, 10) == 2 * 2 * 4 * 4 * 10 * 2 / 1e9


@pytest.mark.parametrize("args, message", [((2, 0), "seq_len must be a positive int, got 0"),
                                           ((0, 8), "micro_batch must be a positive int, got 0")])
def test_activation_memory_messages(args, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        planning.activation_memory(llama(), *args)
