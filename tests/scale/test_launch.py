"""cookbook.scale.launch (a world of one in this process) and cookbook.scale.engines (what can be checked on one rank)."""

import inspect
import os

import pytest
import torch
import torch.distributed as dist

from cookbook import models
from cookbook.scale import engines, launch
from cookbook.scale.launch import World, lost_peer_message


def test_a_plain_process_is_a_world_of_one(monkeypatch, capsys):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert not launch.launched()
    with launch.session(timeout_s=5, device="cpu") as world:
        assert dist.is_initialized() and (world.rank, world.world_size, world.backend) == (0, 1, "gloo")
        assert world.main and world.all_sum(3).item() == 3.0
        world.print("only rank 0")
    assert not dist.is_initialized()  # destroyed on the way out
    assert capsys.readouterr().out == "only rank 0\n"


def test_the_group_is_destroyed_on_error_too(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(KeyError), launch.session(timeout_s=5, device="cpu"):
        raise KeyError("boom")  # not a communication failure: re-raised as is
    assert not dist.is_initialized()


def test_bad_launch_settings_are_named(monkeypatch):
    with pytest.raises(ValueError, match="timeout_s must be a positive number of seconds, got 0"), \
            launch.session(timeout_s=0):
        pass
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="WORLD_SIZE=4 but no launcher set"), launch.session(device="cpu"):
        pass
    assert not dist.is_initialized()


def _raised(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the exception, with its traceback, is what the test inspects
        return exc
    raise AssertionError("no exception")


def test_lost_peer_is_judged_by_type_and_where_it_was_raised_not_by_words(monkeypatch):
    world = World(1, 2, 1, torch.device("cpu"), "gloo", 30)
    monkeypatch.delenv("RANK", raising=False)
    with launch.session(timeout_s=5, device="cpu"):
        # a C++ error from inside a gloo collective arrives as a plain RuntimeError raised in torch.distributed's
        # frame: the shape of a gloo "Connection closed by peer" (the real one: the killed-rank test)
        in_collective = _raised(lambda: dist.all_gather([torch.ones(3)], torch.ones(2)))
    message = lost_peer_message(in_collective, world)
    assert message.startswith("rank 1 of 2: a collective failed, so another rank died or stopped responding "
                              "(process-group timeout 30 s)")
    assert message.endswith("Cause: RuntimeError: ProcessGroupGloo::allgather: invalid tensor size at index 0 "
                            "(expected (2), got (3))")
    assert lost_peer_message(dist.DistNetworkError("store gone"), world).endswith("DistNetworkError: store gone")

    def words_only():
        raise RuntimeError("Connection reset by peer: socket timeout")  # raised here, not in a collective
    assert lost_peer_message(_raised(words_only), world) is None
    assert lost_peer_message(_raised(lambda: int("timeout")), world) is None  # ValueError: any text, not a peer
    assert lost_peer_message(in_collective, World(0, 1, 0, torch.device("cpu"), "gloo", 30)) is None  # no peers


def test_a_timeout_in_ddps_buffer_broadcast_is_a_lost_peer():
    # DDP's forward broadcasts the module's buffers from torch/nn/parallel/distributed.py straight into C++; a
    # frozen peer times it out there ("Timed out waiting 5000ms for send operation"): that frame, as torch has it
    world = World(0, 2, 0, torch.device("cpu"), "gloo", 5)
    ddp_file = inspect.getsourcefile(torch.nn.parallel.DistributedDataParallel)
    assert ddp_file.endswith(os.path.join("torch", "nn", "parallel", "distributed.py"))
    from_ddp = _raised(lambda: exec(compile("raise RuntimeError('Timed out waiting 5000ms for send operation')",
                                            ddp_file, "exec")))
    assert lost_peer_message(from_ddp, world).endswith("Cause: RuntimeError: Timed out waiting 5000ms for send operation")
    elsewhere = _raised(lambda: exec(compile("raise RuntimeError('x')", os.path.join("torch", "nn", "modules", "a.py"),
                                             "exec")))
    assert lost_peer_message(elsewhere, world) is None  # torch.nn outside DDP's module: not a collective


def test_an_unrelated_error_with_peer_words_keeps_its_traceback(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="socket timeout") as caught, launch.session(timeout_s=5, device="cpu"):
        raise RuntimeError("socket timeout in my data loader")
    assert caught.traceback[-1].name == "test_an_unrelated_error_with_peer_words_keeps_its_traceback"


def test_srun_tasks_become_ranks_of_one_world():
    task = dict(SLURM_PROCID="3", SLURM_NTASKS="4", SLURM_LOCALID="1", SLURM_NNODES="1", SLURM_JOB_ID="123456")
    assert launch.from_slurm(task) and task["RANK"] == "3" and task["WORLD_SIZE"] == "4" and task["LOCAL_RANK"] == "1"
    assert (task["MASTER_ADDR"], task["MASTER_PORT"]) == ("127.0.0.1", str(20000 + 123456 % 20000))
    other = {k: v for k, v in task.items() if k.startswith("SLURM")} | {"SLURM_JOB_ID": "123457"}
    assert launch.from_slurm(other) and other["MASTER_PORT"] != task["MASTER_PORT"]  # another job, another port
    # torchrun under srun (the sbatch template): the launcher's variables win
    under_torchrun = dict(task, RANK="5", WORLD_SIZE="16", LOCAL_RANK="5", MASTER_ADDR="n1", MASTER_PORT="29500")
    assert not launch.from_slurm(under_torchrun) and under_torchrun["RANK"] == "5"
    single = dict(SLURM_PROCID="0", SLURM_NTASKS="1", SLURM_LOCALID="0")
    assert not launch.from_slurm(single) and "RANK" not in single  # one task: a plain world of one
    two_nodes = dict(SLURM_PROCID="0", SLURM_NTASKS="16", SLURM_LOCALID="0", SLURM_NNODES="2")
    with pytest.raises(ValueError, match=r"srun started 16 tasks on 2 nodes but MASTER_ADDR is not set: run "
                                         r"`export MASTER_ADDR=\$\(scontrol show hostnames"):
        launch.from_slurm(two_nodes)
    assert launch.from_slurm(dict(two_nodes, MASTER_ADDR="node7"))


def test_decoder_layers_and_bad_engines():
    model = models.build("tiny", 64)
    layers = engines.decoder_layers(model)
    assert len(layers) == model.config.num_hidden_layers and layers[0] is model.model.layers[0]
    with pytest.raises(ValueError, match=r"found no decoder layers in Linear \(classes named in _no_split_modules: none\)"):
        engines.decoder_layers(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="wrap handles engines none, ddp and fsdp2, got 'zero'"):
        engines.wrap(model, "zero", World(0, 1, 0, torch.device("cpu"), "gloo", 30))


def test_full_value_gathers_a_dtensor_and_passes_a_plain_tensor_through(monkeypatch):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    plain = torch.ones(2)
    assert engines.full_value(plain) is plain
    with launch.session(timeout_s=5, device="cpu"):
        whole = torch.arange(6.0).reshape(3, 2)
        shard = distribute_tensor(whole, init_device_mesh("cpu", (1,)), [Shard(0)])
        norm = torch.linalg.vector_norm(shard)  # what clip_grad_norm_ returns under FSDP2: a DTensor
        assert isinstance(norm, DTensor)
        for value, expected in ((shard, whole), (norm, torch.tensor(55.0).sqrt())):
            out = engines.full_value(value)
            assert type(out) is torch.Tensor and torch.equal(out, expected)
