"""Environment: the one setup call of every notebook, device, seeds, cache folder and an environment report."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import random
import subprocess
import warnings
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import torch
from transformers.utils import logging as hf_logging

from cookbook.profiles import Profile, profile

__all__ = ["cache_dir", "commit", "device", "quiet_progress", "report", "seed_everything", "setup"]


def setup(seed: int = 0, profile_name: str | None = None) -> Profile:
    """Cell 2 of every notebook: pick the profile, seed everything, silence library progress bars.

    Prints one line naming the profile, device, seed and code commit (so a committed output says what
    produced it) and returns the profile. Library internals (datasets, transformers) stop drawing progress
    bars; the cookbook's own long loops keep theirs. Shown in every notebook, cell 2.
    """
    P = profile(profile_name)
    seed_everything(seed)
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    print(f"profile {P.name} · device {device()} · seed {seed} · commit {commit()} · torch {torch.__version__}")
    return P


def commit() -> str:
    """Short git commit of the cookbook code (with '+changes' if `cookbook/` differs from it), or 'unknown'."""
    root = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=root, capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+changes" if dirty else head


@contextlib.contextmanager
def quiet_progress():
    """No datasets/transformers progress bars inside the block (restored afterwards)."""
    data_bars, hf_bars = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if data_bars:
            datasets.enable_progress_bars()
        if hf_bars:
            hf_logging.enable_progress_bar()


_DEVICES = ("cuda", "mps", "cpu")


def device() -> torch.device:
    """The training device: $COOKBOOK_DEVICE if set (cuda, mps or cpu), else CUDA when present, else CPU.

    Apple MPS is never picked on its own: users of other cookbooks report wrong losses on it (missing or
    approximate kernels, no float64), so it is an explicit opt-in with COOKBOOK_DEVICE=mps.
    """
    wanted = os.environ.get("COOKBOOK_DEVICE", "").strip().lower()
    if wanted:
        if wanted not in _DEVICES:
            raise ValueError(f"COOKBOOK_DEVICE={wanted!r} is not a device; valid: {', '.join(_DEVICES)}")
        available = {"cuda": torch.cuda.is_available(), "cpu": True,
                     "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
        if not available[wanted]:
            raise ValueError(f"COOKBOOK_DEVICE={wanted} but this machine has no {wanted} device")
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
