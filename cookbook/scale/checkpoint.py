"""Distributed checkpoints with `torch.distributed.checkpoint` (DCP): each rank writes its own shards.

A DCP checkpoint is a folder of per-rank files plus a metadata file that records which slice of which
tensor each file holds. Loading reads the slices each rank needs *now*, so a checkpoint written by 2
FSDP2 ranks loads on 1 process, on 4 ranks, or under DDP. `get_state_dict` gives model and optimizer
state with the same keys under every wrapper (no `module.` prefix), which is what makes that work.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

__all__ = ["DCP_ENGINES", "OVERRIDABLE", "check_resume", "load", "read_state", "save", "write_state"]

_TRAIN_STATE = "train_state.json"  # the step, the schedule, the run's settings: small, human-readable, by rank 0
DCP_ENGINES = ("none", "ddp", "fsdp2", "accelerate")  # torch's wrappers: one DCP format, any world size
# Settings a resume may change with --override (logged): the batch and the schedule. The model and the data
# cannot: the weights would not fit, or the step would point at other examples.
OVERRIDABLE = ("global_batch", "lr", "warmup_fraction", "steps")


def save(folder, model, optimizer, world, state: dict) -> Path:
    """Write model + optimizer shards of every rank and `state` (JSON) to `folder`; all ranks must call it.

    Shown in notebooks/11 §4.
    """
    folder = Path(folder)
    model_state, optim_state = get_state_dict(model, optimizer)
    # overwrite: a re-run that reaches the same step replaces its checkpoint (torch warns unless told so)
    dcp.save({"model": model_state, "optimizer": optim_state}, storage_writer=dcp.FileSystemWriter(folder, overwrite=True))
    write_state(folder, world, state)
    return folder


def write_state(folder, world, state: dict) -> None:
    """Rank 0 writes `state` as the folder's train_state.json, last, so its presence marks a complete
    checkpoint (DeepSpeed's own checkpoints get one too); all ranks must call it."""
    if world.main:
        tmp = Path(folder) / f"{_TRAIN_STATE}.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, Path(folder) / _TRAIN_STATE)
    world.barrier()


def read_state(folder) -> dict:
    """The train_state.json of a checkpoint folder; a clear error when the folder is missing or incomplete."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--resume {folder}: no such folder; pass a checkpoint-NNNNNN folder written by "
                                "cookbook.scale.train_lm --out")
    if not (folder / _TRAIN_STATE).is_file():
        raise FileNotFoundError(f"{folder} is not a complete checkpoint: it has no {_TRAIN_STATE} (the last "
                                "file a save writes); pass a folder written by cookbook.scale.checkpoint.save")
    return json.loads((folder / _TRAIN_STATE).read_text())


def check_resume(state: dict, settings: dict, *, engine: str, world_size: int, overrides=()) -> list[str]:
    """Check that a run with `settings` on `engine` x `world_size` may resume from a checkpoint's `state`;
    return the overridden differences (one line each, to log) or raise ValueError naming the first refused one.

    Call it before building anything. DCP checkpoints (engines in DCP_ENGINES) resume on any of those engines
    and any world size; a DeepSpeed checkpoint only under DeepSpeed, on the world size and ZeRO stage that
    wrote it. Shown in notebooks/11 §4.
    """
    bad = sorted(set(overrides) - set(OVERRIDABLE))
    if bad:
        raise ValueError(f"--override {bad[0]}: only {', '.join(OVERRIDABLE)} can be overridden on resume")
    saved_engine, saved_world = state.get("engine"), state.get("world_size")
    if (saved_engine == "deepspeed") != (engine == "deepspeed"):
        raise ValueError(f"the checkpoint was written by engine {saved_engine}; engine {engine} cannot read it "
                         f"(DCP checkpoints resume under {', '.join(DCP_ENGINES)}; DeepSpeed's only under deepspeed)")
    if engine == "deepspeed" and saved_world != world_size:
        # DeepSpeed's ZeRO files are partitioned for the world that wrote them; its universal checkpoint
        # (python -m deepspeed.checkpoint.ds_to_universal + "load_universal") converts them, not wired in here
        raise ValueError(f"world size: this DeepSpeed checkpoint was written by {saved_world} rank(s) and this run "
                         f"has {world_size}; DeepSpeed resumes only on the same world size (resume on {saved_world} "
                         f"rank(s), or train with a DCP engine: {', '.join(DCP_ENGINES)})")
    saved, changed = state.get("settings", {}), []
    for name, value in settings.items():
        if name in saved and saved[name] != value:
            line = f"{name}: checkpoint {saved[name]!r}, this run {value!r}"
            if name not in overrides:
                hint = (f"pass --override {name} to resume with the new value" if name in OVERRIDABLE
                        else "it cannot be overridden")
                raise ValueError(f"resume refused, setting changed: {line} ({hint})")
            changed.append(f"override {line}")
    return changed


def load(folder, model, optimizer) -> dict:
    """Load a `save`d checkpoint into `model` and `optimizer`, resharded to this run's world; its state.

    Shown in notebooks/11 §4.
    """
    folder = Path(folder)
    train_state = read_state(folder)
    model_state, optim_state = get_state_dict(model, optimizer)  # the shapes and shards this run wants
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    return train_state
