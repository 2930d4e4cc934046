"""Training checkpoints: one safetensors file, written atomically, verified on load, never pickled.

A checkpoint holds the model weights and buffers, the optimizer state, the LR scheduler, the fp16 loss
scaler, the data position and every RNG state, so a resumed run continues bit-for-bit. Tensors go in
the safetensors body; everything else is JSON in its header, next to a SHA-256 of the whole content.
Nothing is unpickled when loading, so a checkpoint from a stranger cannot run code.

Atomic: the file is written under a temporary name, flushed to disk and then renamed over the target,
so a crash mid-save leaves the previous checkpoint untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["CheckpointError", "checkpoints", "latest", "load", "prune", "read", "save"]

FORMAT = "cookbook-checkpoint-1"


class CheckpointError(RuntimeError):
    """The file is not a usable checkpoint (truncated, corrupted, malformed, or from a different model)."""


def _digest(tensors: dict[str, torch.Tensor], state_json: str) -> str:
    digest = hashlib.sha256(state_json.encode())
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng/cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss_next = random.getstate()
    return tensors, dict(numpy=[kind, pos, has_gauss, gauss], python=[version, list(internal), gauss_next])


def _set_rng_state(tensors: dict[str, torch.Tensor], state: dict) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng/cuda/")), key=lambda k: int(k.rsplit("/", 1)[1]))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    kind, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save(path, model, optimizer=None, scheduler=None, scaler=None, state: dict | None = None) -> Path:
    """Write a checkpoint to `path` (".safetensors" is appended if missing) atomically; returns the path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Copies on the CPU: no two entries share memory (tied weights), and saving never aliases live tensors.
    tensors = {f"model/{k}": v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    header = dict(format=FORMAT, state=state or {})
    if optimizer is not None:
        opt = optimizer.state_dict()
        for index, entries in opt["state"].items():
            for name, value in entries.items():
                if not torch.is_tensor(value):
                    raise CheckpointError(f"optimizer state {name!r} is not a tensor; cannot store it without pickle")
                tensors[f"optimizer/{index}/{name}"] = value.detach().to("cpu", copy=True).contiguous()
        header["param_groups"] = opt["param_groups"]
    if scheduler is not None:
        header["scheduler"] = scheduler.state_dict()
    if scaler is not None:
        header["scaler"] = scaler.state_dict()
    rng_tensors, header["rng"] = _rng_state()
    tensors.update(rng_tensors)
    state_json = json.dumps(header)
    metadata = {"format": FORMAT, "state": state_json, "sha256": _digest(tensors, state_json)}

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the checkpoint
        os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old file or the new one
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # persist the rename itself (directories cannot be opened on Windows)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def read(path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and the JSON header of a checkpoint file, verified against its checksum."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for truncated or garbled files
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {exc}") from exc
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a {FORMAT} (format={metadata.get('format')!r})")
    if "state" not in metadata or "sha256" not in metadata:
        missing = [key for key in ("state", "sha256") if key not in metadata]
        raise CheckpointError(f"{path} is a malformed {FORMAT}: its header has no {' and no '.join(missing)}")
    if _digest(tensors, metadata["state"]) != metadata["sha256"]:
        raise CheckpointError(f"{path} is corrupt: its content does not match the checksum written with it")
    try:
        header = json.loads(metadata["state"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is a malformed {FORMAT}: its state is not JSON ({exc})") from exc
    problem = _malformed(header, tensors)
    if problem:
        raise CheckpointError(f"{path} is a malformed {FORMAT}: {problem}")
    return tensors, header


# What `save` writes: the header keys with their JSON types (None: optional), the tensors every file has.
_HEADER = {"format": str, "state": dict, "rng": dict, "param_groups": (list, None), "scheduler": (dict, None),
           "scaler": (dict, None)}
_OPTIMIZER_KEY = re.compile(r"optimizer/\d+/.+")


def _malformed(header, tensors: dict[str, torch.Tensor]) -> str:
    """What is wrong with a checksummed header and its tensors ("" if nothing): files written by hand or
    by another tool can carry a correct checksum and still lack what `load` needs."""
    if not isinstance(header, dict):
        return f"its state is a JSON {type(header).__name__}, not an object"
    for key, kinds in _HEADER.items():
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if key not in header and None not in kinds:
            return f"its header has no {key!r} (keys: {sorted(header)})"
        if key in header and not isinstance(header[key], tuple(k for k in kinds if k is not None)):
            return f"header {key!r} is a {type(header[key]).__name__}, not a {kinds[0].__name__}"
    numpy_state, python_state = header["rng"].get("numpy"), header["rng"].get("python")
    if not (isinstance(numpy_state, list) and len(numpy_state) == 4
            and isinstance(python_state, list) and len(python_state) == 3 and isinstance(python_state[1], list)):
        return "its RNG state is not [kind, pos, has_gauss, gauss] (numpy) and [version, state, gauss] (python)"
    if not all(isinstance(group, dict) and isinstance(group.get("params"), list)
               for group in header.get("param_groups", [])):
        return "its optimizer param_groups are not objects with a 'params' list"
    missing = [key for key in ("rng/torch", "rng/numpy") if key not in tensors]
    if missing:
        return f"tensors {missing} are missing"
    odd = [key for key in tensors if key.startswith("optimizer/") and not _OPTIMIZER_KEY.fullmatch(key)]
    if odd:
        return f"optimizer tensors {odd[:3]} are not named optimizer/<index>/<name>"
    if any(key.startswith("optimizer/") for key in tensors) and "param_groups" not in header:
        return "it has optimizer tensors but no param_groups"
    return ""


def load(path, model, optimizer=None, scheduler=None, scaler=None) -> dict:
    """Restore a checkpoint into the given objects (and the RNGs); returns the saved trainer `state`.

    `path` may be a folder: its newest checkpoint is used, falling back to the previous one (with a
    warning) when the newest is unreadable or malformed. Every problem with the file is a `CheckpointError`.
    """
    path = Path(path)
    candidates = checkpoints(path) if path.is_dir() else [path]
    if not candidates:
        raise FileNotFoundError(f"no step-*.safetensors checkpoint in {path}")
    for i, candidate in enumerate(candidates):
        try:
            tensors, header = read(candidate)
            break
        except CheckpointError as exc:
            if i == len(candidates) - 1 or not path.is_dir():
                raise
            warnings.warn(f"{exc}; falling back to {candidates[i + 1].name}", stacklevel=2)

    weights = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{candidate} does not fit this model: {exc}") from exc
    if optimizer is not None:
        if "param_groups" not in header:
            raise CheckpointError(f"{candidate} has no optimizer state")
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                _, index, name = key.split("/", 2)
                state.setdefault(int(index), {})[name] = value
        groups = header["param_groups"]
        try:
            for saved, current in zip(groups, optimizer.param_groups, strict=True):
                if "betas" in saved:
                    saved["betas"] = tuple(saved["betas"])  # JSON turned the tuple into a list
                for flag in ("fused", "foreach", "capturable"):  # kernels follow this machine, not the saving one
                    if flag in current:
                        saved[flag] = current[flag]
            optimizer.load_state_dict({"state": state, "param_groups": groups})
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{candidate} does not fit this optimizer: {exc}") from exc
    if scheduler is not None and "scheduler" in header:
        scheduler.load_state_dict(header["scheduler"])
    if scaler is not None:
        if "scaler" not in header:
            raise CheckpointError(f"{candidate} was saved without a loss scaler (not an fp16 run)")
        try:
            scaler.load_state_dict(header["scaler"])
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{candidate} has a loss-scaler state that cannot be restored: {exc}") from exc
    try:
        _set_rng_state(tensors, header["rng"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{candidate} has an RNG state that cannot be restored: {exc}") from exc
    return header["state"]


def checkpoints(folder) -> list[Path]:
    """Every `step-*.safetensors` in `folder`, newest (highest step) first; [] if there is none."""
    return sorted(Path(folder).glob("step-*.safetensors"),
                  key=lambda p: int(re.sub(r"\D", "", p.stem) or -1), reverse=True)


def latest(folder) -> Path | None:
    """The newest `step-*.safetensors` in `folder`, or None if there is none."""
    found = checkpoints(folder)
    return found[0] if found else None


def prune(folder, keep: int = 2) -> list[Path]:
    """Delete all but the `keep` newest step checkpoints in `folder`; returns the deleted paths."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    old = checkpoints(folder)[keep:]
    for p in old:
        p.unlink(missing_ok=True)
    return old
