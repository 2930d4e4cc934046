"""cookbook.planning against hand counts, published figures, the ZeRO paper and torch's FLOP counter."""

import json
import math

import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, LlamaConfig, LlamaForCausalLM

from cookbook import planning

# Tiny configs written out here (not taken from cookbook.models) so the hand counts below stay fixed.
LLAMA = dict(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=24, tie_word_embeddings=False)
MLA = dict(vocab_size=512, hidden_size=64, intermediate_size=192, moe_intermediate_size=32, num_hidden_layers=2,
           first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=32,
           qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8, num_experts_per_tok=2,
           n_group=4, topk_group=2, n_shared_experts=1, tie_word_embeddings=False)


def llama():
    return LlamaConfig(**LLAMA)


def mla():
    return DeepseekV3Config(**MLA)


def test_count_params_tiny_llama_by_hand():
    d, v, i, layers, kv_dim = 16, 100, 24, 2, 2 * (16 // 4)  # kv dim = kv heads x head dim
    attention = d * d + 2 * d * kv_dim + d * d  # q, k, v, o (no biases)
    mlp = 3 * d * i  # gate, up, down
    norms = 2 * d * layers + d  # two RMSNorms per layer + the final one
    parts = planning.count_params(llama())
    assert parts["embeddings"] == 2 * v * d == 3200  # untied input table + output head
    assert parts["attention"] == layers * attention == 1536
    assert parts["dense_mlp"] == layers * mlp == 2304
    assert parts["norms"] == norms == 80
    assert parts["total"] == parts["active"] == 7120
    assert parts["routed_experts"] == parts["shared_experts"] == parts["router"] == 0


def test_count_params_tiny_mla_moe_by_hand():
    d, heads, q_rank, kv_rank, nope, rope, v_dim = 64, 4, 32, 32, 16, 8, 16
    attention = (d * q_rank + q_rank  # q down-projection + its RMSNorm
                 + q_rank * heads * (nope + rope)  # q up-projection to every head's nope+rope dims
                 + d * (kv_rank + rope) + kv_rank  # joint kv latent + shared rope key, + latent RMSNorm
                 + kv_rank * heads * (nope + v_dim)  # latent up to per-head keys (nope) and values
                 + heads * v_dim * d)  # output projection
    assert attention == 15936
    expert = 3 * d * 32  # gate, up, down of one expert (moe_intermediate_size 32)
    parts = planning.count_params(mla())
    assert parts["attention"] == 2 * attention
    assert parts["dense_mlp"] == 3 * d * 192  # layer 0 is dense
    assert parts["routed_experts"] == 8 * expert == 49152
    assert parts["shared_experts"] == expert
    assert parts["router"] == 8 * d
    assert parts["embeddings"] == 2 * 512 * d
    assert parts["norms"] == 2 * 2 * d + d
    assert parts["total"] == 190400
    assert parts["active"] == 190400 - 8 * expert + 2 * expert  # top-2 of 8 experts per token
    # N for FLOPs: active minus the input table, the norm gains and MLA's two latent norms
    assert planning.matmul_params(mla()) == parts["active"] - 512 * d - parts["norms"] - 2 * (q_rank + kv_rank)


def test_tied_head_still_costs_a_matmul():
    tied = LlamaConfig(**{**LLAMA, "tie_word_embeddings": True})
    assert planning.count_params(tied)["embeddings"] == 100 * 16
    assert planning.matmul_params(tied) == planning.matmul_params(llama())


def test_deepseek_v3_public_figures():
    config = DeepseekV3Config()  # transformers' defaults are the released V3 shape
    parts = planning.count_params(config)
    assert parts["total"] == pytest.approx(671e9, rel=0.02)  # "671B total parameters"
    assert parts["active"] == pytest.approx(37e9, rel=0.02)  # "37B activated for each token"
    # the multi-token-prediction module (14B in the 685B checkpoint) is not part of the 671B nor of the model
    with torch.device("meta"):
        names = [n for n, _ in DeepseekV3ForCausalLM(config).named_parameters()]
    assert not any("mtp" in n for n in names) and len(names) > 0
    assert parts["routed_experts"] / parts["total"] > 0.97  # nearly all weights sit in routed experts


@pytest.mark.parametrize("size, published", [("7B", 6.7e9), ("13B", 13.0e9), ("65B", 65.2e9)])
def test_llama1_counts_match_the_paper(size, published):
    total = planning.count_params(planning.llama1_config(size))["total"]
    assert math.floor(total / 1e8) * 1e8 == published  # the paper truncates to 0.1B (65.29B is "65.2B")


def test_llama1_7b_exact():
    d, layers, i, v = 4096, 32, 11008, 32000
    assert planning.count_params(planning.llama1_config("7B"))["total"] == (
        2 * v * d + layers * (4 * d * d + 3 * d * i + 2 * d) + d) == 6_738_415_616


def measured_flops(model, batch, seq, backward):
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        out = model(input_ids=ids, labels=ids if backward else None)
        if backward:
            out.loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("make, cls", [(llama, LlamaForCausalLM), (mla, DeepseekV3ForCausalLM)])
def test_flops_match_torch_flop_counter(make, cls):
    config = make()
    config._attn_implementation = "eager"  # explicit matmuls: torch counts CPU SDPA kernels as 0 FLOPs
    config._experts_implementation = "eager"  # the counter has no formula for grouped_mm
    torch.manual_seed(0)
    model = cls(config)
    batch, seq = 2, 16
    forward = measured_flops(model, batch, seq, backward=False)
    assert forward == batch * seq * planning.flops_per_token(config, seq, training=False)
    # backward = 2x forward (grads of inputs and of weights), so a training step is exactly 3x here
    assert measured_flops(model, batch, seq, backward=True) == batch * seq * planning.flops_per_token(config, seq)


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
    (lambda: planning.count_params({"hidden_size": 8}), "transformers model config"),
    (lambda: planning.llama1_config("8B"), "valid sizes: 7B, 13B, 65B"),
    (lambda: planning.lora_params(llama(), 0), "rank"),
    (lambda: planning.lora_params(llama(), 4, targets=("c_attn",)), "no linear layer"),
])
def test_bad_inputs_flops_and_params(call, match):
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


