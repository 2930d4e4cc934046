"""Training: precision, the loss and exact accumulation, schedule, the Trainer, checkpoints, measured memory.

precision (formats, autocast, TF32, loss scaling) · batches · loss (token loss + exact accumulation) ·
schedule (AdamW, warm-up + cosine) · trainer (TrainConfig, Trainer) · compare (one run per precision) ·
memory (measured activations, batch-size finder) ·
pretrained (the cached pretrained model of a profile; `base_model`: where chapters 07-14 start). Shown in notebooks/04 and 05.
"""

from cookbook.train import precision
from cookbook.train.batches import loader, pad_batch
from cookbook.train.compare import compare_precisions
from cookbook.train.loss import (
    accumulation_error,
    backward_micro_batches,
    fused_token_loss,
    linear_cross_entropy,
    token_loss,
)
from cookbook.train.memory import (
    find_batch_size,
    saved_activation_bytes,
    set_checkpointing,
    step_cost,
    sweep,
    with_budget,
)
from cookbook.train.pretrained import base_model, pretrained
from cookbook.train.schedule import adamw, cosine_schedule
from cookbook.train.trainer import TrainConfig, Trainer

__all__ = [
    "TrainConfig", "Trainer", "accumulation_error", "adamw", "backward_micro_batches", "base_model",
    "compare_precisions", "cosine_schedule", "find_batch_size", "fused_token_loss", "linear_cross_entropy", "loader", "pad_batch", "precision", "pretrained",
    "saved_activation_bytes", "set_checkpointing", "step_cost", "sweep", "token_loss", "with_budget",
]
