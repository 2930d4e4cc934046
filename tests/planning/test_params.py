"""cookbook.planning.params against hand counts, published figures and torch's own parameter count."""

import inspect
import math
import re
import types
from fractions import Fraction

import pytest
import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    LlamaConfig,
    MixtralConfig,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from cookbook import planning
from cookbook.planning import params
from tests.planning.configs import LLAMA, llama, mla


def test_count_params_tiny_llama_by_hand():
    d, v, i, layers, kv_dim = 16, 100, 24, 2, 2 * (16 // 4)  # kv dim = kv heads x head dim
    attention = d * d + 2 * d * kv_dim + d * d  # q, k, v, o (no biases)
    mlp = 3 * d * i  # gate, up, down
    norms = 2 * d * layers + d  # two RMSNorms per layer + the final one
    parts = planning.count_params(llama())
    assert parts["embeddings"] == 2 * v * d == 3200  # untied input table + output head
    assert parts["attention"] == layers * attention == 1536
    assert parts["dense_mlp"] == layers * mlp == 2304
    assert parts["norms"] == norms == 80
    assert parts["total"] == parts["active"] == 7120
    assert parts["routed_experts"] == parts["shared_experts"] == parts["router"] == 0


def test_count_params_tiny_mla_moe_by_hand():
    d, heads, q_rank, kv_rank, nope, rope, v_dim = 64, 4, 32, 32, 16, 8, 16
    attention = (d * q_rank + q_rank  # q down-projection + its RMSNorm
                 + q_rank * heads * (nope + rope)  # q up-projection to every head's nope+rope dims
                 + d * (kv_rank + rope) + kv_rank  # joint kv latent + shared rope key, + latent RMSNorm
                 + kv_rank * heads * (nope + v_dim)  # latent up to per-head keys (nope) and values
                 + heads * v_dim * d)  # output projection
    assert attention == 15936
    expert = 3 * d * 32  # gate, up, down of one expert (moe_intermediate_size 32)
    parts = planning.count_params(mla())
    assert parts["attention"] == 2 * attention
    assert parts["dense_mlp"] == 3 * d * 192  # layer 0 is dense
    assert parts["routed_experts"] == 8 * expert == 49152
    assert parts["shared_experts"] == expert
    assert parts["router"] == 8 * d
    assert parts["embeddings"] == 2 * 512 * d
    assert parts["norms"] == 2 * 2 * d + d
    assert parts["total"] == 190400
    assert parts["active"] == 190400 - 8 * expert + 2 * expert  # top-2 of 8 experts per token
    # N for FLOPs: active minus the input table, the norm gains and MLA's two latent norms
    assert planning.matmul_params(mla()) == parts["active"] - 512 * d - parts["norms"] - 2 * (q_rank + kv_rank)


def test_tied_head_still_costs_a_matmul():
    tied = LlamaConfig(**{**LLAMA, "tie_word_embeddings": True})
    assert planning.count_params(tied)["embeddings"] == 100 * 16
    assert planning.matmul_params(tied) == planning.matmul_params(llama())


def test_deepseek_v3_public_figures():
    config = DeepseekV3Config()  # transformers' defaults are the released V3 shape
    parts = planning.count_params(config)
    assert parts["total"] == pytest.approx(671e9, rel=0.02)  # "671B total parameters"
    assert parts["active"] == pytest.approx(37e9, rel=0.02)  # "37B activated for each token"
    # the multi-token-prediction module (14B in the 685B checkpoint) is not part of the 671B nor of the model
    with torch.device("meta"):
        names = [n for n, _ in DeepseekV3ForCausalLM(config).named_parameters()]
    assert not any("mtp" in n for n in names) and len(names) > 0
    assert parts["routed_experts"] / parts["total"] > 0.97  # nearly all weights sit in routed experts


@pytest.mark.parametrize("size, published", [("7B", 6.7e9), ("13B", 13.0e9), ("65B", 65.2e9)])
def test_llama1_counts_match_the_paper(size, published):
    total = planning.count_params(planning.llama1_config(size))["total"]
    assert math.floor(total / 1e8) * 1e8 == published  # the paper truncates to 0.1B (65.29B is "65.2B")


def test_llama1_7b_exact():
    d, layers, i, v = 4096, 32, 11008, 32000
    assert planning.count_params(planning.llama1_config("7B"))["total"] == (
        2 * v * d + layers * (4 * d * d + 3 * d * i + 2 * d) + d) == 6_738_415_616


def test_lora_params_by_hand():
    r, d, i, kv = 2, 16, 24, 8
    per_layer = r * ((d + d) + 2 * (d + kv) + (d + d) + 2 * (d + i) + (i + d))  # q, k, v, o, gate, up, down
    assert planning.lora_params(llama(), r) == 2 * per_layer == 928
    assert planning.lora_params(llama(), r, targets=("q_proj", "v_proj")) == 2 * r * (2 * d + d + kv)


@pytest.mark.parametrize("call, match", [
    (lambda: planning.count_params({"hidden_size": 8}), "transformers model config"),
    (lambda: planning.llama1_config("8B"), "valid sizes: 7B, 13B, 65B"),
    (lambda: planning.lora_params(llama(), 0), "rank"),
    (lambda: planning.lora_params(llama(), 4, targets=("c_attn",)), "no linear layer"),
])
def test_bad_inputs_params(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# ----------------------------------------------------------------------------- MoE families
# Each family names its expert count and top-k differently (n_routed_experts, num_local_experts, num_experts,
# moe_num_experts, ffn_config; num_experts_per_tok, moe_topk, moe_k, top_k_experts) and puts its experts
# elsewhere (mlp.experts, block_sparse_moe, feed_forward, ffn, the decoder layer itself). Small shapes:
# d = 32, 4 heads, 2 KV heads, vocabulary 64. Per case, by hand from the config fields: the parameters of one
# routed expert, how many layers are MoE, n experts and top-k; shared experts per MoE layer.
D = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
SWIGLU = 3 * 32 * 24  # gate, up and down projections of a d=32, intermediate=24 expert
MOE_FAMILIES = {
    "Mixtral": (dict(**D, intermediate_size=48, num_hidden_layers=2, num_local_experts=8, num_experts_per_tok=2),
                dict(expert=3 * 32 * 48, layers=2, n=8, k=2, shared=0)),
    # layer 1 is dense (mlp_only_layers); the shared expert has a 1 x d sigmoid gate of its own
    "Qwen2Moe": (dict(**D, intermediate_size=40, moe_intermediate_size=24, shared_expert_intermediate_size=56,
                      num_hidden_layers=3, mlp_only_layers=[1], num_experts=6, num_experts_per_tok=2),
                 dict(expert=SWIGLU, layers=2, n=6, k=2, shared=3 * 32 * 56 + 32)),
    "Qwen3Moe": (dict(**D, intermediate_size=40, moe_intermediate_size=24, num_hidden_layers=2, num_experts=6,
                      num_experts_per_tok=2, head_dim=8), dict(expert=SWIGLU, layers=2, n=6, k=2, shared=0)),
    "Olmoe": (dict(**D, intermediate_size=24, num_hidden_layers=2, num_experts=8, num_experts_per_tok=2),
              dict(expert=SWIGLU, layers=2, n=8, k=2, shared=0)),
    # gpt-oss experts have biases: 2 x intermediate on gate_up, d on down
    "GptOss": (dict(**D, intermediate_size=24, num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2,
                    head_dim=8), dict(expert=SWIGLU + 2 * 24 + 32, layers=2, n=4, k=2, shared=0)),
    # V2's router module has no top_k: the count must come from num_experts_per_tok
    "DeepseekV2": (dict(**D, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
                        first_k_dense_replace=1, n_routed_experts=8, num_experts_per_tok=3, n_shared_experts=2,
                        kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8),
                   dict(expert=3 * 32 * 16, layers=1, n=8, k=3, shared=3 * 32 * 16 * 2)),
    # DBRX stacks its experts' rows in 2-D matrices (n * ffn, d) under transformer.blocks.*.ffn
    "Dbrx": (dict(d_model=32, n_layers=2, n_heads=4, vocab_size=64, attn_config=dict(kv_n_heads=2, rope_theta=1e4),
                  ffn_config=dict(ffn_hidden_size=24, moe_num_experts=4, moe_top_k=2)),
             dict(expert=SWIGLU, layers=2, n=4, k=2, shared=0)),
    # MoE every other layer (1 and 3 of 4), Mamba mixers in between
    "Jamba": (dict(**D, intermediate_size=24, num_hidden_layers=4, expert_layer_period=2, expert_layer_offset=1,
                   attn_layer_period=2, attn_layer_offset=0, num_experts=4, num_experts_per_tok=2, mamba_d_state=4,
                   mamba_d_conv=2, mamba_expand=2, mamba_dt_rank=4), dict(expert=SWIGLU, layers=2, n=4, k=2, shared=0)),
    "GraniteMoeShared": (dict(**D, intermediate_size=24, shared_intermediate_size=40, num_hidden_layers=2,
                              num_local_experts=4, num_experts_per_tok=2),
                         dict(expert=SWIGLU, layers=2, n=4, k=2, shared=3 * 32 * 40)),
    # MoE every second layer (interleave step 2: layer 1), a shared expert beside the routed ones, top-1
    "Llama4Text": (dict(**D, intermediate_size=24, intermediate_size_mlp=48, num_hidden_layers=2, num_local_experts=4,
                        num_experts_per_tok=1, interleave_moe_layer_step=2, head_dim=8),
                   dict(expert=SWIGLU, layers=1, n=4, k=1, shared=SWIGLU)),
    "Ernie4_5_Moe": (dict(**D, intermediate_size=48, moe_intermediate_size=16, moe_num_experts=6, moe_k=2,
                          moe_num_shared_experts=1, moe_layer_start_index=1, moe_layer_end_index=2,
                          moe_layer_interval=1, num_hidden_layers=3),
                     dict(expert=3 * 32 * 16, layers=2, n=6, k=2, shared=3 * 32 * 16)),
    "HunYuanMoEV1": (dict(**D, intermediate_size=24, num_hidden_layers=2, num_experts=4, moe_topk=2, num_shared_expert=1,
                          head_dim=8), dict(expert=SWIGLU, layers=2, n=4, k=2, shared=SWIGLU)),
    # JetMoE routes attention too: each of its n attention experts holds a d x (kv_channels x kv heads) in and out
    "JetMoe": (dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, kv_channels=8, vocab_size=64,
                    intermediate_size=24, num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2),
               dict(expert=SWIGLU + 2 * 32 * 8 * 2, layers=2, n=4, k=2, shared=0)),
    "Phimoe": (dict(**D, intermediate_size=24, num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2),
               dict(expert=SWIGLU, layers=2, n=4, k=2, shared=0)),
    # Gemma 4 puts experts beside a dense MLP on the decoder layer itself; top-k in top_k_experts
    "Gemma4Text": (dict(**D, intermediate_size=48, enable_moe_block=True, num_experts=4, top_k_experts=2,
                        moe_intermediate_size=16, num_hidden_layers=2, head_dim=8, hidden_size_per_layer_input=0),
                   dict(expert=3 * 32 * 16, layers=2, n=4, k=2, shared=0)),
    "AriaText": (dict(**D, intermediate_size=24, num_hidden_layers=2, moe_num_experts=4, moe_topk=2,
                      moe_num_shared_experts=1), dict(expert=SWIGLU, layers=2, n=4, k=2, shared=SWIGLU)),
}


def torch_count(config) -> int:
    """The reference total: torch's own count of the parameters of the model built from `config`."""
    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_moe_families_by_hand(family):
    kwargs, hand = MOE_FAMILIES[family]
    config = getattr(transformers, f"{family}Config")(**kwargs)
    parts = planning.count_params(config)
    routed = hand["layers"] * hand["n"] * hand["expert"]
    assert parts["routed_experts"] == routed
    assert parts["shared_experts"] == hand["layers"] * hand["shared"]
    assert parts["total"] == torch_count(config)
    # a token skips n - k experts in every MoE layer; everything else it uses in full
    assert parts["active"] == parts["total"] - hand["layers"] * (hand["n"] - hand["k"]) * hand["expert"]


def test_mixtral_8x7b_published_figures():
    parts = planning.count_params(MixtralConfig())  # transformers' defaults are Mixtral-8x7B
    assert parts["total"] / 1e9 == pytest.approx(46.7, abs=0.05)  # Mistral AI: "46.7B total parameters"
    assert parts["active"] / 1e9 == pytest.approx(12.9, abs=0.05)  # "uses only 12.9B parameters per token"
    d, i, layers, vocab = 4096, 14336, 32, 32000
    per_layer = 2 * d * d + 2 * d * 1024 + 2 * 3 * d * i + 8 * d + 2 * d  # attention, 2 of 8 experts, router, norms
    assert parts["active"] == layers * per_layer + 2 * vocab * d + d == 12_879_925_248


def test_published_moe_figures():
    qwen = planning.count_params(transformers.Qwen2MoeConfig())  # defaults: Qwen1.5-MoE-A2.7B
    assert (round(qwen["total"] / 1e9, 1), round(qwen["active"] / 1e9, 1)) == (14.3, 2.7)
    olmoe = planning.count_params(transformers.OlmoeConfig(  # OLMoE-1B-7B (Muennighoff et al. 2024, Table 1)
        vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16, num_experts=64, num_experts_per_tok=8))
    assert (round(olmoe["total"] / 1e9, 1), round(olmoe["active"] / 1e9, 1)) == (6.9, 1.3)
    oss = transformers.GptOssConfig()  # defaults: gpt-oss-120b; its model card's active count leaves out
    parts = planning.count_params(oss)  # the input embedding table (a lookup, not a matmul)
    assert round(parts["total"] / 1e9, 2) == 116.83
    assert round((parts["active"] - oss.vocab_size * oss.hidden_size) / 1e9, 2) == 5.13


def test_gpt_oss_expert_biases_are_not_matmul_weights():
    kwargs, hand = MOE_FAMILIES["GptOss"]
    config = transformers.GptOssConfig(**kwargs)
    d, i, layers, k, heads, kv, head_dim, vocab = 32, 24, 2, 2, 4, 2, 8, 64
    attention = 2 * d * heads * head_dim + 2 * d * kv * head_dim  # q, o, k, v weights
    per_layer = attention + k * (d * 2 * i + i * d) + 4 * d  # + k experts' gate_up and down, + router weight
    assert planning.matmul_params(config) == layers * per_layer + vocab * d  # + the output head


def test_top_k_missing_is_a_clear_error():
    config = transformers.DeepseekV2Config(**{**MOE_FAMILIES["DeepseekV2"][0], "num_experts_per_tok": None})
    with pytest.raises(ValueError, match=r"8 experts of model\.layers\.1\.mlp\.experts.*num_experts_per_tok"):
        planning.count_params(config)


@pytest.mark.parametrize("model_type, kwargs, match", [
    ("doge", dict(is_moe=True, num_hidden_layers=2), "DogeCDMoE.*routes tokens to experts"),  # retrieval experts
    ("longcat_flash", dict(num_layers=1), "how many experts"),  # zero-computation experts: active varies by token
])
def test_unsupported_moe_layouts_raise_instead_of_counting_dense(model_type, kwargs, match):
    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"this transformers has no {model_type}")
    with pytest.raises(ValueError, match=match):
        planning.count_params(CONFIG_MAPPING[model_type](**kwargs))


