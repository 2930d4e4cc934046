"""Adversarial training: Madry PGD-AT for classifiers, and embedding-space adversarial training for language
models (perturb `inputs_embeds` inside an ε-ball, FreeLB/SMART style) on the cookbook Trainer.

    history = adversarial_training(model, train_loader, functools.partial(pgd, steps=7), eps=0.1, epochs=10)
    trainer = Trainer(EmbeddingAdversary(lm, eps=0.5), blocks_loader, val_loader, TrainConfig(steps=50))
"""

from __future__ import annotations

import math
import time

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from cookbook.checks import positive_int
from cookbook.robust.attacks import _batches, _check_eps, _device, eval_mode, perturb
from cookbook.train import adamw
from cookbook.train.batches import as_batch, target_count
from cookbook.train.loss import token_loss

__all__ = ["EmbeddingAdversary", "adversarial_training", "embedding_pgd", "lm_robustness", "lm_sequence_losses"]


def _check_fraction(clean_fraction) -> float:
    if isinstance(clean_fraction, bool) or not isinstance(clean_fraction, (int, float)) or not 0 <= clean_fraction <= 1:
        raise ValueError(f"clean_fraction must be in [0, 1], got {clean_fraction!r}")
    return float(clean_fraction)


def adversarial_training(model, loader, attack=None, eps: float = 0.0, *, epochs: int = 1, lr: float | None = None,
                         weight_decay: float = 0.0, clean_fraction: float = 0.0, optimizer=None) -> pd.DataFrame:
    """Train a classifier on adversarial examples made on the fly (Madry et al. 2018): the history per epoch.

    min over θ of E[max over ‖δ‖ ≤ ε of loss(x + δ, y)]: each batch is attacked with `attack(model, x, y,
    eps)` against the current weights, then the model takes an AdamW step (`lr`, default 1e-3) on the mean
    cross-entropy. `clean_fraction` of each batch stays clean (Goodfellow et al. 2015 mixed half and half; 0 is pure PGD-AT).
    `attack=None` is standard training through the same loop, so a comparison differs in the attack only.
    An `optimizer` of your own (e.g. Opacus's DP optimizer) replaces AdamW. The model ends in eval mode.
    Shown in notebooks/10 §3.
    """
    positive_int("epochs", epochs)
    eps, clean_fraction = _check_eps(eps), _check_fraction(clean_fraction)
    if attack is not None and eps == 0:
        raise ValueError("an attack needs eps > 0 (eps=0 is standard training: pass attack=None)")
    if optimizer is not None and lr is not None:
        raise ValueError("pass either lr (for the default AdamW) or an optimizer, not both")
    device = _device(model)
    if optimizer is None:
        optimizer = adamw(model, lr=1e-3 if lr is None else lr, weight_decay=weight_decay, device=device)
    rows = []
    for epoch in range(epochs):
        start, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        model.train()
        for x, y in _batches(loader, device, None):
            keep = round(clean_fraction * len(x))
            if attack is not None and keep < len(x):
                x = torch.cat([x[:keep], attack(model, x[keep:], y[keep:], eps)])
            logits = model(x)
            # Poisson sampling (DP-SGD) can draw an empty batch: its step must still happen (and add noise)
            loss = F.cross_entropy(logits, y) if len(x) else logits.sum() * 0.0
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(x)
            correct += int((logits.argmax(-1) == y).sum())
            seen += len(x)
        if seen == 0:
            raise ValueError("the loader yielded no examples")
        rows.append(dict(epoch=epoch + 1, loss=loss_sum / seen, accuracy=correct / seen,
                         seconds=time.perf_counter() - start))
    model.eval()
    return pd.DataFrame(rows).set_index("epoch")


# ----------------------------------------------------------------------------- language models
def _embeddings(model) -> nn.Module:
    get = getattr(model, "get_input_embeddings", None)
    if get is None or get() is None:
        raise TypeError(f"{type(model).__name__} has no get_input_embeddings(): embedding-space attacks need a "
                        "transformers-style causal LM that accepts inputs_embeds")
    return get()


def _embeds_loss(model, batch, n_targets: int):
    """token_loss on perturbed embeddings instead of token ids: mean next-token loss of `embeds`."""
    def loss(embeds):
        forward = lambda input_ids, attention_mask: model(inputs_embeds=embeds, attention_mask=attention_mask)  # noqa: E731
        return token_loss(forward, batch) / n_targets
    return loss


def embedding_pgd(model, batch, eps: float, *, alpha: float | None = None, steps: int = 1, norm: str = "l2",
                  random_start: bool = True) -> torch.Tensor:
    """A perturbation of the token embeddings, inside an ε-ball per token, that raises the LM loss: (B, T, d).

    PGD (`perturb`) on `inputs_embeds` with the mean next-token loss of the batch (labels as the Trainer sets
    them); norm "l2" bounds each token's perturbation vector by eps, "linf" each coordinate. The model runs
    in eval mode and is left as it was. Shown in notebooks/10 §5.
    """
    batch = {k: v.to(_device(model)) for k, v in as_batch(batch).items()}
    n_targets = target_count(batch)
    if n_targets == 0:
        raise ValueError("the batch holds no target tokens (all labels are -100 or sequences have length 1)")
    with eval_mode(model), torch.no_grad():
        embeds = _embeddings(model)(batch["input_ids"]).detach()
    with eval_mode(model):
        adv = perturb(_embeds_loss(model, batch, n_targets), embeds, eps, alpha=alpha, steps=steps, norm=norm,
                      random_start=random_start, clamp=None, norm_dims=(-1,) if norm == "l2" else None)
    return adv - embeds


