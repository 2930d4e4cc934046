"""History: rows reach the sinks once complete, scalars only, and the training-loss trend by hand."""

import numpy as np
import pytest
import torch

from cookbook.monitor.history import History, scalar


class _Sink:
    def __init__(self):
        self.rows = []

    def write(self, row, layers):
        self.rows.append((dict(row), dict(layers)))


def test_a_row_is_written_once_the_next_step_starts():
    sink = _Sink()
    log = History([sink])
    log.add(1, {"loss": torch.tensor(2.0), "expert_load": np.zeros((2, 4))})
    log.layer_rows[1] = {"layers.0": 0.5}
    log.flush()
    assert sink.rows == []  # step 1 may still gain values (the trainer's logs, a validation loss)
    log.add(1, {"val_loss": 1.5})
    log.add(1, {"loss": 9.0}, overwrite=False)  # values already there win
    log.row(2)
    log.flush()
    assert sink.rows == [({"step": 1, "loss": 2.0, "val_loss": 1.5}, {"layers.0": 0.5})]  # no array column
    log.flush(final=True)
    assert [r["step"] for r, _ in sink.rows] == [1, 2]
    assert log.frame()["step"].tolist() == [1, 2]


def test_train_trend_by_hand():
    log = History([])
    for step, loss in enumerate([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2]):
        log.add(step, {"loss": loss})
    # span = max(2, (8 - 0) // 4) = 2: steps 0..2 average 4.0, steps 6..8 average 0.3
    assert log.train_trend(0, 8) == pytest.approx(0.3 - 4.0)
    assert log.train_trend(None, 8) == 0.0 and History([]).train_trend(0, 8) == 0.0


def test_scalar_keeps_numbers_only():
    assert [scalar(v) for v in (3, 2.5, True, torch.tensor(1.5), np.float32(0.5))] == [3, 2.5, True, 1.5, 0.5]
    assert scalar(np.zeros(3)) is None and scalar("text") is None and scalar(torch.zeros(2)) is None