def test_experts_in_a_module_list():
    # the per-expert layout of older and remote-code models: one nn.Module per expert in a ModuleList
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = torch.nn.Linear(8, 4, bias=False)
            self.experts = torch.nn.ModuleList(torch.nn.Linear(8, 16) for _ in range(4))
            self.top_k = 3

    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([Block()])
    config = LlamaConfig()
    groups = params._expert_groups(model, config)
    assert groups == {"layers.0.experts": (4, 3)}
    found = [params._classify(name, tuple(p.shape), groups) for name, p in model.named_parameters()]
    assert [(p.part, p.share, p.matrix) for p in found[:3]] == [
        ("router", 1, True), ("routed_experts", 0.75, True), ("routed_experts", 0.75, False)]  # weight, bias


# Every MoE causal LM the installed transformers ships, at its default shape cut to 4 layers: the active count
# must follow the n and top-k fields of its own config, and every tensor named like an expert must be routed.
N_FIELDS = ("n_routed_experts", "num_local_experts", "num_experts", "moe_num_experts")
K_FIELDS = ("num_experts_per_tok", "num_experts_per_token", "moe_topk", "moe_k", "top_k_experts", "moe_top_k")
OVERRIDES = {  # defaults that transformers cannot build, or that switch the MoE off
    "dbrx": dict(attn_config=dict(rope_theta=5e5)),
    "deepseek_v2": dict(num_experts_per_tok=6),
    "dots1": dict(n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1),
    "hunyuan_v1_moe": dict(head_dim=128, num_experts=8, moe_topk=2),
    "lfm2_moe": dict(layer_types=["full_attention", "conv"] * 2, num_hidden_layers=4),
    "gemma4_text": dict(enable_moe_block=True, num_experts=8, top_k_experts=2, moe_intermediate_size=256),
    "qwen4_exp_text": dict(indexer_head_dim=256, indexer_n_heads=4, indexer_kv_heads=1, indexer_budget=64,
                           indexer_compress_ratio=4),
}
UNSUPPORTED = {"doge", "longcat_flash"}  # tested above: they raise


