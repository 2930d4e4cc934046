"""A small MLP classifier and its training loop: the cheap model behind tuning, active learning, EWC and A/B.

    model = mlp(64, 10, hidden=32, dropout=0.1, seed=0)
    fit(model, x, y, epochs=8, lr=3e-3, on_epoch=lambda epoch, m: ...)   # seeded, full-batch order per epoch
    probs = predict_proba(model, x_test)

Inputs are float feature matrices (N, features) and integer labels (N,): scikit-learn's bundled digits
(`sklearn.datasets.load_digits`, 8x8 pixels flattened) need nothing downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cookbook.checks import positive_int

__all__ = ["fit", "mlp", "predict_proba"]


def mlp(inputs: int, classes: int, *, hidden: int = 32, dropout: float = 0.0, seed: int | None = 0) -> nn.Sequential:
    """Linear -> ReLU -> Dropout -> Linear, seeded when `seed` is set. Shown in notebooks/13 §2."""
    for name, value in (("inputs", inputs), ("classes", classes), ("hidden", hidden)):
        positive_int(name, value)
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if seed is not None:
        torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes))


def _as_tensors(x, y=None):
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.dim() != 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty (N, features) matrix, got shape {tuple(x.shape)}")
    if y is None:
        return x
    y = torch.as_tensor(y, dtype=torch.long)
    if y.shape != (len(x),):
        raise ValueError(f"y must hold one label per row of x ({len(x)}), got shape {tuple(y.shape)}")
    return x, y


def fit(model: nn.Module, x, y, *, epochs: int, lr: float, batch_size: int = 64, weight_decay: float = 0.0,
        seed: int = 0, loss_fn: Callable | None = None,
        on_epoch: Callable[[int, nn.Module], bool | None] | None = None) -> nn.Module:
    """Train with AdamW on (x, y) for `epochs`, reshuffled each epoch from a generator seeded with `seed`.

    `loss_fn(model, x_batch, y_batch)` replaces the mean cross-entropy (EWC adds its penalty this way);
    `on_epoch(epoch, model)` runs after each epoch (1-based) in eval mode, and returning True stops training
    (a tuning trial reports its validation loss there, and its pruner may stop it). Shown in notebooks/13 §2.
    """
    x, y = _as_tensors(x, y)
    positive_int("epochs", epochs)
    positive_int("batch_size", batch_size)
    if not 0 < lr < math.inf:  # AdamW itself takes an infinite lr: one step makes the weights infinite
        raise ValueError(f"lr must be > 0 and finite, got {lr!r}")
    loss_fn = loss_fn or (lambda m, xb, yb: F.cross_entropy(m(xb), yb))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model, x[idx], y[idx]).backward()
            optimizer.step()
        model.eval()
        if on_epoch is not None and on_epoch(epoch, model):
            break
    return model.eval()


@torch.no_grad()
def predict_proba(model: nn.Module, x) -> torch.Tensor:
    """Class probabilities (N, classes) in eval mode (dropout off). Shown in notebooks/13 §3."""
    was_training = model.training
    model.eval()
    try:
        return model(_as_tensors(x)).softmax(-1)
    finally:
        model.train(was_training)
