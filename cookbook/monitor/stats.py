"""Gradient statistics of one training step: global and per-layer gradient norms, and the update/weight ratio.

`TrainingMonitor` measures them every step with one host sync; `GradientStats` works on any model.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

__all__ = ["GradientStats", "layer_of"]

_LAYER_INDEX = re.compile(r"^(.*?\b(?:layers|layer|h|blocks)\.\d+)\.([^.]+)")


def layer_of(name: str) -> str:
    """The layer a parameter belongs to, for per-layer statistics.

    `model.layers.3.self_attn.q_proj.weight` -> `layers.3.self_attn`; norms of a block are merged
    (`layers.3.norm`); anything else is its module path (`lm_head`, `net.4`). MoE load is labelled with the
    block's name (`layers.3`, see `cookbook.models.LoadCounter`).
    """
    path = name.rsplit(".", 1)[0] if "." in name else name
    while path.startswith(("model.", "base_model.", "transformer.")):
        path = path.split(".", 1)[1]
    match = _LAYER_INDEX.match(path + ".")
    if match:
        block, part = match.groups()
        return f"{block}.norm" if "norm" in part else f"{block}.{part}"
    return path


class GradientStats:
    """Gradient norms and update ratios of a model's trainable parameters, in layer groups (`group`)."""

    def __init__(self, model: torch.nn.Module, group: Callable[[str], str] = layer_of):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no trainable parameters to monitor")
        self.params = [p for _, p in named]
        names = [group(n) for n, _ in named]
        self.groups = list(dict.fromkeys(names))
        self._index = torch.tensor([self.groups.index(g) for g in names])
        self._have: list[int] = []
        self._snapshot: tuple[int, list[int], list[torch.Tensor]] | None = None

    def _group_sums(self, values: torch.Tensor, idx: list[int]) -> torch.Tensor:
        """Sum of `values` (one per parameter in `idx`) within each layer group."""
        index = self._index[idx].to(values.device)
        return torch.zeros(len(self.groups), device=values.device).index_add_(0, index, values)

    def norms(self, loss: torch.Tensor) -> tuple[float, float | None, dict[str, float]]:
        """(loss, global gradient norm, norm per layer), read with one host sync; (loss, None, {}) without grads."""
        self._have = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not self._have:
            return float(loss), None, {}
        sq = _norms([self.params[i].grad for i in self._have]).square()
        per_group = self._group_sums(sq, self._have).sqrt()
        values = torch.cat([loss.to(sq.device), sq.sum().sqrt().reshape(1), per_group]).tolist()
        present = set(self._index[self._have].tolist())
        return values[0], values[1], {g: values[2 + k] for k, g in enumerate(self.groups) if k in present}

    def update_ratios(self, step: int, snapshot: bool) -> tuple[int, float, dict[str, float]] | None:
        """||w_new - w_old|| / ||w_old|| (overall, per layer) since the copy of the weights taken at an earlier step.

        Returns (that step, overall ratio, per-layer ratios) or None; then copies the weights of `step` if
        `snapshot` (one copy of the weights is kept between two steps).
        """
        out = None
        if self._snapshot is not None:
            prev, idx, old = self._snapshot
            with torch.no_grad():
                diff = _norms(torch._foreach_sub([self.params[i].detach() for i in idx], old)).square()
                base = _norms(old).square()
                d, b = self._group_sums(diff, idx), self._group_sums(base, idx)
                vals = torch.cat([d.sum().sqrt().reshape(1), b.sum().sqrt().reshape(1), d.sqrt(), b.sqrt()]).tolist()
            n, seen = len(self.groups), set(self._index[idx].tolist())
            if vals[1] > 0:
                out = prev, vals[0] / vals[1], {g: vals[2 + k] / vals[2 + n + k] for k, g in enumerate(self.groups)
                                                if k in seen and vals[2 + n + k] > 0}
            self._snapshot = None
        if snapshot:
            with torch.no_grad():
                self._snapshot = (step, self._have, [self.params[i].detach().clone() for i in self._have])
        return out

    def skip_update(self) -> None:
        """This step applies no update (a skipped fp16 step): no ratio for it."""
        self._snapshot = None

    def weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.params)


def _norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of each tensor, in one fused call where torch has it."""
    tensors = [t.to_dense() if t.is_sparse else t for t in tensors]
    if hasattr(torch, "_foreach_norm"):
        by_device: dict = {}
        for i, t in enumerate(tensors):
            by_device.setdefault(t.device, []).append(i)
        out = [None] * len(tensors)
        for idx in by_device.values():
            for i, n in zip(idx, torch._foreach_norm([tensors[i] for i in idx]), strict=True):
                out[i] = n
        device = tensors[0].device
        return torch.stack([n.float().to(device) for n in out])
    return torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors])
