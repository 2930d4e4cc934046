"""TrainingMonitor, its alert rules, sinks and live view: each alert fires on a crafted signal, not on a healthy run."""

import json
import math
import warnings

import pandas as pd
import pytest
import torch
from torch import nn

from cookbook import checkpoint, models, train
from cookbook.monitor import (
    NonFiniteError,
    TrainingAlertWarning,
    TrainingMonitor,
    failures,
    layer_of,
    live,
    rules,
    sinks,
)
from cookbook.monitor.live import LiveView, key_numbers


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrainingAlertWarning)
        yield


def mlp(seed=0, depth=3, width=16, act=nn.Tanh):
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def data(seed=0, n=64, width=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g)
    return x, x[:, :1] * 2 - x[:, 1:2]


def healthy_loop(model, steps=40, lr=1e-2, mon=None, **kwargs):
    """Plain regression training with the monitor between backward and optimizer.step."""
    mon = mon or TrainingMonitor(hardware=False, **kwargs)
    x, y = data()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        mon.step(model, loss, step=step, optimizer=opt, tokens=len(x))
        opt.step()
        opt.zero_grad()
    return mon


def sgd_until_stopped(model, mon, lr, target_scale=lambda step: 1.0, steps=30):
    """SGD regression with the monitor in the loop, stopping when it asks; returns the last step."""
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(steps):
        loss = nn.functional.mse_loss(model(x), y * target_scale(step))
        loss.backward()
        mon.step(model, loss, step=step, optimizer=opt)
        opt.step()
        opt.zero_grad()
        if mon.should_stop:
            break
    return step


# ------------------------------------------------------------------------------------------ statistics
def test_layer_of_groups_parameters_by_block():
    assert layer_of("model.layers.3.self_attn.q_a_proj.weight") == "layers.3.self_attn"
    assert layer_of("model.layers.3.mlp.experts.gate_up_proj") == "layers.3.mlp"
    assert layer_of("model.layers.0.post_attention_layernorm.weight") == "layers.0.norm"
    assert layer_of("model.embed_tokens.weight") == "embed_tokens"
    assert layer_of("lm_head.weight") == "lm_head"
    assert layer_of("4.bias") == "4"
    assert layer_of("transformer.h.11.attn.c_attn.weight") == "h.11.attn"


def test_grad_norms_match_clip_grad_norm_and_hand_computation():
    model = mlp()
    x, y = data()
    nn.functional.mse_loss(model(x), y).backward()
    mon = TrainingMonitor(hardware=False)
    mon.step(model, torch.tensor(1.0), step=0)
    reference = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf).item()
    assert mon.history.loc[0, "grad_norm"] == pytest.approx(reference, rel=1e-6)
    layers = mon.layer_grad_norms.loc[0]
    for index in ("0", "2", "6"):
        module = model[int(index)]
        expected = math.sqrt(module.weight.grad.square().sum().item() + module.bias.grad.square().sum().item())
        assert layers[index] == pytest.approx(expected, rel=1e-6)
    assert list(layers.index) == ["0", "2", "4", "6"]  # activations have no parameters


def test_update_ratio_is_the_step_size_over_the_weight_norm():
    """Plain SGD moves each weight by lr * grad, so the ratio is lr * ||g|| / ||w|| exactly."""
    model, lr = mlp(), 0.05
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    mon = TrainingMonitor(hardware=False)
    flat = lambda tensors: torch.cat([t.flatten() for t in tensors])  # noqa: E731
    grads, weights, first = [], [], []
    for step in range(3):
        nn.functional.mse_loss(model(x), y).backward()
        grads.append(flat(p.grad for p in model.parameters()).clone())
        weights.append(flat(p.detach() for p in model.parameters()).clone())
        first.append((flat(p.grad for p in model[0].parameters()).norm(), flat(model[0].parameters()).norm()))
        mon.step(model, 1.0, step=step, optimizer=opt)
        opt.step()
        opt.zero_grad()
    history = mon.history.set_index("step")
    for step in (0, 1):  # a step's update is only seen at the next call
        expected = (lr * grads[step].norm() / weights[step].norm()).item()
        assert history.loc[step, "update_ratio"] == pytest.approx(expected, rel=1e-5)
        g, w = first[step]
        assert mon.update_ratios.loc[step, "0"] == pytest.approx((lr * g / w).item(), rel=1e-5)
    assert math.isnan(history.loc[2, "update_ratio"])
    assert history.loc[0, "lr"] == lr
    assert list(mon.update_ratios.columns) == ["0", "2", "4", "6"]


