"""The loss of a causal LM and exact gradient accumulation.

`token_loss` sums next-token cross-entropies; `backward_micro_batches` divides by the target tokens of
the whole optimizer step, so k micro-batches give exactly the big batch's gradient. `fused_token_loss` is the
same loss without ever holding the (tokens x vocabulary) logits: `linear_cross_entropy` projects the hidden
states a chunk of tokens at a time and computes the gradients as it goes (the idea of Liger's fused linear
cross-entropy, here in plain PyTorch so it runs on any device).
"""

from __future__ import annotations

import contextlib

import pandas as pd
import torch
import torch.nn.functional as F

from cookbook.checks import positive_int
from cookbook.train import precision as amp
from cookbook.train.batches import as_batch, concat_batches, target_count

__all__ = ["accumulation_error", "backward_micro_batches", "decoder_and_head", "fused_token_loss",
           "linear_cross_entropy", "token_loss"]


def token_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum (not mean) of next-token cross-entropies over the batch's targets (labels != -100)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    # Position t predicts token t+1. The loss is computed in (at least) float32, even under autocast.
    logits = logits[:, :-1].flatten(0, 1).to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits, batch["labels"][:, 1:].flatten(),
                           ignore_index=-100, reduction="sum")


class _LinearCrossEntropy(torch.autograd.Function):
    """Σ cross-entropy(hidden @ weight.T, targets) chunk by chunk; both gradients are computed in the forward,
    so only one chunk's logits exist at a time and the backward is a multiplication by the incoming scalar."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, dtype):
        w, wide = weight.to(dtype), torch.promote_types(dtype, torch.float32)  # softmax in >= float32, as token_loss
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=wide) if want_weight else None
        total = torch.zeros((), dtype=wide, device=hidden.device)
        for start in range(0, len(hidden), chunk):
            h, t = hidden[start:start + chunk].to(dtype), targets[start:start + chunk]
            logits = (h @ w.T).to(wide)
            lse = logits.logsumexp(-1)
            valid, index = t != -100, t.clamp_min(0)[:, None]
            total += ((lse - logits.gather(1, index)[:, 0]) * valid).sum()
            if want_hidden or want_weight:
                d = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                d.scatter_add_(1, index, torch.full_like(d[:, :1], -1.0))
                d = (d * valid[:, None]).to(dtype)  # d loss / d logits, in the matmuls' dtype like autocast's
                if want_hidden:
                    grad_hidden[start:start + chunk] = d @ w
                if want_weight:
                    grad_weight += d.T @ h
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (None if grad_hidden is None else grad_hidden * grad_total.to(grad_hidden.dtype),
                None if grad_weight is None else (grad_weight * grad_total).to(ctx.weight_dtype), None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                         chunk_tokens: int = 4096) -> torch.Tensor:
    """Sum of cross-entropies of the logits `hidden @ weight.T` against `targets` (-100: ignored), without the
    full logits: (tokens, hidden), (vocab, hidden), (tokens,) in. The projection runs in the autocast dtype
    when autocast is on (else in the weight's dtype) and the softmax in float32, as for `token_loss`; peak memory
    holds one (chunk_tokens x vocab) block instead of all tokens' logits."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1] or targets.shape != hidden.shape[:1]:
        raise ValueError(f"need hidden (tokens, h), weight (vocab, h) and targets (tokens,); got "
                         f"{tuple(hidden.shape)}, {tuple(weight.shape)}, {tuple(targets.shape)}")
    positive_int("chunk_tokens", chunk_tokens)
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_tokens, dtype)


def decoder_and_head(model):
    """(decoder, head) of a transformers causal LM: the decoder stack (returning `last_hidden_state`) and the bias-free output projection of a causal LM."""
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper: the module it wraps
    body = getattr(model, "model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if body is None or head is None or getattr(head, "bias", None) is not None:
        raise TypeError(f"fused_token_loss needs a transformers causal LM whose logits are model.lm_head(model.model("
                        f"...).last_hidden_state) with a bias-free head; {type(model).__name__} is not one: use token_loss")
    return body, head


def fused_token_loss(model, batch: dict[str, torch.Tensor], *, chunk_tokens: int = 4096) -> torch.Tensor:
    """`token_loss` (sum of next-token cross-entropies over the targets) through `linear_cross_entropy`: the same
    value and gradients, without the (tokens x vocabulary) logits. For transformers causal LMs (`model.model`
    then a bias-free `lm_head`)."""
    body, head = decoder_and_head(model)
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).last_hidden_state
    return linear_cross_entropy(hidden[:, :-1].flatten(0, 1), head.weight, batch["labels"][:, 1:].flatten(),
                                chunk_tokens=chunk_tokens)


