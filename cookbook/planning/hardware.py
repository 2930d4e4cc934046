"""Which hardware a model needs: the GPU count per training regime, and a memory plot."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from cookbook import plots
from cookbook.planning.memory import inference_memory, training_memory
from cookbook.planning.params import LLAMA1, count_params, llama1_config, lora_params
from cookbook.planning.zero import min_gpus

__all__ = ["hardware_table", "memory_plot"]


def _regimes(config, micro_batch: int, seq_len: int, lora_rank: int) -> dict:
    """Per-GPU GB as a function of the GPU count, and the CPU RAM it needs, for each training regime."""
    act = dict(micro_batch=micro_batch, seq_len=seq_len, checkpointing=True)

    def train(**kw):
        return (lambda n: training_memory(config, n_gpus=n, **act, **kw)["gpu_total"],
                training_memory(config, n_gpus=1, **act, **kw)["cpu_total"])

    return {
        "full fine-tune, bf16-mixed AdamW, ZeRO-0": train(zero_stage=0),
        "full fine-tune, bf16-mixed AdamW, ZeRO-3": train(zero_stage=3),
        "full fine-tune, ZeRO-3 + CPU offload": train(zero_stage=3, offload_optimizer=True, offload_params=True),
        f"LoRA r={lora_rank}, frozen bf16 weights (ZeRO-3)": train(
            zero_stage=3, trainable=lora_params(config, lora_rank)),
        "inference, bf16": (lambda n: inference_memory(config, seq_len=seq_len, n_gpus=n)["gpu_total"], 0.0),
    }


def hardware_table(models: dict | None = None, *, capacities: tuple[float, ...] = (24, 40, 80),
                   micro_batch: int = 1, seq_len: int = 2048, lora_rank: int = 16, usable: float = 0.9):
    """Minimum number of GPUs of each memory size for each model and regime, from the estimates above.

    `models` maps names to configs (default: LLaMA-1 7B/13B/65B). Training uses micro-batch `micro_batch`
    of `seq_len` tokens with activation checkpointing; ZeRO-0 never shards, so it fits on one GPU or on
    none (<NA>). Several GPUs shard the model (ZeRO-3 for training, tensor/pipeline parallel for inference).
    """
    models = models or {size: llama1_config(size) for size in LLAMA1}
    rows = []
    for name, config in models.items():
        total = count_params(config)["total"]
        for regime, (per_gpu, cpu) in _regimes(config, micro_batch, seq_len, lora_rank).items():
            row = {"model": name, "regime": regime, "params (B)": round(total / 1e9, 1)}
            for capacity in capacities:
                row[f"{capacity:g} GB GPUs"] = min_gpus(per_gpu, capacity, usable=usable)
            row["CPU RAM (GB)"] = round(cpu)
            rows.append(row)
    frame = pd.DataFrame(rows).set_index(["model", "regime"])
    return frame.astype({c: "Int64" for c in frame.columns if c.endswith("GPUs")})


def memory_plot(per_gpu, *, capacities: tuple[float, ...] = (24, 40, 80), breakdown=None, title: str = ""):
    """Memory per GPU (GB, log scale) of each model (DataFrame columns) across setups (its index), with
    dashed GPU-capacity lines; `breakdown` (setups x parts) adds a stacked-bar panel beside it."""

    if len(per_gpu) == 0:
        raise ValueError("memory_plot needs at least one row")
    fig, axes = plots.figure(2 if breakdown is not None else 1, width=6.4)
    ax, x = axes[0], range(len(per_gpu))
    for column in per_gpu.columns:
        ax.plot(x, per_gpu[column], marker="o", label=str(column))
    for i, capacity in enumerate(capacities):
        ax.axhline(capacity, color="0.35", linestyle=["--", "-.", ":"][i % 3], linewidth=1, label=f"{capacity:g} GB GPU")
    ax.set(yscale="log", ylabel="GB per GPU", title=title or "memory per GPU")
    ax.set_xticks(list(x), [str(i) for i in per_gpu.index], rotation=20, ha="right", fontsize=8)
    ax.legend(fontsize=7, ncols=2, loc="lower left")
    if breakdown is not None:
        bottom = [0.0] * len(breakdown)
        for part in breakdown.columns:
            values = breakdown[part].tolist()
            axes[1].bar(range(len(breakdown)), values, bottom=bottom, label=str(part))
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        axes[1].set_xticks(range(len(breakdown)), [str(i) for i in breakdown.index], rotation=20, ha="right",
                           fontsize=8)
        axes[1].set(ylabel="GB per GPU", title=breakdown.columns.name or "breakdown")
        axes[1].legend(fontsize=8)
    plt.close(fig)  # the notebook shows the returned figure once
    return fig