def test_healthy_run_raises_no_alert():
    mon = healthy_loop(mlp(), steps=60)
    assert mon.alerts == []
    assert mon.summary()["steps"] == 60 and not mon.should_stop
    history = mon.history
    assert history["loss"].iloc[-5:].mean() < 0.5 * history["loss"].iloc[:5].mean()
    assert (history["tokens_per_s"].dropna() > 0).all()


# ------------------------------------------------------------------------------------------ alert rules
def test_vanishing_fires_after_three_consecutive_small_norms_and_rearms():
    rule = rules.Vanishing(1e-6, 3)
    assert rule.update(0, {"(all)": 1e-7}) is None
    assert rule.update(1, {"(all)": 1e-7}) is None
    fired = rule.update(2, {"(all)": 5e-8})
    assert fired is not None and fired.kind == "vanishing" and fired.step == 2 and fired.value == 5e-8
    assert rule.update(3, {"(all)": 1e-8}) is None  # same episode: reported once
    assert rule.update(4, {"(all)": 1.0}) is None
    assert [rule.update(s, {"(all)": 0.0}) is not None for s in (5, 6, 7)] == [False, False, True]


def test_vanishing_interrupted_run_does_not_fire():
    rule = rules.Vanishing(1e-6, 3)
    results = [rule.update(s, {"(all)": v}) for s, v in enumerate([1e-7, 1e-7, 1e-3, 1e-7, 1e-7])]
    assert all(r is None for r in results)


def test_vanishing_caught_in_a_deep_saturating_stack():
    """Sigmoid layers with tiny weights shrink the gradient ~40x per layer: the first layers vanish."""
    torch.manual_seed(0)
    layers = []
    for _ in range(12):
        linear = nn.Linear(16, 16)
        nn.init.normal_(linear.weight, std=0.05)
        layers += [linear, nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(16, 1))
    mon = healthy_loop(model, steps=5)
    kinds = [a.kind for a in mon.alerts]
    assert kinds == ["vanishing"] and mon.alerts[0].step == 2
    assert "layers" in mon.alerts[0].message and "(0, 2, 4" in mon.alerts[0].message.replace("0, 2, 4", "(0, 2, 4")
    norms = mon.layer_grad_norms.iloc[-1]
    assert norms["0"] < 1e-6 < norms["24"]


def test_spike_rule_scores_against_the_window_and_ignores_flat_noise():
    rule = rules.Spike("loss_spike", window=10, z=6.0, floor=0.02, min_points=5)
    for step, value in enumerate([5.0, 4.9, 5.05, 4.95, 5.0, 4.98]):
        assert rule.update(step, value) is None
    # mean 4.98, std 0.046 -> floor 0.02*4.98 = 0.0996 wins: z = (6 - 4.98) / 0.0996 = 10.2
    assert rule.score(6.0) == pytest.approx((6.0 - 4.98) / (0.02 * 4.98), rel=1e-3)
    fired = rule.update(6, 6.0)
    assert fired.kind == "loss_spike" and fired.step == 6
    assert rules.Spike("loss_spike", min_points=5).update(0, 100.0) is None  # too little history to judge


