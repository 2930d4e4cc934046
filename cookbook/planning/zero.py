"""DeepSpeed ZeRO: configs, the cheapest stage/offload that fits a memory budget, communication per step,
validation of a config, and the smallest GPU count a memory estimate fits in."""

from __future__ import annotations

import copy
import os

import pandas as pd
import torch

from cookbook.checks import positive_int
from cookbook.planning.memory import GB, training_memory
from cookbook.planning.params import count_params

__all__ = ["ZERO_OPTIONS", "communication_volume", "min_gpus", "validate_zero_config", "zero_config", "zero_options",
           "zero_plan"]

# From fastest to slowest (Hugging Face's DeepSpeed guide: "Stage 0 (DDP) > Stage 1 > Stage 2 > Stage 2 +
# offload > Stage 3 > Stage 3 + offloads"): (name, stage, offload_optimizer, offload_params).
ZERO_OPTIONS = (("DDP (ZeRO-0)", 0, False, False), ("ZeRO-1", 1, False, False), ("ZeRO-2", 2, False, False),
                ("ZeRO-2 + offload optimizer", 2, True, False), ("ZeRO-3", 3, False, False),
                ("ZeRO-3 + offload optimizer", 3, True, False), ("ZeRO-3 + offload optimizer and params", 3, True, True))
_COMM_BYTES = {"fp32": 4, "bf16-mixed": 2, "fp16-mixed": 2, "bf16": 2}  # gradients / weights on the wire


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


def communication_volume(params: float, n_gpus: int, stage: int, *, precision: str = "bf16-mixed",
                         grad_accum: int = 1) -> float:
    """GB each GPU sends per optimizer step for data parallelism with ZeRO `stage` (ring collectives).

    The ZeRO paper (Rajbhandari et al. 2020, §7): an all-reduce is a reduce-scatter plus an all-gather, each
    moving (N-1)/N of the Ψ values. DDP: one all-reduce of the gradients, 2Ψ (no_sync on the k-1 earlier
    micro-steps). ZeRO-1: reduce-scatter the gradients, all-gather the updated weights: 2Ψ. ZeRO-2: the same,
    but its partitioned gradients are reduce-scattered on every micro-step: (k+1)Ψ. ZeRO-3: weights
    all-gathered in every forward and backward and gradients reduce-scattered, per micro-step: 3kΨ.
    CPU offload adds PCIe traffic, not network traffic. Shown in notebooks/11 §2.
    """
    n, k = positive_int("n_gpus", n_gpus), positive_int("grad_accum", grad_accum)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage!r}")
    if precision not in _COMM_BYTES:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(_COMM_BYTES)}")
    rounds = {0: 2, 1: 2, 2: k + 1, 3: 3 * k}[stage]
    return rounds * params * (n - 1) / n * _COMM_BYTES[precision] / GB


def zero_options(model, n_gpus: int, capacity_gb: float, *, precision: str = "bf16-mixed", micro_batch: int = 1,
                 seq_len: int | None = None, grad_accum: int = 1, usable: float = 0.9,
                 cpu_memory_gb: float | None = None, **memory) -> pd.DataFrame:
    """Every ZeRO option (`ZERO_OPTIONS`) for `model` on `n_gpus` GPUs of `capacity_gb`: memory from
    `cookbook.planning.training_memory`, communication from `communication_volume`, and whether it fits.

    An option fits when its GPU memory is at most `usable` x capacity and (with `cpu_memory_gb`, the CPU RAM
    of the whole job) its offloaded states fit in CPU RAM. `memory` goes to `training_memory` (optimizer,
    checkpointing, trainable ...). Shown in notebooks/11 §2.
    """
    if not capacity_gb > 0 or not 0 < usable <= 1:
        raise ValueError(f"need capacity_gb > 0 and usable in (0, 1], got {capacity_gb!r} and {usable!r}")
    rows, params = [], model if isinstance(model, (int, float)) else count_params(model)["total"]
    for name, stage, offload_optimizer, offload_params in ZERO_OPTIONS:
        m = training_memory(model, precision=precision, zero_stage=stage, n_gpus=n_gpus, micro_batch=micro_batch,
                            seq_len=seq_len, offload_optimizer=offload_optimizer, offload_params=offload_params,
                            **memory)
        fits = m["gpu_total"] <= usable * capacity_gb and (cpu_memory_gb is None or m["cpu_total"] <= cpu_memory_gb)
        rows.append(dict(option=name, stage=stage, offload_optimizer=offload_optimizer, offload_params=offload_params,
                         gpu_gb=m["gpu_total"], cpu_gb=m["cpu_total"],
                         comm_gb_per_step=communication_volume(params, n_gpus, stage, precision=precision,
                                                               grad_accum=grad_accum),
                         fits=bool(fits)))
    return pd.DataFrame(rows).set_index("option")


