"""Run profiles: the single source of every size a notebook uses, one small section per part of the series.

`smoke` runs each notebook in minutes on a 2-core CPU; `full` is a real run on one GPU. The default is
`full` when CUDA is available, else `smoke`; `$COOKBOOK_PROFILE` overrides it.

    P = profile()
    P.train.steps, P.data.seq_len, P.model.name
"""

from __future__ import annotations

import dataclasses
import os

import torch

__all__ = ["PROFILES", "DataSizes", "MemorySizes", "ModelSizes", "MonitorSizes", "PrecisionSizes", "Profile",
           "TrainSizes", "profile"]


@dataclasses.dataclass(frozen=True)
class DataSizes:
    """Corpus and tokenizer (notebooks 01-02)."""

    vocab_size: int  # BPE vocabulary trained on the corpus
    tokenizer_fraction: float  # share of the training split the tokenizer learns from
    data_fraction: float  # share of the corpus the notebooks train on
    seq_len: int  # tokens per packed block
    semantic_sample: int  # texts embedded for semantic deduplication (notebook 01)


@dataclasses.dataclass(frozen=True)
class ModelSizes:
    """The model of the series (notebook 03 on): a name from `cookbook.models.CONFIGS`."""

    name: str
    sample_tokens: int  # new tokens when sampling from a model


@dataclasses.dataclass(frozen=True)
class TrainSizes:
    """The pretraining run (notebook 04, `train.pretrained`)."""

    steps: int  # optimizer steps
    batch_size: int  # sequences per optimizer micro-step
    lr: float  # peak learning rate
    eval_interval: int  # steps between validation passes
    eval_batches: int  # batches per validation pass
    precision: str  # fp32 | tf32 | bf16 | fp16
    moe_gamma: float  # MoE bias-balancing speed (DeepSeek-V3: 1e-3; short runs need a larger one)


@dataclasses.dataclass(frozen=True)
class PrecisionSizes:
    """The side-by-side precision comparison (notebook 04)."""

    formats: tuple[str, ...]  # precisions compared
    steps: int  # optimizer steps of each comparison run


@dataclasses.dataclass(frozen=True)
class MemorySizes:
    """Gradient accumulation and memory (notebook 05)."""

    grad_accum: int  # micro-batches per optimizer step in the accumulation demo
    micro_batches: tuple[int, ...]  # micro-batch sizes of the memory sweep
    check_steps: int  # steps of the big-batch vs accumulated Trainer runs


@dataclasses.dataclass(frozen=True)
class MonitorSizes:
    """The short diagnostic runs (notebook 06)."""

    model: str  # a name from cookbook.models.CONFIGS


@dataclasses.dataclass(frozen=True)
class Profile:
    """Every size of one run of the series, by section: `P.data`, `P.model`, `P.train`, `P.precision` ..."""

    name: str
    data: DataSizes
    model: ModelSizes
    train: TrainSizes
    precision: PrecisionSizes
    memory: MemorySizes
    monitor: MonitorSizes


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        data=DataSizes(vocab_size=2048, tokenizer_fraction=0.1, data_fraction=0.1, seq_len=128, semantic_sample=400),
        model=ModelSizes(name="smoke", sample_tokens=32),
        # CPUs without AVX512-BF16/AMX run bf16 autocast slower than fp32
        train=TrainSizes(steps=60, batch_size=8, lr=3e-3, eval_interval=20, eval_batches=4, precision="fp32",
                         moe_gamma=1e-2),
        precision=PrecisionSizes(formats=("fp32", "bf16"), steps=6),
        memory=MemorySizes(grad_accum=4, micro_batches=(1, 2, 4, 8), check_steps=6),
        monitor=MonitorSizes(model="tiny"),
    ),
    "full": Profile(
        name="full",
        data=DataSizes(vocab_size=8192, tokenizer_fraction=1.0, data_fraction=1.0, seq_len=512,
                       semantic_sample=20000),
        model=ModelSizes(name="full", sample_tokens=96),
        train=TrainSizes(steps=2000, batch_size=32, lr=1e-3, eval_interval=200, eval_batches=20, precision="bf16",
                         moe_gamma=1e-3),
        precision=PrecisionSizes(formats=("fp32", "tf32", "bf16", "fp16"), steps=150),
        # short check: float32 rounding differences grow chaotically over long runs
        memory=MemorySizes(grad_accum=4, micro_batches=(4, 8, 16, 32, 64), check_steps=20),
        monitor=MonitorSizes(model="full"),
    ),
}


def profile(name: str | None = None) -> Profile:
    """The run profile: `name`, else $COOKBOOK_PROFILE, else `full` on a GPU and `smoke` on CPU."""
    name = name or os.environ.get("COOKBOOK_PROFILE") or ("full" if torch.cuda.is_available() else "smoke")
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; valid profiles: {', '.join(PROFILES)}") from None
