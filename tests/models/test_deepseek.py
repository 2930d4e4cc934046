import numpy as np
import pytest
import torch
from transformers import DeepseekV3ForCausalLM, LlamaForCausalLM

from cookbook import models
from cookbook.data import tokenizer
from cookbook.planning import count_params

VOCAB = 512


def _tokenizer():
    return tokenizer.train(["def f(x):\n    return x + 1\n"] * 4, vocab_size=300)


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
    assert models.config("tiny", np.int64(VOCAB)).vocab_size == VOCAB  # len() of a numpy-backed vocabulary


@pytest.mark.parametrize("make", [_tokenizer, lambda: 512.0, lambda: "512", lambda: True, lambda: None],
                         ids=["tokenizer", "float", "str", "bool", "None"])
def test_vocab_size_that_is_not_an_int_is_a_clear_type_error(make):
    """The first mistake of many: `build("tiny", tok)` instead of `build("tiny", len(tok))`."""
    bad = make()
    with pytest.raises(TypeError, match=rf"vocab_size must be an int .* got {type(bad).__name__}; for a tokenizer "
                                        r"pass len\(tokenizer\)"):
        models.build("tiny", bad)


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
