import dataclasses

import pytest
import torch

MlflowClient = pytest.importorskip("mlflow.tracking").MlflowClient  # the `evaluate` extra
pytest.importorskip("optuna")

from cookbook import models, train  # noqa: E402
from cookbook.evaluate import tracking  # noqa: E402
from cookbook.evaluate.tuning import Float, search  # noqa: E402
from cookbook.monitor import TrainingMonitor  # noqa: E402
from tests.blocks import VOCAB, loader  # noqa: E402


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_sink_logs_rows_layers_and_alerts(uri):
    sink = tracking.MlflowSink(experiment="sink", run_name="r", params={"lr": 1e-3}, tracking_uri=uri)
    sink.write({"step": 1, "loss": 2.0, "nan": float("nan"), "flag": True, "name": "x",
                "t": torch.tensor(3.0)}, {"layer.0": 0.5})
    sink.write({"step": 2, "loss": 1.5})

    @dataclasses.dataclass
    class Alert:
        step: int
        kind: str
        message: str

    sink.alert(Alert(2, "spike", "loss spiked"))
    sink.close()
    sink.close()  # idempotent
    client = MlflowClient(uri)
    assert [(m.step, m.value) for m in client.get_metric_history(sink.run_id, "loss")] == [(1, 2.0), (2, 1.5)]
    run = client.get_run(sink.run_id)
    assert run.data.metrics == {"loss": 1.5, "t": 3.0, "grad_norm/layer.0": 0.5}  # NaN, bools, strings left out
    assert run.data.params == {"lr": "0.001"} and run.data.tags["alert.spike"] == "step 2"
    assert run.info.status == "FINISHED"
    table = tracking.runs("sink", tracking_uri=uri)
    assert list(table.run) == ["r"] and table.loss[0] == 1.5


def test_sink_as_trainer_callback_and_as_monitor_sink(uri):
    config = train.TrainConfig(steps=4, lr=1e-3, log_interval=2, eval_interval=2, eval_batches=1, progress=False,
                               device="cpu")
    as_callback = tracking.MlflowSink(experiment="trainer", run_name="callback", tracking_uri=uri)
    model = models.build("tiny", VOCAB, seed=0)
    history = train.Trainer(model, loader(), loader(shuffle=False), config, callbacks=[as_callback]).fit()
    client = MlflowClient(uri)
    logged = client.get_metric_history(as_callback.run_id, "val_loss")
    assert [m.value for m in logged] == pytest.approx(list(history.val_loss.dropna()))
    run = client.get_run(as_callback.run_id)
    assert run.data.params["steps"] == "4" and run.info.status == "FINISHED"

    as_sink = tracking.MlflowSink(experiment="trainer", run_name="monitor", tracking_uri=uri)
    monitor = TrainingMonitor(sinks=[as_sink], warn=False)
    model = models.build("tiny", VOCAB, seed=0)
    train.Trainer(model, loader(), loader(shuffle=False), config, callbacks=[monitor]).fit()
    monitor.close()
    losses = client.get_metric_history(as_sink.run_id, "loss")
    assert len(losses) >= 2 and client.get_run(as_sink.run_id).info.status == "FINISHED"


def test_trial_logger_nests_each_trial_under_its_parent(uri):
    log = tracking.trial_logger("tuning", parent="optuna", tracking_uri=uri)

    def objective(params, trial):
        for epoch in (1, 2):
            trial.report(epoch, params["x"] + 1 / epoch)
        return params["x"] + 0.5

    result = search(objective, {"x": Float(0, 1)}, trials=3, seed=0, on_trial=log)
    table = tracking.runs("tuning", tracking_uri=uri)
    assert list(table.run) == ["optuna", "optuna-0", "optuna-1", "optuna-2"]
    assert (table.parent[1:] == log.parent_run_id[:8]).all()
    assert table.value[1:].to_numpy() == pytest.approx(result.trials.value.to_numpy())
    curve = MlflowClient(uri).get_metric_history(table.run_id[1], "curve")
    assert [m.step for m in curve] == [1, 2]
