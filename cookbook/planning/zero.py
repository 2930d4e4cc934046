"""DeepSpeed ZeRO configs and the smallest GPU count a memory estimate fits in."""

from __future__ import annotations

from cookbook.checks import positive_int

__all__ = ["min_gpus", "zero_config"]


def zero_config(stage: int, *, offload_optimizer: bool = False, offload_params: bool = False,
                precision: str = "bf16-mixed", micro_batch_size: int | str = "auto",
                gradient_accumulation_steps: int | str = "auto", gradient_clipping: float = 1.0,
                hidden_size: int | None = None, pin_memory: bool = True) -> dict:
    """A DeepSpeed config dict for ZeRO `stage` (0-3) with optional CPU offload, checked for consistency.

    "auto" batch sizes are filled in by the Hugging Face Trainer/Accelerate integration; pass ints when
    you call `deepspeed.initialize` yourself. With `hidden_size`, bucket sizes follow the Trainer's
    rule of thumb (hidden², 0.9·hidden², 10·hidden); otherwise DeepSpeed's defaults apply.
    """
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage!r}")
    if offload_params and stage != 3:
        raise ValueError("offload_params needs stage 3 (only stage 3 partitions the weights)")
    if offload_optimizer and stage == 0:
        raise ValueError("offload_optimizer needs stage 1, 2 or 3")
    if precision not in ("fp32", "bf16-mixed", "fp16-mixed"):
        raise ValueError(f"precision must be fp32, bf16-mixed or fp16-mixed for DeepSpeed, got {precision!r} "
                         "(DeepSpeed's bf16 mode keeps fp32 master weights: that is bf16-mixed)")
    for name, value in (("micro_batch_size", micro_batch_size),
                        ("gradient_accumulation_steps", gradient_accumulation_steps)):
        if value != "auto":
            positive_int(name, value)
    if not isinstance(gradient_clipping, (int, float)) or gradient_clipping < 0:
        raise ValueError(f"gradient_clipping must be >= 0 (0 turns it off), got {gradient_clipping!r}")

    zero: dict = {"stage": stage}
    if stage >= 1:
        zero.update(overlap_comm=True, contiguous_gradients=True)
    if hidden_size is not None:
        h = positive_int("hidden_size", hidden_size)
        if stage >= 1:
            zero["reduce_bucket_size"] = h * h
        if stage == 3:
            zero.update(stage3_prefetch_bucket_size=int(0.9 * h * h), stage3_param_persistence_threshold=10 * h)
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # save a whole model, not shards
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin_memory}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin_memory}
    config = {
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16-mixed"},
        # loss_scale 0 = dynamic loss scaling, starting at 2**16 and halving on overflow
        "fp16": {"enabled": precision == "fp16-mixed", "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        "gradient_clipping": gradient_clipping,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
    }
    if "auto" in (micro_batch_size, gradient_accumulation_steps):
        config["train_batch_size"] = "auto"  # else DeepSpeed computes micro x accumulation x world size
    return config


def min_gpus(per_gpu_gb, capacity_gb: float, *, usable: float = 0.9, max_gpus: int = 4096) -> int | None:
    """Fewest GPUs n (up to `max_gpus`) with per_gpu_gb(n) <= usable x capacity_gb, or None if none fits.

    `per_gpu_gb` must not grow with n (true of every estimate here). `usable` leaves room for the CUDA
    context, communication buffers and allocator fragmentation.
    """
    if not 0 < usable <= 1:
        raise ValueError(f"usable must be in (0, 1], got {usable!r}")
    if not capacity_gb > 0:
        raise ValueError(f"capacity_gb must be positive, got {capacity_gb!r}")
    limit = usable * capacity_gb
    if per_gpu_gb(positive_int("max_gpus", max_gpus)) > limit:
        return None
    low, high = 1, max_gpus  # bisect for the first n that fits
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if per_gpu_gb(mid) <= limit else (mid + 1, high)
    return low
