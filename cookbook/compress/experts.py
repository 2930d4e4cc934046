"""Int8 weight-only routed experts: the cookbook's own path, because no library path covers them.

transformers 5 stores the routed experts of a MoE layer as two 3-D parameters, `gate_up_proj` (experts x 2·inter x
hidden) and `down_proj` (experts x hidden x inter), not as `nn.Linear` modules. torchao's `quantize_` only swaps
`nn.Linear` weights (its default filter), so the experts, most of a MoE's bytes, stay fp32 without a warning (the same
trap in pytorch/torchtitan#3199 and NVIDIA/Model-Optimizer#1173); forcing an int8 config onto them with
`FqnToConfig` fails in the forward (torchao 0.18: `aten.transpose` is not implemented for `Int8Tensor`).
`Int8Experts` stores each expert's rows as int8 with one fp32 scale per row, and runs the original module's own
forward on the dequantized weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["Int8Experts", "int8_rows", "is_fused_experts", "quantize_experts"]

WEIGHTS = ("gate_up_proj", "down_proj")


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of the last dimension, torchao's recipe: (codes int8, scale fp32 with a trailing 1).

    scale = max|row| / 127.5 and codes = round(w x (1 / scale)) clamped to [-128, 127], as `Int8WeightOnlyConfig`
    stores an `nn.Linear` weight, so the round-trip error is at most scale / 2. Shown in notebooks/09 §2.
    """
    if not weight.dtype.is_floating_point:
        raise TypeError(f"int8_rows quantizes floating-point weights, got {weight.dtype}")
    scale = weight.detach().abs().amax(dim=-1, keepdim=True).float() / 127.5
    scale = scale.clamp_min(torch.finfo(torch.float32).eps)  # an all-zero row: codes 0 whatever the scale
    codes = torch.round(weight.detach().float() * (1 / scale)).clamp(-128, 127).to(torch.int8)
    return codes, scale


def is_fused_experts(module: nn.Module) -> bool:
    """True for transformers' fused routed experts: 3-D `gate_up_proj` and `down_proj` parameters."""
    params = dict(module.named_parameters(recurse=False))
    return all(name in params and params[name].dim() == 3 for name in WEIGHTS)


class Int8Experts(nn.Module):
    """A fused-experts module with int8 weights (per-row scales, `int8_rows`) and the original module's forward.

    Each call dequantizes the weights and runs the wrapped module's own forward on them: transformers picks the
    same kernel as for the float experts (grouped_mm, batched_mm or the eager loop, from
    `config._experts_implementation`), so a latency comparison measures int8 storage, not a different loop.
    Built from a module that `is_fused_experts`, stored untransposed (experts x out x in: one scale per output
    row); DeepSeek-V3, Qwen-MoE and Mixtral in transformers 5. Shown in notebooks/09 §2.
    """

    def __init__(self, experts: nn.Module):
        super().__init__()
        if not is_fused_experts(experts):
            raise TypeError(f"{type(experts).__name__} has no 3-D gate_up_proj/down_proj parameters to quantize")
        if getattr(experts, "is_transposed", False):
            raise NotImplementedError(f"{type(experts).__name__} stores its experts transposed (is_transposed=True): "
                                      "Int8Experts keeps one scale per output row of untransposed weights")
        self.num_experts = experts.gate_up_proj.shape[0]
        self.dtype = experts.gate_up_proj.dtype  # what the weights were: the coverage report's "before"
        for name in WEIGHTS:
            qdata, scale = int8_rows(getattr(experts, name))
            self.register_buffer(f"{name}_int8", qdata)
            self.register_buffer(f"{name}_scale", scale)
        # a shallow copy of the module without its two float weights; forward lends it the dequantized ones
        kernel = copy.copy(experts)
        kernel._parameters = {k: v for k, v in experts._parameters.items() if k not in WEIGHTS}
        kernel._buffers, kernel._modules = dict(experts._buffers), dict(experts._modules)
        self.kernel = kernel

    def dequantized(self, name: str, expert: int | slice = slice(None)) -> torch.Tensor:
        """The float weights of `name` ('gate_up_proj' or 'down_proj') for one expert (default: all)."""
        if name not in WEIGHTS:
            raise ValueError(f"unknown expert weight {name!r}; valid: {', '.join(WEIGHTS)}")
        qdata, scale = getattr(self, f"{name}_int8")[expert], getattr(self, f"{name}_scale")[expert]
        return qdata.to(scale.dtype) * scale

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        # New: a shallow copy of the kernel per call holds this call's dequantized weights. Lending them to the
        # shared kernel (set, run, delete) let two threads serving one model delete each other's weights mid-forward
        # (AttributeError: no attribute 'gate_up_proj'); the copy shares every parameter and buffer, costs a dict
        # copy, and is gone with the call: never stored, never in the state dict.
        kernel = copy.copy(self.kernel)
        for name in WEIGHTS:
            kernel.__dict__[name] = self.dequantized(name).to(hidden_states.dtype)
        return kernel(hidden_states, top_k_index, top_k_weights)

    def extra_repr(self) -> str:
        e, two_inter, hidden = self.gate_up_proj_int8.shape
        return f"experts={e}, hidden={hidden}, intermediate={two_inter // 2}, int8 per-row weight-only"


def quantize_experts(model: nn.Module) -> list[str]:
    """Replace every fused routed-experts module of `model` by `Int8Experts`, in place; the names replaced."""
    names = [name for name, module in model.named_modules() if is_fused_experts(module)]
    if "" in names:
        raise ValueError("quantize_experts replaces submodules: pass the model that holds the experts module")
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, Int8Experts(owner.get_submodule(child)))
    return names
