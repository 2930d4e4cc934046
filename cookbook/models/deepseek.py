"""DeepSeek-V3-architecture model family (MLA attention + MoE with a shared expert) and a dense twin.

All sizes use transformers' own `DeepseekV3Config`/`DeepseekV3ForCausalLM`, so what you learn here
carries over to the real checkpoints; only the widths, depths and expert counts are scaled down.
"""

from __future__ import annotations

import numbers

import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, LlamaConfig, LlamaForCausalLM

from cookbook.planning import count_params

__all__ = ["CONFIGS", "build", "build_dense", "config", "dense_config"]

# Shared by every size: DeepSeek-V3's choices (sigmoid router with top-k normalisation, one shared
# expert, first layer(s) dense, interleaved RoPE on a separate rope head dim), scaled down.
_COMMON = dict(
    n_shared_experts=1,
    norm_topk_prob=True,
    routed_scaling_factor=2.5,
    rope_interleave=True,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
    attention_dropout=0.0,
    initializer_range=0.02,
)

CONFIGS: dict[str, dict] = {
    # unit tests: < 1M parameters with a 512-token vocabulary
    "tiny": dict(
        hidden_size=64, intermediate_size=192, moe_intermediate_size=32, num_hidden_layers=2,
        first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=32,
        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, head_dim=8,
        n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
    ),
    # CPU smoke runs: a few million parameters, trains for a minute on 2 cores
    "smoke": dict(
        hidden_size=128, intermediate_size=384, moe_intermediate_size=64, num_hidden_layers=4,
        first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=64,
        kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, head_dim=16,
        n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
    ),
    # one GPU: tens of millions of parameters, a real pretraining run in minutes
    "full": dict(
        hidden_size=512, intermediate_size=1536, moe_intermediate_size=256, num_hidden_layers=8,
        first_k_dense_replace=1, num_attention_heads=8, num_key_value_heads=8, q_lora_rank=192,
        kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, head_dim=32,
        n_routed_experts=16, num_experts_per_tok=2, n_group=4, topk_group=2,
    ),
}


def config(name: str, vocab_size: int, **overrides) -> DeepseekV3Config:
    """The `DeepseekV3Config` of a named size (see `CONFIGS`), with optional field overrides."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(CONFIGS)}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral):
        raise TypeError(f"vocab_size must be an int (how many token ids the model embeds), got "
                        f"{type(vocab_size).__name__}; for a tokenizer pass len(tokenizer)")
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    return DeepseekV3Config(vocab_size=int(vocab_size), **{**_COMMON, **CONFIGS[name], **overrides})


def build(name: str, vocab_size: int, *, seed: int | None = 0, **overrides) -> DeepseekV3ForCausalLM:
    """A freshly initialised DeepSeek-V3-architecture causal LM of a named size (seeded when `seed` is set)."""
    cfg = config(name, vocab_size, **overrides)
    if seed is not None:
        torch.manual_seed(seed)
    return DeepseekV3ForCausalLM(cfg)


def _active_params(cfg) -> int:
    return count_params(cfg)["active"]


def dense_config(moe: DeepseekV3Config) -> LlamaConfig:
    """A dense Llama-style config with the MoE model's width, depth and (to half a column) active size.

    Attention is standard multi-head attention, so the MLP width absorbs the difference: we solve for
    the intermediate size that makes total dense parameters equal the MoE's activated parameters.
    """
    base = dict(
        vocab_size=moe.vocab_size, hidden_size=moe.hidden_size, num_hidden_layers=moe.num_hidden_layers,
        num_attention_heads=moe.num_attention_heads, num_key_value_heads=moe.num_attention_heads,
        max_position_embeddings=moe.max_position_embeddings, rms_norm_eps=moe.rms_norm_eps,
        tie_word_embeddings=moe.tie_word_embeddings, initializer_range=moe.initializer_range,
    )
    probe = LlamaConfig(**base, intermediate_size=1)
    gap = _active_params(moe) - _active_params(probe)
    per_unit = 3 * moe.hidden_size * moe.num_hidden_layers  # gate, up and down rows of one MLP unit
    if gap < per_unit:
        raise ValueError("the MoE model is too small for a dense twin with the same width")
    return LlamaConfig(**base, intermediate_size=1 + round(gap / per_unit))


def build_dense(moe: DeepseekV3Config, *, seed: int | None = 0) -> LlamaForCausalLM:
    """The dense twin of a MoE config (see `dense_config`), freshly initialised."""
    if seed is not None:
        torch.manual_seed(seed)
    return LlamaForCausalLM(dense_config(moe))
