"""EarlyStopping: the Plateau rule as a Trainer callback, with a counter that survives a resume."""

import pytest

from cookbook.monitor import EarlyStopping, TrainingMonitor


class _Trainer:
    """The surface of cookbook.train.Trainer that the callback uses."""

    def __init__(self):
        self.step, self.should_stop, self.stop_reason = 0, False, ""


def _evaluate(callback, trainer, losses, start=1):
    for step, loss in enumerate(losses, start=start):
        trainer.step = step
        callback.on_evaluate(trainer, {"step": step, "val_loss": loss})
        if trainer.should_stop:
            return step
    return None


def test_stops_after_patience_evaluations_without_improvement():
    callback, trainer = EarlyStopping(patience=2, min_delta=0.01), _Trainer()
    # 1.995 is no gain (less than min_delta below the best 2.0); 1.5 is; then 1.6 and 1.55 are not
    stopped = _evaluate(callback, trainer, [3.0, 2.0, 1.995, 1.5, 1.6, 1.55, 1.0])
    assert stopped == 6 and trainer.stop_reason.startswith("early stopping: validation loss 1.5500")
    assert (callback.best_val, callback.best_step) == (1.5, 4) and callback.alert.kind == "stalled"


def test_it_is_the_monitors_stalled_rule():
    """One rule, two users: the monitor's `stalled` alert fires at the same evaluation."""
    losses = [3.0, 2.0, 2.5, 1.9, 1.95, 2.1, 2.2]
    callback, trainer = EarlyStopping(patience=3), _Trainer()
    monitor = TrainingMonitor(hardware=False, patience=3)
    stopped = _evaluate(callback, trainer, losses)
    fired = [a.step for step, loss in enumerate(losses, start=1) for a in monitor.evaluate(loss, step=step)]
    assert stopped == fired[0] == 7


def test_a_resumed_counter_continues():
    first, trainer = EarlyStopping(patience=3), _Trainer()
    assert _evaluate(first, trainer, [2.0, 2.1, 2.2]) is None  # two bad evaluations so far
    resumed = EarlyStopping(patience=3)
    resumed.load_state_dict(first.state_dict())
    assert _evaluate(resumed, trainer, [2.3], start=4) == 4  # the third one stops, as it would have
    fresh = EarlyStopping(patience=3)
    assert _evaluate(fresh, _Trainer(), [2.3], start=4) is None  # a counter that restarted would not


@pytest.mark.parametrize("kwargs, message", [(dict(patience=0), "patience must be a positive int"),
                                             (dict(patience=2.5), "patience must be a positive int"),
                                             (dict(min_delta=-0.1), "min_delta must be >= 0")])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EarlyStopping(**kwargs)
