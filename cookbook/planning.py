"""Planning before training: parameter counts, FLOPs per token, training-memory estimates and ZeRO configs.

Everything here is arithmetic on a config (models are only ever built on the meta device), so it answers
"how big, how slow, how many GPUs" for a 671B model on a laptop. Memory is in GB = 1e9 bytes, as in the
ZeRO paper (Rajbhandari et al. 2020), whose accounting the estimates follow.
"""

from __future__ import annotations

import math
import numbers
import re

import torch

__all__ = [
    "GPUS",
    "LLAMA1",
    "activation_memory",
    "count_params",
    "flops_per_token",
    "hardware_table",
    "inference_memory",
    "kv_cache_memory",
    "llama1_config",
    "lora_params",
    "matmul_params",
    "memory_plot",
    "mfu",
    "min_gpus",
    "peak_flops",
    "training_memory",
    "zero_config",
]

GB = 1e9


# ----------------------------------------------------------------------------- parameters
_INVENTORY: dict[str, tuple[list, list]] = {}  # config JSON -> (parameter shapes, decoder linear shapes)


def _inventory(config) -> tuple[list[tuple[str, tuple[int, ...]]], list[tuple[str, tuple[int, int]]]]:
    """(name, shape) of every parameter and (name, (d_in, d_out)) of every decoder nn.Linear, cached per config.

    The model is built on the meta device: shapes only, no memory, even for 671B parameters.
    """
    from transformers import AutoModelForCausalLM

    if not hasattr(config, "to_json_string") or not hasattr(config, "model_type"):
        raise TypeError(f"expected a transformers model config, got {type(config).__name__}")
    key = config.to_json_string(use_diff=False)
    if key not in _INVENTORY:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        params = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
        linears = [(name, (m.in_features, m.out_features)) for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and name.startswith("model.layers.")]
        if len(_INVENTORY) >= 16:
            _INVENTORY.pop(next(iter(_INVENTORY)))
        _INVENTORY[key] = (params, linears)
    return _INVENTORY[key]


def _category(name: str) -> str:
    if "embed_tokens" in name or name.startswith("lm_head"):
        return "embeddings"
    if ".self_attn." in name:
        return "attention"
    if ".mlp.experts." in name:
        return "routed_experts"
    if ".mlp.shared_experts." in name:
        return "shared_experts"
    if ".mlp.gate." in name:
        return "router"
    if ".mlp." in name:
        return "dense_mlp"
    return "norms"


def _active_fraction(config) -> float:
    """Share of the routed experts one token uses: top-k of n (1 for a dense model)."""
    n = getattr(config, "n_routed_experts", 0) or 0
    return getattr(config, "num_experts_per_tok", 0) / n if n else 1.0


def count_params(config) -> dict[str, int]:
    """Parameters of a causal-LM config by part, plus `total` and `active` (per token, for MoE).

    The model is built on the meta device, so even the 671B DeepSeek-V3 is counted without memory.
    `active` counts only the routed experts a token is sent to (top-k of n) and everything else in full.
    """
    parts = dict.fromkeys(
        ["embeddings", "attention", "dense_mlp", "router", "shared_experts", "routed_experts", "norms"], 0
    )
    for name, shape in _inventory(config)[0]:
        parts[_category(name)] += math.prod(shape)
    parts["total"] = sum(parts.values())
    routed = parts["routed_experts"]
    k, n = getattr(config, "num_experts_per_tok", 0), getattr(config, "n_routed_experts", 0) or 1
    parts["active"] = parts["total"] - routed + routed * k // n
    return parts


