"""Planning before training: parameters, FLOPs and MFU, memory estimates, ZeRO configs, which hardware.

params (total vs active, matmul N, LoRA) · flops (FLOPs per token, GPU peaks, MFU) · memory (training,
activation, KV-cache and inference memory from a config) · zero (DeepSpeed configs, the ZeRO stage a memory
budget needs, communication per step, GPU counts) · hardware (GPUs per training regime, memory plot).
Shown in notebooks/00 and 11.
"""

from cookbook.planning.flops import GPUS, flops_per_token, mfu, peak_flops
from cookbook.planning.hardware import hardware_table, memory_plot
from cookbook.planning.memory import GB, activation_memory, inference_memory, kv_cache_memory, training_memory
from cookbook.planning.params import LLAMA1, count_params, llama1_config, lora_params, matmul_params
from cookbook.planning.zero import (
    ZERO_OPTIONS,
    communication_volume,
    min_gpus,
    validate_zero_config,
    zero_config,
    zero_options,
    zero_plan,
)

__all__ = [
    "GB", "GPUS", "LLAMA1", "ZERO_OPTIONS", "activation_memory", "communication_volume", "count_params",
    "flops_per_token", "hardware_table", "inference_memory", "kv_cache_memory", "llama1_config", "lora_params",
    "matmul_params", "memory_plot", "mfu", "min_gpus", "peak_flops", "training_memory", "validate_zero_config",
    "zero_config", "zero_options", "zero_plan",
]
