"""Planning before training: parameter counts, FLOPs per token and training-memory estimates."""

from __future__ import annotations

import torch

__all__ = ["count_params"]


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


def count_params(config) -> dict[str, int]:
    """Parameters of a causal-LM config by part, plus `total` and `active` (per token, for MoE).

    The model is built on the meta device, so even the 671B DeepSeek-V3 is counted without memory.
    `active` counts only the routed experts a token is sent to (top-k of n) and everything else in full.
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    parts = dict.fromkeys(
        ["embeddings", "attention", "dense_mlp", "router", "shared_experts", "routed_experts", "norms"], 0
    )
    for name, p in model.named_parameters():
        parts[_category(name)] += p.numel()
    parts["total"] = sum(parts.values())
    routed = parts["routed_experts"]
    k, n = getattr(config, "num_experts_per_tok", 0), getattr(config, "n_routed_experts", 0) or 1
    parts["active"] = parts["total"] - routed + routed * k // n
    return parts