def test_lora_params_by_hand():
    r, d, i, kv = 2, 16, 24, 8
    per_layer = r * ((d + d) + 2 * (d + kv) + (d + d) + 2 * (d + i) + (i + d))  # q, k, v, o, gate, up, down
    assert planning.lora_params(llama(), r) == 2 * per_layer == 928
    assert planning.lora_params(llama(), r, targets=("q_proj", "v_proj")) == 2 * r * (2 * d + d + kv)


# ----------------------------------------------------------------------------- memory
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


# ----------------------------------------------------------------------------- ZeRO config
def test_zero_config():
    cfg = planning.zero_config(3, offload_optimizer=True, offload_params=True, hidden_size=4096,
                               micro_batch_size=2, gradient_accumulation_steps=4)
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"] == zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert zero["reduce_bucket_size"] == 4096**2 and zero["stage3_param_persistence_threshold"] == 40960
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert "train_batch_size" not in cfg  # DeepSpeed derives it from micro x accumulation x world size
    assert json.loads(json.dumps(cfg)) == cfg  # plain JSON, ready for a ds_config.json file
    stage0 = planning.zero_config(0, precision="fp16-mixed")
    assert stage0["zero_optimization"] == {"stage": 0} and stage0["fp16"]["enabled"]
    assert stage0["train_batch_size"] == "auto"


@pytest.mark.parametrize("kwargs, match", [
    (dict(stage=2, offload_params=True), "stage 3"),
    (dict(stage=0, offload_optimizer=True), "stage 1, 2 or 3"),
    (dict(stage=5), "stage must be"),
    (dict(stage=1, precision="bf16"), "bf16-mixed"),
    (dict(stage=1, micro_batch_size=0), "micro_batch_size"),
    (dict(stage=1, gradient_clipping=-1.0), "gradient_clipping"),
])
def test_zero_config_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        planning.zero_config(**kwargs)