def _moe_types() -> list[str]:
    """Causal-LM model types whose config takes an expert count (a multimodal wrapper's text model is listed too)."""
    found = []
    for model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        try:
            fields = inspect.signature(CONFIG_MAPPING[model_type].__init__).parameters
        except (KeyError, ImportError):  # a model whose config this install cannot import
            continue
        if any(f in fields for f in N_FIELDS + ("ffn_config",)) and model_type not in UNSUPPORTED:
            found.append(model_type)
    return found


def _field(config, names):
    sources = (config, getattr(config, "ffn_config", None))  # DBRX keeps its MoE fields in ffn_config
    return next((getattr(c, f) for c in sources for f in names if isinstance(getattr(c, f, None), int)), None)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", _moe_types())
def test_every_moe_family_of_transformers(model_type):
    config = CONFIG_MAPPING[model_type](**OVERRIDES.get(model_type, {}))
    if getattr(config, "num_hidden_layers", 0) > 4:  # cut the depth (and per-layer lists) to build fast
        old = config.num_hidden_layers
        for key, value in list(vars(config).items()):
            if isinstance(value, list) and len(value) == old:
                setattr(config, key, value[:4])
        config.num_hidden_layers = 4
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    named = sum(p.numel() for name, p in model.named_parameters()
                if re.search(r"(^|\.)experts\.", name) and "shared" not in name)
    n, k = _field(config, N_FIELDS), _field(config, K_FIELDS)
    parts = planning.count_params(config)
    assert parts["total"] == sum(p.numel() for p in model.parameters())
    assert parts["routed_experts"] >= named  # nothing named like an expert is counted in full
    if n is not None and k is not None and parts["routed_experts"]:
        assert (parts["total"] - parts["active"]) * n == parts["routed_experts"] * (n - k)


