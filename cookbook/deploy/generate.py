"""Batched text generation for serving: left-padded prompts, one KV cache, per-request budgets and temperatures.

A micro-batch holds requests with different prompt lengths, `max_tokens` and temperatures. Prompts are padded
on the *left* (the attention mask hides the padding; position ids count real tokens only), so every row's next
token sits in the last column and one forward per step serves them all. Each row stops on its own: at its
`max_tokens`, at the end-of-text token, or when `stop(i)` says its client is gone.

    texts = generate(model, [ids_a, ids_b], [8, 16], temperatures=[0.0, 0.8], seeds=[0, 1], eos_id=0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["Generation", "generate"]


@dataclasses.dataclass(frozen=True)
class Generation:
    """One row's result: the new token ids and why it ended (length, stop or cancelled)."""

    tokens: list[int]
    finish_reason: str


def _next_tokens(logits: torch.Tensor, temperatures: Sequence[float], generators) -> torch.Tensor:
    """Greedy where the temperature is 0, else a sample from softmax(logits / T) with the row's own generator."""
    logits = logits.float()
    tokens = logits.argmax(-1)
    for i, (temperature, generator) in enumerate(zip(temperatures, generators, strict=True)):
        if temperature > 0:
            probs = torch.softmax(logits[i] / temperature, -1)
            tokens[i] = torch.multinomial(probs, 1, generator=generator)[0]
    return tokens


def generate(model: nn.Module, prompts: Sequence[Sequence[int]], max_tokens: Sequence[int], *,
             temperatures: Sequence[float] | None = None, seeds: Sequence[int] | None = None,
             eos_id: int | None = None, pad_id: int = 0,
             stop: Callable[[int], bool] | None = None) -> list[Generation]:
    """Continue each prompt (a list of token ids) by up to its `max_tokens` tokens, all rows in one batch.

    Temperature 0 (the default) is greedy decoding; a positive one samples with a generator seeded by the
    row's seed, so a request repeats exactly whatever else shares its batch. `stop(i)` is polled after each
    step (a cancelled or expired request: the row ends as "cancelled"). Shown in notebooks/12 §5.
    """
    n = len(prompts)
    if n == 0 or len(max_tokens) != n:
        raise ValueError(f"need one max_tokens per prompt and at least one prompt, got {n} prompts and "
                         f"{len(max_tokens)} max_tokens")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    temperatures = list(temperatures) if temperatures is not None else [0.0] * n
    seeds = list(seeds) if seeds is not None else [0] * n
    generators = [torch.Generator().manual_seed(int(s)) if t > 0 else None
                  for t, s in zip(temperatures, seeds, strict=True)]
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt):] = torch.as_tensor(prompt, dtype=torch.long)
        mask[i, width - len(prompt):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # padding gets position 0; real tokens count from 0
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)

    tokens: list[list[int]] = [[] for _ in range(n)]
    reasons: list[str | None] = [None] * n
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        position = positions[:, -1:] + 1
        for _ in range(max(max_tokens)):
            chosen = _next_tokens(out.logits[:, -1], temperatures, generators).tolist()
            for i, token in enumerate(chosen):
                if reasons[i] is not None:
                    continue  # finished rows ride along until the batch ends: cheaper than reshaping the cache
                if token == eos_id:
                    reasons[i] = "stop"
                    continue
                tokens[i].append(token)
                if len(tokens[i]) >= max_tokens[i]:
                    reasons[i] = "length"
                elif stop is not None and stop(i):
                    reasons[i] = "cancelled"
            if all(r is not None for r in reasons):
                break
            mask = torch.cat([mask, mask.new_ones((n, 1))], dim=1)
            out = model(input_ids=torch.as_tensor(chosen, device=device)[:, None], attention_mask=mask,
                        position_ids=position, past_key_values=out.past_key_values, use_cache=True)
            position = position + 1
    return [Generation(t, r or "length") for t, r in zip(tokens, reasons, strict=True)]
