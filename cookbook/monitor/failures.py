"""Deliberately broken training setups, so the diagnostics notebook (06) can show the monitor catching each.

Each piece fails in one known, explainable way:
- `SaturatingLM`: a deep stack of sigmoid layers with small weights: the gradient shrinks ~10x per layer
  on its way down, so the first layers stop learning (vanishing gradients).
- `UnsafeLossScaler`: fp16 loss scaling with the safety removed: the scale keeps growing and an overflowing
  step is applied instead of skipped (what `torch.amp.GradScaler` exists to prevent).
Too-high learning rates and overfitting need no special parts: a `TrainConfig` and a tiny data set do it.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutput

__all__ = ["SaturatingLM", "UnsafeLossScaler"]


class SaturatingLM(nn.Module):
    """Embedding -> `depth` x (Linear + Sigmoid) -> vocabulary head: a next-token model whose gradients vanish.

    sigmoid'(x) <= 0.25 and weights of std `init_std` (norm ~ init_std * sqrt(width) < 1) shrink the
    backward signal at every layer; residual connections and normalisation, which real transformers use,
    are exactly what is missing here.
    """

    def __init__(self, vocab_size: int, depth: int = 16, width: int = 64, init_std: float = 0.05, seed: int = 0):
        super().__init__()
        if depth < 1 or width < 1 or vocab_size < 2:
            raise ValueError(f"need depth >= 1, width >= 1, vocab_size >= 2; got {depth}, {width}, {vocab_size}")
        generator = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(vocab_size, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, vocab_size)
        with torch.no_grad():
            for layer in self.layers:
                layer.weight.normal_(0.0, init_std, generator=generator)
                layer.bias.zero_()
            self.embed.weight.normal_(0.0, 1.0, generator=generator)
            self.head.weight.normal_(0.0, 0.02, generator=generator)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_) -> CausalLMOutput:
        hidden = self.embed(input_ids)
        for layer in self.layers:
            hidden = torch.sigmoid(layer(hidden))
        return CausalLMOutput(logits=self.head(hidden))


class UnsafeLossScaler:
    """Loss scaling without the safety net: the scale grows by `growth` every step and is never lowered,
    and a step whose gradients overflowed is applied anyway.

    It has the surface `cookbook.train.Trainer` uses (`trainer.scaler = UnsafeLossScaler()`), so a run
    shows what a real `torch.amp.GradScaler` prevents: it would skip that step and halve its scale.
    """

    def __init__(self, init_scale: float = 2.0**16, growth: float = 2.0):
        if init_scale <= 0 or growth < 1:
            raise ValueError(f"need init_scale > 0 and growth >= 1, got {init_scale}, {growth}")
        self._scale, self.growth = float(init_scale), float(growth)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self._scale

    def unscale_(self, optimizer) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.div_(self._scale)  # inf stays inf: nothing checks for it

    def step(self, optimizer) -> None:
        optimizer.step()  # GradScaler.step would skip the update when a gradient is inf/NaN

    def update(self) -> None:
        self._scale *= self.growth  # GradScaler grows only after 2000 clean steps, and halves on overflow

    def get_scale(self) -> float:
        return self._scale

    def is_enabled(self) -> bool:
        return True

    def state_dict(self) -> dict:
        return {"scale": self._scale, "growth": self.growth}

    def load_state_dict(self, state: dict) -> None:
        self._scale, self.growth = float(state["scale"]), float(state["growth"])