def test_zero_config_passes_deepspeed_validation():
    # DeepSpeed's own pydantic models forbid unknown keys, so they catch any misspelt option.
    zero_model = pytest.importorskip("deepspeed.runtime.zero.config").DeepSpeedZeroConfig
    precision = pytest.importorskip("deepspeed.runtime.precision_config")
    for stage, oo, op in [(0, False, False), (1, True, False), (2, True, False), (3, True, True), (3, False, True)]:
        cfg = planning.zero_config(stage, offload_optimizer=oo, offload_params=op, hidden_size=1024)
        zero = zero_model(**cfg["zero_optimization"])
        assert zero.stage == stage and (zero.offload_optimizer is not None) == oo
        assert (zero.offload_param is not None) == op
    assert precision.get_bfloat16_config(planning.zero_config(1)).enabled
    assert precision.get_float16_config(planning.zero_config(1, precision="fp16-mixed")).loss_scale == 0


# ----------------------------------------------------------------------------- which hardware
def test_min_gpus():
    assert planning.min_gpus(lambda n: 100 / n, 80, usable=1.0) == 2
    assert planning.min_gpus(lambda n: 100 / n, 80, usable=0.5) == 3
    assert planning.min_gpus(lambda n: 100.0, 80) is None  # no sharding: more GPUs never help
    with pytest.raises(ValueError, match="usable"):
        planning.min_gpus(lambda n: 1.0, 80, usable=0)


def test_hardware_table():
    table = planning.hardware_table()
    assert list(table.index.get_level_values("model").unique()) == ["7B", "13B", "65B"]
    gpus = table[["24 GB GPUs", "40 GB GPUs", "80 GB GPUs"]]
    zero0 = gpus.xs("full fine-tune, bf16-mixed AdamW, ZeRO-0", level="regime")
    assert zero0.isna().all().all()  # 16 bytes/param x 6.7B = 108 GB > 80 GB, and ZeRO-0 never shards
    # inference of 65B in bf16: 130.6 GB of weights -> two 80 GB GPUs (by hand: 130.6/2 + 5.4/2 <= 72)
    assert gpus.loc[("65B", "inference, bf16"), "80 GB GPUs"] == 2
    assert gpus.loc[("7B", "full fine-tune, ZeRO-3 + CPU offload"), "24 GB GPUs"] == 1
    assert table.loc[("7B", "full fine-tune, ZeRO-3 + CPU offload"), "CPU RAM (GB)"] == round(16 * 6.738415616)
    for _, row in gpus.dropna().iterrows():
        assert row.iloc[0] >= row.iloc[1] >= row.iloc[2] >= 1  # bigger GPUs never need more of them
    for regime in gpus.index.get_level_values("regime").unique():
        counts = gpus.xs(regime, level="regime")["80 GB GPUs"].dropna().tolist()
        assert counts == sorted(counts)  # bigger models never need fewer GPUs
    # every count is the smallest that fits: n fits in 90% of 80 GB, n - 1 does not
    config = planning.llama1_config("13B")
    n = int(gpus.loc[("13B", "full fine-tune, bf16-mixed AdamW, ZeRO-3"), "80 GB GPUs"])
    fit = [planning.training_memory(config, zero_stage=3, n_gpus=k, seq_len=2048)["gpu_total"] <= 72 for k in (n - 1, n)]
    assert fit == [False, True]


def test_memory_plot():
    frame = pd.DataFrame({"7B": [100.0, 30.0], "13B": [200.0, 60.0]}, index=["ZeRO-0", "ZeRO-3"])
    fig = planning.memory_plot(frame, breakdown=frame)
    assert len(fig.axes) == 2 and fig.axes[0].get_yscale() == "log"
    assert len(fig.axes[0].lines) == 2 + 3  # two models + three capacity lines
    with pytest.raises(ValueError, match="at least one row"):
        planning.memory_plot(frame.iloc[:0])
