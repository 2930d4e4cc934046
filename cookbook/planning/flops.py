"""FLOPs per token, peak GPU FLOP/s and model FLOPs utilisation (MFU)."""

from __future__ import annotations

import math
import numbers
import re

import torch

from cookbook.checks import positive_int
from cookbook.planning.params import matmul_params

__all__ = ["GPUS", "flops_per_token", "mfu", "peak_flops"]

def head_dims(config) -> tuple[int, int, int]:
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
    positive_int("seq_len", seq_len)
    n = matmul_params(config)  # also checks that `config` is a model config
    heads, qk_dim, v_dim = head_dims(config)
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

