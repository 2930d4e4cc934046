"""The loss of a causal LM and exact gradient accumulation.

`token_loss` sums next-token cross-entropies; `backward_micro_batches` divides by the target tokens of
the whole optimizer step, so k micro-batches give exactly the big batch's gradient.
"""

from __future__ import annotations

import contextlib

import pandas as pd
import torch
import torch.nn.functional as F

from cookbook.train import precision as amp
from cookbook.train.batches import as_batch, concat_batches, target_count

__all__ = ["accumulation_error", "backward_micro_batches", "token_loss"]


def token_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum (not mean) of next-token cross-entropies over the batch's targets (labels != -100)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    # Position t predicts token t+1. The loss is computed in (at least) float32, even under autocast.
    logits = logits[:, :-1].flatten(0, 1).to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits, batch["labels"][:, 1:].flatten(),
                           ignore_index=-100, reduction="sum")


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

