"""Tiny configs shared by the planning tests, written out here (not taken from cookbook.models) so the hand
counts stay fixed."""

from transformers import DeepseekV3Config, LlamaConfig

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
