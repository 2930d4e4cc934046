"""Environment: the one setup call of every notebook, device, seeds, cache folder and an environment report."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import torch
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version
from transformers.utils import logging as hf_logging

from cookbook.profiles import Profile, profile

__all__ = ["OPTIONAL_TOOLS", "cache_dir", "check_packages", "commit", "device", "find_tool", "install_hint",
           "optional_tools", "pins_file", "quiet_progress", "read_pins", "report", "runs_dir", "seed_everything", "setup"]


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
    """Short git commit of the cookbook code (with '+changes' if `cookbook/` differs from it), or 'unknown'.

    $COOKBOOK_COMMIT wins: a copy without `.git` (the GPU pass's machine) is told which commit it is."""
    if os.environ.get("COOKBOOK_COMMIT"):
        return os.environ["COOKBOOK_COMMIT"]
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


def runs_dir(name: str = "") -> Path:
    """The one folder for run outputs (logs, executed notebooks), created: $COOKBOOK_RUNS_DIR (set by
    `python -m cookbook run` for its kernels), else `runs/` at the project root (the nearest folder up
    holding pyproject.toml), else `runs/` in the working directory; `name` is a sub-folder."""
    base = os.environ.get("COOKBOOK_RUNS_DIR")
    if not base:
        here = Path.cwd().resolve()
        root = next((p for p in (here, *here.parents) if (p / "pyproject.toml").is_file()), here)
        base = root / "runs"
    path = Path(base) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Where trained tokenizers and checkpoints are kept between runs: $COOKBOOK_CACHE or ~/.cache/cookbook."""
    path = Path(os.environ.get("COOKBOOK_CACHE") or Path.home() / ".cache" / "cookbook")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503: Huggingface_Hub, huggingface-hub -> huggingface-hub


def _installed() -> dict[str, str]:
    """{normalised distribution name: version} of everything installed in this environment."""
    return {_normalise(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
            if d.metadata["Name"]}


def _major_minor(version: str) -> tuple[int, int]:
    parts = version.split("+")[0].split(".")
    return int(parts[0]), int(parts[1])


# (package, minimum major.minor, why): combinations we have seen break the cookbook.
_KNOWN_BAD = [
    ("torch", (2, 11), "the cookbook needs torch >= 2.11 (grouped-mm experts, torch.amp.GradScaler('cuda'))"),
    ("transformers", (5, 17), "DeepseekV3 training needs transformers >= 5.17 (earlier 4.x lacked a stable MLA path)"),
]
_ROOT = Path(__file__).resolve().parents[1]  # the source checkout: requirements/ lives beside cookbook/


def pins_file(root: Path = _ROOT, python: tuple[int, int] | None = None) -> Path | None:
    """The tested pins for this Python, requirements/constraints-py3XX.txt; None without one (an unsupported
    Python, or a wheel install, which has no requirements/ folder)."""
    major, minor = python or sys.version_info[:2]
    path = root / "requirements" / f"constraints-py{major}{minor}.txt"
    return path if path.is_file() else None


def read_pins(path) -> dict[str, str]:
    """{normalised package name: version} of the `name==version` lines of a constraints file.

    Lines with an environment marker (`numpy==2.2.6; python_version < "3.11"`) count only where the marker
    holds for this interpreter; comments, blank lines and pip options (`-c ...`) are skipped. A line that is
    none of these raises, naming the file and line.
    """
    pins = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as err:
            raise ValueError(f"{path}, line {number}: not a requirement: {line!r} ({err})") from None
        exact = [spec.version for spec in requirement.specifier if spec.operator in ("==", "===")]
        if len(exact) != 1:
            raise ValueError(f"{path}, line {number}: {line!r} is not an exact pin (name==version)")
        if requirement.marker is None or requirement.marker.evaluate():
            pins[_normalise(requirement.name)] = exact[0]
    return pins


def _required() -> set[str]:
    """The cookbook's own dependencies (no extras) as installed metadata lists them; empty if not installed."""
    try:
        lines = importlib.metadata.requires("cookbook") or []
    except importlib.metadata.PackageNotFoundError:
        return set()
    return {_normalise(r.name) for r in map(Requirement, lines) if r.marker is None or r.marker.evaluate({"extra": ""})}


def _same(installed: str, pinned: str) -> bool:
    """Equal as versions, ignoring the local build label (torch 2.13.0+cpu is the pinned 2.13.0)."""
    try:
        return Version(installed).public == Version(pinned).public
    except InvalidVersion:
        return installed == pinned


def check_packages(pins: str | Path | None = None) -> pd.DataFrame:
    """Each pinned package and each of the cookbook's own dependencies against the tested pins.

    Index: package; columns: installed, pinned, status. Status is OK, MISMATCH (installed at another version),
    MISSING (a dependency of the cookbook is not installed), MISSING (optional) (a pinned package of an extra
    or of a tool is not installed: nothing needs it unless you use that extra) or UNPINNED (the pins file lacks
    a dependency). `pins` is a constraints file, by default `pins_file()`; without one, status is empty.
    """
    path = Path(pins) if pins is not None else pins_file()
    pinned = read_pins(path) if path else {}
    installed, required = _installed(), _required()
    rows = []
    for name in sorted(required | set(pinned)):
        have, want = installed.get(name, "not installed"), pinned.get(name, "")
        if path is None:
            status = ""
        elif not want:
            status = "UNPINNED"
        elif name not in installed:
            status = "MISSING" if name in required else "MISSING (optional)"
        else:
            status = "OK" if _same(have, want) else "MISMATCH"
        rows.append((name, have, want, status))
    return pd.DataFrame(rows, columns=["package", "installed", "pinned", "status"]).set_index("package")


def report(*, pins: str | Path | None = None, every_package: bool = False) -> pd.DataFrame:
    """The software and hardware this run sees, and each package checked against the tested pins.

    Rows: the platform, then the cookbook's own dependencies and every package that is not as pinned
    (`every_package=True`: all pinned packages); columns value, pinned and status (see `check_packages`).
    `pins` is a constraints file, by default `pins_file()`. Warns on known-bad combinations. Shown in
    notebooks/00 §1; `python -m cookbook report` prints it.
    """
    rows = [
        ("python", platform.python_version()),
        ("platform", platform.platform()),
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
    path = Path(pins) if pins is not None else pins_file()
    if path is None:
        rows.append(("pins", "none found (no requirements/ folder): versions are not checked"))
    else:  # relative to the checkout, so a committed notebook shows no machine's absolute path
        full = path.resolve()
        rows.append(("pins", full.relative_to(_ROOT).as_posix() if full.is_relative_to(_ROOT) else str(path)))
    packages = check_packages(path)
    if not every_package:
        packages = packages[packages.index.isin(_required()) | packages["status"].isin(["MISMATCH", "MISSING"])]
    table = pd.concat([pd.DataFrame(rows, columns=["item", "value"]).set_index("item").assign(pinned="", status=""),
                       packages.rename(columns={"installed": "value"}).rename_axis("item")])

    installed = _installed()
    for package, minimum, why in _KNOWN_BAD:
        found = installed.get(package)
        if found is not None and _major_minor(found) < minimum:
            warnings.warn(f"{package} {found}: {why}", stacklevel=2)
    return table


# The optional system programs: what each is for, how to install it (apt, Homebrew, conda-forge), its version flag.
OPTIONAL_TOOLS = {
    "nginx": ("notebook 12's load balancer", "sudo apt-get install nginx · brew install nginx · "
              "conda install -c conda-forge nginx", "-v"),
    "prometheus": ("notebook 12's metrics query", "sudo apt-get install prometheus · brew install prometheus · "
                   "conda install -c conda-forge prometheus", "--version"),
    "chromium": ("make test-browser", "sudo apt-get install chromium · brew install --cask chromium · or set "
                 "COOKBOOK_CHROMIUM to a Chrome/Chromium binary", "--version"),
}


def find_tool(name: str) -> str | None:
    """The path of an optional system program (PATH, then /usr/sbin where Debian puts nginx), None if absent.

    $COOKBOOK_CHROMIUM names the browser. Setting `COOKBOOK_HIDE_TOOLS=nginx,prometheus` makes them count as
    absent: CI runs the notebooks that way to prove a machine without them passes."""
    if name not in OPTIONAL_TOOLS:
        raise ValueError(f"unknown optional tool {name!r}; valid: {', '.join(OPTIONAL_TOOLS)}")
    if name in os.environ.get("COOKBOOK_HIDE_TOOLS", "").replace(" ", "").split(","):
        return None
    if name == "chromium" and os.environ.get("COOKBOOK_CHROMIUM"):
        return os.environ["COOKBOOK_CHROMIUM"]
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def install_hint(name: str) -> str:
    """One line: the optional program is missing, what needs it, and how to install it on Debian/Ubuntu, macOS
    and conda. Shown in notebooks/12 where nginx or Prometheus is absent."""
    needed_by, how, _ = OPTIONAL_TOOLS[name]
    return f"{name} is not installed (needed by {needed_by}): {how}; `make stack-deps` installs what it can"


def _version(path: str, flag: str) -> str:
    try:
        done = subprocess.run([path, flag], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as err:
        return f"found, version unknown ({type(err).__name__})"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0][:60] if text else "found, version unknown"


def optional_tools() -> pd.DataFrame:
    """Each optional system program: found or missing, its version, what needs it and how to install it."""
    rows = []
    for name, (needed_by, how, flag) in OPTIONAL_TOOLS.items():
        path = find_tool(name)
        rows.append((name, _version(path, flag) if path else "missing", needed_by, "" if path else how))
    return pd.DataFrame(rows, columns=["tool", "version", "needed by", "install"]).set_index("tool")
