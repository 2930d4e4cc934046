"""Side-by-side runs of the same model and data in each precision: tokens/s, memory, loss, skipped steps."""

from __future__ import annotations

import dataclasses

import pandas as pd

from cookbook.train import precision as amp
from cookbook.train.trainer import TrainConfig, Trainer

__all__ = ["compare_precisions"]


def compare_precisions(make_model, train_loader, precisions=amp.PRECISIONS, config=None):
    """Train a fresh model per precision with the same data and settings: (summary DataFrame, histories).

    `make_model()` must build the same initial model each time. The summary has tokens/s (median over
    logged steps after the first, which pays one-off warm-up costs), speed-up over the first precision,
    peak CUDA memory, the final loss and the number of fp16 overflow-skipped steps; `note` says when a
    precision cannot run as intended on this device (e.g. tf32 on a CPU is plain fp32).
    """
    config = config or TrainConfig(steps=20, log_interval=1, progress=False)
    rows, histories = [], {}
    for precision in precisions:
        trainer = Trainer(make_model(), train_loader, None, dataclasses.replace(config, precision=amp.check(precision)))
        history = trainer.fit()
        steady = history["tokens_per_s"].iloc[1:] if len(history) > 1 else history["tokens_per_s"]
        rows.append(dict(precision=precision, tokens_per_s=steady.median(), peak_mem_gb=history["peak_mem_gb"].max(),
                         final_loss=history["loss"].iloc[-3:].mean(), skipped_steps=int(history["skipped"].sum()),
                         note=amp.supported(precision, trainer.device)[1]))
        histories[precision] = history
    table = pd.DataFrame(rows).set_index("precision")
    table.insert(1, "speedup", table["tokens_per_s"] / table["tokens_per_s"].iloc[0])
    return table, histories
