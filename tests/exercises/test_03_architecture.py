"""Solutions to the exercises of notebooks/03 (the DeepSeek-V3 architecture), each checked against an independent
result."""

import pytest
import torch
from transformers import DeepseekV3Config
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

from cookbook import models, planning


# Exercise 1: the KV cache of MLA and of MHA by formula
def mha_cache_values(c, tokens: int) -> int:
    """Multi-head attention caches every head's key (nope + rope dims) and value, per token and layer."""
    return c.num_hidden_layers * tokens * c.num_attention_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim)


def mla_cache_values(c, tokens: int) -> int:
    """MLA caches one compressed latent (kv_lora_rank) and one RoPE key shared by all heads."""
    return c.num_hidden_layers * tokens * (c.kv_lora_rank + c.qk_rope_head_dim)


def test_mla_saving_at_full_scale():
    v3 = DeepseekV3Config()
    assert mha_cache_values(v3, 1) / v3.num_hidden_layers == 40960 and mla_cache_values(v3, 1) / v3.num_hidden_layers == 576
    assert round(mha_cache_values(v3, 1) / mla_cache_values(v3, 1), 1) == 71.1  # the notebook's §3 table
    gb = planning.kv_cache_memory(v3, batch=1, seq_len=4096)  # bf16: 2 bytes per value
    assert gb * 1e9 == mla_cache_values(v3, 4096) * 2


@pytest.mark.parametrize("batch,seq", [(1, 7), (3, 12)])
def test_cache_formula_equals_what_transformers_caches(batch, seq):
    torch.manual_seed(0)
    model = models.build("tiny", 300).eval()
    c = model.config
    with torch.no_grad():
        cache = model(input_ids=torch.randint(0, 300, (batch, seq)), use_cache=True).past_key_values
    cached = sum(t.numel() for layer in cache.layers for t in (layer.keys, layer.values))
    if cache.layers[0].keys.shape[1] == 1:  # transformers keeps MLA's latent (5.23)
        assert cached == batch * mla_cache_values(c, seq)
    else:  # an implementation that caches the decompressed per-head keys and values
        assert cached == batch * mha_cache_values(c, seq)


# Exercise 2: DeepSeek-V3's top-k routing by hand
def route(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, k: int, n_group: int, topk_group: int,
          scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: sigmoid scores; choose with score + bias, first the best `topk_group` groups (a group's score is
    the sum of its two best), then the top k experts inside them; gate weights are the chosen scores without
    the bias, normalised to sum 1 and scaled. Returns (experts sorted ascending, their weights)."""
    scores = torch.sigmoid(x.float() @ weight.float().T)
    chosen_by = scores + bias
    tokens, n = scores.shape
    per_group = n // n_group
    indices, weights = [], []
    for t in range(tokens):
        groups = sorted(range(n_group), key=lambda g: -sum(sorted(chosen_by[t, g * per_group:(g + 1) * per_group].tolist())[-2:]))
        allowed = [e for g in groups[:topk_group] for e in range(g * per_group, (g + 1) * per_group)]
        top = sorted(sorted(allowed, key=lambda e: -chosen_by[t, e].item())[:k])
        w = scores[t, top]
        indices.append(top)
        weights.append(w / w.sum() * scale)
    return torch.tensor(indices), torch.stack(weights)


def test_routing_equals_the_transformers_router():
    torch.manual_seed(0)
    cfg = DeepseekV3Config(hidden_size=16, n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
                           routed_scaling_factor=2.5)
    router = DeepseekV3TopkRouter(cfg)
    with torch.no_grad():
        router.weight.normal_()
        router.e_score_correction_bias.normal_(std=0.3)  # the balancing bias changes the choice, not the weight
    x = torch.randn(40, 16)
    with torch.no_grad():
        _, their_weights, their_indices = router(x)
    order = their_indices.argsort(dim=-1)
    mine_idx, mine_w = route(x, router.weight, router.e_score_correction_bias, k=2, n_group=4, topk_group=2, scale=2.5)
    assert torch.equal(mine_idx, their_indices.gather(1, order))
    torch.testing.assert_close(mine_w, their_weights.gather(1, order))
    groups = mine_idx // 2
    assert (groups[:, 0] != groups[:, 1]).any() and (groups[:, 0] == groups[:, 1]).any()  # both cases happen


# Exercise 3: total and active parameters of the routed experts
def routed_expert_params(c) -> int:
    """Each MoE layer (all but the first `first_k_dense_replace`) has n experts of gate, up and down: 3·d·m."""
    return (c.num_hidden_layers - c.first_k_dense_replace) * c.n_routed_experts * 3 * c.hidden_size * c.moe_intermediate_size


def active_params(total: int, routed: int, n: int, k: int) -> int:
    """A token uses k of the n routed experts: the other n − k experts' share of the routed weights is idle."""
    return total - routed * (n - k) // n


@pytest.mark.parametrize("name", ["tiny", "smoke"])
def test_routed_and_active_params(name):
    c = models.config(name, 512)
    model = models.build(name, 512)
    routed = routed_expert_params(c)
    assert routed == sum(p.numel() for n, p in model.named_parameters() if ".mlp.experts." in n)
    total = sum(p.numel() for p in model.parameters())
    counts = planning.count_params(c)
    assert active_params(total, routed, c.n_routed_experts, c.num_experts_per_tok) == counts["active"]


def test_active_params_of_deepseek_v3():
    v3 = DeepseekV3Config()
    routed = routed_expert_params(v3)
    total = planning.count_params(v3)["total"]
    assert round(active_params(total, routed, v3.n_routed_experts, v3.num_experts_per_tok) / 1e9, 2) == 37.55
