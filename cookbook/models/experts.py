"""Routed experts as two grouped matrix products in the autocast dtype, over float32 master weights.

transformers runs DeepSeek-V3's routed experts through `grouped_mm`, which multiplies in the dtype of the
*weights*: under bf16 autocast over float32 weights (the honest training set-up: the optimizer keeps float32
master weights) it casts the activations up and multiplies in float32. On a GPU that is a slow grouped path,
and under `torch.compile` a loop over the experts (inductor lowers `grouped_mm` for bf16 weights only), so the
fast bf16 grouped GEMM is reached only by storing the weights in bf16 — which drops the master weights.

`use_grouped_experts(model)` gives every experts module the same routing arithmetic with both grouped products
on *compute copies* of the expert weights in the autocast dtype, made in the forward. `weight.to(bf16)` is
differentiable: the gradient reaches the float32 parameter in float32, exactly what autocast does for an
`nn.Linear`. Outside autocast it computes in the weights' dtype, the same function as transformers' path.
Shown in notebooks/04 §9; equivalence with transformers' experts is tested in tests/models/test_experts.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.integrations.moe import ExpertsInterface

__all__ = ["GROUPED", "experts_modules", "grouped_experts_forward", "use_grouped_experts"]

GROUPED = "cookbook_grouped"  # the name this forward is registered under in transformers' ExpertsInterface


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    device = weight.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


def grouped_experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                            top_k_weights: torch.Tensor) -> torch.Tensor:
    """Routed experts of one MoE layer: (tokens, hidden) -> (tokens, hidden), for `top_k_index` (tokens, k).

    Each (token, expert) pair is sorted by expert so that every expert's tokens are contiguous; one grouped
    product then applies each expert's gate/up matrix to its rows, the gated activation follows, and a second
    grouped product applies the down matrices. The results are weighted by the router and summed per token in
    float32.
    """
    dtype = _compute_dtype(self.gate_up_proj)
    n_tokens, k = top_k_index.shape
    experts = top_k_index.flatten()
    order = experts.argsort(stable=True)
    rows = hidden_states[order // k].to(dtype)
    # int32 cumulative row counts: where each expert's rows end (grouped_mm's `offs`). Counted with a one-hot sum:
    # a fixed shape and no host sync (bincount's output size depends on the data), so compile and CUDA graphs hold.
    ends = F.one_hot(experts, self.num_experts).sum(0).cumsum(0).to(torch.int32)
    gate_up = F.grouped_mm(rows, self.gate_up_proj.to(dtype).transpose(1, 2), offs=ends)
    gate, up = gate_up.chunk(2, dim=-1)
    out = F.grouped_mm(self.act_fn(gate) * up, self.down_proj.to(dtype).transpose(1, 2), offs=ends)
    out = out.float() * top_k_weights.flatten()[order, None].float()
    # back to (token, k) order, then a sum over k: deterministic, unlike an atomic index_add on a GPU
    unsorted = torch.empty_like(out)
    unsorted[order] = out
    return unsorted.view(n_tokens, k, -1).sum(1).to(hidden_states.dtype)


ExpertsInterface.register(GROUPED, grouped_experts_forward)


def experts_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every module holding stacked routed-expert weights (`gate_up_proj` and `down_proj`, 3-d)."""
    return [m for m in model.modules()
            if getattr(getattr(m, "gate_up_proj", None), "ndim", 0) == 3 and hasattr(m, "down_proj")]


def use_grouped_experts(model, enabled: bool = True) -> str:
    """Route `model`'s experts through `grouped_experts_forward` (or back to transformers' `grouped_mm` path);
    returns the implementation now in use. A model without routed experts is refused."""
    if not experts_modules(model):
        raise ValueError(f"{type(model).__name__} has no routed experts (3-d gate_up_proj/down_proj weights): "
                         "the grouped experts path is for MoE models")
    model.set_experts_implementation(GROUPED if enabled else "grouped_mm")
    return model.config._experts_implementation
