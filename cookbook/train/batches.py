"""Batches: a DataLoader over packed blocks, right-padding with masked labels, and batch plumbing."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["as_batch", "concat_batches", "loader", "pad_batch", "padded_loader", "real_tokens", "target_count"]


def loader(ds, batch_size: int, *, shuffle: bool = True, seed: int = 0, drop_last: bool = True):
    """A DataLoader of `{"input_ids": LongTensor}` batches from a packed `datasets.Dataset` (or any dataset)."""
    if hasattr(ds, "with_format"):
        ds = ds.with_format("torch", columns=["input_ids"])
    if len(ds) < batch_size and drop_last:
        raise ValueError(f"{len(ds)} examples cannot fill one batch of {batch_size}")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                       drop_last=drop_last, pin_memory=torch.cuda.is_available())


def padded_loader(sequences, batch_size: int, *, seed: int = 0, pad_id: int = 0, drop_last: bool = True):
    """A DataLoader of right-padded batches (`pad_batch`) over token lists, one document each: the padded
    alternative to packed blocks (its batches are as wide as their longest document)."""
    sequences = [list(s) for s in sequences]
    empty = [i for i, s in enumerate(sequences) if not s]
    if empty:
        raise ValueError(f"{len(empty)} empty sequence(s) (the first at index {empty[0]}): leave them out")
    if len(sequences) < batch_size and drop_last:
        raise ValueError(f"{len(sequences)} sequences cannot fill one batch of {batch_size}")
    return torch.utils.data.DataLoader(sequences, batch_size=batch_size, shuffle=True, drop_last=drop_last,
                                       generator=torch.Generator().manual_seed(seed),
                                       collate_fn=lambda rows: pad_batch(rows, pad_id))


def pad_batch(sequences, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad token lists into input_ids/attention_mask/labels; padded targets are -100 (ignored)."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("pad_batch needs at least one non-empty sequence")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.as_tensor(s)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def as_batch(batch) -> dict[str, torch.Tensor]:
    batch = {"input_ids": batch} if torch.is_tensor(batch) else dict(batch)
    if "input_ids" not in batch:
        raise ValueError(f"a batch needs 'input_ids'; got keys {sorted(batch)}")
    if "labels" not in batch:
        mask = batch.get("attention_mask")
        batch["labels"] = batch["input_ids"] if mask is None else batch["input_ids"].masked_fill(mask == 0, -100)
    return batch


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that are not padding (attention_mask 1; every token when there is no mask)."""
    mask = batch.get("attention_mask")
    return batch["input_ids"].numel() if mask is None else int(mask.sum())


def target_count(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the loss is computed on: every label after the first position that is not -100."""
    return int((batch["labels"][:, 1:] != -100).sum())



def concat_batches(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One batch holding every sequence of `batches`, right-padded to the widest (padding is masked out)."""
    width = max(b["input_ids"].shape[1] for b in batches)
    fills = {"input_ids": 0, "attention_mask": 0, "labels": -100}
    out = {}
    for key, fill in fills.items():
        parts = []
        for b in batches:
            value = b.get(key, torch.ones_like(b["input_ids"]) if key == "attention_mask" else None)
            parts.append(F.pad(value, (0, width - value.shape[1]), value=fill))
        out[key] = torch.cat(parts)
    return out

