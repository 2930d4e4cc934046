"""The rules that turn training signals into alerts, one small detector per failure mode.

`TrainingMonitor` feeds them; you can also use one on its own (`Spike(...).update(step, value)`). Each
`update` returns an `Alert` when its rule fires, else None. Rules that describe a lasting condition
(vanishing, imbalance, overflow) fire once when it starts and again only after it has cleared.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch

from cookbook.checks import positive_int
from cookbook.models import max_violation

__all__ = ["ALERT_KINDS", "Alert", "Divergence", "Imbalance", "Overflow", "Plateau", "Spike", "Vanishing"]

ALERT_KINDS = ("nan", "vanishing", "exploding", "loss_spike", "diverging", "overflow", "stalled", "imbalance")


@dataclass(frozen=True)
class Alert:
    """One health event: at `step`, signal `kind` had `value` against `threshold`."""

    step: int
    kind: str
    value: float
    threshold: float
    message: str

    def __str__(self) -> str:
        return f"[step {self.step}] {self.kind}: {self.message}"


class Vanishing:
    """The guide's rule: a gradient norm below `threshold` for `patience` consecutive steps.

    `update` takes several named norms at once (the whole model and each layer) and names the layers hit.
    """

    def __init__(self, threshold: float = 1e-6, patience: int = 3):
        if not threshold > 0:
            raise ValueError(f"vanishing threshold must be > 0, got {threshold}")
        self.threshold, self.patience = threshold, positive_int("vanish_patience", patience)
        self.runs: dict[str, int] = {}
        self.active = False

    def update(self, step: int, norms: dict[str, float]) -> Alert | None:
        for name, value in norms.items():  # NaN is not small: it is the NaN guard's business
            self.runs[name] = self.runs.get(name, 0) + 1 if value < self.threshold else 0
        hit = [n for n in norms if self.runs[n] >= self.patience]
        if not hit:
            self.active = False
            return None
        if self.active:
            return None
        self.active = True
        worst = min(hit, key=lambda n: norms[n])
        layers = [n for n in hit if n != "(all)"]
        where = (f"{len(layers)} of {len([n for n in norms if n != '(all)'])} layers ({', '.join(layers[:3])}"
                 f"{', ...' if len(layers) > 3 else ''})") if layers else "the whole model"
        return Alert(step, "vanishing", norms[worst], self.threshold,
                     f"gradient norm below {self.threshold:g} for {self.patience} steps in {where}; smallest "
                     f"{norms[worst]:.2e}: check the init scale, saturating activations and depth")


class Spike:
    """A value far above its recent level: z-score against the previous `window` values above `z`.

    The spread is floored so that a nearly flat curve does not turn noise into alarms: at `floor` x |mean|,
    or with `log=True` (score log10(value): gradient norms move by factors, not offsets) at `floor` decades.
    """

    def __init__(self, kind: str, window: int = 20, z: float = 6.0, floor: float = 0.02, min_points: int = 3,
                 log: bool = False):
        if kind not in ("exploding", "loss_spike"):
            raise ValueError(f"a Spike detector watches 'exploding' or 'loss_spike', not {kind!r}")
        positive_int("spike_window", window)
        if not 2 <= min_points <= window:
            raise ValueError(f"spike_min_points must be in [2, spike_window={window}], got {min_points}")
        if not z > 0 or floor < 0:
            raise ValueError(f"spike_z must be > 0 and spike_floor >= 0, got {z}, {floor}")
        self.kind, self.z, self.floor, self.min_points, self.log = kind, z, floor, min_points, log
        self.values: deque[float] = deque(maxlen=window)

    def score(self, value: float) -> float:
        """The z-score of `value` against the window (0 until `min_points` values are in)."""
        if len(self.values) < self.min_points:
            return 0.0
        x = math.log10(value) if self.log else value
        mean = sum(self.values) / len(self.values)
        std = math.sqrt(sum((v - mean) ** 2 for v in self.values) / len(self.values))
        return (x - mean) / max(std, self.floor if self.log else self.floor * abs(mean), 1e-12)

    def update(self, step: int, value: float) -> Alert | None:
        if not math.isfinite(value) or (self.log and value <= 0):
            return None
        z = self.score(value)
        self.values.append(math.log10(value) if self.log else value)
        if z <= self.z:
            return None
        if self.kind == "exploding":
            message = (f"gradient norm {value:.3g} is {z:.1f} standard deviations (log scale) above its recent "
                       "level: exploding gradients; lower the learning rate, keep clipping at max-norm 1.0")
        else:
            message = (f"loss {value:.4g} is {z:.1f} standard deviations above its recent mean: learning rate "
                       "too high, a bad batch, or a shift in the data distribution")
        return Alert(step, self.kind, value, self.z, message)


class Divergence:
    """Non-convergence: the smoothed training loss has climbed `ratio` above the lowest it has been.

    A healthy loss falls or stays flat; one that climbs back up (learning rate too high, a corrupted data
    stream) has stopped converging. The loss is smoothed by an EMA (`weight`, bias-corrected like
    TensorBoard's) so single noisy batches do not count; judged from the `min_points`-th step on.
    """

    def __init__(self, ratio: float = 0.1, weight: float = 0.9, min_points: int = 3):
        if not ratio > 0 or not 0 <= weight < 1:
            raise ValueError(f"need diverge_ratio > 0 and 0 <= weight < 1, got {ratio}, {weight}")
        self.ratio, self.weight, self.min_points = ratio, weight, positive_int("min_points", min_points)
        self.avg = self.norm = 0.0
        self.count, self.best, self.best_step, self.active = 0, math.inf, None, False

    def update(self, step: int, loss: float) -> Alert | None:
        if not math.isfinite(loss):
            return None
        self.avg = self.weight * self.avg + (1 - self.weight) * loss
        self.norm = self.weight * self.norm + (1 - self.weight)
        self.count += 1
        smoothed = self.avg / self.norm
        if smoothed < self.best:
            self.best, self.best_step = smoothed, step
        rise = (smoothed - self.best) / max(abs(self.best), 1e-12)
        if self.count < self.min_points or rise <= self.ratio:
            self.active = self.active and rise > self.ratio / 2  # re-armed once back near the best
            return None
        if self.active:
            return None
        self.active = True
        return Alert(step, "diverging", smoothed, self.best * (1 + self.ratio),
                     f"smoothed loss {smoothed:.4g} is {rise:.0%} above its best {self.best:.4g} (step "
                     f"{self.best_step}): the run is not converging; the learning rate is likely too high")


class Plateau:
    """Early stopping: validation loss not below its best by `min_delta` for `patience` evaluations.

    The one rule behind the monitor's `stalled` alert and the `EarlyStopping` callback.
    """

    def __init__(self, patience: int = 3, min_delta: float = 0.0):
        self.patience = positive_int("patience", patience)
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        self.min_delta = float(min_delta)
        self.best, self.best_step, self.bad = math.inf, None, 0

    def state_dict(self) -> dict:
        """The counter's state (best loss, its step, evaluations without improvement), for a resumed run."""
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step, self.bad = float(state["best"]), state["best_step"], int(state["bad"])

    def update(self, step: int, val_loss: float, train_trend: float = 0.0) -> Alert | None:
        """`train_trend` < 0 says the training loss kept falling meanwhile (then it is overfitting)."""
        if val_loss < self.best - self.min_delta:
            self.best, self.best_step, self.bad = val_loss, step, 0
            return None
        self.bad += 1
        if self.bad < self.patience:
            return None
        why = " while the training loss kept falling: the model is overfitting" if train_trend < 0 else ""
        return Alert(step, "stalled", val_loss, self.best,
                     f"validation loss {val_loss:.4f} has not improved on its best {self.best:.4f} (step "
                     f"{self.best_step}) for {self.bad} evaluations{why}; stop here and keep the best checkpoint")


class Imbalance:
    """MoE load imbalance: the worst layer's MaxVio above `threshold` for `patience` logged steps in a row."""

    def __init__(self, threshold: float = 1.0, patience: int = 3):
        if not threshold > 0:
            raise ValueError(f"imbalance threshold must be > 0, got {threshold}")
        self.threshold, self.patience = threshold, positive_int("imbalance_patience", patience)
        self.run, self.clear, self.active = 0, 0, False

    def update(self, step: int, loads: dict[str, list[float]]) -> tuple[float, Alert | None]:
        """`loads`: tokens (or shares) per expert for each layer; returns (worst MaxVio, alert or None)."""
        if not loads:
            return 0.0, None
        vio = {layer: max_violation(torch.as_tensor(counts, dtype=torch.float64)).item()
               for layer, counts in loads.items()}
        worst = max(vio, key=vio.get)
        over = vio[worst] > self.threshold
        self.run, self.clear = (self.run + 1, 0) if over else (0, self.clear + 1)
        if self.run < self.patience:
            if self.clear >= self.patience:  # re-armed only once balance has held for `patience` steps
                self.active = False
            return vio[worst], None
        if self.active:
            return vio[worst], None
        self.active = True
        return vio[worst], Alert(step, "imbalance", vio[worst], self.threshold,
                                 f"MoE load imbalance in {worst}: its busiest expert gets {1 + vio[worst]:.1f}x the "
                                 f"fair share for {self.run} logged steps (routing collapse); use bias-based "
                                 "balancing (moe_gamma) or a small sequence-wise auxiliary loss")


class Overflow:
    """fp16 with a GradScaler: `patience` skipped (inf/NaN-gradient) steps in a row means the scaler cannot cope."""

    def __init__(self, patience: int = 10):
        self.patience, self.run, self.active = positive_int("overflow_patience", patience), 0, False

    def update(self, step: int, skipped: bool, scale: float = math.nan) -> Alert | None:
        self.run = self.run + 1 if skipped else 0
        if self.run < self.patience:
            self.active = False
            return None
        if self.active:
            return None
        self.active = True
        return Alert(step, "overflow", self.run, self.patience,
                     f"{self.run} fp16 steps in a row skipped for inf/NaN gradients (loss scale now {scale:g}): "
                     "the forward pass itself overflows; lower the learning rate or train in bf16")