def matmul_params(config) -> int:
    """N for FLOPs: the active weight-matrix entries each token is multiplied with.

    It is `active` minus the input embedding table (a lookup, no multiply) and minus vector parameters
    (norm gains, biases: elementwise, negligible), but it keeps the output head, a real d x vocab matmul
    (counted even when it shares its weights with the input embedding).
    """
    n, has_head = 0.0, False
    for name, shape in _inventory(config)[0]:
        has_head |= name.startswith("lm_head")
        if len(shape) < 2 or "embed_tokens" in name:
            continue
        n += math.prod(shape) * (_active_fraction(config) if _category(name) == "routed_experts" else 1)
    if not has_head:  # tied embeddings: the head reuses the table but still costs a matmul
        n += config.vocab_size * config.hidden_size
    return round(n)


def lora_params(config, rank: int = 16, targets: tuple[str, ...] | None = None) -> int:
    """Trainable parameters of LoRA adapters of `rank` on the decoder's nn.Linear layers.

    Each adapted d_in x d_out layer gains rank x (d_in + d_out) parameters; `targets` keeps only layers
    whose name ends with one of them (e.g. ("q_proj", "v_proj")); None adapts every linear layer.
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    linears = _inventory(config)[1]
    chosen = [shape for name, shape in linears if targets is None or name.endswith(tuple(targets))]
    if not chosen:
        raise ValueError(f"no linear layer matches targets {targets!r}")
    return sum(rank * (d_in + d_out) for d_in, d_out in chosen)


# Published LLaMA-1 shapes (Touvron et al. 2023, Table 2) with its 32000-token vocabulary.
LLAMA1 = {
    "7B": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008),
    "13B": dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, intermediate_size=13824),
    "65B": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, intermediate_size=22016),
}


def llama1_config(size: str):
    """A `LlamaConfig` with the published LLaMA-1 shape of `size` ("7B", "13B" or "65B")."""
    from transformers import LlamaConfig

    if size not in LLAMA1:
        raise ValueError(f"unknown LLaMA-1 size {size!r}; valid sizes: {', '.join(LLAMA1)}")
    return LlamaConfig(vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6, **LLAMA1[size])


# ----------------------------------------------------------------------------- FLOPs and MFU
def _head_dims(config) -> tuple[int, int, int]:
    """(heads, query/key dim, value dim) per head: MLA has qk_head_dim = nope + rope dims and its own v dim."""
    heads = config.num_attention_heads
    if getattr(config, "qk_nope_head_dim", None) is not None:  # DeepSeek MLA
        return heads, config.qk_nope_head_dim + config.qk_rope_head_dim, config.v_head_dim
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, head_dim, head_dim


def flops_per_token(config, seq_len: int, *, training: bool = True, causal: bool = False) -> float:
    """FLOPs to process one token with `seq_len` tokens of context: 6N + attention (training) or 2N + ... .

    Forward: 2N (one multiply-add per weight, N = `matmul_params`) plus, per layer, 2 x heads x seq_len x
    (qk_dim + v_dim) for the QK^T scores and the weighted sum of V. Backward costs twice the forward, so
    training is 3x. The attention term counts the full seq_len x seq_len square like PaLM's 6N + 12LHQT
    and nanoGPT's MFU (what most published MFU figures use); `causal=True` halves it (only the lower
    triangle is needed, as FlashAttention counts).
    """
    _positive_int("seq_len", seq_len)
    n = matmul_params(config)  # also checks that `config` is a model config
    heads, qk_dim, v_dim = _head_dims(config)
    attention = 2 * config.num_hidden_layers * heads * seq_len * (qk_dim + v_dim) * (0.5 if causal else 1.0)
    forward = 2 * n + attention
    return 3 * forward if training else forward


# Peak dense (no 2:4 sparsity) tensor-core FLOP/s per GPU, fp32 = plain CUDA cores; None = no such path.
# Sources, NVIDIA: H100/H200 datasheets and "NVIDIA H100 Tensor Core GPU Architecture" whitepaper (SXM5 and
# PCIe columns); "NVIDIA A100 Tensor Core GPU Architecture" whitepaper; L4, L40S, A10, T4 and V100
# datasheets; "NVIDIA Ada GPU Architecture" whitepaper, appendix table for the GeForce RTX 4090 (fp16/bf16
# with fp32 accumulate, what PyTorch uses). Datasheets print sparse figures: dense is half of them.
GPUS: dict[str, dict] = {
    #               memory GB      fp32         tf32        bf16        fp16
    "H200 SXM": dict(memory_gb=141, fp32=66.9e12, tf32=494.7e12, bf16=989.4e12, fp16=989.4e12),
    "H100 SXM": dict(memory_gb=80, fp32=66.9e12, tf32=494.7e12, bf16=989.4e12, fp16=989.4e12),
    "H100 PCIe": dict(memory_gb=80, fp32=51.2e12, tf32=378.0e12, bf16=756.0e12, fp16=756.0e12),
    "A100 80GB": dict(memory_gb=80, fp32=19.5e12, tf32=156e12, bf16=312e12, fp16=312e12),
    "A100 40GB": dict(memory_gb=40, fp32=19.5e12, tf32=156e12, bf16=312e12, fp16=312e12),
    "L40S": dict(memory_gb=48, fp32=91.6e12, tf32=183e12, bf16=362e12, fp16=362e12),
    "A10": dict(memory_gb=24, fp32=31.2e12, tf32=62.5e12, bf16=125e12, fp16=125e12),
    "L4": dict(memory_gb=24, fp32=30.3e12, tf32=60e12, bf16=121e12, fp16=121e12),
    "RTX 4090": dict(memory_gb=24, fp32=82.6e12, tf32=82.6e12, bf16=165.2e12, fp16=165.2e12),
    "V100 SXM2": dict(memory_gb=32, fp32=15.7e12, tf32=None, bf16=None, fp16=125e12),
    "T4": dict(memory_gb=16, fp32=8.1e12, tf32=None, bf16=None, fp16=65e12),
}
# How torch.cuda.get_device_name() spells them, as whole words, checked in order ("H100 PCIe" before "H100").
# The H800 (China export model) has the H100's tensor-core peaks; only its NVLink bandwidth was cut.
_GPU_ALIASES = [("H200", "H200 SXM"), ("H100 PCIe", "H100 PCIe"), ("H800 PCIe", "H100 PCIe"), ("H100", "H100 SXM"),
                ("H800", "H100 SXM"), ("A100-SXM4-80GB", "A100 80GB"), ("A100 80GB", "A100 80GB"),
                ("A100-PCIE-80GB", "A100 80GB"), ("A100", "A100 40GB"), ("L40S", "L40S"), ("A10G", "A10"),
                ("A10", "A10"), ("L4", "L4"), ("RTX 4090", "RTX 4090"), ("V100", "V100 SXM2"), ("T4", "T4")]


def _gpu_key(name: str) -> str | None:
    if name in GPUS:
        return name
    for alias, key in _GPU_ALIASES:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(alias)}(?![A-Za-z0-9])", name, flags=re.IGNORECASE):
            return key
    return None


def peak_flops(gpu: str | None = None, precision: str = "bf16") -> float:
    """Peak dense FLOP/s of one GPU for `precision` (fp32, tf32, bf16, fp16; "-mixed" suffixes allowed).

    `gpu` is a key of `GPUS` or a CUDA device name such as "NVIDIA H100 80GB HBM3"; None reads the current
    CUDA device.
    """
    if gpu is None:
        if not torch.cuda.is_available():
            raise ValueError("no CUDA device: pass gpu= one of " + ", ".join(GPUS))
        gpu = torch.cuda.get_device_name()
    key = _gpu_key(gpu)
    if key is None:
        raise ValueError(f"unknown GPU {gpu!r}; known: {', '.join(GPUS)}")
    compute = precision.removesuffix("-mixed")
    if compute not in ("fp32", "tf32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r}; valid: fp32, tf32, bf16, fp16")
    value = GPUS[key][compute]
    if value is None:
        raise ValueError(f"{key} has no {compute} tensor-core path")
    return value


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s (tokens/s x FLOPs per token) over the peak FLOP/s."""
    for name, value in (("tokens_per_s", tokens_per_s), ("flops_per_token", flops_per_token),
                        ("peak_flops", peak_flops)):
        if not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0 or (
                value == 0 and name != "tokens_per_s"):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return tokens_per_s * flops_per_token / peak_flops