def test_exploding_fires_on_a_gradient_norm_jump_in_a_real_loop():
    mon = TrainingMonitor(hardware=False, stop_on=("exploding",))
    # a corrupt batch at step 25: targets 1000x off
    step = sgd_until_stopped(mlp(), mon, lr=1e-3, target_scale=lambda s: 1000.0 if s == 25 else 1.0)
    assert [(a.kind, a.step) for a in mon.alerts] == [("loss_spike", 25), ("diverging", 25), ("exploding", 25)]
    assert step == 25 and "exploding" in mon.stop_reason


def test_gradient_spikes_are_scored_in_decades_with_a_floor():
    rule = rules.Spike("exploding", window=10, z=6.0, floor=0.1, min_points=3, log=True)
    for step, value in enumerate([1.0, 1.0, 1.0]):
        assert rule.update(step, value) is None
    # a flat history: the spread is floored at 0.1 decade, so x3.9 (0.59 decade) is z = 5.9: no alarm ...
    assert rule.score(3.9) == pytest.approx(math.log10(3.9) / 0.1)
    assert rule.update(3, 3.9) is None
    # ... but x100 is far outside it
    assert rule.update(4, 100.0).kind == "exploding"


def test_divergence_fires_when_the_smoothed_loss_climbs_back_up():
    rule = rules.Divergence(ratio=0.1, weight=0.5, min_points=3)
    falling = [8.0, 7.0, 6.5, 6.4, 6.6, 6.3, 6.2]  # noisy but converging: never 10% above the best
    assert all(rule.update(s, v) is None for s, v in enumerate(falling))
    fired = [rule.update(s, v) for s, v in enumerate([9.0, 9.5], start=7)]
    # by hand: EMA (weight 0.5, debiased) goes 6.40 -> 7.70 (+20% over the best, 6.40 at step 6)
    assert fired[0] is not None and fired[0].kind == "diverging" and fired[0].step == 7
    assert fired[0].threshold == pytest.approx(rule.best * 1.1) and fired[1] is None  # one alert per episode
    assert rules.Divergence().update(0, 100.0) is None  # one point: nothing to compare with


def test_too_high_learning_rate_is_caught_in_a_real_loop():
    mon = TrainingMonitor(hardware=False, stop_on=("diverging", "exploding", "loss_spike"))
    step = sgd_until_stopped(mlp(), mon, lr=0.5)  # far too high for this regression: it blows up
    assert mon.should_stop and step < 10 and mon.alerts[0].kind in {"diverging", "exploding", "loss_spike"}


def test_plateau_stops_on_overfitting_with_a_clear_reason():
    mon = TrainingMonitor(hardware=False, patience=2)
    model = mlp()
    x, y = data()
    for step, val in zip(range(0, 50, 10), [1.0, 0.8, 0.85, 0.9, 0.95], strict=True):
        for s in range(step, step + 10):  # training loss keeps falling
            model.zero_grad()
            loss = nn.functional.mse_loss(model(x), y) * (1 - s / 100)
            loss.backward()
            mon.step(model, loss, step=s)
        mon.evaluate(val, step=step + 9)
        if mon.should_stop:
            break
    assert [(a.kind, a.step) for a in mon.alerts] == [("stalled", 39)]
    assert "overfitting" in mon.stop_reason and mon.best_step == 19 and mon.best_val == 0.8
    assert mon.history.set_index("step").loc[19, "val_ppl"] == pytest.approx(math.exp(0.8))


def test_plateau_and_overflow_stay_quiet_while_things_are_fine():
    plateau = rules.Plateau(patience=2, min_delta=0.01)
    assert all(plateau.update(s, v) is None for s, v in enumerate([3.0, 2.5, 2.2, 2.1, 2.05]))
    assert plateau.update(5, 2.045) is None and plateau.update(6, 2.06).kind == "stalled"  # < min_delta is no gain
    overflow = rules.Overflow(patience=3)
    # GradScaler's normal rhythm: an occasional skipped step, then clean ones
    assert all(overflow.update(s, skipped) is None for s, skipped in enumerate([True, True, False, True, False]))
    assert [overflow.update(s, True) is not None for s in (5, 6, 7, 8)] == [False, False, True, False]


