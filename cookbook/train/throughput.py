"""Training throughput, measured: the plain Hugging Face loop, the cookbook Trainer, and each lever one at a time.

Every figure is the median over timed steps after warm-up steps (compilation, allocator growth and the first
kernel launches stay out of it). Each timed step ends with a device synchronisation, so a step's time is its
own. Tokens are real tokens (padding excluded), so padded and packed batches compare on useful work; MFU counts
the model FLOPs of those tokens (`planning.flops_per_token`: active matmul parameters x 6 + attention) against
the GPU's peak for the precision, and is NaN on a CPU.

    ladder = throughput.levers(P, device, moe=True)      # fp32 baseline -> bf16 -> fused AdamW -> packing -> ...
    table = throughput.ablation(build_model, loaders, ladder, steps=P.throughput.steps, warmup=P.throughput.warmup)

Shown in notebooks/04 §9; `benchmarks/train_throughput.py` sets the plain loop against the best settings.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
import warnings

import pandas as pd
import torch
from tqdm.auto import tqdm

from cookbook import env, planning
from cookbook.checks import positive_int
from cookbook.train import precision as amp
from cookbook.train.batches import as_batch, real_tokens
from cookbook.train.trainer import TrainConfig, Trainer

__all__ = ["Lever", "ablation", "levers", "measure", "plain_hf", "validation_loss"]


@dataclasses.dataclass(frozen=True)
class Lever:
    """One switch of the ladder: the TrainConfig fields it sets and the data it switches to. A lever with a
    `skip` reason is listed but not measured (and sets nothing)."""

    name: str
    config: dict = dataclasses.field(default_factory=dict)
    data: str | None = None  # a key of the loaders given to `ablation` ("padded", "packed", "big")
    skip: str = ""


def levers(P, device, *, moe: bool) -> list[Lever]:
    """The guide's levers in the order they are added, from a float32, unfused, padded, eager baseline: the
    profile's 16-bit precision (TF32 on a GPU when it trains in fp32), fused AdamW, packing, the fused
    cross-entropy, grouped experts (MoE models only), compile, CUDA graphs (CUDA only), a larger batch.
    Activation checkpointing, a memory lever, comes last. Sizes from `P.throughput`."""
    cuda = torch.device(device).type == "cuda"
    fast = "tf32" if P.throughput.precision == "fp32" and cuda else P.throughput.precision
    no_compile = "" if P.throughput.compile else f"off in {P.name} (P.throughput.compile)"
    no_16 = "" if fast != "fp32" else f"fp32 in {P.name} (P.throughput.precision)"
    ladder = [
        Lever("baseline: fp32, per-tensor AdamW, padded, eager",
              dict(precision="fp32", fused_optimizer=False), data="padded"),
        Lever(f"+ {fast} matmuls", dict(precision=fast), skip=no_16),
        Lever("+ fused AdamW", dict(fused_optimizer=True)),
        Lever("+ packed blocks (no padding)", data="packed"),
        Lever("+ fused linear cross-entropy", dict(fused_cross_entropy=True)),
        *([Lever("+ grouped experts on bf16 copies", dict(grouped_experts=True))] if moe else []),
        Lever("+ torch.compile", dict(compile=True), skip=no_compile),
        Lever("+ CUDA graphs", dict(compile=True, compile_mode="reduce-overhead"),  # also when compile failed
              skip=no_compile or ("" if cuda else "CUDA only")),
        Lever(f"+ batch {P.throughput.big_batch}", data="big"),
        Lever("+ activation checkpointing (memory)", dict(activation_checkpointing=True)),
    ]
    return ladder


def _median_step(history: pd.DataFrame, warmup: int) -> pd.Series:
    timed = history.iloc[warmup:]
    return pd.Series(dict(tokens_per_s=timed["tokens_per_s"].median(), mfu=timed["mfu"].median(),
                          peak_mem_gb=timed["peak_mem_gb"].max(), loss=history["loss"].iloc[-1]))


def measure(model, loader, config: TrainConfig, *, steps: int, warmup: int) -> pd.Series:
    """Train `model` for `warmup + steps` steps with the cookbook Trainer (one logged, synchronised row per step);
    the median tokens/s and MFU of the timed steps, their peak memory (GB, CUDA) and the last loss."""
    positive_int("steps", steps)
    config = dataclasses.replace(config, steps=warmup + steps, log_interval=1, eval_interval=0, progress=False,
                                 checkpoint_dir=None)
    trainer = Trainer(model, loader, None, config)
    return _median_step(trainer.fit(), warmup)


def _mfu_per_token_per_s(model, seq_len: int, precision: str, device: torch.device) -> float:
    """MFU of one token per second; NaN on a CPU or a GPU the planning table does not know (as in the Trainer)."""
    if device.type != "cuda":
        return math.nan
    try:
        return planning.mfu(1.0, planning.flops_per_token(model.config, seq_len), planning.peak_flops(None, precision))
    except (ValueError, AttributeError, TypeError, KeyError) as exc:
        warnings.warn(f"MFU not available: {exc}", stacklevel=3)
        return math.nan


def plain_hf(model, loader, *, steps: int, warmup: int, precision: str = "bf16", lr: float = 1e-3,
             device=None) -> pd.Series:
    """The loop the Hugging Face documentation teaches, timed like `measure`: `model(input_ids, labels=...).loss`
    under autocast over float32 weights, backward, `torch.optim.AdamW` (fused on CUDA, as the reference), step.
    Nothing else: no clipping, schedule or load balancing (which the cookbook loop does inside its timed step)."""
    positive_int("steps", steps)
    device = torch.device(device) if device is not None else env.device()
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, fused=device.type == "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows, batches = [], itertools.cycle(loader)  # cycle: the same batches the Trainer sees, epoch after epoch
    for _ in range(warmup + steps):
        batch = as_batch(next(batches))
        tokens, seq_len = real_tokens(batch), batch["input_ids"].shape[1]
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        sync()
        start = time.perf_counter()
        with amp.autocast(precision, device):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        speed = tokens / (time.perf_counter() - start)
        rows.append(dict(loss=loss.item(), tokens_per_s=speed, seq_len=seq_len,
                         peak_mem_gb=torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else math.nan))
    history = pd.DataFrame(rows)
    per_token = {n: _mfu_per_token_per_s(model, n, precision, device) for n in history["seq_len"].unique()}
    history["mfu"] = history["tokens_per_s"] * history["seq_len"].map(per_token)
    return _median_step(history, warmup)


def validation_loss(model, val_loader, *, precision: str, batches: int | None, device=None) -> float:
    """Mean next-token loss of `model` over `batches` validation batches (`Trainer.evaluate`)."""
    config = TrainConfig(precision=precision, eval_batches=batches, progress=False, device=device, moe_gamma=0.0)
    return Trainer(model, val_loader, val_loader, config).evaluate()["val_loss"]


def ablation(build_model, loaders: dict, ladder: list[Lever], *, base: TrainConfig, steps: int,
             warmup: int) -> pd.DataFrame:
    """Add the levers of `ladder` one at a time (each keeps the ones before it) and measure each setting on a
    fresh `build_model()`: tokens/s, its ratio to the first row, MFU, peak memory and the last loss. Skipped
    levers are listed with their reason; a lever that fails on this device (a compiler or CUDA-graph error)
    is listed with its error, warned about, and left out of the settings the next levers build on."""
    config, data, rows = base, None, []
    for lever in tqdm(ladder, desc="levers", leave=False):
        if lever.skip:
            rows.append(dict(lever=lever.name, skipped=lever.skip))
            continue
        trial, trial_data = dataclasses.replace(config, **lever.config), lever.data or data
        if trial_data not in loaders:
            raise ValueError(f"lever {lever.name!r} uses data {trial_data!r}; loaders has {sorted(loaders)}")
        try:
            row = measure(build_model(), loaders[trial_data], trial, steps=steps, warmup=warmup)
        except (RuntimeError, torch._dynamo.exc.TorchDynamoException) as exc:  # the lever, not the ladder, failed
            warnings.warn(f"lever {lever.name!r} failed: {exc}", stacklevel=2)
            rows.append(dict(lever=lever.name, skipped=f"failed: {type(exc).__name__}: {str(exc)[:160]}"))
            continue
        config, data = trial, trial_data
        rows.append(dict(lever=lever.name, skipped="", **row))
    table = pd.DataFrame(rows, columns=["lever", "tokens_per_s", "mfu", "peak_mem_gb", "loss", "skipped"])
    table = table.set_index("lever")
    first = table["tokens_per_s"].dropna()
    table.insert(0, "speedup", table["tokens_per_s"] / (first.iloc[0] if len(first) else math.nan))
    return table
