"""Parameter counts from a config: total vs active per token (MoE), the matmul N of the FLOPs formula, LoRA sizes.

Everything is arithmetic on a config: the model is built on the meta device only, so even the 671B
DeepSeek-V3 is counted on a laptop.
"""

from __future__ import annotations

import math

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

__all__ = ["LLAMA1", "count_params", "llama1_config", "lora_params", "matmul_params"]

_INVENTORY: dict[str, tuple[list, list]] = {}  # config JSON -> (parameter shapes, decoder linear shapes)


def _inventory(config) -> tuple[list[tuple[str, tuple[int, ...]]], list[tuple[str, tuple[int, int]]]]:
    """(name, shape) of every parameter and (name, (d_in, d_out)) of every decoder nn.Linear, cached per config.

    The model is built on the meta device: shapes only, no memory, even for 671B parameters.
    """
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
    if size not in LLAMA1:
        raise ValueError(f"unknown LLaMA-1 size {size!r}; valid sizes: {', '.join(LLAMA1)}")
    return LlamaConfig(vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6, **LLAMA1[size])

