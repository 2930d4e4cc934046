"""The NaN guard: it stops before the bad update and leaves the last good state loadable."""

import math

import pytest
import torch
from torch import nn

from cookbook import checkpoint
from cookbook.monitor import NonFiniteError, TrainingMonitor
from cookbook.monitor.guard import save_last_good
from tests.monitor.loops import data, mlp


def test_nan_loss_stops_and_saves_the_last_good_weights(tmp_path):
    model = mlp()
    x, y = data()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mon = TrainingMonitor(hardware=False, checkpoint_dir=tmp_path)
    with pytest.raises(NonFiniteError, match="non-finite loss") as info:
        for step in range(10):
            loss = nn.functional.mse_loss(model(x), y) * (math.nan if step == 4 else 1.0)
            loss.backward()
            mon.step(model, loss, step=step, optimizer=opt)
            opt.step()
            opt.zero_grad()
    assert step == 4 and mon.should_stop and mon.alerts[-1].kind == "nan"
    saved = info.value.checkpoint
    assert saved == tmp_path / "last-good-step-3.safetensors" and str(saved) in str(info.value)
    fresh = mlp(seed=1)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    assert checkpoint.load(saved, fresh, fresh_opt)["step"] == 3
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the weights after step 3, untouched by the NaN step
    assert fresh_opt.state_dict()["state"][0]["step"] == 4  # and the optimizer state of those 4 updates


def test_nan_gradient_without_scaler_is_fatal_but_with_scaler_is_a_skip(tmp_path):
    model = mlp()
    x, y = data()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    model[0].weight.grad[0, 0] = math.inf
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    mon = TrainingMonitor(hardware=False, overflow_patience=2)
    mon.step(model, loss, step=0, scaler=scaler)  # the scaler will skip it: not a NaN run
    mon.step(model, loss, step=1, scaler=scaler)
    assert [a.kind for a in mon.alerts] == ["overflow"]
    assert mon.history["skipped"].tolist() == [True, True] and mon.history["scale"].iloc[0] == 1024.0
    with pytest.raises(NonFiniteError, match=r"non-finite gradients \(in 0\)"):
        TrainingMonitor(hardware=False, checkpoint_dir=tmp_path).step(model, loss, step=0)


def test_nan_guard_refuses_to_save_already_broken_weights(tmp_path):
    model = mlp()
    with torch.no_grad():
        model[0].weight[0, 0] = math.nan
    loss = model(data()[0]).mean()
    loss.backward()
    with pytest.raises(NonFiniteError, match="already non-finite") as info:
        TrainingMonitor(hardware=False, checkpoint_dir=tmp_path).step(model, loss, step=0)
    assert info.value.checkpoint is None and not any(tmp_path.iterdir())


def test_a_failed_save_is_reported_not_raised(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    saved, note = save_last_good(blocker, 3, mlp())
    assert saved is None and note.startswith("saving the last good state failed")
    saved, note = save_last_good(tmp_path, 3, mlp())
    assert saved == tmp_path / "last-good-step-3.safetensors" and note == "" and saved.exists()