def test_imbalance_rule_uses_maxvio():
    assert rules.max_violation([10, 10, 10, 10]) == 0.0
    assert rules.max_violation([40, 0, 0, 0]) == 3.0
    rule = rules.Imbalance(threshold=1.0, patience=2)
    assert rule.update(0, {"layers.1": [25, 25, 25, 25]}) == (0.0, None)
    assert rule.update(1, {"layers.1": [70, 10, 10, 10]})[1] is None
    worst, fired = rule.update(2, {"layers.1": [10, 10, 10, 10], "layers.2": [70, 10, 10, 10]})
    assert worst == pytest.approx(1.8) and fired.kind == "imbalance" and "layers.2" in fired.message


def test_monitor_counts_expert_load_from_the_router_and_flags_collapse():
    model = models.build("tiny", 64)
    with torch.no_grad():  # force routing collapse: expert 3 wins every token through its correction bias
        model.model.layers[1].mlp.gate.e_score_correction_bias[3] = 10.0
    mon = TrainingMonitor(hardware=False, imbalance_threshold=1.0, imbalance_patience=2).watch(model)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    for step in range(3):
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        mon.step(model, loss, step=step)
    load = mon.expert_load
    first = load[load.step == 0]
    assert first.tokens.sum() == 2 * 16 * 2  # every token counted once per top-k choice
    assert first.set_index("expert").loc[3, "tokens"] == 32  # expert 3 got every token
    assert [(a.kind, a.step) for a in mon.alerts] == [("imbalance", 1)]  # patience 2: steps 0 and 1


def test_expert_load_is_counted_once_under_gradient_checkpointing():
    model = models.build("tiny", 64)
    model.activation_checkpointing_enable({"use_reentrant": False})
    model.train()
    mon = TrainingMonitor(hardware=False).watch(model)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()  # recomputes the MoE layer's forward inside backward
    mon.step(model, loss, step=0)
    assert mon.expert_load.tokens.sum() == 2 * 16 * 2


# ------------------------------------------------------------------------------------------ NaN guard
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


class FakeTrainer:
    """The cookbook.train.Trainer surface the monitor uses."""

    def __init__(self, model):
        self.model, self.optimizer, self.scaler = model, torch.optim.SGD(model.parameters(), lr=0.01), None
        self.step, self.should_stop, self.stop_reason, self.saved = 0, False, "", []

    def save_checkpoint(self, path):
        self.saved.append(path)
        torch.save(self.model.state_dict(), path)
        return path


def test_callback_protocol_with_a_fake_trainer(tmp_path):
    trainer = FakeTrainer(mlp())
    mon = TrainingMonitor(hardware=False, checkpoint_dir=tmp_path, patience=1)
    x, y = data()
    mon.on_train_begin(trainer)
    for _ in range(3):
        loss = nn.functional.mse_loss(trainer.model(x), y)
        loss.backward()
        mon.on_after_backward(trainer, loss.detach())
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        trainer.step += 1
        mon.on_step_end(trainer, {"step": trainer.step, "loss": 99.0, "tokens_per_s": 123.0, "skipped": 0,
                                  "expert_load": [[0.5, 0.5]]})
    mon.on_evaluate(trainer, {"step": 3, "val_loss": 1.0, "val_ppl": math.e})
    history = mon.history.set_index("step")
    assert list(history.index) == [1, 2, 3]
    assert history.loc[3, "tokens_per_s"] == 123.0 and history.loc[3, "loss"] != 99.0  # own loss wins
    assert "expert_load" not in history.columns  # non-scalars are not history columns
    mon.on_evaluate(trainer, {"step": 3, "val_loss": 1.5})
    assert trainer.should_stop and "validation loss" in trainer.stop_reason
    loss = nn.functional.mse_loss(trainer.model(x), y) * math.inf
    loss.backward()
    with pytest.raises(NonFiniteError):
        mon.on_after_backward(trainer, loss.detach())
    assert trainer.saved == [tmp_path / "last-good-step-3.safetensors"] and trainer.should_stop
    mon.on_train_end(trainer)  # closing twice is harmless


