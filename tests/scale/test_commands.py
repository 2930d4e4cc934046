"""cookbook.scale.commands and diagrams: launch lines that parse as the launchers' own arguments, and the figure."""

import shlex

import pytest
from torch.distributed.run import get_args_parser

from cookbook import scale


def test_torchrun_commands_parse_with_torchruns_own_parser():
    parser = get_args_parser()
    one = shlex.split(scale.launch_commands(gpus_per_node=8)["torchrun"])
    args = parser.parse_args(one[1:])
    assert (args.standalone, args.nproc_per_node, args.module) == (True, "8", True)
    assert args.training_script == "cookbook.scale.train_lm" and args.training_script_args == ["--engine", "fsdp2"]
    many = scale.launch_commands(gpus_per_node=8, nodes=4, master_addr="node0", port=1234)["torchrun"]
    args = parser.parse_args(shlex.split(many.replace("$NODE_RANK", "2"))[1:])  # as the shell of node 2 expands it
    assert (args.nnodes, args.node_rank, args.rdzv_endpoint, args.rdzv_backend) == ("4", 2, "node0:1234", "c10d")


def test_accelerate_and_deepspeed_commands_count_every_gpu():
    many = scale.launch_commands(gpus_per_node=8, nodes=4, zero_stage=3, args="--precision bf16")
    assert "--num_machines 4 --num_processes 32 --machine_rank $NODE_RANK" in many["accelerate"]
    assert many["accelerate"].endswith("--engine accelerate --precision bf16")
    assert "--hostfile hostfile --num_nodes 4 --num_gpus 8" in many["deepspeed"]
    assert many["deepspeed"].endswith("--engine deepspeed --zero-stage 3 --precision bf16")
    with pytest.raises(ValueError, match="nodes must be a positive int, got 0"):
        scale.launch_commands(nodes=0)


def test_nccl_variables_are_explained():
    assert all(name.split("=")[0].isupper() and len(why) > 30 for name, why in scale.NCCL_VARIABLES.items())
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in scale.NCCL_VARIABLES


def test_parallelism_figure():
    fig = scale.parallelism_figure(4)
    titles = [ax.get_title() for ax in fig.axes]
    assert [t.split(":")[0] for t in titles] == ["data parallel", "tensor parallel", "pipeline parallel",
                                                 "expert parallel"]
    with pytest.raises(ValueError, match="up to 8 GPUs, got n_gpus=9"):
        scale.parallelism_figure(9)
