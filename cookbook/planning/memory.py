"""Training and inference memory estimated from a config (GB = 1e9 bytes, the ZeRO paper's accounting).

`cookbook.train.memory` measures memory on a real model; this module predicts it before you have one.
"""

from __future__ import annotations

import math
import numbers

import pandas as pd

from cookbook.checks import positive_int
from cookbook.planning.flops import head_dims
from cookbook.planning.params import _inventory, count_params

__all__ = ["GB", "activation_memory", "inference_memory", "kv_cache_memory", "training_memory"]

GB = 1e9

# Bytes per parameter of (weights the forward/backward read, gradients, fp32 master copy) by precision.
# Mixed precision is the ZeRO paper's: 16-bit weights and gradients, the fp32 master lives in the optimizer.
# (PyTorch autocast keeps fp32 weights + fp32 grads instead: 4 + 4 + 0, the same 8 bytes with Adam's 8 more.)
_PRECISION = {"fp32": (4, 4, 0), "bf16-mixed": (2, 2, 4), "fp16-mixed": (2, 2, 4), "bf16": (2, 2, 0)}
# Optimizer state values per parameter: AdamW keeps momentum + variance, SGD momentum one buffer,
# Adafactor (no momentum) a factored second moment, r + c values per r x c matrix: about 0 per parameter.
_OPTIMIZER_STATES = {"adamw": 2, "adamw-8bit": 2, "sgd": 1, "adafactor": 0}


def _state_bytes(precision: str, optimizer: str) -> float:
    """K of the ZeRO paper: optimizer bytes per trainable parameter (fp32 master + states)."""
    if precision not in _PRECISION:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(_PRECISION)}")
    if optimizer not in _OPTIMIZER_STATES:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(_OPTIMIZER_STATES)}")
    # 8-bit Adam stores each state in 1 byte (+ one fp32 scale per 2048-value block, ignored: < 0.2%);
    # the others store states as wide as the master copy, or bf16 in pure bf16 training.
    width = 1 if optimizer == "adamw-8bit" else (2 if precision == "bf16" else 4)
    return _PRECISION[precision][2] + _OPTIMIZER_STATES[optimizer] * width



def activation_memory(config, micro_batch: int, seq_len: int, *, checkpointing: bool = True,
                      flash_attention: bool = True) -> float:
    """GB of activations kept for the backward pass on one GPU (Korthikanti et al. 2022, 16-bit activations).

    Per layer s·b·h·(34 + 5·a·s/h) bytes: 34·s·b·h for the tensors of attention, MLP and norms, 5·a·s²·b for
    the attention scores, softmax and dropout mask, which FlashAttention/SDPA never materialise. With full
    activation checkpointing only each layer's 2·s·b·h-byte input is kept, plus one layer's activations
    while it is recomputed. Logits add 4·s·b·vocab (fp32 for the loss). The formula is for a GPT layer
    (4h MLP); for SwiGLU or MoE layers it is a first estimate.
    """
    s, b = positive_int("seq_len", seq_len), positive_int("micro_batch", micro_batch)
    h, a, layers = config.hidden_size, config.num_attention_heads, config.num_hidden_layers
    per_layer = s * b * h * 34 + (0 if flash_attention else 5 * a * s * s * b)
    kept = layers * 2 * s * b * h + per_layer if checkpointing else layers * per_layer
    return (kept + 4 * s * b * config.vocab_size) / GB


def _largest_layer(config) -> int:
    """Parameters of the biggest decoder layer: what ZeRO-3 gathers onto each GPU at a time."""
    sizes: dict[str, int] = {}
    for p in _inventory(config)[0]:
        if p.name.startswith("model.layers."):
            layer = p.name.split(".")[2]
            sizes[layer] = sizes.get(layer, 0) + math.prod(p.shape)
    return max(sizes.values(), default=0)


