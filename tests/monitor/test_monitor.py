"""TrainingMonitor: each alert fires on a crafted failure in a real loop, never on a healthy run."""

import json
import math

import datasets
import pytest
import torch
from torch import nn

from cookbook import checkpoint, models, profiles, train
from cookbook.data import corpus, tokenizer
from cookbook.monitor import NonFiniteError, TrainingAlertWarning, TrainingMonitor, failures
from cookbook.train.memory import set_checkpointing
from tests.monitor.loops import data, healthy_loop, mlp, sgd_until_stopped, token_loaders


def test_healthy_run_raises_no_alert():
    mon = healthy_loop(mlp(), steps=60)
    assert mon.alerts == []
    assert mon.summary()["steps"] == 60 and not mon.should_stop
    history = mon.history
    assert history["loss"].iloc[-5:].mean() < 0.5 * history["loss"].iloc[:5].mean()
    assert (history["tokens_per_s"].dropna() > 0).all()


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


def test_exploding_fires_on_a_gradient_norm_jump_in_a_real_loop():
    mon = TrainingMonitor(hardware=False, stop_on=("exploding",))
    # a corrupt batch at step 25: targets 1000x off
    step = sgd_until_stopped(mlp(), mon, lr=1e-3, target_scale=lambda s: 1000.0 if s == 25 else 1.0)
    assert [(a.kind, a.step) for a in mon.alerts] == [("loss_spike", 25), ("diverging", 25), ("exploding", 25)]
    assert step == 25 and "exploding" in mon.stop_reason


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
    assert set(load.layer) == {"layers.1"}  # the same label as the per-layer gradient norms' block
    assert "layers.1.mlp" in mon.layer_grad_norms.columns
    assert [(a.kind, a.step) for a in mon.alerts] == [("imbalance", 1)]  # patience 2: steps 0 and 1
    assert mon.history["max_vio"].tolist() == [3.0, 3.0, 3.0]  # 32 of 64 slots on one of 8 experts: 4x the fair 8


def test_monitor_on_its_own_loop_does_not_count_padding():
    """A 3-token and a 30-token sequence, right-padded: 33 real tokens x top-2 = 66 routing slots, not 120."""
    model = models.build("tiny", 64)
    gen = torch.Generator().manual_seed(0)
    batch = train.pad_batch([torch.randint(2, 64, (n,), generator=gen).tolist() for n in (3, 30)])
    mon = TrainingMonitor(hardware=False).watch(model)
    for step in range(2):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        mon.step(model, loss, step=step)
    model.eval()
    with torch.no_grad():
        model(**batch)  # an evaluation pass is not counted
    mon.close()
    assert mon.expert_load.groupby("step").tokens.sum().tolist() == [66, 66]


def test_expert_load_is_counted_once_under_gradient_checkpointing():
    model = models.build("tiny", 64)
    set_checkpointing(model, True)  # the cookbook's switch: transformers 5.17-5.20 name the method differently
    model.train()
    mon = TrainingMonitor(hardware=False).watch(model)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()  # recomputes the MoE layer's forward inside backward
    mon.step(model, loss, step=0)
    assert mon.expert_load.tokens.sum() == 2 * 16 * 2


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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(stop_on=("boom",)), "unknown alert kind"),
        (dict(layer_every=0), "layer_every must be a positive int"),
        (dict(vanish_patience=0), "vanish_patience must be a positive int"),
        (dict(spike_window=10, spike_min_points=11), "spike_min_points"),
        (dict(vanish_threshold=0), "vanishing threshold must be > 0"),
        (dict(patience=0), "patience must be a positive int"),
        (dict(min_delta=-0.1), "min_delta must be >= 0"),
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
    """The smoke model on the stdlib corpus with the Trainer's defaults: nothing fires except a routing imbalance
    that the trainer's own load balancer measures too (a second count of the same routing).

    That imbalance is real: within ~8 steps the router inputs of every MoE layer turn nearly identical for all
    tokens (cosine to their mean 0.2 -> 0.99, whatever the router's learning rate), so no router can tell the
    tokens apart until the representations differentiate again.
    """
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
                               device="cpu")
    trainer = train.Trainer(model, train_loader, val_loader, config, callbacks=[mon])
    history = trainer.fit()
    assert history["loss"].iloc[-3:].mean() < history["loss"].iloc[:3].mean() - 0.5  # it learns
    assert {a.kind for a in mon.alerts} <= {"imbalance"}, mon.alerts_frame()
    logged = {int(r.step): r.expert_load for r in history.itertuples()}
    for alert in mon.alerts:  # the trainer's balancer sees the same collapse
        assert models.max_violation(logged[alert.step]).max().item() > mon.imbalance.threshold
    load = mon.expert_load
    assert sorted(set(load.layer)) == ["layers.1", "layers.2", "layers.3"]
    for step in (1, 10, 20):  # the monitor's counts are the trainer's, exactly
        counts = load[load.step == step].pivot(index="layer", columns="expert", values="tokens")
        shares = counts.div(counts.sum(axis=1), axis=0).to_numpy()
        assert shares == pytest.approx(logged[step], abs=1e-4)
        assert mon.history.set_index("step").loc[step, "max_vio"] == pytest.approx(
            models.max_violation(counts).max().item())
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