def zero_plan(model, n_gpus: int, capacity_gb: float, *, precision: str = "bf16-mixed", micro_batch: int = 1,
              seq_len: int | None = None, grad_accum: int = 1, usable: float = 0.9,
              cpu_memory_gb: float | None = None, hidden_size: int | None = None, **memory) -> dict:
    """The fastest ZeRO option that fits (see `zero_options`) and its DeepSpeed config, with concrete batch sizes.

    Returns dict(option, stage, offload_optimizer, offload_params, gpu_gb, cpu_gb, comm_gb_per_step, config).
    Raises ValueError naming the smallest GPU count at which ZeRO-3 would fit when nothing does.
    Shown in notebooks/11 §2.
    """
    table = zero_options(model, n_gpus, capacity_gb, precision=precision, micro_batch=micro_batch, seq_len=seq_len,
                         grad_accum=grad_accum, usable=usable, cpu_memory_gb=cpu_memory_gb, **memory)
    fitting = table[table["fits"]]
    if fitting.empty:
        def zero3(n):
            return training_memory(model, precision=precision, zero_stage=3, n_gpus=n, micro_batch=micro_batch,
                                   seq_len=seq_len, **memory)["gpu_total"]

        need = min_gpus(zero3, capacity_gb, usable=usable)
        ram = f" with {cpu_memory_gb:g} GB of CPU RAM" if cpu_memory_gb is not None else ""
        hint = f"ZeRO-3 without offload fits from {need} GPUs" if need else "nor ZeRO-3 on any number of them"
        raise ValueError(f"no ZeRO option fits on {n_gpus} x {capacity_gb:g} GB GPUs{ram}; {hint}")
    row = fitting.iloc[0]
    config = zero_config(int(row["stage"]), offload_optimizer=bool(row["offload_optimizer"]),
                         offload_params=bool(row["offload_params"]), precision=precision,
                         micro_batch_size=micro_batch, gradient_accumulation_steps=grad_accum,
                         hidden_size=hidden_size or getattr(model, "hidden_size", None))
    return dict(option=fitting.index[0], **{k: row[k].item() if hasattr(row[k], "item") else row[k] for k in
                                            ("stage", "offload_optimizer", "offload_params", "gpu_gb", "cpu_gb",
                                             "comm_gb_per_step")}, config=config)


# DeepSpeed's documented config keys (deepspeed.ai/docs/config-json) that these configs may use; checked when
# DeepSpeed itself is not installed. Its pydantic models reject unknown keys inside zero_optimization.
_TOP_KEYS = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer",
             "scheduler", "fp16", "bf16", "amp", "gradient_clipping", "prescale_gradients",
             "gradient_predivide_factor", "sparse_gradients", "zero_optimization", "zero_allow_untested_optimizer",
             "zero_force_ds_cpu_optimizer", "steps_per_print", "wall_clock_breakdown", "dump_state",
             "flops_profiler", "activation_checkpointing", "tensorboard", "wandb", "csv_monitor", "comet", "aio",
             "communication_data_type", "data_efficiency", "compression_training", "elasticity", "autotuning",
             "checkpoint", "data_types", "memory_breakdown", "torch_autocast"}
_ZERO_KEYS = {"stage", "allgather_partitions", "allgather_bucket_size", "overlap_comm", "reduce_scatter",
              "reduce_bucket_size", "contiguous_gradients", "load_from_fp32_weights", "round_robin_gradients",
              "offload_param", "offload_optimizer", "stage3_max_live_parameters", "stage3_max_reuse_distance",
              "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold",
              "stage3_gather_16bit_weights_on_model_save", "sub_group_size", "elastic_checkpoint",
              "ignore_unused_parameters", "zero_hpz_partition_size", "zero_quantized_weights",
              "zero_quantized_gradients", "memory_efficient_linear"}