# ------------------------------------------------------------------------------------------ sinks
def test_jsonl_and_csv_sinks_hold_the_history(tmp_path):
    mon = healthy_loop(mlp(), steps=8, log_dir=tmp_path)
    mon.evaluate(0.5, step=7)
    mon.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["type"] == "step"]
    assert [r["step"] for r in steps] == list(range(8))
    assert steps[3]["loss"] == pytest.approx(mon.history.loc[3, "loss"])
    assert set(steps[3]["layer_grad_norm"]) == {"0", "2", "4", "6"}
    csv = pd.read_csv(tmp_path / "metrics.csv")
    assert csv["loss"].tolist() == pytest.approx(mon.history["loss"].tolist())
    assert csv.loc[7, "val_loss"] == 0.5 and csv["val_loss"].isna().sum() == 7  # header widened


def test_alerts_reach_the_sinks(tmp_path):
    rule_mon = TrainingMonitor(hardware=False, log_dir=tmp_path, patience=1)
    model = mlp()
    healthy_loop(model, steps=2, mon=rule_mon)
    rule_mon.evaluate(1.0)
    rule_mon.evaluate(2.0)
    rule_mon.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records if r["type"] == "alert"] == ["stalled"]
    assert pd.read_csv(tmp_path / "metrics.alerts.csv")["kind"].tolist() == ["stalled"]


def test_tensorboard_sink_writes_readable_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    mon = healthy_loop(mlp(), steps=5, log_dir=tmp_path, tensorboard=True)
    mon.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/grad_norm", "grad_norm/0"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(mon.history["loss"].tolist(), rel=1e-6)


def test_missing_tensorboard_gives_a_clear_message(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TrainingMonitor(log_dir=tmp_path, tensorboard=True)


def test_hardware_sample_reports_what_is_there():
    sample = sinks.sample_hardware()
    if not torch.cuda.is_available():
        assert not any(k.startswith(("cuda", "gpu")) for k in sample)
    psutil = pytest.importorskip("psutil")
    assert sample["rss_gb"] == pytest.approx(psutil.Process().memory_info().rss / 2**30, rel=0.2)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(stop_on=("boom",)), "unknown alert kind"),
        (dict(layer_every=0), "layer_every must be a positive int"),
        (dict(vanish_patience=0), "vanish_patience must be a positive int"),
        (dict(spike_window=10, spike_min_points=11), "spike_min_points"),
        (dict(vanish_threshold=0), "vanishing threshold must be > 0"),
        (dict(patience=0), "patience must be a positive int"),
        (dict(tensorboard=True), "needs a log_dir"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainingMonitor(**kwargs)


def test_model_without_trainable_parameters_is_rejected():
    model = mlp()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        TrainingMonitor().step(model, 1.0)


# ------------------------------------------------------------------------------------------ live view
def test_alert_warnings_point_at_the_callers_line():
    model = mlp()
    x, y = data()
    nn.functional.mse_loss(model(x), y).backward()
    mon = TrainingMonitor(hardware=False, patience=1)
    mon.step(model, 1.0)
    mon.evaluate(1.0)
    with pytest.warns(TrainingAlertWarning, match="stalled") as caught:
        mon.evaluate(2.0)
    assert caught[0].filename == __file__


def test_live_view_prints_text_outside_jupyter(capsys):
    view = LiveView(notebook=False, text_every_s=0.0, progress=False)
    mon = healthy_loop(mlp(), steps=3)
    mon.evaluate(0.7)
    view.update(mon)
    view.close(mon)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and out[0].startswith("step=2  loss=") and "val loss=0.7" in out[0]
    numbers = key_numbers(mon)
    assert numbers["step"] == 2 and numbers["alerts"] == 0 and numbers["val loss"] == 0.7


def test_live_view_updates_one_display_in_jupyter(monkeypatch):
    shown = []

    class Handle:
        def __init__(self, obj):
            shown.append(("display", type(obj).__name__))

        def update(self, obj):
            shown.append(("update", type(obj).__name__))

    monkeypatch.setattr(live, "display", lambda obj, display_id=None: Handle(obj))
    mon = TrainingMonitor(hardware=False)
    mon.live = LiveView(mon, notebook=True, every_s=0.0, progress=False)
    healthy_loop(mlp(), steps=3, mon=mon)
    mon.close()
    assert shown[:2] == [("display", "Figure"), ("display", "HTML")]
    assert shown[2:] == [("update", "Figure"), ("update", "HTML")] * 3  # 2 more steps + the final draw


# ------------------------------------------------------------------------------------------ with the real Trainer
def token_loaders(n=48, seq=32, vocab=128, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq), generator=g)
    train_set = torch.utils.data.TensorDataset(ids)
    as_batch = lambda rows: {"input_ids": torch.stack([r[0] for r in rows])}  # noqa: E731
    return (torch.utils.data.DataLoader(train_set, batch_size=batch, shuffle=True, collate_fn=as_batch, generator=g),
            torch.utils.data.DataLoader(train_set, batch_size=batch, collate_fn=as_batch))