def test_llama1_config_has_the_published_shape():
    config = planning.llama1_config("13B")
    assert (config.vocab_size, config.max_position_embeddings, config.rms_norm_eps) == (32000, 2048, 1e-6)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.intermediate_size) == (5120, 40, 40, 13824)


def test_lora_params_default_rank_and_the_smallest_rank():
    d, kv, ffn = 16, 8, 24  # llama(): 4 heads of 4 dims, 2 KV heads; q, k, v, o and gate, up, down per layer
    per_rank = 2 * ((d + d) + 2 * (d + kv) + (d + d) + 2 * (d + ffn) + (ffn + d))
    assert per_rank == 928 // 2 and planning.lora_params(llama(), 1) == per_rank
    assert planning.lora_params(llama()) == 16 * per_rank  # the default rank is 16


def test_every_expert_active_when_top_k_is_all_of_them():
    config = mla()
    config.num_experts_per_tok = config.n_routed_experts  # k = n: the boundary is allowed
    counts = planning.count_params(config)
    assert counts["active"] == counts["total"]


# ----------------------------------------------------------------------------- added for mutation testing (issue 30)
@pytest.fixture(autouse=True)
def _fresh_inventory(monkeypatch):
    """Each test counts from scratch: `_inventory` caches per config, so a test would otherwise read what an
    earlier test (or mutation testing's first, unmutated pass) computed and check nothing of its own."""
    monkeypatch.setattr(params, "_INVENTORY", {})


