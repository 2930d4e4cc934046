"""Weight sparsity: magnitude (TopK) unstructured pruning, the 2:4 pattern, and the GPU kernels that use it.

Unstructured zeros save nothing by themselves: the weights stay dense tensors of the same size and the same
dense matmul multiplies the zeros too (a sparse storage format such as CSR is *larger* than dense at 50%
sparsity: a column index per value). Only the 2:4 pattern (two zeros in every four weights along the input)
has kernels, on CUDA GPUs of compute capability 8.0 or newer; `to_semi_structured` uses them there and says
so elsewhere. notebooks/09 §5 measures all of it.
"""

from __future__ import annotations

import copy

import pandas as pd
import torch
from torch import nn
from torch.nn.utils import prune

from cookbook.compress.experts import is_fused_experts
from cookbook.compress.measure import coverage

__all__ = ["prune_2_4", "prune_magnitude", "sparsity_report", "to_semi_structured"]


def _targets(model: nn.Module, experts: bool):
    """(module, parameter name, per-expert) of every weight matrix pruned: nn.Linear weights, fused experts."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            yield module, "weight", False
        elif experts and is_fused_experts(module):
            yield module, "gate_up_proj", True
            yield module, "down_proj", True


def _smallest(weight: torch.Tensor, amount: float) -> torch.Tensor:
    """Keep-mask of one matrix without its round(amount x size) smallest |w| (torch.nn.utils.prune's count)."""
    k = round(amount * weight.numel())
    mask = torch.ones_like(weight)
    if k:
        mask.view(-1)[torch.topk(weight.detach().abs().view(-1), k, largest=False).indices] = 0
    return mask


def _apply(module: nn.Module, name: str, mask: torch.Tensor) -> None:
    prune.custom_from_mask(module, name, mask)
    prune.remove(module, name)  # permanent: the zeros are in the weight, no mask or hook is left behind


def prune_magnitude(model: nn.Module, sparsity: float, *, experts: bool = True, inplace: bool = False):
    """Zero the `sparsity` fraction of smallest-magnitude weights of each matrix (TopK keeps the rest).

    Per tensor for `nn.Linear` weights (`torch.nn.utils.prune.l1_unstructured`); per expert for the routed experts
    of a MoE (`experts=True`), so a small expert is not emptied by its neighbours. Embeddings, router and norms
    are kept. Returns a copy unless `inplace`. Shown in notebooks/09 §5.
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity is the fraction of weights zeroed, in [0, 1); got {sparsity!r}")
    model = model if inplace else copy.deepcopy(model)
    for module, name, per_expert in list(_targets(model, experts)):
        if per_expert:
            weight = getattr(module, name)
            _apply(module, name, torch.stack([_smallest(w, sparsity) for w in weight]))
        else:
            prune.l1_unstructured(module, name, amount=float(sparsity))
            prune.remove(module, name)
    return model


def _two_of_four(weight: torch.Tensor) -> torch.Tensor:
    """Keep-mask with the 2 largest |w| of every 4 consecutive weights along the last (input) dimension."""
    groups = weight.detach().abs().reshape(-1, 4)
    mask = torch.zeros_like(groups)
    mask.scatter_(1, groups.topk(2, dim=1).indices, 1.0)
    return mask.reshape(weight.shape)


def prune_2_4(model: nn.Module, *, experts: bool = True, inplace: bool = False):
    """The 2:4 pattern on every weight matrix: in each group of 4 inputs the 2 smallest |w| become 0 (exactly 50%).

    On any device: the pattern's effect on quality is measurable on a CPU; only `to_semi_structured` on a
    supporting GPU turns it into speed. Input widths must be multiples of 4. Shown in notebooks/09 §5.
    """
    model = model if inplace else copy.deepcopy(model)
    targets = list(_targets(model, experts))
    odd = [f"{type(m).__name__}.{n} {tuple(getattr(m, n).shape)}" for m, n, _ in targets if getattr(m, n).shape[-1] % 4]
    if odd:
        raise ValueError(f"2:4 sparsity needs input widths divisible by 4; not: {', '.join(odd)}")
    for module, name, _ in targets:
        _apply(module, name, _two_of_four(getattr(module, name)))
    return model


def sparsity_report(model: nn.Module) -> pd.DataFrame:
    """Zeros per weight matrix (linear layers and routed experts): numel, zeros, sparsity, from `coverage`."""
    report = coverage(model)
    report = report[report["kind"].isin(["linear", "routed experts"]) & ~report["quantized"]].copy()
    report["numel"] = [int(torch.Size(s).numel()) for s in report["shape"]]
    report["sparsity"] = report["zeros"] / report["numel"]
    return report[["kind", "shape", "numel", "zeros", "sparsity"]]


def to_semi_structured(model: nn.Module) -> nn.Module:
    """Store every 2:4-pruned `nn.Linear` weight in PyTorch's semi-structured sparse format (CUDA, sm >= 8.0).

    The model must be on such a GPU in fp16/bf16 and pruned with `prune_2_4`; layers the kernel's shape rules
    reject stay dense (`coverage` shows which). In place; returns the model. Shown in notebooks/09 §5.
    """
    device = next(model.parameters()).device
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0):
        raise ValueError(f"2:4 semi-structured kernels need a CUDA GPU of compute capability >= 8.0 (the model is on "
                         f"{device}); elsewhere prune_2_4 gives the 2:4 pattern on dense weights: the quality is "
                         "measurable, the speed is not")
    dtypes = {p.dtype for p in model.parameters()}
    if not dtypes <= {torch.float16, torch.bfloat16}:
        raise ValueError(f"2:4 kernels take fp16/bf16 weights, the model holds {sorted(map(str, dtypes))}: "
                         "model.to(torch.bfloat16) first")
    for module in model.modules():
        if isinstance(module, nn.Linear):
            try:
                sparse = torch.sparse.to_sparse_semi_structured(module.weight.detach())
            except (RuntimeError, ValueError):  # shape outside the kernel's rules: this layer stays dense
                continue
            module.weight = nn.Parameter(sparse, requires_grad=False)
    return model
