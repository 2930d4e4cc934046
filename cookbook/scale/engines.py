"""The real engines that spread one model over the ranks: DDP, FSDP2, Accelerate (DDP underneath), DeepSpeed.

- `ddp`: every rank holds the whole model; after backward the gradients are all-reduced (averaged), so
  every rank takes the same optimizer step. Memory per GPU: the whole model, gradients and optimizer.
- `fsdp2`: `torch.distributed.fsdp.fully_shard` on each decoder layer, then on the root. Each rank keeps
  1/N of every parameter, gradient and optimizer state (as DTensors); a layer's weights are all-gathered
  just before its forward/backward and freed after; gradients are reduce-scattered (ZeRO-3's idea).
- `accelerate`: `Accelerator.prepare` picks the wrapper from the launch config (here DDP).
- `deepspeed`: ZeRO stage 1/2/3 from a config dict (`cookbook.planning.zero_config`).
"""

from __future__ import annotations

import contextlib

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

__all__ = ["ENGINES", "decoder_layers", "full_value", "gradient_sync", "wrap"]

ENGINES = ("none", "ddp", "fsdp2", "accelerate", "deepspeed")


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: modules whose class transformers lists in `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"found no decoder layers in {type(model).__name__} (classes named in _no_split_modules: "
                         f"{sorted(names) or 'none'}); FSDP2 shards one layer at a time and needs them")
    return layers


def wrap(model: torch.nn.Module, engine: str, world) -> torch.nn.Module:
    """`model` on `world.device`, wrapped for `engine` ("none", "ddp" or "fsdp2"). Shown in notebooks/11 §3.

    FSDP2 shards every decoder layer, then the root (embeddings, final norm, LM head): a layer is one
    all-gather in forward and one reduce-scatter in backward, overlapped with its neighbours' compute.
    """
    if engine not in ("none", "ddp", "fsdp2"):
        raise ValueError(f"wrap handles engines none, ddp and fsdp2, got {engine!r} (accelerate and deepspeed "
                         "wrap the model themselves)")
    model = model.to(world.device)
    if engine == "ddp":
        ids = [world.device.index] if world.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if engine == "fsdp2":
        mesh = init_device_mesh(world.device.type, (world.world_size,))
        for layer in decoder_layers(model):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    return model


@contextlib.contextmanager
def gradient_sync(model: torch.nn.Module, enabled: bool):
    """Inside the block, backward passes sync gradients across ranks only if `enabled`.

    With gradient accumulation only the last micro-step needs the all-reduce (DDP) or reduce-scatter
    (FSDP2): the earlier ones just add to the local gradients (DDP `no_sync`, FSDP2
    `set_requires_gradient_sync(False)`), k-1 fewer rounds of communication per step.
    """
    if enabled:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP2 shard, or a norm computed from shards) as the whole tensor; any other tensor as is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
