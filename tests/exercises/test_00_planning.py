"""Solutions to the exercises of notebooks/00 (setup and planning), each checked against an independent result."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from cookbook import planning


def llama(vocab: int, d: int, layers: int, ffn: int, heads: int = 4) -> LlamaConfig:
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, intermediate_size=ffn,
                      num_attention_heads=heads, num_key_value_heads=heads, tie_word_embeddings=False)
    cfg._attn_implementation = "eager"  # explicit matmuls, which the FLOP counter can see
    return cfg


# Exercise 1: count a dense Llama by hand
def llama_params(vocab: int, d: int, layers: int, ffn: int) -> int:
    """Embedding + head (vocab·d each), per layer q/k/v/o (4d²), SwiGLU gate/up/down (3·d·ffn), two norms (2d);
    one final norm (d)."""
    return 2 * vocab * d + layers * (4 * d * d + 3 * d * ffn + 2 * d) + d


@pytest.mark.parametrize("vocab,d,layers,ffn", [(100, 32, 2, 64), (517, 48, 3, 80), (2048, 64, 1, 172)])
def test_llama_params_equal_the_meta_model(vocab, d, layers, ffn):
    with torch.device("meta"):
        model = LlamaForCausalLM(llama(vocab, d, layers, ffn))
    assert llama_params(vocab, d, layers, ffn) == sum(p.numel() for p in model.parameters())


def test_llama_7b_by_hand_matches_the_paper_and_planning():
    n = llama_params(32000, 4096, 32, 11008)
    assert round(n / 1e9, 1) == 6.7  # the LLaMA paper's 6.7B
    assert n == planning.count_params(planning.llama1_config("7B"))["total"]


# Exercise 2: bytes per parameter, measured
def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the weights, their gradients and every tensor the optimizer keeps, after one step."""
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params)
    states = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
                 if torch.is_tensor(v) and v.dim() > 0)  # AdamW's step counter is a 0-d tensor: not per parameter
    return weights + grads + states


@pytest.mark.parametrize("name,make,expected", [
    ("adamw", lambda p: torch.optim.AdamW(p, lr=1e-3), 16),  # 4 weight + 4 grad + 4 momentum + 4 variance
    ("sgd", lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9), 12),  # 4 + 4 + 4 momentum
])
def test_fp32_bytes_per_parameter_measured_and_planned(name, make, expected):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 10))
    optimizer = make(model.parameters())
    model(torch.randn(8, 64)).square().mean().backward()
    optimizer.step()
    n = sum(p.numel() for p in model.parameters())
    assert state_bytes(model, optimizer) == expected * n
    assert planning.training_memory(n, precision="fp32", optimizer=name)["gpu_total"] * 1e9 == pytest.approx(
        expected * n)


# Exercise 3: training FLOPs per token by hand
def llama_training_flops(vocab: int, d: int, layers: int, ffn: int, seq: int, tokens: int) -> int:
    """3 × forward: 2 FLOPs per matmul weight (layers and head, not the embedding lookup or the norms) plus
    attention's QKᵀ and weights·V, 2·seq·d each per token and layer."""
    n = layers * (4 * d * d + 3 * d * ffn) + vocab * d
    return 3 * tokens * (2 * n + layers * 2 * seq * 2 * d)


@pytest.mark.parametrize("vocab,d,layers,ffn,batch,seq", [(100, 32, 2, 64, 2, 16), (257, 48, 1, 96, 1, 40)])
def test_training_flops_equal_the_flop_counter(vocab, d, layers, ffn, batch, seq):
    torch.manual_seed(0)
    cfg = llama(vocab, d, layers, ffn)
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, vocab, (batch, seq))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    by_hand = llama_training_flops(vocab, d, layers, ffn, seq, batch * seq)
    assert counter.get_total_flops() == by_hand
    assert planning.flops_per_token(cfg, seq) * batch * seq == by_hand
