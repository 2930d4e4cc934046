"""Training-health monitor: gradient norms, update ratios, alerts, hardware and log sinks.

`TrainingMonitor` plugs into `cookbook.train.Trainer` as a callback, or into your own loop:

    monitor = TrainingMonitor(log_dir="runs/demo").watch(model)   # Trainer(..., callbacks=[monitor]) also works
    for step, batch in enumerate(loader):
        loss = model(**batch).loss
        loss.backward()
        monitor.step(model, loss, step=step, lr=scheduler.get_last_lr()[0], tokens=batch["input_ids"].numel())
        optimizer.step(); optimizer.zero_grad()
        if monitor.should_stop:
            break

Call `step()` once per optimizer step, after the last micro-batch's `backward()` (after `scaler.unscale_(optimizer)`
in fp16) and BEFORE `optimizer.step()`: the weights are then still the last good state, which is what the NaN
guard saves (a `cookbook.checkpoint` file) before it stops the run with `NonFiniteError`.
Alerts are structured `Alert` events (also shown as warnings): vanishing gradients, exploding gradients and
loss spikes (rolling z-score), a loss climbing back up (diverging), non-finite loss/gradients, a stalled
validation loss (`monitor.evaluate(val_loss)`), MoE expert imbalance. `monitor.close()` after your loop
writes the last row to the logs (the Trainer calls it for you).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from cookbook.checks import positive_int
from cookbook.models import LoadCounter, routers
from cookbook.monitor.guard import NonFiniteError, save_last_good
from cookbook.monitor.history import History
from cookbook.monitor.live import LiveView
from cookbook.monitor.rules import (
    ALERT_KINDS,
    Alert,
    Divergence,
    Imbalance,
    Overflow,
    Plateau,
    Spike,
    Vanishing,
)
from cookbook.monitor.sinks import CsvSink, JsonlSink, TensorBoardSink, sample_hardware
from cookbook.monitor.stats import GradientStats, layer_of

__all__ = ["TrainingAlertWarning", "TrainingMonitor"]


class TrainingAlertWarning(UserWarning):
    """The warning category of monitor alerts (filter it with `warnings.simplefilter`)."""


class TrainingMonitor:
    """Watches a training run's health; a `cookbook.train` callback and a helper for your own loop.

    Rules (see `cookbook.monitor.rules`; every threshold is an argument):
      vanishing: a layer's (or the whole model's) gradient norm below `vanish_threshold` for
        `vanish_patience` consecutive steps (the guide's rule: < 1e-6 for 3 steps).
      exploding / loss_spike: z-score of log10(grad norm) / loss against the previous `spike_window` steps
        above `spike_z` (spread floored at 0.1 decade / `spike_floor` x the mean loss, so a flat curve raises
        no alarm), from the `spike_min_points`-th step on.
      diverging: the EMA-smoothed loss more than `diverge_ratio` above its lowest value (non-convergence).
      nan: non-finite loss, or non-finite gradients without a GradScaler (with one, the scaler skips the
        step: counted as `skipped`, and `overflow` fires after `overflow_patience` skips in a row).
        Always stops: the last good weights are saved, then `NonFiniteError` is raised.
      stalled: validation loss not below its best by `min_delta` for `patience` evaluations (the `Plateau`
        rule, which the `EarlyStopping` callback also uses; `patience=None` turns it off).
      imbalance: an MoE layer's busiest expert above (1 + `imbalance_threshold`) x the fair share for
        `imbalance_patience` consecutive logged steps (DeepSeek-V3's MaxVio). Routed tokens are counted by
        `cookbook.models.LoadCounter` in training forwards, padding (attention_mask 0) left out.
    `stop_on` lists the kinds that also stop training gracefully (`should_stop`; the Trainer obeys it).
    Per-layer norms and update ratios (`cookbook.monitor.stats`) are measured every `layer_every` steps (the
    update ratio keeps one copy of the weights between two steps); the loss/gradient checks run every step
    with one host sync.
    """

    def __init__(self, *, vanish_threshold: float = 1e-6, vanish_patience: int = 3, spike_window: int = 20,
                 spike_z: float = 6.0, spike_floor: float = 0.02, spike_min_points: int = 3,
                 diverge_ratio: float = 0.1, patience: int | None = 3, min_delta: float = 0.0,
                 imbalance_threshold: float = 2.0, imbalance_patience: int = 3, overflow_patience: int = 10, max_grad_norm: float | None = 1.0,
                 stop_on: Iterable[str] = ("stalled",), layer_every: int = 1, track_experts: bool = True,
                 hardware: bool = True, log_dir: str | Path | None = None, tensorboard: bool = False,
                 sinks: Iterable = (), checkpoint_dir: str | Path | None = None, warn: bool = True,
                 live: bool = False, total: int | None = None, group: Callable[[str], str] = layer_of):
        self.stop_on = tuple([stop_on] if isinstance(stop_on, str) else stop_on)
        unknown = sorted(set(self.stop_on) - set(ALERT_KINDS))
        if unknown:
            raise ValueError(f"unknown alert kind(s) in stop_on: {unknown}; valid kinds: {', '.join(ALERT_KINDS)}")
        positive_int("layer_every", layer_every)
        self.vanishing = Vanishing(vanish_threshold, vanish_patience)
        self.loss_spike = Spike("loss_spike", spike_window, spike_z, spike_floor, spike_min_points)
        # gradient norms are scored in decades; a spread below 0.1 decade (x1.26) is treated as 0.1
        self.exploding = Spike("exploding", spike_window, spike_z, 0.1, spike_min_points, log=True)
        self.diverging = Divergence(diverge_ratio, min_points=spike_min_points)
        self.plateau = Plateau(patience, min_delta) if patience is not None else None
        self.imbalance = Imbalance(imbalance_threshold, imbalance_patience)
        self.overflow = Overflow(overflow_patience)
        self.max_grad_norm, self.layer_every, self.track_experts = max_grad_norm, layer_every, track_experts
        self.hardware, self.warn, self.group = hardware, warn, group
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.sinks = list(sinks)
        if self.log_dir is not None:
            self.sinks += [JsonlSink(self.log_dir / "metrics.jsonl"), CsvSink(self.log_dir / "metrics.csv")]
            if tensorboard:
                self.sinks.append(TensorBoardSink(self.log_dir / "tensorboard"))
        elif tensorboard:
            raise ValueError("tensorboard=True needs a log_dir to write the event files to")
        self.live = None
        if live:
            self.live = LiveView(self, total=total)

        self.alerts: list[Alert] = []
        self.should_stop, self.stop_reason = False, ""
        self.log = History(self.sinks)
        self._stats: GradientStats | None = None
        self._load: LoadCounter | None = None
        self._hooked = False
        self._last_step: int | None = None
        self._clock: float | None = None
        self._closed = False

    @property
    def best_val(self) -> float:
        return self.plateau.best if self.plateau else math.inf

    @property
    def best_step(self) -> int | None:
        return self.plateau.best_step if self.plateau else None

    def watch(self, model: torch.nn.Module) -> TrainingMonitor:
        """Attach to `model` before the first forward pass (else MoE routing is counted from the 2nd step)."""
        self._attach(model)
        return self

    # ------------------------------------------------------------------ the cookbook.train callback protocol
    def on_train_begin(self, trainer) -> None:
        self._attach(trainer.model)
        if self.live is not None and self.live.progress is None:
            self.live.progress = False  # the trainer shows its own progress bar

    def on_after_backward(self, trainer, loss) -> None:
        # trainer.step counts the steps done, so the step being taken (and later logged) is trainer.step + 1
        self._observe(trainer.model, loss, step=trainer.step + 1, optimizer=trainer.optimizer,
                      scaler=trainer.scaler, lr=None, trainer=trainer)
        self._sync_stop(trainer)

    def on_step_end(self, trainer, logs: dict) -> None:
        step = int(logs.get("step", trainer.step))
        self.log.add(step, logs, overwrite=False)  # the monitor's own per-step values win; the trainer's fill the rest
        self._log_step(step)
        self._sync_stop(trainer)

    def on_evaluate(self, trainer, logs: dict) -> None:
        self.evaluate(float(logs["val_loss"]), step=int(logs.get("step", trainer.step)))
        self._sync_stop(trainer)

    def on_train_end(self, trainer) -> None:
        self.close()

    # ------------------------------------------------------------------ your own loop
    def step(self, model: torch.nn.Module, loss: torch.Tensor | float, *, step: int | None = None,
             lr: float | None = None, optimizer=None, scaler=None, tokens: int | None = None,
             **extra) -> list[Alert]:
        """Record one optimizer step (after backward, before optimizer.step); returns the alerts it raised.

        `optimizer` lets the NaN guard save its state and gives the lr; `scaler` (a GradScaler) marks
        non-finite gradients as a skipped fp16 step instead of a NaN run; `tokens` gives tokens/s.
        Extra numbers (e.g. `data_s=`) are recorded in the history as they are.
        """
        step = self._next_step() if step is None else int(step)
        n_before = len(self.alerts)
        self._observe(model, loss, step=step, optimizer=optimizer, scaler=scaler, lr=lr, trainer=None)
        self.log.add(step, extra)
        row = self.log.row(step)
        now = time.perf_counter()
        if tokens is not None and self._clock is not None and now > self._clock:
            row["tokens_per_s"] = tokens / (now - self._clock)
        self._clock = now
        self._log_step(step)
        return self.alerts[n_before:]

    def evaluate(self, val_loss: float, *, step: int | None = None) -> list[Alert]:
        """Record a validation loss; `stalled` fires after `patience` evaluations without improvement."""
        step = (self._last_step or 0) if step is None else int(step)
        n_before = len(self.alerts)
        val_loss = float(val_loss)
        row = self.log.row(step)
        row["val_loss"], row["val_ppl"] = val_loss, math.exp(min(val_loss, 700.0))
        if not math.isfinite(val_loss):
            self._emit(Alert(step, "nan", val_loss, 0.0, "validation loss is not finite: the weights are "
                             "damaged; restore the last good checkpoint"))
            self.should_stop, self.stop_reason = True, str(self.alerts[-1])
        elif self.plateau is not None:
            best_step = self.plateau.best_step
            self._emit(self.plateau.update(step, val_loss, self.log.train_trend(best_step, step)))
        if self.live is not None:
            self.live.update(self, force=True)
        return self.alerts[n_before:]

    def close(self) -> None:
        """Write pending rows, remove the hooks, close the sinks and draw the final live view (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.log.flush(final=True)
        if self._load is not None:
            self._load.remove()
        self._load, self._hooked = None, False
        for sink in self.sinks:
            sink.close()
        if self.live is not None:
            self.live.close(self)

    # ------------------------------------------------------------------ results
    @property
    def history(self):
        """One row per step: loss, grad_norm, lr, update_ratio, val_loss, hardware, trainer logs..."""
        return self.log.frame()

    @property
    def layer_grad_norms(self):
        """Per-layer gradient norms: steps x layers (model order)."""
        return self.log.wide(self.log.layer_rows)

    @property
    def update_ratios(self):
        """Per-layer ||weight update|| / ||weight||: steps x layers (~1e-3 is the usual healthy scale)."""
        return self.log.wide(self.log.ratio_rows)

    @property
    def expert_load(self):
        """Tokens routed to each expert per MoE layer between logged steps: long DataFrame."""
        return self.log.load_frame()

    def alerts_frame(self):
        """The alerts as a DataFrame (step, kind, value, threshold, message)."""
        return pd.DataFrame([asdict(a) for a in self.alerts], columns=["step", "kind", "value", "threshold", "message"])

    def summary(self) -> dict:
        """Alert counts by kind, steps seen and the stop reason: a run's health verdict."""
        counts = {kind: sum(a.kind == kind for a in self.alerts) for kind in ALERT_KINDS}
        return {**counts, "steps": len(self.log.rows), "stopped": self.should_stop, "stop_reason": self.stop_reason}

    # ------------------------------------------------------------------ internals
    def _next_step(self) -> int:
        return 0 if self._last_step is None else self._last_step + 1

    def _attach(self, model: torch.nn.Module) -> None:
        self._closed = False  # a closed monitor (trainer.fit() ended) records again when training resumes
        if self._stats is None:
            self._stats = GradientStats(model, self.group)
        if self.track_experts and not self._hooked:
            self._hooked = True  # looked for routers (a dense model has none)
            if routers(model):  # counts every training forward, your own loop's too; padding is left out
                self._load = LoadCounter(model, auto=True)

    def _observe(self, model, loss, *, step, optimizer, scaler, lr, trainer) -> None:
        """The per-step checks, with one host sync for loss + norms (needed to stop before a NaN update)."""
        self._attach(model)
        self.log.flush()
        self._last_step = step
        loss_t = loss.detach().float().reshape(1) if torch.is_tensor(loss) else torch.tensor([float(loss)])
        row = self.log.row(step)
        lr = lr if lr is not None else _lr(optimizer)
        if lr is not None:
            row["lr"] = lr
        # Only a real GradScaler skips a step whose gradients overflowed; anything else would apply it.
        scaling = isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
        if scaler is not None and hasattr(scaler, "get_scale"):
            row["scale"] = float(scaler.get_scale())  # the scale this step's backward used
        loss_v, grad_norm, layer_norms = self._stats.norms(loss_t)
        row["loss"] = loss_v
        if not math.isfinite(loss_v):
            self._nan(step, "loss", loss_v, model, optimizer, trainer)
        if grad_norm is None:  # no gradients yet: only the loss can be checked
            return
        row["grad_norm"] = grad_norm
        if not math.isfinite(grad_norm):
            if not scaling:
                bad = [g for g, v in layer_norms.items() if not math.isfinite(v)]
                self._nan(step, f"gradients (in {', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''})",
                          grad_norm, model, optimizer, trainer)
            row["skipped"] = True  # the scaler skips this step and lowers its scale: normal in fp16
            self._emit(self.overflow.update(step, True, row["scale"]))
            self._stats.skip_update()  # no update happens, so no update ratio either
            return
        if scaling:
            row["skipped"] = False
            self.overflow.update(step, False)
        if self.max_grad_norm is not None:
            row["clipped"] = grad_norm > self.max_grad_norm
        layer_step = step % self.layer_every == 0
        if layer_step:
            self.log.layer_rows[step] = layer_norms
        ratios = self._stats.update_ratios(step, snapshot=layer_step)
        if ratios is not None and ratios[0] in self.log.rows:  # the update made after step `prev`
            prev, overall, per_layer = ratios
            self.log.rows[prev]["update_ratio"], self.log.ratio_rows[prev] = overall, per_layer
        self._emit(self.vanishing.update(step, {"(all)": grad_norm, **(layer_norms if layer_step else {})}))
        self._emit(self.loss_spike.update(step, loss_v))
        self._emit(self.diverging.update(step, loss_v))
        self._emit(self.exploding.update(step, grad_norm))

    def _log_step(self, step: int) -> None:
        """Per logged step: expert load, hardware and the live view."""
        counts = self._load.take().tolist() if self._load is not None else []
        if any(map(any, counts)):  # tokens were routed since the last logged step
            loads = dict(zip(self._load.layers, counts, strict=True))
            self.log.add_load(step, loads)
            worst, alert = self.imbalance.update(step, loads)
            self.log.row(step)["max_vio"] = worst
            self._emit(alert)
        if self.hardware:
            self.log.row(step).update(sample_hardware())
        if self.live is not None:
            self.live.update(self)

    def _nan(self, step, what, value, model, optimizer, trainer) -> None:
        folder = self.checkpoint_dir or (self.log_dir / "last-good" if self.log_dir else None)
        saved, note = save_last_good(folder, step - 1, model, optimizer, trainer, self._stats.weights_finite())
        message = (f"non-finite {what} ({value}) at step {step}: training stopped before the update"
                   + (f"; the last good state (after step {step - 1}) is saved at {saved}" if saved else f"; {note}"))
        self._emit(Alert(step, "nan", float(value), 0.0, message))
        self.should_stop, self.stop_reason = True, message
        if trainer is not None:
            trainer.should_stop, trainer.stop_reason = True, message
        self.close()
        raise NonFiniteError(message, saved)

    def _emit(self, alert: Alert | None) -> None:
        if alert is None:
            return
        self.alerts.append(alert)
        for sink in self.sinks:
            sink.alert(alert)
        if self.warn:  # attributed to the caller's line (your loop, or `trainer.fit()`), not to library code
            _warn_at_caller(str(alert))
        if alert.kind in self.stop_on and not self.should_stop:
            self.should_stop, self.stop_reason = True, str(alert)

    def _sync_stop(self, trainer) -> None:
        if self.should_stop and not trainer.should_stop:
            trainer.should_stop, trainer.stop_reason = True, self.stop_reason


_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])  # the whole cookbook package, not only monitor/


def _caller_level() -> int:
    """The `stacklevel` of the first frame outside the cookbook package (and torch's hook machinery)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (frame.f_code.co_filename.startswith(_PACKAGE_DIR)
                                 or "/torch/" in frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    return level


def _warn_at_caller(message: str) -> None:
    """Warn at the caller's line; a notebook cell is named "cell" (its file is a temporary path of the machine)."""
    level = _caller_level()  # counted from this function (stacklevel 1)
    frame = sys._getframe(0)
    for _ in range(level - 1):
        frame = frame.f_back
    if frame is not None and "/ipykernel_" in frame.f_code.co_filename:
        warnings.warn_explicit(message, TrainingAlertWarning, "cell", frame.f_lineno, module="__main__",
                               registry=frame.f_globals.setdefault("__warningregistry__", {}))
    else:
        warnings.warn(message, TrainingAlertWarning, stacklevel=level)


def _lr(optimizer) -> float | None:
    if optimizer is None or not optimizer.param_groups:
        return None
    lr = optimizer.param_groups[0].get("lr")
    return float(lr) if lr is not None else None