_OFFLOAD_KEYS = {"device", "nvme_path", "buffer_count", "buffer_size", "max_in_cpu", "pin_memory", "pipeline_read",
                 "pipeline_write", "fast_init", "ratio"}
_PRECISION_KEYS = {"enabled", "auto_cast", "loss_scale", "initial_scale_power", "loss_scale_window", "hysteresis",
                   "consecutive_hysteresis", "min_loss_scale", "immediate_grad_update"}


def _unknown(keys, valid, where: str) -> None:
    bad = sorted(set(keys) - valid)
    if bad:
        raise ValueError(f"unknown DeepSpeed key(s) {', '.join(map(repr, bad))} in {where}; documented keys: "
                         f"{', '.join(sorted(valid))}")


def _deepspeed_config():
    """DeepSpeed's config class (optional, slow to import: imported on first use only)."""
    # Without CUDA, DeepSpeed picks its CPU accelerator anyway but warns on stdout; naming it skips the warning.
    # Only while importing: DeepSpeed caches its choice, and the caller's environment is left as it was.
    before = os.environ.get("DS_ACCELERATOR")
    if before is None and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    try:
        from deepspeed.runtime.config import DeepSpeedConfig
    finally:
        if before is None:
            os.environ.pop("DS_ACCELERATOR", None)
    return DeepSpeedConfig


def validate_zero_config(config: dict, *, use_deepspeed: bool = True) -> str:
    """Check a DeepSpeed config: with DeepSpeed's own `DeepSpeedConfig` when it is installed (and
    `use_deepspeed`), else against the documented keys. Returns which check ran ("deepspeed" or "documented").

    "auto" batch sizes (for the Hugging Face integration) are checked as 1. Raises ValueError naming the
    bad key or value. Shown in notebooks/11 §2.
    """
    if not isinstance(config, dict) or not isinstance(config.get("zero_optimization"), dict):
        raise ValueError(f"a ZeRO config is a dict with a 'zero_optimization' dict, got {type(config).__name__}")
    _unknown(config, _TOP_KEYS, "the top level")  # DeepSpeedConfig itself ignores unknown top-level keys
    config = copy.deepcopy(config)
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        if config.get(key) == "auto":
            config[key] = 1
    sizes = [config.get(k) for k in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")]
    if all(isinstance(v, int) for v in sizes):
        if sizes[0] % (sizes[1] * sizes[2]):
            raise ValueError(f"train_batch_size {sizes[0]} is not micro batch {sizes[1]} x accumulation {sizes[2]} "
                             "x the number of GPUs")
        del config["train_batch_size"]  # DeepSpeedConfig would check it against a world of one process
    if use_deepspeed:
        try:
            DeepSpeedConfig = _deepspeed_config()
        except ImportError:
            pass
        else:
            try:
                DeepSpeedConfig(config)
            except Exception as exc:  # pydantic ValidationError, AssertionError on inconsistent batch sizes
                raise ValueError(f"DeepSpeed rejects the config: {type(exc).__name__}: {exc}") from exc
            return "deepspeed"
    zero = config["zero_optimization"]
    _unknown(zero, _ZERO_KEYS, "zero_optimization")
    if zero.get("stage") not in (0, 1, 2, 3):
        raise ValueError(f"zero_optimization.stage must be 0, 1, 2 or 3, got {zero.get('stage')!r}")
    for key in ("offload_param", "offload_optimizer"):
        if key in zero:
            _unknown(zero[key], _OFFLOAD_KEYS, f"zero_optimization.{key}")
            if zero[key].get("device", "none") not in ("none", "cpu", "nvme"):
                raise ValueError(f"zero_optimization.{key}.device must be none, cpu or nvme, got {zero[key]['device']!r}")
    for key in ("fp16", "bf16"):
        _unknown(config.get(key, {}), _PRECISION_KEYS, key)
    return "documented"