# ----------------------------------------------------------------------------- training memory
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


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def activation_memory(config, micro_batch: int, seq_len: int, *, checkpointing: bool = True,
                      flash_attention: bool = True) -> float:
    """GB of activations kept for the backward pass on one GPU (Korthikanti et al. 2022, 16-bit activations).

    Per layer s·b·h·(34 + 5·a·s/h) bytes: 34·s·b·h for the tensors of attention, MLP and norms, 5·a·s²·b for
    the attention scores, softmax and dropout mask, which FlashAttention/SDPA never materialise. With full
    activation checkpointing only each layer's 2·s·b·h-byte input is kept, plus one layer's activations
    while it is recomputed. Logits add 4·s·b·vocab (fp32 for the loss). The formula is for a GPT layer
    (4h MLP); for SwiGLU or MoE layers it is a first estimate.
    """
    s, b = _positive_int("seq_len", seq_len), _positive_int("micro_batch", micro_batch)
    h, a, layers = config.hidden_size, config.num_attention_heads, config.num_hidden_layers
    per_layer = s * b * h * 34 + (0 if flash_attention else 5 * a * s * s * b)
    kept = layers * 2 * s * b * h + per_layer if checkpointing else layers * per_layer
    return (kept + 4 * s * b * config.vocab_size) / GB


