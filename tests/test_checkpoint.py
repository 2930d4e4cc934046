"""Checkpoints: one safetensors file, atomic, checksummed, never pickled; every bad file is a CheckpointError."""

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cookbook import checkpoint


def _setup(seed=0, hidden=8):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    return model, optimizer, scheduler


def _train(model, optimizer, scheduler, steps=3):
    for _ in range(steps):
        loss = model(torch.randn(5, 4)).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()


def _saved(folder: Path, step: int = 3, seed: int = 0) -> Path:
    model, optimizer, scheduler = _setup(seed)
    _train(model, optimizer, scheduler, steps=step)
    return checkpoint.save(folder / f"step-{step:06d}", model, optimizer, scheduler, state={"step": step})


def _draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


# ------------------------------------------------------------------------------------------ round trip
def test_round_trip_restores_weights_optimizer_scheduler_and_every_rng(tmp_path):
    model, optimizer, scheduler = _setup(0)
    _train(model, optimizer, scheduler)
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    path = checkpoint.save(tmp_path / "step-000003", model, optimizer, scheduler, state={"step": 3, "note": "x"})
    expected_draws = _draws()

    fresh, fresh_opt, fresh_sched = _setup(seed=1)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    assert checkpoint.load(path, fresh, fresh_opt, fresh_sched) == {"step": 3, "note": "x"}
    assert _draws() == expected_draws  # torch, numpy and python RNGs continue where the saved run was
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
    saved_state, loaded_state = optimizer.state_dict(), fresh_opt.state_dict()
    for index, entries in saved_state["state"].items():
        for name, value in entries.items():
            assert torch.equal(loaded_state["state"][index][name], value)
    assert loaded_state["param_groups"][0]["betas"] == saved_state["param_groups"][0]["betas"]
    assert fresh_sched.last_epoch == scheduler.last_epoch == 3
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr()


def test_checkpoint_is_one_safetensors_file_without_pickle(tmp_path):
    path = _saved(tmp_path)
    assert path == tmp_path / "step-000003.safetensors" and sorted(tmp_path.iterdir()) == [path]
    with safe_open(str(path), "pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
    assert {"model/0.weight", "model/2.bias", "rng/torch", "rng/numpy", "optimizer/0/exp_avg"} <= keys
    assert metadata["format"] == checkpoint.FORMAT and json.loads(metadata["state"])["state"] == {"step": 3}
    assert path.read_bytes()[8:9] == b"{"  # safetensors: a length, a JSON header, raw tensor bytes; no pickle


def test_crash_during_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    good = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    model, optimizer, scheduler = _setup()
    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, model, optimizer, scheduler)
    assert path.read_bytes() == good and not list(tmp_path.glob(".*tmp*"))


# ------------------------------------------------------------------------------------- bad files
def _corrupt_tensor_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # a byte inside the tensor data: safetensors itself would not notice
    path.write_bytes(bytes(data))


def test_truncated_or_corrupt_checkpoint_is_a_clear_error_and_the_folder_falls_back(tmp_path):
    older, newer = _saved(tmp_path, step=2), _saved(tmp_path, step=4)
    model, optimizer, scheduler = _setup(seed=5)
    data = newer.read_bytes()
    newer.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupt"):
        checkpoint.load(newer, model, optimizer, scheduler)
    newer.write_bytes(data)
    _corrupt_tensor_byte(newer)
    with pytest.raises(checkpoint.CheckpointError, match="checksum"):
        checkpoint.load(newer, model, optimizer, scheduler)
    with pytest.warns(UserWarning, match=f"falling back to {older.name}"):
        assert checkpoint.load(tmp_path, model, optimizer, scheduler) == {"step": 2}


