"""cookbook.scale.launch (a world of one in this process) and cookbook.scale.engines (what can be checked on one rank)."""

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


def test_lost_peer_message_explains_communication_failures_only():
    world = World(1, 2, 1, torch.device("cpu"), "gloo", 30)
    gloo = RuntimeError("[pair.cc:537] Read error [127.0.0.1]:5017: Connection reset by peer. This is typically ...")
    message = lost_peer_message(gloo, world)
    assert message.startswith("rank 1 of 2: a collective failed, so another rank died or stopped responding "
                              "(process-group timeout 30 s)")
    assert message.endswith("Cause: RuntimeError: [pair.cc:537] Read error [127.0.0.1]:5017: Connection reset by "
                            "peer. This is typically ...")
    assert lost_peer_message(ValueError("bad shape"), world) is None
    assert lost_peer_message(gloo, World(0, 1, 0, torch.device("cpu"), "gloo", 30)) is None  # no peers to lose


def test_decoder_layers_and_bad_engines():
    model = models.build("tiny", 64)
    layers = engines.decoder_layers(model)
    assert len(layers) == model.config.num_hidden_layers and layers[0] is model.model.layers[0]
    with pytest.raises(ValueError, match=r"found no decoder layers in Linear \(classes named in _no_split_modules: none\)"):
        engines.decoder_layers(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="wrap handles engines none, ddp and fsdp2, got 'zero'"):
        engines.wrap(model, "zero", World(0, 1, 0, torch.device("cpu"), "gloo", 30))