def _largest_layer(config) -> int:
    """Parameters of the biggest decoder layer: what ZeRO-3 gathers onto each GPU at a time."""
    sizes: dict[str, int] = {}
    for name, shape in _inventory(config)[0]:
        if name.startswith("model.layers."):
            layer = name.split(".")[2]
            sizes[layer] = sizes.get(layer, 0) + math.prod(shape)
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
    import pandas as pd

    if isinstance(zero_stage, bool) or zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage!r}")
    n = _positive_int("n_gpus", n_gpus)
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
    compressed latent, kv_lora_rank + qk_rope_head_dim values (DeepSeek's inference; transformers'
    DynamicCache stores the decompressed per-head keys and values instead, about 70x more for V3).
    """
    _positive_int("batch", batch), _positive_int("seq_len", seq_len)
    if getattr(config, "kv_lora_rank", None):
        per_token = config.kv_lora_rank + config.qk_rope_head_dim
    else:
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        per_token = 2 * heads * _head_dims(config)[1]
    return config.num_hidden_layers * per_token * batch * seq_len * bytes_per_value / GB


def inference_memory(config, *, batch: int = 1, seq_len: int = 2048, n_gpus: int = 1,
                     bytes_per_param: float = 2):
    """Inference memory per GPU in GB: weights (all experts of an MoE) and KV cache, split over `n_gpus`."""
    import pandas as pd

    n = _positive_int("n_gpus", n_gpus)
    weights = count_params(config)["total"] * bytes_per_param / GB / n
    cache = kv_cache_memory(config, batch, seq_len) / n
    return pd.Series(dict(params=weights, kv_cache=cache, gpu_total=weights + cache), name="GB")


# ----------------------------------------------------------------------------- DeepSpeed ZeRO configs
def zero_config(stage: int, *, offload_optimizer: bool = False, offload_params: bool = False,
                precision: str = "bf16-mixed", micro_batch_size: int | str = "auto",
                gradient_accumulation_steps: int | str = "auto", gradient_clipping: float = 1.0,
                hidden_size: int | None = None, pin_memory: bool = True) -> dict:
    """A DeepSpeed config dict for ZeRO `stage` (0-3) with optional CPU offload, checked for consistency.

    "auto" batch sizes are filled in by the Hugging Face Trainer/Accelerate integration; pass ints when
    you call `deepspeed.initialize` yourself. With `hidden_size`, bucket sizes follow the Trainer's
    rule of thumb (hidden², 0.9·hidden², 10·hidden); otherwise DeepSpeed's defaults apply.
    """
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage!r}")
    if offload_params and stage != 3:
        raise ValueError("offload_params needs stage 3 (only stage 3 partitions the weights)")
    if offload_optimizer and stage == 0:
        raise ValueError("offload_optimizer needs stage 1, 2 or 3")
    if precision not in ("fp32", "bf16-mixed", "fp16-mixed"):
        raise ValueError(f"precision must be fp32, bf16-mixed or fp16-mixed for DeepSpeed, got {precision!r} "
                         "(DeepSpeed's bf16 mode keeps fp32 master weights: that is bf16-mixed)")
    for name, value in (("micro_batch_size", micro_batch_size),
                        ("gradient_accumulation_steps", gradient_accumulation_steps)):
        if value != "auto":
            _positive_int(name, value)
    if not isinstance(gradient_clipping, (int, float)) or gradient_clipping < 0:
        raise ValueError(f"gradient_clipping must be >= 0 (0 turns it off), got {gradient_clipping!r}")

    zero: dict = {"stage": stage}
    if stage >= 1:
        zero.update(overlap_comm=True, contiguous_gradients=True)
    if hidden_size is not None:
        h = _positive_int("hidden_size", hidden_size)
        if stage >= 1:
            zero["reduce_bucket_size"] = h * h
        if stage == 3:
            zero.update(stage3_prefetch_bucket_size=int(0.9 * h * h), stage3_param_persistence_threshold=10 * h)
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # save a whole model, not shards
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin_memory}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin_memory}
    config = {
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16-mixed"},
        # loss_scale 0 = dynamic loss scaling, starting at 2**16 and halving on overflow
        "fp16": {"enabled": precision == "fp16-mixed", "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        "gradient_clipping": gradient_clipping,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
    }
    if "auto" in (micro_batch_size, gradient_accumulation_steps):
        config["train_batch_size"] = "auto"  # else DeepSpeed computes micro x accumulation x world size
    return config


# ----------------------------------------------------------------------------- which hardware
def min_gpus(per_gpu_gb, capacity_gb: float, *, usable: float = 0.9, max_gpus: int = 4096) -> int | None:
    """Fewest GPUs n (up to `max_gpus`) with per_gpu_gb(n) <= usable x capacity_gb, or None if none fits.

    `per_gpu_gb` must not grow with n (true of every estimate here). `usable` leaves room for the CUDA
    context, communication buffers and allocator fragmentation.
    """
    if not 0 < usable <= 1:
        raise ValueError(f"usable must be in (0, 1], got {usable!r}")
    if not capacity_gb > 0:
        raise ValueError(f"capacity_gb must be positive, got {capacity_gb!r}")
    limit = usable * capacity_gb
    if per_gpu_gb(_positive_int("max_gpus", max_gpus)) > limit:
        return None
    low, high = 1, max_gpus  # bisect for the first n that fits
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if per_gpu_gb(mid) <= limit else (mid + 1, high)
    return low


def _regimes(config, micro_batch: int, seq_len: int, lora_rank: int) -> dict:
    """Per-GPU GB as a function of the GPU count, and the CPU RAM it needs, for each training regime."""
    act = dict(micro_batch=micro_batch, seq_len=seq_len, checkpointing=True)

    def train(**kw):
        return (lambda n: training_memory(config, n_gpus=n, **act, **kw)["gpu_total"],
                training_memory(config, n_gpus=1, **act, **kw)["cpu_total"])

    return {
        "full fine-tune, bf16-mixed AdamW, ZeRO-0": train(zero_stage=0),
        "full fine-tune, bf16-mixed AdamW, ZeRO-3": train(zero_stage=3),
        "full fine-tune, ZeRO-3 + CPU offload": train(zero_stage=3, offload_optimizer=True, offload_params=True),
        f"LoRA r={lora_rank}, frozen bf16 weights (ZeRO-3)": train(
            zero_stage=3, trainable=lora_params(config, lora_rank)),
        "inference, bf16": (lambda n: inference_memory(config, seq_len=seq_len, n_gpus=n)["gpu_total"], 0.0),
    }


def hardware_table(models: dict | None = None, *, capacities: tuple[float, ...] = (24, 40, 80),
                   micro_batch: int = 1, seq_len: int = 2048, lora_rank: int = 16, usable: float = 0.9):
    """Minimum number of GPUs of each memory size for each model and regime, from the estimates above.

    `models` maps names to configs (default: LLaMA-1 7B/13B/65B). Training uses micro-batch `micro_batch`
    of `seq_len` tokens with activation checkpointing; ZeRO-0 never shards, so it fits on one GPU or on
    none (<NA>). Several GPUs shard the model (ZeRO-3 for training, tensor/pipeline parallel for inference).
    """
    import pandas as pd

    models = models or {size: llama1_config(size) for size in LLAMA1}
    rows = []
    for name, config in models.items():
        total = count_params(config)["total"]
        for regime, (per_gpu, cpu) in _regimes(config, micro_batch, seq_len, lora_rank).items():
            row = {"model": name, "regime": regime, "params (B)": round(total / 1e9, 1)}
            for capacity in capacities:
                row[f"{capacity:g} GB GPUs"] = min_gpus(per_gpu, capacity, usable=usable)
            row["CPU RAM (GB)"] = round(cpu)
            rows.append(row)
    frame = pd.DataFrame(rows).set_index(["model", "regime"])
    return frame.astype({c: "Int64" for c in frame.columns if c.endswith("GPUs")})


def memory_plot(per_gpu, *, capacities: tuple[float, ...] = (24, 40, 80), breakdown=None, title: str = ""):
    """Memory per GPU (GB, log scale) of each model (DataFrame columns) across setups (its index), with
    dashed GPU-capacity lines; `breakdown` (setups x parts) adds a stacked-bar panel beside it."""
    import matplotlib.pyplot as plt

    from cookbook import plots

    if len(per_gpu) == 0:
        raise ValueError("memory_plot needs at least one row")
    fig, axes = plots.figure(2 if breakdown is not None else 1, width=6.4)
    ax, x = axes[0], range(len(per_gpu))
    for column in per_gpu.columns:
        ax.plot(x, per_gpu[column], marker="o", label=str(column))
    for i, capacity in enumerate(capacities):
        ax.axhline(capacity, color="0.35", linestyle=["--", "-.", ":"][i % 3], linewidth=1, label=f"{capacity:g} GB GPU")
    ax.set(yscale="log", ylabel="GB per GPU", title=title or "memory per GPU")
    ax.set_xticks(list(x), [str(i) for i in per_gpu.index], rotation=20, ha="right", fontsize=8)
    ax.legend(fontsize=7, ncols=2, loc="lower left")
    if breakdown is not None:
        bottom = [0.0] * len(breakdown)
        for part in breakdown.columns:
            values = breakdown[part].tolist()
            axes[1].bar(range(len(breakdown)), values, bottom=bottom, label=str(part))
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        axes[1].set_xticks(range(len(breakdown)), [str(i) for i in breakdown.index], rotation=20, ha="right",
                           fontsize=8)
        axes[1].set(ylabel="GB per GPU", title=breakdown.columns.name or "breakdown")
        axes[1].legend(fontsize=8)
    plt.close(fig)  # the notebook shows the returned figure once
    return fig
