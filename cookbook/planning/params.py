"""Parameter counts from a config: total vs active per token (MoE), the matmul N of the FLOPs formula, LoRA sizes.

Everything is arithmetic on a config: the model is built on the meta device only, so even the 671B
DeepSeek-V3 is counted on a laptop. Routed experts are found from the model's structure, not from config
field names (which differ by family: n_routed_experts, num_local_experts, num_experts, moe_num_experts ...).
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

__all__ = ["LLAMA1", "count_params", "llama1_config", "lora_params", "matmul_params"]

_PARTS = ("embeddings", "attention", "dense_mlp", "router", "shared_experts", "routed_experts", "norms")
# Where a family keeps its top-k when no module of the MoE block carries it as `top_k` (DeepSeek-V2 reads
# num_experts_per_tok, Gemma 4 top_k_experts). A module's own `top_k` wins: it is what the forward uses.
_TOP_K_FIELDS = ("num_experts_per_tok", "num_experts_per_token", "moe_topk", "moe_k", "top_k_experts", "moe_top_k")
_ATTENTION = {"self_attn", "self_attention", "attn", "attention", "linear_attn", "mamba"}  # token mixers
_MLP = {"mlp", "feed_forward", "ffn", "block_sparse_moe"}


@dataclasses.dataclass(frozen=True)
class _Param:
    """One parameter tensor: its part of the model, the share of it a token uses, whether it is a matmul weight."""

    name: str
    shape: tuple[int, ...]
    part: str
    share: Fraction  # k / n for routed experts (a token visits k of the n experts), else 1
    matrix: bool  # multiplies activations (one expert's slice, for stacked experts): part of the FLOPs' N


_INVENTORY: dict[str, tuple[list[_Param], list]] = {}  # config JSON -> (parameters, decoder linear shapes)


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _is_experts(name: str, module) -> bool:
    """A routed-experts container: transformers' stacked `...Experts` modules (Mixtral, Qwen-MoE, gpt-oss, DBRX,
    JetMoE's ParallelExperts ...) or a ModuleList named `experts` (the per-expert layout of older or remote code)."""
    leaf = name.rpartition(".")[2]
    if "shared" in leaf:  # shared experts see every token: counted in full
        return False
    return leaf.endswith("experts") if isinstance(module, torch.nn.ModuleList) else type(module).__name__.endswith(
        "Experts")


def _text_config(config) -> list:
    try:  # a multimodal config keeps the language model's fields in a sub-config
        return [config.get_text_config()]
    except (AttributeError, ValueError):  # no text config, or several (ambiguous)
        return []


def _top_k(block, config, name: str, n: int) -> int:
    """Experts each token visits in the MoE `block` around `name`: its or its router's `top_k`, else the config's."""
    found = {_int(getattr(m, "top_k", None)) for m in (block, *block.children())} - {None}
    if len(found) > 1:
        raise ValueError(f"{name}: the MoE block around it has several top_k values {sorted(found)}")
    configs = [config, *_text_config(config)]
    fields = [_int(getattr(c, field, None)) for field in _TOP_K_FIELDS for c in configs]
    k = next(iter(found), None) or next((f for f in fields if f is not None), None)
    if k is None or not 1 <= k <= n:
        raise ValueError(f"{config.model_type}: cannot tell how many of the {n} experts of {name} a token visits "
                         f"(top-k {k!r}); set one of {', '.join(_TOP_K_FIELDS)} in the config")
    return k


def _expert_groups(model, config) -> dict[str, tuple[int, int]]:
    """{module name: (n experts, top-k)} for every routed-experts container of `model`.

    A router (a module with `top_k` and `num_experts`) whose block holds no container raises, so an MoE is
    never counted as dense without a word (Doge's retrieval experts, LongCat's zero-computation experts).
    """
    modules = dict(model.named_modules())
    groups: dict[str, tuple[int, int]] = {}
    for name, module in modules.items():
        if not name or any(name.startswith(g + ".") for g in groups) or not _is_experts(name, module):
            continue  # named_modules goes parent first: DBRX's ExpertGLU inside its Experts is skipped
        n = len(module) if isinstance(module, torch.nn.ModuleList) else _int(getattr(module, "num_experts", None))
        if not n:
            raise ValueError(f"{config.model_type}: cannot tell how many experts {name} "
                             f"({type(module).__name__}) holds, so its active parameters are unknown")
        groups[name] = (n, _top_k(modules[name.rpartition(".")[0]], config, name, n))
    blocks = {g.rpartition(".")[0] for g in groups}
    for name, module in modules.items():
        routes = _int(getattr(module, "top_k", None)) and (_int(getattr(module, "num_experts", None)) or 0) > 1
        if routes and name not in blocks and name.rpartition(".")[0] not in blocks:
            raise ValueError(f"{config.model_type}: {name} ({type(module).__name__}) routes tokens to experts that "
                             "are neither an `...Experts` module nor a ModuleList named `experts`; "
                             "count_params cannot tell which weights are routed")
    return groups


