"""The process group of a run: who am I (rank, world size, device), collectives, and a clean end.

`torchrun`, `accelerate launch` and `deepspeed` all start one process per GPU (or CPU slot) and tell each
its place through environment variables: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT. A plain
`python` run has none of them and becomes a world of one (an in-memory store: no port is opened), so the
same script and the same collectives run unchanged everywhere. `srun` (SLURM, one task per GPU) sets its own
SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID instead; `from_slurm` turns them into the launcher's variables, so
N tasks form one world of N ranks rather than N separate runs.

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
import traceback

import torch
import torch.distributed as dist

from cookbook import env

__all__ = ["World", "from_slurm", "launched", "session"]

_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_SLURM_VARS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
# Where a lost peer surfaces. NCCL's watchdog, the rendezvous store and the network raise torch's typed
# DistError family; gloo raises a plain RuntimeError from inside the C++ collective, so its innermost Python
# frame is torch.distributed's (a direct collective, FSDP2's all-gather), autograd's engine (DDP's reducer
# all-reduces during backward) or DDP's module (its forward broadcasts the buffers: a frozen peer can time it
# out there, as CI saw once). An error raised by Python code anywhere else is not a lost peer, whatever its text.
_COLLECTIVE_FRAMES = tuple(os.path.join("torch", *parts, "") for parts in
                           (("distributed",), ("autograd",), ("nn", "parallel")))


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


def from_slurm(environ=None) -> bool:
    """Fill RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT from SLURM's variables when `srun` started
    this process as one of several tasks and no launcher set them; True if it did.

    SLURM_PROCID is the rank, SLURM_NTASKS the world size, SLURM_LOCALID the local rank. On one node the
    address is 127.0.0.1; on several, MASTER_ADDR must name the first node (the sbatch template exports it),
    else this raises naming the command that does. The port is MASTER_PORT, or one derived from
    SLURM_JOB_ID, so two jobs sharing a node do not meet on one port. Shown in notebooks/11 §6.
    """
    env_ = os.environ if environ is None else environ
    if all(n in env_ for n in _LAUNCH_VARS):
        return False  # torchrun under srun (the sbatch template): the launcher's variables win
    if not all(n in env_ for n in _SLURM_VARS) or int(env_["SLURM_NTASKS"]) == 1:
        return False
    nodes = int(env_.get("SLURM_STEP_NUM_NODES", env_.get("SLURM_NNODES", "1")))
    if "MASTER_ADDR" not in env_ and nodes > 1:
        raise ValueError(f"srun started {env_['SLURM_NTASKS']} tasks on {nodes} nodes but MASTER_ADDR is not set: "
                         'run `export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)` '
                         "before srun, or submit configs/slurm/train_lm.sbatch (torchrun under srun)")
    env_.update(RANK=env_["SLURM_PROCID"], WORLD_SIZE=env_["SLURM_NTASKS"], LOCAL_RANK=env_["SLURM_LOCALID"])
    env_.setdefault("MASTER_ADDR", "127.0.0.1")
    env_.setdefault("MASTER_PORT", str(20000 + int(env_.get("SLURM_JOB_ID", "9500")) % 20000))
    return True


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
    """A clear explanation when `exc` is a collective that failed because another rank died or stalled; None for
    any other error (it keeps its traceback). Judged by the exception's type and where it was raised, never by
    its words (see `_COLLECTIVE_FRAMES`)."""
    if world.world_size == 1:
        return None
    if not isinstance(exc, dist.DistError):
        innermost = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        in_collective = bool(innermost) and any(part in innermost[0].filename for part in _COLLECTIVE_FRAMES)
        if type(exc) is not RuntimeError or not in_collective:  # C++ errors arrive as exactly RuntimeError
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
    from_slurm()
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
                                 "start the script with torchrun, accelerate launch, deepspeed or srun")
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
        traceback.print_exception(exc, file=sys.stderr)  # kept: the headline below is a judgement, this the record
        print(message, file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Leave at once: tearing down a group whose peer is gone can block in gloo's teardown (seen here on a
        # loaded machine: rank 0 still alive 90 s after this message), and so can interpreter exit while DDP's
        # reducer waits. The OS closes the sockets; the launcher sees exit code 1.
        os._exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
