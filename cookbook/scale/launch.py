"""The process group of a run: who am I (rank, world size, device), collectives, and a clean end.

`torchrun`, `accelerate launch` and `deepspeed` all start one process per GPU (or CPU slot) and tell each
its place through environment variables: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT. A plain
`python` run has none of them and becomes a world of one (an in-memory store: no port is opened), so the
same script and the same collectives run unchanged everywhere.

    with launch.session(timeout_s=60) as world:    # init_process_group ... destroy_process_group, always
        n = world.all_sum(local_count)             # every rank gets the sum over all ranks
        world.print("only rank 0 prints this")
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import sys

import torch
import torch.distributed as dist

from cookbook import env

__all__ = ["World", "launched", "session"]

_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# What a collective raises when a peer is gone: gloo says "Connection closed by peer" / "Timed out", NCCL
# raises DistBackendError after its watchdog timeout. These are rewritten into one clear message.
_LOST_PEER = ("connection closed", "connection reset", "timed out", "timeout", "broken pipe", "socket",
              "no route to host", "connection refused")


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place in the run. `main` is rank 0: the one that logs, prints and writes files."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    timeout_s: float

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, value) -> torch.Tensor:
        """Sum of `value` (a number or tensor) over every rank, as a float64 tensor on the host."""
        tensor = torch.as_tensor(value).detach().to(torch.float64)
        if self.world_size > 1:
            # gloo reduces host tensors, NCCL device tensors
            tensor = tensor.to(self.device) if self.backend == "nccl" else tensor.cpu().clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu()

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def print(self, *args, **kwargs) -> None:
        """`print` on rank 0 only: N ranks would print every line N times."""
        if self.main:
            print(*args, **kwargs, flush=True)


def launched() -> bool:
    """True when a launcher (torchrun, accelerate launch, deepspeed) started this process."""
    return all(name in os.environ for name in _LAUNCH_VARS)


def _device(local_rank: int, device: str | None) -> torch.device:
    """One GPU per process (its LOCAL_RANK) on CUDA, else the CPU; `device` ("cpu", "cuda") overrides."""
    kind = torch.device(device).type if device else env.device().type
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if kind != "cpu":
        raise ValueError(f"distributed training runs on cuda or cpu, got device {kind!r}")
    return torch.device("cpu")


def lost_peer_message(exc: BaseException, world: World) -> str | None:
    """A clear explanation when `exc` is a collective that failed because another rank died or stalled."""
    text = str(exc).lower()
    if world.world_size == 1 or not (isinstance(exc, dist.DistError) or any(s in text for s in _LOST_PEER)):
        return None
    return (f"rank {world.rank} of {world.world_size}: a collective failed, so another rank died or stopped "
            f"responding (process-group timeout {world.timeout_s:g} s). The job stops here instead of hanging; "
            f"find the first failing rank in the launcher's output. Cause: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}")


@contextlib.contextmanager
def session(*, timeout_s: float = 300, device: str | None = None, init: bool = True):
    """The run's process group, from the launcher's environment (or a world of one); yields a `World`.

    `timeout_s` bounds every collective, so a dead or stuck rank ends the job with an error instead of a
    hang (NCCL needs TORCH_NCCL_ASYNC_ERROR_HANDLING=1, torch's default, to act on it). `init=False` when an
    engine sets the group up itself (Accelerate, DeepSpeed): the session then only reads it. The group is
    destroyed on the way out, error or not,
    except when a peer is lost: the message is printed and the process exits with code 1 at once, since
    tearing down a group with a dead member can block. Shown in notebooks/11 §3.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = _device(local_rank, device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if init and not dist.is_initialized():
        if launched():
            dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout,
                                    device_id=dev if dev.type == "cuda" else None)
        else:  # a plain `python` run: a world of one, no port opened
            if world_size != 1:
                raise ValueError(f"WORLD_SIZE={world_size} but no launcher set {', '.join(_LAUNCH_VARS)}: "
                                 "start the script with torchrun, accelerate launch or deepspeed")
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        backend = dist.get_backend()
    world = World(rank, world_size, local_rank, dev, backend, timeout_s)
    try:
        yield world
    except Exception as exc:
        message = lost_peer_message(exc, world)
        if message is None:
            raise
        print(message, file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Leave at once: tearing down a group whose peer is gone can block in gloo's teardown (seen here on a
        # loaded machine: rank 0 still alive 90 s after this message), and so can interpreter exit while DDP's
        # reducer waits. The OS closes the sockets; the launcher sees exit code 1.
        os._exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
