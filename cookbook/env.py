"""Environment: device, seeds, run profiles and an environment report.

Every size a notebook uses comes from `profile()`, so the same notebook runs in minutes on a laptop
(`smoke`) and as a real run on one GPU (`full`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import random
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "PROFILES",
    "Profile",
    "cache_dir",
    "device",
    "profile",
    "report",
    "seed_everything",
]


@dataclasses.dataclass(frozen=True)
class Profile:
    """The sizes one notebook run uses. `smoke`: CPU, ≤ 2 min a notebook; `full`: one GPU, minutes."""

    name: str
    model: str  # a name from cookbook.models.CONFIGS
    vocab_size: int  # BPE vocabulary trained on the corpus
    tokenizer_fraction: float  # share of the training split the tokenizer learns from
    data_fraction: float  # share of the corpus the notebooks train on
    seq_len: int  # tokens per packed block
    batch_size: int  # sequences per optimizer micro-step
    steps: int  # optimizer steps of a training run
    eval_interval: int  # steps between validation passes
    eval_batches: int  # batches per validation pass
    lr: float  # peak learning rate
    sample_tokens: int  # new tokens when sampling from a model
    semantic_sample: int = 400  # texts embedded for semantic deduplication (notebook 01)
    demo_model: str = "tiny"  # model of the short diagnostic runs (notebook 06): a name from models.CONFIGS
    train_precision: str = "fp32"  # precision of the main pretraining run (notebook 04, models.pretrained)
    precisions: tuple = ("fp32", "bf16")  # precisions compared side by side (notebook 04)
    compare_steps: int = 6  # optimizer steps of each precision's comparison run
    moe_gamma: float = 1e-3  # MoE bias-balancing speed (DeepSeek-V3: 1e-3; short runs need a larger one)
    grad_accum: int = 4  # micro-batches per optimizer step in the accumulation demo (notebook 05)
    micro_batches: tuple = (1, 2, 4, 8)  # micro-batch sizes of the memory sweep (notebook 05)
    accum_check_steps: int = 6  # steps of the big-batch vs accumulated Trainer runs (notebook 05)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        model="smoke",
        vocab_size=2048,
        tokenizer_fraction=0.1,
        data_fraction=0.1,
        seq_len=128,
        batch_size=8,
        steps=60,
        eval_interval=20,
        eval_batches=4,
        lr=3e-3,
        sample_tokens=32,
        semantic_sample=400,
        demo_model="tiny",
        train_precision="fp32",  # CPUs without AVX512-BF16/AMX run bf16 autocast slower than fp32
        precisions=("fp32", "bf16"),
        compare_steps=6,
        moe_gamma=1e-2,
        grad_accum=4,
        micro_batches=(1, 2, 4, 8),
        accum_check_steps=6,
    ),
    "full": Profile(
        name="full",
        model="full",
        vocab_size=8192,
        tokenizer_fraction=1.0,
        data_fraction=1.0,
        seq_len=512,
        batch_size=32,
        steps=2000,
        eval_interval=200,
        eval_batches=20,
        lr=1e-3,
        sample_tokens=96,
        semantic_sample=20000,
        demo_model="full",
        train_precision="bf16",
        precisions=("fp32", "tf32", "bf16", "fp16"),
        compare_steps=150,
        moe_gamma=1e-3,
        grad_accum=4,
        micro_batches=(4, 8, 16, 32, 64),
        accum_check_steps=20,  # short: float32 rounding differences grow chaotically over long runs
    ),
}


def profile(name: str | None = None) -> Profile:
    """The run profile: `name`, else $COOKBOOK_PROFILE, else `full` on a GPU and `smoke` on CPU."""
    name = name or os.environ.get("COOKBOOK_PROFILE") or ("full" if torch.cuda.is_available() else "smoke")
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; valid profiles: {', '.join(PROFILES)}") from None


def device() -> torch.device:
    """The best available device: CUDA, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a run repeats exactly."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    os.environ["PYTHONHASHSEED"] = str(seed)  # for subprocesses (dataloader workers)


def cache_dir() -> Path:
    """Where trained tokenizers and checkpoints are kept between runs: $COOKBOOK_CACHE or ~/.cache/cookbook."""
    path = Path(os.environ.get("COOKBOOK_CACHE") or Path.home() / ".cache" / "cookbook")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _major_minor(version: str) -> tuple[int, int]:
    parts = version.split("+")[0].split(".")
    return int(parts[0]), int(parts[1])


# (package, minimum major.minor, why): combinations we have seen break the cookbook.
_KNOWN_BAD = [
    ("torch", (2, 11), "the cookbook needs torch >= 2.11 (grouped-mm experts, torch.amp.GradScaler('cuda'))"),
    ("transformers", (5, 17), "DeepseekV3 training needs transformers >= 5.17 (earlier 4.x lacked a stable MLA path)"),
]


def report():
    """A table of the software and hardware this run sees, with warnings for known-bad combinations."""
    import pandas as pd

    rows = [
        ("python", platform.python_version()),
        ("platform", platform.platform()),
        ("torch", torch.__version__),
        ("cuda (torch build)", torch.version.cuda or "none (CPU build)"),
        ("cudnn", str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none"),
        ("device", str(device())),
        ("cpu threads", str(torch.get_num_threads())),
    ]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        rows += [
            ("gpu", f"{props.name} x{torch.cuda.device_count()}"),
            ("gpu memory (GiB)", f"{props.total_memory / 2**30:.1f}"),
            ("compute capability", f"{props.major}.{props.minor}"),
            ("bf16 supported", str(torch.cuda.is_bf16_supported())),
            ("tf32 supported", str(props.major >= 8)),  # TF32 tensor cores arrived with Ampere (sm_80)
        ]
    else:
        rows += [("gpu", "none"), ("bf16 supported", "cpu autocast only")]
    for package in ("transformers", "datasets", "tokenizers", "peft", "accelerate", "torchao"):
        rows.append((package, _version(package)))

    for package, minimum, why in _KNOWN_BAD:
        found = _version(package)
        if found != "not installed" and _major_minor(found) < minimum:
            warnings.warn(f"{package} {found}: {why}", stacklevel=2)
    return pd.DataFrame(rows, columns=["item", "value"]).set_index("item")