class EmbeddingAdversary(nn.Module):
    """A causal LM that, in training mode, runs on adversarially perturbed token embeddings.

    Hand it to `cookbook.train.Trainer` instead of the model: each training forward first finds a
    perturbation with `embedding_pgd` (per-token ε-ball, `steps` ascent steps) against the current weights,
    then returns the model's output on `embeddings + perturbation`, so the Trainer's loss is the adversarial
    loss: Madry's PGD training in embedding space. FreeLB (Zhu et al. 2020) perturbs the same embeddings and
    also averages the gradients of every ascent step; SMART (Jiang et al. 2020) adds a smoothness penalty
    instead. `clean_fraction` of each batch's sequences stay clean. In eval mode it is the plain model, so
    the Trainer's validation perplexity is the clean one. Gradients reach the embedding table through the
    clean embeddings. The unwrapped model is `.model`. Shown in notebooks/10 §5.
    """

    def __init__(self, model, eps: float, *, alpha: float | None = None, steps: int = 1, norm: str = "l2",
                 clean_fraction: float = 0.0):
        super().__init__()
        _embeddings(model)
        self.model = model
        self.eps, self.alpha, self.steps, self.norm = _check_eps(eps), alpha, positive_int("steps", steps), norm
        self.clean_fraction = _check_fraction(clean_fraction)

    @property
    def config(self):
        """The wrapped model's config (the Trainer reads it for FLOPs per token)."""
        return self.model.config

    def forward(self, input_ids, attention_mask=None, **kwargs):
        if not self.training or self.eps == 0:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        batch = {"input_ids": input_ids} if attention_mask is None else {"input_ids": input_ids,
                                                                           "attention_mask": attention_mask}
        delta = embedding_pgd(self.model, batch, self.eps, alpha=self.alpha, steps=self.steps, norm=self.norm)
        delta[: round(self.clean_fraction * len(input_ids))] = 0.0
        embeds = _embeddings(self.model)(input_ids) + delta
        return self.model(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)


def lm_sequence_losses(model, loader, eps_list, *, steps: int = 3, alpha: float | None = None, norm: str = "l2",
                       max_batches: int | None = None) -> pd.DataFrame:
    """Each sequence's summed next-token loss under embedding-space PGD: one row per sequence, in the loader's order.

    Columns: one per ε (nats summed over the sequence's target tokens; ε 0 is the clean loss) and `tokens`.
    Each batch is attacked at once, and that is the same as attacking each sequence alone: a token's step
    follows its own gradient, normalised per token ("l2") or by sign ("linf"), which the batch's other
    sequences do not change. The attacker starts at the clean embeddings, so the table repeats exactly.
    Paired material for a bootstrap over sequences (notebooks/10 §5); `lm_robustness` is its token-weighted mean.
    """
    eps_list = [_check_eps(e) for e in eps_list]
    if not eps_list:
        raise ValueError("eps_list needs at least one radius")
    device, columns = _device(model), {eps: [] for eps in eps_list}
    tokens = []
    for i, raw in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        batch = {k: v.to(device) for k, v in as_batch(raw).items()}
        labels = batch["labels"][:, 1:]
        counted = (labels != -100).sum(1)
        keep = counted > 0  # a sequence without targets has no loss to compare
        if not keep.any():
            continue
        tokens.append(counted[keep].cpu())
        for eps in eps_list:
            delta = embedding_pgd(model, batch, eps, alpha=alpha, steps=steps, norm=norm, random_start=False)
            with eval_mode(model), torch.no_grad():
                embeds = _embeddings(model)(batch["input_ids"]) + delta
                logits = model(inputs_embeds=embeds, attention_mask=batch.get("attention_mask")).logits[:, :-1]
                wide = logits.to(torch.promote_types(logits.dtype, torch.float32))  # as token_loss
                nll = F.cross_entropy(wide.transpose(1, 2), labels, ignore_index=-100, reduction="none")
            columns[eps].append(nll.sum(1)[keep].double().cpu())
    if not tokens:
        raise ValueError("the loader yielded no target tokens")
    table = pd.DataFrame({eps: torch.cat(parts).numpy() for eps, parts in columns.items()})
    table["tokens"] = torch.cat(tokens).numpy()
    return table.rename_axis("sequence")


def lm_robustness(model, loader, eps_list, *, steps: int = 3, alpha: float | None = None, norm: str = "l2",
                  max_batches: int | None = None) -> pd.DataFrame:
    """Next-token loss and perplexity of an LM under embedding-space PGD, per ε: a DataFrame indexed by eps.

    The loss is the mean over every target token of the first `max_batches` batches (the token-weighted
    mean of `lm_sequence_losses`); eps 0 is the clean loss. The attacker starts at the clean embeddings (no
    random start), so the table repeats exactly. Shown in notebooks/10 §5.
    """
    per_sequence = lm_sequence_losses(model, loader, eps_list, steps=steps, alpha=alpha, norm=norm,
                                      max_batches=max_batches)
    count = per_sequence.pop("tokens").sum()
    rows = [dict(eps=eps, loss=total / count, perplexity=math.exp(min(total / count, 700.0)))
            for eps, total in per_sequence.sum().items()]
    return pd.DataFrame(rows).set_index("eps")