def test_gpt_oss_and_dbrx_parts_by_hand():
    d, n, layers, vocab = 32, 4, 2, 64
    oss = planning.count_params(transformers.GptOssConfig(**MOE_FAMILIES["GptOss"][0]))
    assert oss["router"] == layers * (n * d + n)  # mlp.router: weight and bias
    dbrx = transformers.DbrxConfig(**MOE_FAMILIES["Dbrx"][0])
    parts = planning.count_params(dbrx)
    assert parts["embeddings"] == 2 * vocab * d  # transformer.wte and the untied lm_head
    assert parts["router"] == layers * n * d
    attention = d * (d + 2 * 2 * 8) + d * d  # Wqkv (q, then k and v of 2 KV heads of 8) and out_proj
    experts = 2 * 3 * 24 * d  # top-2 of the 4 experts' w1, v1 and w2 rows (each expert 24 rows of d)
    assert planning.matmul_params(dbrx) == layers * (attention + n * d + experts) + vocab * d


def test_afmoe_expert_bias_is_part_of_the_router():
    if "afmoe" not in CONFIG_MAPPING:
        pytest.skip("this transformers has no afmoe")
    d, n = 32, 4
    config = CONFIG_MAPPING["afmoe"](hidden_size=d, num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                                     intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
                                     num_experts=n, num_experts_per_tok=2, num_dense_layers=1, head_dim=8)
    parts = planning.count_params(config)
    assert parts["router"] == n * d + n  # one MoE layer: router.gate (n x d) and the block's own expert_bias (n)
    assert parts["total"] == torch_count(config)


