"""Early stopping as a Trainer callback: stop when the validation loss has stopped improving.

    trainer = Trainer(model, train_loader, val_loader, TrainConfig(eval_interval=50), callbacks=[EarlyStopping(3)])

It is the `Plateau` rule that also raises the TrainingMonitor's `stalled` alert (a monitor with the default
`stop_on=("stalled",)` stops the same way); use this callback when you want early stopping without a monitor.
"""

from __future__ import annotations

from cookbook.monitor.rules import Alert, Plateau

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """Stops training after `patience` evaluations whose loss is not below the best by `min_delta`.

    Its counter is part of the Trainer's checkpoints (`state_dict`), so a resumed run stops where the
    uninterrupted one would have. `alert` is the `stalled` alert that stopped the run (or None).
    """

    def __init__(self, patience: int = 3, min_delta: float = 0.0):
        self.plateau = Plateau(patience, min_delta)
        self.alert: Alert | None = None

    @property
    def best_val(self) -> float:
        return self.plateau.best

    @property
    def best_step(self) -> int | None:
        return self.plateau.best_step

    def on_evaluate(self, trainer, logs: dict) -> None:
        alert = self.plateau.update(int(logs.get("step", trainer.step)), float(logs["val_loss"]))
        if alert is not None and not trainer.should_stop:
            self.alert = alert
            trainer.should_stop, trainer.stop_reason = True, f"early stopping: {alert.message}"

    def state_dict(self) -> dict:
        return self.plateau.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.plateau.load_state_dict(state)
