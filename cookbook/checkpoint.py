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

__all__ = ["CheckpointError", "latest", "load", "prune", "read", "save"]

FORMAT = "cookbook-checkpoint-1"


class CheckpointError(RuntimeError):
    """The file is not a usable checkpoint (truncated, corrupted, or from a different model)."""


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
    if _digest(tensors, metadata["state"]) != metadata.get("sha256"):
        raise CheckpointError(f"{path} is corrupt: its content does not match the checksum written with it")
    return tensors, json.loads(metadata["state"])


def load(path, model, optimizer=None, scheduler=None, scaler=None) -> dict:
    """Restore a checkpoint into the given objects (and the RNGs); returns the saved trainer `state`.

    `path` may be a folder: its newest checkpoint is used, falling back to the previous one (with a
    warning) when the newest is unreadable.
    """
    path = Path(path)
    candidates = latest(path, all_=True) if path.is_dir() else [path]
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
        for saved, current in zip(groups, optimizer.param_groups, strict=True):
            if "betas" in saved:
                saved["betas"] = tuple(saved["betas"])  # JSON turned the tuple into a list
            for flag in ("fused", "foreach", "capturable"):  # kernels follow this machine, not the saving one
                if flag in current:
                    saved[flag] = current[flag]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    if scheduler is not None and "scheduler" in header:
        scheduler.load_state_dict(header["scheduler"])
    if scaler is not None:
        if "scaler" not in header:
            raise CheckpointError(f"{candidate} was saved without a loss scaler (not an fp16 run)")
        scaler.load_state_dict(header["scaler"])
    _set_rng_state(tensors, header["rng"])
    return header["state"]


def latest(folder, all_: bool = False):
    """The newest `step-*.safetensors` in `folder` (None if there is none); all of them, newest first, with all_."""
    found = sorted(Path(folder).glob("step-*.safetensors"),
                   key=lambda p: int(re.sub(r"\D", "", p.stem) or -1), reverse=True)
    return found if all_ else (found[0] if found else None)


def prune(folder, keep: int = 2) -> list[Path]:
    """Delete all but the `keep` newest step checkpoints in `folder`; returns the deleted paths."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    old = latest(folder, all_=True)[keep:]
    for p in old:
        p.unlink(missing_ok=True)
    return old