def test_gemma4_block_on_the_decoder_layer_with_as_many_experts_as_width():
    """Gemma 4's MoE block is the decoder layer itself; with n = d experts a norm gain (d,) looks like a per-expert
    vector by shape alone, and attention sits in the same block: neither is router."""
    d, n, layers, vocab = 32, 32, 2, 64
    kwargs = {**MOE_FAMILIES["Gemma4Text"][0], "num_experts": n}
    config = transformers.Gemma4TextConfig(**kwargs)
    parts = planning.count_params(config)
    assert parts["router"] == layers * (d + n + n * d)  # router.scale, router.per_expert_scale, router.proj
    assert parts["dense_mlp"] == layers * 3 * d * 48
    assert parts["embeddings"] == vocab * d  # tied head
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert parts["attention"] == sum(p.numel() for name, p in model.named_parameters() if ".self_attn." in name)
    assert parts["norms"] == sum(p.numel() for name, p in model.named_parameters() if "norm" in name
                                 and ".self_attn." not in name)


class _Block(torch.nn.Module):
    def __init__(self, n=4, top_k=3):
        super().__init__()
        self.gate = torch.nn.Linear(8, n, bias=False)
        self.experts = torch.nn.ModuleList(torch.nn.Linear(8, 16) for _ in range(n))
        self.top_k = top_k