def _classify(name: str, shape: tuple[int, ...], groups: dict[str, tuple[int, int]]) -> _Param:
    """Which part of the model a parameter belongs to: from the model's structure first, then from its name."""
    for group, (n, k) in groups.items():
        if name.startswith(group + "."):
            rest = name[len(group) + 1:]
            if rest.split(".")[0].isdigit():  # a ModuleList: each tensor belongs to one expert
                per_expert = shape
            elif shape and shape[0] % n == 0:  # stacked: (n, a, b) -> (a, b), a bias (n, a) -> (a,);
                per_expert = shape[1:] if shape[0] == n else (shape[0] // n, *shape[1:])  # DBRX: (n*a, b)
            else:
                raise ValueError(f"{name} {shape}: not stacked over the {n} experts of {group}")
            return _Param(name, shape, "routed_experts", Fraction(k, n), len(per_expert) >= 2)
    parts, part = name.split("."), "norms"  # norm gains, and whatever fits no other part (e.g. Mamba mixers)
    block = next((b for b in {g.rpartition(".")[0] for g in groups} if name.startswith(b + ".")), None)
    rest = name[len(block) + 1:].split(".") if block else []
    n = next((n for g, (n, _) in groups.items() if g.rpartition(".")[0] == block), 0)
    if "embed_tokens" in name or "wte" in parts or name.startswith("lm_head"):
        part = "embeddings"
    elif any(p.startswith("shared_expert") or p == "shared_mlp" for p in parts):
        part = "shared_experts"  # Qwen-MoE's sigmoid shared_expert_gate included
    elif block and (rest[0] in ("gate", "router") and len(rest) > 1 or len(rest) == 1 and shape[:1] == (n,)):
        part = "router"  # the router module, or a per-expert bias on the block itself (AFMoE's expert_bias)
    elif _ATTENTION & set(parts):
        part = "attention"
    elif _MLP & set(parts):
        part = "dense_mlp"
    return _Param(name, shape, part, Fraction(1), len(shape) >= 2)


def _inventory(config) -> tuple[list[_Param], list[tuple[str, tuple[int, int]]]]:
    """Every parameter (classified) and (name, (d_in, d_out)) of every decoder nn.Linear, cached per config.

    The model is built on the meta device: shapes only, no memory, even for 671B parameters.
    """
    if not hasattr(config, "to_json_string") or not hasattr(config, "model_type"):
        raise TypeError(f"expected a transformers model config, got {type(config).__name__}")
    key = config.to_json_string(use_diff=False)
    if key not in _INVENTORY:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        groups = _expert_groups(model, config)
        params = [_classify(name, tuple(p.shape), groups) for name, p in model.named_parameters()]
        linears = [(name, (m.in_features, m.out_features)) for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and name.startswith("model.layers.")]
        if len(_INVENTORY) >= 16:
            _INVENTORY.pop(next(iter(_INVENTORY)))
        _INVENTORY[key] = (params, linears)
    return _INVENTORY[key]


def count_params(config) -> dict[str, int]:
    """Parameters of a causal-LM config by part, plus `total` and `active` (per token, for MoE).

    The model is built on the meta device, so even the 671B DeepSeek-V3 is counted without memory. Routed
    experts are found from the model's structure (any family transformers ships: DeepSeek, Mixtral,
    Qwen-MoE, OLMoE, gpt-oss, DBRX, Jamba ...); `active` counts k of each block's n routed experts (its
    top-k) and everything else in full. `norms` also holds whatever fits no other part (e.g. Mamba mixers).
    Shown in notebooks/00 §3 and notebooks/03 §2.
    """
    parts = dict.fromkeys(_PARTS, 0)
    active = Fraction(0)
    for p in _inventory(config)[0]:
        parts[p.part] += math.prod(p.shape)
        active += math.prod(p.shape) * p.share
    parts["total"] = sum(parts.values())
    parts["active"] = round(active)
    return parts


def matmul_params(config) -> int:
    """N for FLOPs: the active weight-matrix entries each token is multiplied with.

    It is `active` minus the input embedding table (a lookup, no multiply) and minus vector parameters
    (norm gains, biases: elementwise, negligible), but it keeps the output head, a real d x vocab matmul
    (counted even when it shares its weights with the input embedding).
    """
    n, has_head = Fraction(0), False
    for p in _inventory(config)[0]:
        has_head |= p.name.startswith("lm_head")
        if p.matrix and (p.part != "embeddings" or p.name.startswith("lm_head")):
            n += math.prod(p.shape) * p.share
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