def training_memory(model, *, precision: str = "bf16-mixed", optimizer: str = "adamw", zero_stage: int = 0,
                    n_gpus: int = 1, offload_optimizer: bool = False, offload_params: bool = False,
                    trainable: int | None = None, micro_batch: int = 1, seq_len: int | None = None,
                    checkpointing: bool = True, flash_attention: bool = True):
    """Training memory per GPU in GB, as a pandas Series: params, grads, optimizer, gathered, activations,
    gpu_total, and cpu_total (CPU RAM the whole job needs for offloaded states).

    `model` is a config or a parameter count. Accounting of the ZeRO paper: with mixed-precision AdamW each
    parameter costs 2 (weights) + 2 (grads) + 12 (fp32 master, momentum, variance) bytes; stage 1 splits the
    optimizer states over `n_gpus`, stage 2 also the gradients, stage 3 also the weights. Stage 3 (with a
    config) also holds two full decoder layers at a time (the one computing and the one prefetched).
    `offload_optimizer` keeps the optimizer states and their gradient shard in CPU RAM (the CPU does the
    update); `offload_params` (stage 3 only) keeps the weight shard there too. `trainable` parameters get
    gradients and optimizer states; the rest are frozen (LoRA). Activations need a config and `seq_len`.
    """
    if isinstance(zero_stage, bool) or zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage!r}")
    n = positive_int("n_gpus", n_gpus)
    if offload_params and zero_stage != 3:
        raise ValueError("offload_params needs zero_stage=3 (only stage 3 partitions the weights)")
    if offload_optimizer and zero_stage == 0:
        raise ValueError("offload_optimizer needs zero_stage >= 1 (ZeRO-Offload works on partitioned states)")
    config = None if isinstance(model, numbers.Real) else model
    total = count_params(config)["total"] if config is not None else model
    if isinstance(total, bool) or not total >= 1 or not math.isfinite(total):
        raise ValueError(f"model must be a transformers config or a positive parameter count, got {model!r}")
    trainable = total if trainable is None else trainable
    if isinstance(trainable, bool) or not isinstance(trainable, numbers.Real) or not 0 <= trainable <= total:
        raise ValueError(f"trainable must be an int between 0 and the {total} parameters, got {trainable!r}")
    weight_b, grad_b, _ = _PRECISION.get(precision, (0, 0, 0))
    k = _state_bytes(precision, optimizer)

    params, grads, states = total * weight_b, trainable * grad_b, trainable * k
    params, grads, states = (params / n if zero_stage >= 3 else params, grads / n if zero_stage >= 2 else grads,
                             states / n if zero_stage >= 1 else states)
    cpu = 0.0
    if offload_optimizer:  # per GPU shard of states (and of the gradients it updates from) moves to CPU
        cpu += (states + trainable * grad_b / n) * n
        states, grads = 0.0, 0.0
    if offload_params:
        cpu += params * n
        params = 0.0
    gathered = 0.0
    if zero_stage == 3 and config is not None and (n > 1 or offload_params):
        gathered = 2 * _largest_layer(config) * weight_b
    activations = 0.0
    if seq_len is not None:
        if config is None:
            raise ValueError("activations need the model's shape: pass a config, not a parameter count")
        activations = activation_memory(config, micro_batch, seq_len, checkpointing=checkpointing,
                                        flash_attention=flash_attention) * GB
    parts = dict(params=params, grads=grads, optimizer=states, gathered=gathered, activations=activations)
    parts["gpu_total"] = sum(parts.values())
    parts["cpu_total"] = cpu
    return pd.Series({key: value / GB for key, value in parts.items()}, name="GB")


def kv_cache_memory(config, batch: int, seq_len: int, *, bytes_per_value: int = 2) -> float:
    """GB of key/value cache for `batch` sequences of `seq_len` tokens.

    Per token and layer a Llama-style model caches 2 x kv_heads x head_dim values; MLA caches only its
    compressed latent, kv_lora_rank + qk_rope_head_dim values (DeepSeek's inference, and transformers 5.23's
    DeepseekV3Attention, which expands the latent after the cache; per-head keys and values would be ~70x more for V3).
    """
    positive_int("batch", batch), positive_int("seq_len", seq_len)
    if getattr(config, "kv_lora_rank", None):
        per_token = config.kv_lora_rank + config.qk_rope_head_dim
    else:
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        per_token = 2 * heads * head_dims(config)[1]
    return config.num_hidden_layers * per_token * batch * seq_len * bytes_per_value / GB


def inference_memory(config, *, batch: int = 1, seq_len: int = 2048, n_gpus: int = 1,
                     bytes_per_param: float = 2):
    """Inference memory per GPU in GB: weights (all experts of an MoE) and KV cache, split over `n_gpus`."""
    n = positive_int("n_gpus", n_gpus)
    weights = count_params(config)["total"] * bytes_per_param / GB / n
    cache = kv_cache_memory(config, batch, seq_len) / n
    return pd.Series(dict(params=weights, kv_cache=cache, gpu_total=weights + cache), name="GB")


