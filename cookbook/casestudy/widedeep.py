"""Wide & Deep (Cheng et al., 2016) for the case study, and the small training loop it trains with.

    x = pair_features(users, items, category, top)            # (N, 4): user, item, category, user's top category
    model = WideDeep(n_users, n_items, n_categories, item_vectors=vectors)
    history = fit(model, x, y, epochs=3, batch_size=1024, lr=1e-3, precision="bf16", val=(x_val, y_val))

Wide: a logistic regression over sparse one-hot features, the item and two crosses (user's top category x item
category, user x item category): it memorises. Deep: embeddings of user, item (initialised from the skip-gram
vectors), category and top category through the guide's 256 -> 128 -> 64 MLP: it generalises. Their logits add.

Why not `cookbook.train.Trainer`: it trains causal LMs. Its batches are token ids whose targets are the next
positions (it counts `labels[:, 1:]`), its validation is next-token loss and its MFU reads a transformer config;
a click model would need fake label columns to pass through it. `fit` is the same algorithm in a dozen lines
for a binary target, with the cookbook's pieces: `train.precision` (autocast, the fp16 loss scaler) and a
`monitor.TrainingMonitor` (gradient health, the NaN guard, early stopping on the validation loss).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from cookbook import env
from cookbook.checks import positive_int
from cookbook.train import precision as amp

__all__ = ["WideDeep", "fit", "pair_features", "predict", "score_matrix"]


def pair_features(users, items, category, top_category) -> torch.Tensor:
    """(N, 4) int64 features of (user, item) pairs: user id, item id, the item's category, the user's top
    category (`top_category[user]`; -1, no history, becomes the extra id n_categories). Shown in notebooks/14 §4."""
    users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    category, top_category = np.asarray(category, dtype=np.int64), np.asarray(top_category, dtype=np.int64)
    if users.shape != items.shape or users.ndim != 1:
        raise ValueError(f"users and items must be 1-d of one length, got shapes {users.shape}, {items.shape}")
    n_categories = int(category.max()) + 1
    top = top_category[users]
    return torch.from_numpy(np.stack([users, items, category[items], np.where(top < 0, n_categories, top)], 1))


class WideDeep(nn.Module):
    """Wide & Deep click model over `pair_features`; `forward(x)` returns one logit per row. Shown in notebooks/14 §4."""

    def __init__(self, n_users: int, n_items: int, n_categories: int, *, dim: int = 32,
                 hidden: tuple[int, ...] = (256, 128, 64), item_vectors=None):
        super().__init__()
        for name, value in (("n_users", n_users), ("n_items", n_items), ("n_categories", n_categories), ("dim", dim)):
            positive_int(name, value)
        if not hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty tuple of positive widths, e.g. (256, 128, 64), got {hidden!r}")
        self.n_users, self.n_items, self.n_categories = n_users, n_items, n_categories
        item_dim = dim
        if item_vectors is not None:
            item_vectors = torch.as_tensor(np.asarray(item_vectors), dtype=torch.float32)
            if item_vectors.dim() != 2 or item_vectors.shape[0] != n_items:
                raise ValueError(f"item_vectors must be ({n_items}, dim), got shape {tuple(item_vectors.shape)}")
            item_dim = item_vectors.shape[1]
        self.user, self.item = nn.Embedding(n_users, dim), nn.Embedding(n_items, item_dim)
        self.category, self.top = nn.Embedding(n_categories, dim), nn.Embedding(n_categories + 1, dim)
        for table in (self.user, self.item, self.category, self.top):
            nn.init.normal_(table.weight, std=0.05)  # N(0, 1) would swamp the MLP's first layer
        if item_vectors is not None:  # the skip-gram directions, at the scale of the other embeddings
            with torch.no_grad():
                self.item.weight.copy_(item_vectors / item_vectors.std().clamp_min(1e-12) * 0.05)
        layers, width = [], 3 * dim + item_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.deep = nn.Sequential(*layers, nn.Linear(width, 1))
        # wide: one weight per one-hot feature, i.e. a logistic regression; starts at 0 (no opinion)
        self.wide = nn.Embedding(n_items + (n_categories + 1) * n_categories + n_users * n_categories, 1)
        nn.init.zeros_(self.wide.weight)
        self.bias = nn.Parameter(torch.zeros(1))

    def wide_ids(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3) rows of the wide table: the item, top category x category, user x category."""
        user, item, cat, top = x.unbind(1)
        c = self.n_categories
        return torch.stack([item, self.n_items + top * c + cat,
                            self.n_items + (c + 1) * c + user * c + cat], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != 4 or x.dtype != torch.int64:
            raise ValueError(f"x must be (N, 4) int64 pair_features, got {tuple(x.shape)} {x.dtype}")
        user, item, cat, top = x.unbind(1)
        deep = self.deep(torch.cat([self.user(user), self.item(item), self.category(cat), self.top(top)], 1))
        return deep.squeeze(-1) + self.wide(self.wide_ids(x)).sum((1, 2)) + self.bias


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 8192, precision: str = "fp32") -> np.ndarray:
    """Logits of `model` for every row of `x`, in batches, in eval mode (float32 numpy). Shown in notebooks/14 §4."""
    positive_int("batch_size", batch_size)
    device, was_training = next(model.parameters()).device, model.training
    model.eval()
    try:
        out = []
        for start in range(0, len(x), batch_size):
            with amp.autocast(precision, device):
                out.append(model(x[start:start + batch_size].to(device)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def score_matrix(model: nn.Module, users, n_items: int, category, top_category, **kwargs) -> np.ndarray:
    """(len(users), n_items) logits of every item for each user: what ranking ranks. Shown in notebooks/14 §5."""
    users = np.asarray(users, dtype=np.int64)
    x = pair_features(np.repeat(users, n_items), np.tile(np.arange(n_items), len(users)), category, top_category)
    return predict(model, x, **kwargs).reshape(len(users), n_items)


def _val_loss(model, x, y, batch_size, precision) -> float:
    logits = torch.from_numpy(predict(model, x, batch_size=batch_size, precision=precision))
    return float(F.binary_cross_entropy_with_logits(logits, y.float()))


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int = 1024,
        lr: float = 1e-3, precision: str = "fp32", val=None, monitor=None, seed: int = 0, device=None) -> pd.DataFrame:
    """Train a click model with Adam on binary cross-entropy: `epochs` shuffled passes (seeded) over (x, y), under
    `precision`'s autocast (bf16/fp16 where the device supports it, with the fp16 loss scaler), one row of history
    per epoch (train loss, validation loss on `val=(x, y)`, examples/s). A `monitor` (`TrainingMonitor`) sees
    every step before the optimizer does and the validation loss after each epoch; its `should_stop` (a stalled
    validation loss, by default) ends training early. Shown in notebooks/14 §4."""
    positive_int("epochs", epochs)
    positive_int("batch_size", batch_size)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty and of one length, got {len(x)} and {len(y)}")
    device = torch.device(device) if device is not None else env.device()
    ok, why = amp.supported(precision, device)
    if not ok:
        raise ValueError(f"precision {precision!r} on {device}: {why}; use 'fp32' there")
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scaler = amp.grad_scaler(precision, device)
    generator = torch.Generator().manual_seed(seed)
    rows, step = [], 0
    for epoch in range(epochs):
        model.train()
        start, total, seen = time.perf_counter(), 0.0, 0
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            xb, yb = x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True).float()
            with amp.autocast(precision, device):
                logits = model(xb)
            loss = F.binary_cross_entropy_with_logits(logits.float(), yb)  # the loss in float32, even under autocast
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if scaler is not None:
                scaler.unscale_(optimizer)  # the monitor reads true gradients
            step += 1
            if monitor is not None:  # after backward, before the step: the NaN guard can still save good weights
                monitor.step(model, loss, step=step, lr=lr, optimizer=optimizer, scaler=scaler, tokens=len(idx))
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.item() * len(idx)
            seen += len(idx)
        seconds = time.perf_counter() - start
        row = dict(epoch=epoch + 1, step=step, train_loss=total / seen, val_loss=math.nan,
                   examples_per_s=seen / max(seconds, 1e-9), seconds=seconds)
        if val is not None:
            row["val_loss"] = _val_loss(model, val[0], val[1], 8192, precision)
            if monitor is not None:
                monitor.evaluate(row["val_loss"], step=step)
        rows.append(row)
        if monitor is not None and monitor.should_stop:
            break
    if monitor is not None:
        monitor.close()
    return pd.DataFrame(rows)
