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

__all__ = ["load", "save"]

_TRAIN_STATE = "train_state.json"  # the step, the schedule: small and human-readable, written by rank 0


def save(folder, model, optimizer, world, state: dict) -> Path:
    """Write model + optimizer shards of every rank and `state` (JSON) to `folder`; all ranks must call it.

    Shown in notebooks/11 §4.
    """
    folder = Path(folder)
    model_state, optim_state = get_state_dict(model, optimizer)
    # overwrite: a re-run that reaches the same step replaces its checkpoint (torch warns unless told so)
    dcp.save({"model": model_state, "optimizer": optim_state}, storage_writer=dcp.FileSystemWriter(folder, overwrite=True))
    if world.main:  # last, so a folder with train_state.json is a complete checkpoint
        tmp = folder / f"{_TRAIN_STATE}.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, folder / _TRAIN_STATE)
    world.barrier()
    return folder


def load(folder, model, optimizer) -> dict:
    """Load a `save`d checkpoint into `model` and `optimizer`, resharded to this run's world; its state.

    Shown in notebooks/11 §4.
    """
    folder = Path(folder)
    if not (folder / _TRAIN_STATE).is_file():
        raise FileNotFoundError(f"{folder} is not a complete checkpoint: it has no {_TRAIN_STATE} (the last "
                                "file a save writes); pass a folder written by cookbook.scale.checkpoint.save")
    model_state, optim_state = get_state_dict(model, optimizer)  # the shapes and shards this run wants
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    return json.loads((folder / _TRAIN_STATE).read_text())
