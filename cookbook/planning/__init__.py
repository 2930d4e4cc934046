"""Planning before training: parameters, FLOPs and MFU, memory estimates, ZeRO configs, which hardware.

params (total vs active, matmul N, LoRA) · flops (FLOPs per token, GPU peaks, MFU) · memory (training,
activation, KV-cache and inference memory from a config) · zero (DeepSpeed configs, GPU counts) · hardware
(GPUs per training regime, memory plot). Shown in notebooks/00.
"""

from cookbook.planning.flops import GPUS, flops_per_token, mfu, peak_flops
from cookbook.planning.hardware import hardware_table, memory_plot
from cookbook.planning.memory import GB, activation_memory, inference_memory, kv_cache_memory, training_memory
from cookbook.planning.params import LLAMA1, count_params, llama1_config, lora_params, matmul_params
from cookbook.planning.zero import min_gpus, zero_config

__all__ = [
    "GB", "GPUS", "LLAMA1", "activation_memory", "count_params", "flops_per_token", "hardware_table",
    "inference_memory", "kv_cache_memory", "llama1_config", "lora_params", "matmul_params", "memory_plot",
    "mfu", "min_gpus", "peak_flops", "training_memory", "zero_config",
]