def test_trainer_integration_vanishing_stack():
    train_loader, val_loader = token_loaders()
    model = failures.SaturatingLM(128, depth=12, width=16)
    mon = TrainingMonitor(hardware=False, stop_on=("vanishing",))
    config = train.TrainConfig(steps=10, lr=1e-3, log_interval=1, progress=False, device="cpu")
    trainer = train.Trainer(model, train_loader, None, config, callbacks=[mon])
    history = trainer.fit()
    assert [(a.kind, a.step) for a in mon.alerts] == [("vanishing", 3)]  # steps 1, 2, 3 below 1e-6
    assert trainer.step == 3 and "vanishing" in trainer.stop_reason
    assert len(history) == 3 and mon.history["step"].tolist() == [1, 2, 3]
    assert mon.history["grad_norm"].tolist() == pytest.approx(history["grad_norm"].tolist(), rel=1e-5)
    norms = mon.layer_grad_norms.iloc[-1]
    assert norms["embed"] < 1e-6 and norms["layers.0"] < 1e-6 < norms["head"]


def test_trainer_nan_guard_leaves_a_loadable_last_good_checkpoint(tmp_path):
    """fp16 with an unsafe scaler: the growing scale overflows; the monitor saves the state before that step."""
    train_loader, val_loader = token_loaders()
    model = models.build("tiny", 128)
    mon = TrainingMonitor(hardware=False, checkpoint_dir=tmp_path)
    config = train.TrainConfig(steps=30, lr=1e-3, precision="fp16", log_interval=1, progress=False, device="cpu")
    trainer = train.Trainer(model, train_loader, val_loader, config, callbacks=[mon])
    trainer.scaler = failures.UnsafeLossScaler(init_scale=2.0**14, growth=4.0)
    before = {}
    mon.on_after_backward = (lambda original: lambda t, loss: (before.update(
        {k: v.clone() for k, v in t.model.state_dict().items()}), original(t, loss)))(mon.on_after_backward)
    with pytest.raises(NonFiniteError, match="non-finite gradients") as info:
        trainer.fit()
    bad_step = mon.alerts[-1].step
    assert mon.alerts[-1].kind == "nan" and bad_step == trainer.step + 1 > 1
    saved = info.value.checkpoint
    assert saved == tmp_path / f"last-good-step-{bad_step - 1}.safetensors"
    fresh = models.build("tiny", 128, seed=1)
    state = checkpoint.load(saved, fresh)
    assert state["step"] == bad_step - 1
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, before[name]), name  # exactly the weights the bad step would have damaged
        assert torch.isfinite(value).all()
    assert mon.history["scale"].tolist()[:3] == [2.0**14, 2.0**16, 2.0**18]


