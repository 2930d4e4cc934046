"""Continual learning and distribution shift: Elastic Weight Consolidation, and KL divergence between corpora.

    fisher = fisher_diagonal(model, task_a_batches, loss_fn)      # importance of each weight for task A
    ewc = EWC(model, fisher, lam=100.0)                            # anchored at the task-A weights
    Trainer(model, task_b_loader, config=..., loss_fn=ewc.token_loss_fn())   # or ewc.penalty(model) in any loop
    kl_shift(token_counts(tok, corpus_a), token_counts(tok, corpus_b))      # nats of shift from a to b
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from cookbook.train import token_loss
from cookbook.train.batches import target_count

__all__ = ["EWC", "fisher_diagonal", "kl_shift", "token_counts"]


def _examples(batch):
    """The examples of a batch (a tensor, or a tuple / list / dict of them), each with a batch dimension of 1."""
    tensors = [t for t in (batch.values() if isinstance(batch, Mapping) else
                           batch if isinstance(batch, (tuple, list)) else [batch]) if isinstance(t, torch.Tensor)]
    if not tensors or tensors[0].dim() == 0:
        raise TypeError(f"a batch is a tensor or a tuple, list or dict holding tensors with a batch dimension, "
                        f"got {type(batch).__name__}")

    def row(x, i):
        return x[i:i + 1] if isinstance(x, torch.Tensor) else x

    for i in range(len(tensors[0])):
        if isinstance(batch, Mapping):
            yield {k: row(v, i) for k, v in batch.items()}
        elif isinstance(batch, (tuple, list)):
            yield type(batch)(row(v, i) for v in batch)
        else:
            yield row(batch, i)


def fisher_diagonal(model: torch.nn.Module, batches: Iterable, loss_fn: Callable) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: the mean over every example of the squared gradient of its own loss.

    `loss_fn(model, batch)` is the negative log-likelihood of a batch's labels (averaged over the batch); it
    is called on one example at a time, so the result is E[(d log p(y|x) / d theta)^2] whatever the batch
    size. (Squaring each *batch*'s mean gradient instead would shrink it by about the batch size: the
    per-example gradients partly cancel.) Batches are tensors, or tuples / lists / dicts of tensors whose
    first dimension is the example. Dropout is off (eval mode). Shown in notebooks/13 §4.
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training, count = model.training, 0
    model.eval()
    try:
        for batch in batches:
            for example in _examples(batch):
                model.zero_grad(set_to_none=True)
                loss_fn(model, example).backward()
                for name, p in params.items():
                    if p.grad is not None:
                        fisher[name] += p.grad.detach() ** 2
                count += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if count == 0:
        raise ValueError("fisher_diagonal() got no examples")
    return {name: f / count for name, f in fisher.items()}


class EWC:
    """Elastic Weight Consolidation (Kirkpatrick et al. 2017): (lam / 2) sum_i F_i (theta_i - theta*_i)^2.

    `theta*` are the model's weights now (after task A), `F` their diagonal Fisher on task A: weights task A
    relies on are held near their values, the others stay free for task B. Shown in notebooks/13 §4.
    """

    def __init__(self, model: torch.nn.Module, fisher: Mapping[str, torch.Tensor], lam: float):
        if not 0 <= lam < math.inf:  # inf would make the penalty NaN at the anchor (inf x 0)
            raise ValueError(f"lam (the EWC penalty weight) must be >= 0 and finite, got {lam!r}")
        params = dict(model.named_parameters())
        unknown = sorted(set(fisher) - set(params))
        if unknown:
            raise ValueError(f"fisher holds {unknown[:3]}, which the model has no parameter of (another model?)")
        self.lam = float(lam)
        self.fisher = {name: f.detach().clone() for name, f in fisher.items()}
        self.anchor = {name: params[name].detach().clone() for name in fisher}

    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        """The EWC term for `model`'s current weights (differentiable)."""
        params = dict(model.named_parameters())
        total = sum((self.fisher[n] * (params[n] - self.anchor[n]) ** 2).sum() for n in self.fisher)
        return 0.5 * self.lam * torch.as_tensor(total)

    def token_loss_fn(self, base: Callable = token_loss) -> Callable:
        """A Trainer `loss_fn`: `base(model, batch)` (summed over target tokens) + the penalty x the batch's targets.

        The Trainer divides each micro-batch's loss by the target tokens of the whole optimizer step, so the
        penalty scaled by each micro-batch's share adds up to exactly one penalty per step, whatever the
        accumulation: the objective is mean token loss + penalty."""
        def loss_fn(model, batch):
            return base(model, batch) + self.penalty(model) * target_count(batch)
        return loss_fn


def token_counts(tokenizer, texts: Sequence[str]) -> Counter:
    """How often each token id occurs in `texts`: the empirical token distribution of a corpus."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of documents, got one string")
    counts: Counter = Counter()
    for ids in tokenizer(list(texts))["input_ids"]:
        counts.update(ids)
    return counts


def _aligned(p, q) -> tuple[np.ndarray, np.ndarray, list]:
    if isinstance(p, Mapping) != isinstance(q, Mapping):
        raise TypeError("p and q must both be mappings (outcome -> count) or both arrays over the same outcomes")
    if isinstance(p, Mapping):
        keys = sorted(set(p) | set(q), key=repr)
        return (np.array([p.get(k, 0) for k in keys], dtype=np.float64),
                np.array([q.get(k, 0) for k in keys], dtype=np.float64), keys)
    p, q = np.asarray(p, dtype=np.float64).ravel(), np.asarray(q, dtype=np.float64).ravel()
    if p.shape != q.shape:
        raise ValueError(f"p and q must cover the same outcomes, got {p.size} and {q.size} entries")
    return p, q, list(range(p.size))


def kl_shift(p, q, *, smoothing: float = 0.5, base: float = math.e) -> float:
    """KL(p || q): how surprised a model of q is by data from p (nats; `base=2` for bits). 0 means no shift.

    `p`, `q` are counts or probabilities: arrays over the same outcomes, or mappings outcome -> count (a
    `Counter` of tokens). Each gets `smoothing` added to every outcome of the union support before
    normalising (Lidstone; 0.5 is Jeffreys' prior), so an outcome unseen in q does not make the shift
    infinite. Disjoint supports are refused: the divergence would only measure the smoothing.
    Shown in notebooks/13 §4.
    """
    if not 0 <= smoothing < math.inf:  # infinite smoothing gives inf / inf
        raise ValueError(f"smoothing must be >= 0 and finite, got {smoothing!r}")
    if not (0 < base < math.inf and base != 1):
        raise ValueError(f"base must be a finite number > 0 other than 1 (math.e: nats, 2: bits), got {base!r}")
    p, q, keys = _aligned(p, q)
    if (p < 0).any() or (q < 0).any() or p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("p and q must be non-negative counts or probabilities with some mass")
    if not ((p > 0) & (q > 0)).any():
        raise ValueError("p and q have disjoint supports (no outcome occurs in both): KL(p||q) is infinite, and "
                         "with smoothing it would only measure the smoothing; compare distributions over shared "
                         "outcomes (the same tokenizer, the same feature bins)")
    missing = (p > 0) & (q == 0)
    if smoothing == 0 and missing.any():
        examples = [keys[i] for i in np.flatnonzero(missing)[:3]]
        raise ValueError(f"KL(p||q) is infinite: p has {int(missing.sum())} outcome(s) q never shows (e.g. "
                         f"{examples}); pass smoothing > 0")
    p, q = p + smoothing, q + smoothing
    p, q = p / p.sum(), q / q.sum()
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / q[nz])).sum() / math.log(base))
