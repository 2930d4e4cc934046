import pytest
import torch
from transformers import DeepseekV3ForCausalLM, LlamaForCausalLM

from cookbook import models
from cookbook.planning import count_params

VOCAB = 512


@pytest.fixture(scope="module")
def tiny():
    return models.build("tiny", VOCAB)


def test_tiny_is_a_real_deepseek_v3_under_1m_params(tiny):
    assert isinstance(tiny, DeepseekV3ForCausalLM)
    n = sum(p.numel() for p in tiny.parameters())
    assert n < 1_000_000 and n == count_params(tiny.config)["total"]
    layers = tiny.model.layers
    assert type(layers[0].mlp).__name__ == "DeepseekV3MLP"  # first_k_dense_replace=1: layer 0 is dense
    moe = layers[1].mlp
    assert moe.experts.num_experts == 8 and moe.gate.top_k == 2 and moe.shared_experts is not None
    attn = layers[1].self_attn
    assert attn.kv_a_proj_with_mqa.out_features == 32 + 8  # MLA: compressed KV latent + shared rope key


def test_sizes_grow_tiny_smoke_full():
    sizes = [count_params(models.config(n, 8192))["total"] for n in ("tiny", "smoke", "full")]
    assert sizes == sorted(sizes)
    assert 10e6 < sizes[2] < 100e6  # "tens of millions" for the GPU run


def test_build_is_seeded(tiny):
    again = models.build("tiny", VOCAB)
    assert all(torch.equal(a, b) for a, b in zip(tiny.state_dict().values(), again.state_dict().values(), strict=True))
    other = models.build("tiny", VOCAB, seed=1)
    assert not torch.equal(other.lm_head.weight, tiny.lm_head.weight)


def test_overrides_and_bad_names():
    assert models.config("tiny", VOCAB, num_hidden_layers=3).num_hidden_layers == 3
    with pytest.raises(ValueError, match="tiny, smoke, full"):
        models.config("huge", VOCAB)
    with pytest.raises(ValueError, match="vocab_size"):
        models.config("tiny", 0)


def test_forward_loss_is_near_uniform_at_init(tiny):
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    out = tiny(input_ids=x, labels=x)
    assert out.logits.shape == (2, 16, VOCAB)
    assert abs(out.loss.item() - torch.log(torch.tensor(VOCAB)).item()) < 0.1  # small init ⇒ ≈ ln(V)


def test_dense_twin_matches_active_params():
    for name in ("tiny", "smoke", "full"):
        moe = models.config(name, 4096)
        dense = models.dense_config(moe)
        active, dense_total = count_params(moe)["active"], count_params(dense)["total"]
        per_unit = 3 * moe.hidden_size * moe.num_hidden_layers
        assert abs(dense_total - active) <= per_unit / 2  # equal up to half an MLP column per layer
        assert dense.hidden_size == moe.hidden_size and dense.num_hidden_layers == moe.num_hidden_layers
    assert isinstance(models.build_dense(models.config("tiny", VOCAB)), LlamaForCausalLM)


def test_active_params_hand_count():
    cfg = models.config("tiny", VOCAB)
    parts = count_params(cfg)
    expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    moe_layers = cfg.num_hidden_layers - cfg.first_k_dense_replace
    assert parts["routed_experts"] == moe_layers * cfg.n_routed_experts * expert
    assert parts["active"] == parts["total"] - moe_layers * (cfg.n_routed_experts - cfg.num_experts_per_tok) * expert


def test_expert_load_counts_every_routed_token(tiny):
    x = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(1))
    load = models.expert_load(tiny, x)
    assert list(load.index) == ["layer 1"] and load.shape == (1, 8)
    assert (load.sum(axis=1) == 3 * 20 * tiny.config.num_experts_per_tok).all()
    # Cross-check against the router called directly on the same hidden states.
    captured = {}

    def grab(_module, _inputs, output):
        captured["idx"] = output[2]

    handle = tiny.model.layers[1].mlp.gate.register_forward_hook(grab)
    tiny.eval()
    with torch.no_grad():
        tiny(input_ids=x)
    handle.remove()
    assert load.loc["layer 1"].tolist() == torch.bincount(captured["idx"].flatten(), minlength=8).tolist()


def test_expert_load_respects_mask_and_training_mode(tiny):
    x = torch.randint(0, VOCAB, (2, 10))
    mask = torch.ones_like(x)
    mask[1, 5:] = 0
    tiny.train()
    load = models.expert_load(tiny, x, attention_mask=mask)
    assert tiny.training  # mode restored
    assert load.to_numpy().sum() == 15 * tiny.config.num_experts_per_tok


def test_expert_load_on_dense_model_is_an_error():
    with pytest.raises(ValueError, match="no MoE router"):
        models.expert_load(models.build_dense(models.config("tiny", VOCAB)), torch.zeros(1, 4, dtype=torch.long))