@pytest.mark.slow
def test_no_false_alarm_on_a_normal_run_of_the_smoke_model():
    """The smoke model on the stdlib corpus with the Trainer's defaults: nothing fires except a routing
    imbalance that the trainer's own load balancer measures too (an independent count of the same routing)."""
    import datasets

    from cookbook import profiles
    from cookbook.data import corpus, tokenizer

    datasets.disable_progress_bars()
    P = profiles.profile("smoke")
    ds = corpus.split(corpus.load(), 0.05, P.data.data_fraction)
    tok = tokenizer.trained(corpus.split(corpus.load(), 0.05, P.data.tokenizer_fraction)["train"], P.data.vocab_size)
    seq = P.data.seq_len // 2  # half-length blocks keep the test quick; the model and vocabulary are the profile's
    train_loader = train.loader(tokenizer.pack(ds["train"], tok, seq), P.train.batch_size)
    val_loader = train.loader(tokenizer.pack(ds["validation"], tok, seq), P.train.batch_size, shuffle=False)
    model = models.build(P.model.name, len(tok))
    mon = TrainingMonitor()
    config = train.TrainConfig(steps=20, lr=P.train.lr, eval_interval=10, eval_batches=2, log_interval=1, progress=False,
                               device="cpu", patience=None)
    trainer = train.Trainer(model, train_loader, val_loader, config, callbacks=[mon])
    history = trainer.fit()
    assert history["loss"].iloc[-3:].mean() < history["loss"].iloc[:3].mean() - 0.5  # it learns
    assert {a.kind for a in mon.alerts} <= {"imbalance"}, mon.alerts_frame()
    logged = {int(r.step): r.expert_load for r in history.itertuples()}
    load = mon.expert_load
    for alert in mon.alerts:
        trainer_vio = max(rules.max_violation(row) for row in logged[alert.step])
        assert trainer_vio > mon.imbalance.threshold  # the trainer's balancer sees the same collapse
    for step in (1, 10, 20):  # and the monitor's counts are the trainer's, exactly
        counts = load[load.step == step].pivot(index="layer", columns="expert", values="tokens")
        shares = counts.div(counts.sum(axis=1), axis=0).to_numpy()
        assert shares == pytest.approx(logged[step], abs=1e-4)
    assert mon.history["val_loss"].notna().sum() == 2 and not mon.should_stop


def test_one_monitor_follows_a_resumed_run(tmp_path):
    train_loader, _ = token_loaders()
    model = failures.SaturatingLM(128, depth=2, width=16)
    mon = TrainingMonitor(hardware=False, log_dir=tmp_path)
    trainer = train.Trainer(model, train_loader, None,
                            train.TrainConfig(steps=2, lr=1e-3, log_interval=1, progress=False, device="cpu"),
                            callbacks=[mon])
    trainer.fit()
    trainer.config.steps = 4  # train on: the same monitor keeps recording, hooks and logs reopen
    trainer.fit()
    assert mon.history["step"].tolist() == [1, 2, 3, 4] and mon.alerts == []
    logged = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_fp16_overflow_is_a_skip_and_memory_is_sampled():
    model = mlp().cuda()
    x, y = (t.cuda() for t in data())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**16)
    mon = TrainingMonitor()
    for step in range(4):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = nn.functional.mse_loss(model(x), y) * (1e6 if step == 2 else 1.0)  # step 2 overflows fp16
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        mon.step(model, loss, step=step, optimizer=opt, scaler=scaler)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    history = mon.history.set_index("step")
    assert history["skipped"].tolist() == [False, False, True, False]
    assert mon.summary()["nan"] == 0 and history.loc[3, "scale"] == 2.0**15  # halved after the skip
    assert history["cuda_mem_gb"].gt(0).all() and history["cuda_peak_gb"].ge(history["cuda_mem_gb"]).all()