def test_expert_containers_found_by_structure_not_by_path():
    config = LlamaConfig()
    assert params._expert_groups(_Block(), config) == {"experts": (4, 3)}  # the model is the MoE block itself
    trunk = torch.nn.Module()
    trunk.shared_trunk = torch.nn.ModuleList([_Block()])  # "shared" in a parent's name: still routed experts
    assert params._expert_groups(trunk, config) == {"shared_trunk.0.experts": (4, 3)}
    # three experts of Linear(8, 16): a ModuleList holds whole experts, whatever their shapes
    three = params._classify("layers.0.experts.2.weight", (16, 8), {"layers.0.experts": (3, 1)})
    assert (three.part, three.share, three.matrix) == ("routed_experts", Fraction(1, 3), True)
    with pytest.raises(ValueError, match=r"^layers\.0\.experts\.w \(6, 8\): not stacked over the 4 experts of "
                                         r"layers\.0\.experts$"):
        params._classify("layers.0.experts.w", (6, 8), {"layers.0.experts": (4, 2)})


def test_expert_layouts_that_cannot_be_counted_are_named():
    config = LlamaConfig()
    block = _Block()
    block.gate.top_k = 2  # the router says 2, the block 3
    with pytest.raises(ValueError, match=r"^experts: the MoE block around it has several top_k values \[2, 3\]$"):
        params._expert_groups(block, config)

    class FooExperts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.empty(4, 8, 8))

    model = torch.nn.Module()
    model.experts = FooExperts()
    with pytest.raises(ValueError, match=r"cannot tell how many experts experts \(FooExperts\) holds"):
        params._expert_groups(model, config)

    class Router(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.top_k, self.num_experts = 1, n

    model = torch.nn.Module()
    model.router = Router(2)  # routes to 2 experts that are nowhere
    message = ("llama: router (Router) routes tokens to experts that are neither an `...Experts` module nor a "
               "ModuleList named `experts`; count_params cannot tell which weights are routed")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        params._expert_groups(model, config)
    model.router = Router(1)  # one expert takes every token: nothing is routed
    assert params._expert_groups(model, config) == {}


def test_top_k_from_a_text_sub_config_and_the_full_field_list():
    text = type("Text", (), {"num_experts_per_tok": 2})()
    config = type("Multimodal", (), {"model_type": "mm", "get_text_config": lambda self: text})()
    assert params._top_k(torch.nn.Module(), config, "experts", 8) == 2
    bare = type("Bare", (), {"model_type": "bare"})()
    with pytest.raises(ValueError, match=re.escape(f"(top-k None); set one of {', '.join(K_FIELDS)} in the config")):
        params._top_k(torch.nn.Module(), bare, "experts", 8)


def test_counts_are_ints_not_bools_or_floats():
    assert params._int(3) == 3 and params._int(True) is None and params._int(2.0) is None and params._int(None) is None


def test_not_a_config_is_named():
    with pytest.raises(TypeError, match="got dict$"):
        planning.count_params({"hidden_size": 8, "model_type": "llama"})
    with pytest.raises(TypeError, match="got SimpleNamespace$"):  # a model_type alone does not make a config
        planning.count_params(types.SimpleNamespace(model_type="llama"))


def test_a_container_inside_a_container_is_one_group():
    """named_modules lists parents first: experts kept inside an `...Experts` module belong to its group."""

    class PackedExperts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.num_experts = 4
            self.experts = torch.nn.ModuleList(torch.nn.Linear(8, 16) for _ in range(4))

    model = torch.nn.Module()
    model.moe = torch.nn.Module()
    model.moe.experts, model.moe.top_k = PackedExperts(), 2
    assert params._expert_groups(model, LlamaConfig()) == {"moe.experts": (4, 2)}
