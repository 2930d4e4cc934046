"""The exact launch commands for one node and for several, and the NCCL variables worth knowing.

Every launcher starts the same `python -m cookbook.scale.train_lm`; they differ in who spawns the ranks
and how the nodes find each other (a rendezvous at the first node's address and port).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cookbook.checks import positive_int

__all__ = ["NCCL_VARIABLES", "launch_commands", "run_local"]

SCRIPT = "-m cookbook.scale.train_lm"

# Set before launching, on every node. NCCL reads them when the first communicator is created.
NCCL_VARIABLES = {
    "NCCL_DEBUG=INFO": "print which transport each GPU pair uses (NVLink, PCIe, InfiniBand, sockets) and "
                       "every error; WARN for errors only",
    "NCCL_SOCKET_IFNAME=eth0": "the network interface for bootstrap and socket traffic; the wrong one (docker0, "
                               "lo) makes multi-node runs hang at start-up",
    "NCCL_IB_DISABLE=0": "use InfiniBand/RoCE when present (1 forces TCP sockets: a debugging step, many times slower)",
    "NCCL_P2P_DISABLE=0": "direct GPU-to-GPU copies over NVLink/PCIe; 1 works around broken peer-to-peer on "
                          "some consumer boards and VMs",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING=1": "torch's watchdog aborts a collective that outlives the process-group "
                                        "timeout, so a dead rank ends the job instead of hanging it (default on)",
    "TORCH_NCCL_BLOCKING_WAIT=0": "1 makes each collective wait on the host: clearer timeout errors, slower; "
                                 "for debugging",
    "OMP_NUM_THREADS=8": "CPU threads per rank (torchrun sets 1 by default): cores per node / ranks per node",
}


def launch_commands(*, gpus_per_node: int = 8, nodes: int = 1, engine: str = "fsdp2", zero_stage: int = 2,
                    master_addr: str = "10.0.0.1", port: int = 29500, args: str = "") -> dict[str, str]:
    """{launcher: command line} for `nodes` x `gpus_per_node` GPUs: torchrun, accelerate launch, deepspeed, and
    SLURM's sbatch (the template configs/slurm/train_lm.sbatch: torchrun under srun).

    On several nodes every node runs the same command; `$NODE_RANK` (0 .. nodes-1) is the node's own rank,
    `master_addr` the first node's address and `$JOB_ID` any id unique to this job (the same on every node: two
    jobs with one id and endpoint would join one rendezvous). Shown in notebooks/11 §5.
    """
    positive_int("gpus_per_node", gpus_per_node), positive_int("nodes", nodes)
    extra = f" {args}" if args else ""
    if nodes == 1:
        torchrun = f"torchrun --standalone --nproc_per_node={gpus_per_node} {SCRIPT} --engine {engine}{extra}"
        accelerate = (f"accelerate launch --config_file configs/accelerate/1node_8gpu.yaml --num_processes "
                      f"{gpus_per_node} {SCRIPT} --engine accelerate{extra}")
        deepspeed = (f"deepspeed --num_gpus {gpus_per_node} --module cookbook.scale.train_lm --engine deepspeed "
                     f"--zero-stage {zero_stage}{extra}")
    else:
        total = nodes * gpus_per_node
        torchrun = (f"torchrun --nnodes={nodes} --nproc_per_node={gpus_per_node} --node_rank=$NODE_RANK "
                    f"--rdzv_backend=c10d --rdzv_endpoint={master_addr}:{port} --rdzv_id=$JOB_ID "
                    f"{SCRIPT} --engine {engine}{extra}")
        accelerate = (f"accelerate launch --config_file configs/accelerate/4nodes_8gpu.yaml --num_machines {nodes} "
                      f"--num_processes {total} --machine_rank $NODE_RANK --main_process_ip {master_addr} "
                      f"--main_process_port {port} {SCRIPT} --engine accelerate{extra}")
        # deepspeed's own launcher ssh-es into every host of the hostfile (one line per node: "host slots=8")
        deepspeed = (f"deepspeed --hostfile hostfile --num_nodes {nodes} --num_gpus {gpus_per_node} "
                     f"--master_addr {master_addr} --master_port {port} --module cookbook.scale.train_lm "
                     f"--engine deepspeed --zero-stage {zero_stage}{extra}")
    slurm = (f"sbatch --nodes {nodes} --gpus-per-node {gpus_per_node} configs/slurm/train_lm.sbatch "
             f"--engine {engine}{extra}")
    return {"torchrun": torchrun, "accelerate": accelerate, "deepspeed": deepspeed, "slurm": slurm}


def run_local(args, out, *, nproc: int = 1, timeout: float = 600) -> list[dict]:
    """Run the script on this machine, as `python` (nproc=1) or `torchrun --standalone` (a free port), and return
    its history (one dict per logged step). Extra `args` go to the script; `out` is its output folder.

    Each rank uses one thread (two ranks already fill a 2-core machine). A failed run raises RuntimeError
    with the end of its error output. Shown in notebooks/11 §3.
    """
    positive_int("nproc", nproc)
    out = Path(out)
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    command = [sys.executable, *launcher, *SCRIPT.split(), *map(str, args), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"train_lm on {nproc} process(es) failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads((out / "history.json").read_text())