def _digest(tensors: dict, state_json: str) -> str:
    """The checksum `save` writes, computed here independently: SHA-256 of the JSON, then name + bytes."""
    digest = hashlib.sha256(state_json.encode())
    for key in sorted(tensors):
        digest.update(key.encode() + tensors[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def _write(path: Path, tensors: dict, metadata: dict) -> Path:
    save_file(tensors, str(path), metadata=metadata)
    return path


def _rewrite(source: Path, target: Path, edit_header=None, edit_tensors=None, raw_state=None, drop=()) -> Path:
    """A copy of a good checkpoint with one thing broken, and a checksum that matches what was written."""
    with safe_open(str(source), "pt") as f:
        tensors, header = {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["state"])
    if edit_header:
        edit_header(header)
    if edit_tensors:
        edit_tensors(tensors)
    state_json = json.dumps(header) if raw_state is None else raw_state
    metadata = {"format": checkpoint.FORMAT, "state": state_json, "sha256": _digest(tensors, state_json)}
    return _write(target, tensors, {k: v for k, v in metadata.items() if k not in drop})


def _rename(tensors, old, new):
    tensors[new] = tensors.pop(old)


MALFORMED = {
    "format tag but no state": dict(drop=("state", "sha256")),
    "no checksum": dict(drop=("sha256",)),
    "state is not JSON": dict(raw_state="{not json"),
    "state is a JSON list": dict(raw_state="[1, 2]"),
    "no trainer state": dict(edit_header=lambda h: h.pop("state")),
    "trainer state is a list": dict(edit_header=lambda h: h.update(state=[3])),
    "no RNG state": dict(edit_header=lambda h: h.pop("rng")),
    "numpy RNG state too short": dict(edit_header=lambda h: h["rng"].update(numpy=["MT19937", 0])),
    "python RNG state is a string": dict(edit_header=lambda h: h["rng"].update(python="state")),
    "param_groups is an object": dict(edit_header=lambda h: h.update(param_groups={"lr": 1})),
    "param group without params": dict(edit_header=lambda h: h["param_groups"][0].pop("params")),
    "scheduler is a list": dict(edit_header=lambda h: h.update(scheduler=[1])),
    "optimizer tensors but no param_groups": dict(edit_header=lambda h: h.pop("param_groups")),
    "missing torch RNG tensor": dict(edit_tensors=lambda t: t.pop("rng/torch")),
    "missing numpy RNG tensor": dict(edit_tensors=lambda t: t.pop("rng/numpy")),
    "optimizer tensor with a bad name": dict(edit_tensors=lambda t: _rename(t, "optimizer/0/exp_avg",
                                                                            "optimizer/zero/exp_avg")),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_every_malformed_checkpoint_is_a_checkpoint_error_and_the_folder_falls_back(tmp_path, case):
    older = _saved(tmp_path, step=2)
    newest = _rewrite(_saved(tmp_path / "src", step=4), tmp_path / "step-000004.safetensors", **MALFORMED[case])
    model, optimizer, scheduler = _setup(seed=5)
    with pytest.raises(checkpoint.CheckpointError, match="malformed|corrupt"):
        checkpoint.read(newest)
    with pytest.raises(checkpoint.CheckpointError, match=str(newest)):
        checkpoint.load(newest, model, optimizer, scheduler)
    with pytest.warns(UserWarning, match=f"falling back to {older.name}"):
        assert checkpoint.load(tmp_path, model, optimizer, scheduler) == {"step": 2}


def test_an_unmodified_rewrite_is_accepted(tmp_path):  # so the malformed cases above fail for their own reason
    good = _rewrite(_saved(tmp_path / "src"), tmp_path / "step-000003.safetensors")
    tensors, header = checkpoint.read(good)
    assert header["state"] == {"step": 3} and "rng/torch" in tensors


def test_checkpoint_from_another_model_optimizer_or_format_is_rejected(tmp_path):
    path = _saved(tmp_path)
    wider, wider_opt, _ = _setup(hidden=16)
    with pytest.raises(checkpoint.CheckpointError, match="does not fit this model"):
        checkpoint.load(path, wider)
    model, _, _ = _setup()
    two_groups = torch.optim.AdamW([{"params": [model[0].weight]}, {"params": [model[0].bias]}])
    with pytest.raises(checkpoint.CheckpointError, match="does not fit this optimizer"):
        checkpoint.load(path, model, two_groups)
    with pytest.raises(checkpoint.CheckpointError, match="saved without a loss scaler"):
        checkpoint.load(path, model, scaler=torch.amp.GradScaler("cpu"))
    bare = checkpoint.save(tmp_path / "bare", model)
    with pytest.raises(checkpoint.CheckpointError, match="has no optimizer state"):
        checkpoint.load(bare, model, wider_opt)
    plain = _write(tmp_path / "plain.safetensors", {"x": torch.zeros(2)}, {})
    with pytest.raises(checkpoint.CheckpointError, match="not a cookbook-checkpoint"):
        checkpoint.load(plain, model)
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "missing.safetensors", model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no step-"):
        checkpoint.load(tmp_path / "empty", model)


def test_loss_scaler_state_travels(tmp_path):
    model, optimizer, scheduler = _setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=128.0)
    path = checkpoint.save(tmp_path / "step-000001", model, optimizer, scheduler, scaler)
    other = torch.amp.GradScaler("cpu", init_scale=2.0)
    checkpoint.load(path, model, optimizer, scheduler, other)
    assert other.get_scale() == 128.0


# ------------------------------------------------------------------------------------ finding them
def test_latest_checkpoints_and_prune_order_by_step_number(tmp_path):
    assert checkpoint.latest(tmp_path) is None and checkpoint.checkpoints(tmp_path) == []
    for step in (1, 2, 10, 9):
        (tmp_path / f"step-{step}.safetensors").write_bytes(b"")
    (tmp_path / ".step-11.safetensors.tmp-1").write_bytes(b"")  # a save in progress is not a checkpoint
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == [
        "step-10.safetensors", "step-9.safetensors", "step-2.safetensors", "step-1.safetensors"]
    assert checkpoint.latest(tmp_path) == tmp_path / "step-10.safetensors"  # 10 > 9, not text order
    removed = checkpoint.prune(tmp_path, keep=2)
    assert [p.name for p in removed] == ["step-2.safetensors", "step-1.safetensors"]
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == ["step-10.safetensors", "step-9.safetensors"]
    with pytest.raises(ValueError, match="keep"):
        checkpoint.prune(tmp_path, keep=0)
