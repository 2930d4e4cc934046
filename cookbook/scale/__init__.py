"""Scaling out: one training script on real distributed engines (DDP, FSDP2, Accelerate, DeepSpeed ZeRO).

launch (the process group: rank, world size, collectives, timeout, a clean end; srun's SLURM variables) · data (each rank's slice of
every step's global batch) · engines (wrap for DDP / FSDP2, gradient sync only on the last micro-step) ·
checkpoint (DCP folders that load on any world size) · commands (launch commands, NCCL variables, a local
run) · diagrams (data / tensor / pipeline / expert parallelism) · train_lm (`python -m cookbook.scale.train_lm`, the
script every launcher runs). Shown in notebooks/11.
"""

from cookbook.scale import checkpoint
from cookbook.scale.commands import NCCL_VARIABLES, launch_commands, run_local
from cookbook.scale.data import StepBatches, grad_accum, ragged_counting, validation_batches
from cookbook.scale.diagrams import parallelism_figure
from cookbook.scale.engines import ENGINES, decoder_layers, gradient_sync, wrap
from cookbook.scale.launch import World, from_slurm, launched, session

__all__ = ["ENGINES", "NCCL_VARIABLES", "StepBatches", "World", "checkpoint", "decoder_layers", "from_slurm",
           "grad_accum", "gradient_sync", "launch_commands", "launched", "parallelism_figure", "ragged_counting",
           "run_local", "session", "validation_batches", "wrap"]