def backward_micro_batches(model, micro_batches, *, normalize: str = "tokens", precision: str = "fp32",
                           scaler=None, balancer=None, device=None, loss_fn=token_loss,
                           n_targets: float | None = None) -> torch.Tensor:
    """Forward + backward over the micro-batches of one optimizer step; returns the step's mean loss.

    `loss_fn(model, batch)` returns the loss summed over the batch's target tokens (`token_loss` by default;
    distillation passes its own objective with the same contract).

    The gradients left in `.grad` are those of the mean loss over every target token of the step, exactly
    as if the micro-batches were one big batch (`normalize="tokens"`). `normalize="steps"` is the naive
    recipe `mean_loss / k`, which is only right when every micro-batch holds the same number of targets.

    `n_targets` replaces the divisor when this call sees only part of the step: one micro-batch at a time
    (so a data-parallel wrapper can skip its gradient sync on all but the last), or one rank of several.
    Data-parallel engines average gradients over the N ranks, so they pass the step's targets summed over
    all ranks divided by N (`cookbook.scale.train_lm` does, notebooks/11); a part may then hold no targets.
    """
    if normalize not in ("tokens", "steps"):
        raise ValueError(f"normalize must be 'tokens' or 'steps', got {normalize!r}")
    if n_targets is not None and (normalize != "tokens" or not n_targets > 0):
        raise ValueError(f"n_targets must be a positive count with normalize='tokens', got {n_targets!r} "
                         f"with normalize={normalize!r}")
    micro_batches = [as_batch(b) for b in micro_batches]
    counts = [target_count(b) for b in micro_batches]  # counted on the host copy: no device sync
    n_sequences = sum(len(b["input_ids"]) for b in micro_batches)
    if sum(counts) == 0 and n_targets is None:
        raise ValueError("the micro-batches hold no target tokens (all labels are -100 or sequences have length 1)")
    n_targets = sum(counts) if n_targets is None else n_targets
    device = torch.device(device) if device is not None else next(model.parameters()).device
    losses = []
    for batch, count in zip(micro_batches, counts, strict=True):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        recording = balancer.recording() if balancer is not None else contextlib.nullcontext()
        with amp.autocast(precision, device), recording:
            loss_sum = loss_fn(model, batch)
        if normalize == "tokens":
            # Divide by the target tokens of the WHOLE step, not of this micro-batch: the k backward passes
            # then add up to exactly the big-batch gradient. (`mean / k` over-weights the tokens of short
            # micro-batches whenever micro-batches hold different numbers of targets.)
            loss = loss_sum / n_targets
        else:
            loss = loss_sum / max(count, 1) / len(micro_batches)
        losses.append(loss.detach())
        if balancer is not None:  # the aux loss is a mean over sequences: weight micro-batches by their share
            loss = loss + balancer.aux_loss() * (len(batch["input_ids"]) / n_sequences)
        (scaler.scale(loss) if scaler is not None else loss).backward()
    return torch.stack(losses).sum()



def accumulation_error(model, micro_batches, *, device="cpu"):
    """Relative gradient error of accumulating `micro_batches` vs one big batch of all their sequences.

    A DataFrame with one row per normalisation ("tokens": exact, "steps": the naive mean / k). Use a
    float64 model to see the difference between a real error and rounding.
    """

    micro_batches = [as_batch(b) for b in micro_batches]

    def gradient(batches, normalize):
        model.zero_grad(set_to_none=True)
        loss = backward_micro_batches(model, batches, normalize=normalize, device=device)
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        model.zero_grad(set_to_none=True)
        return loss.item(), grad

    big_loss, reference = gradient([concat_batches(micro_batches)], "tokens")
    rows = []
    for normalize in ("tokens", "steps"):
        loss, grad = gradient(micro_batches, normalize)
        rows.append(dict(normalize=normalize, loss=loss, big_batch_loss=big_loss,
                         relative_gradient_error=((grad - reference).norm() / reference.norm()).item()))
    return pd.DataFrame(rows).set_index("normalize")

