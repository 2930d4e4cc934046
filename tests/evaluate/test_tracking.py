import dataclasses
import functools
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

MlflowClient = pytest.importorskip("mlflow.tracking").MlflowClient  # the `evaluate` extra
pytest.importorskip("optuna")

from cookbook import env, models, train  # noqa: E402
from cookbook.evaluate import tracking  # noqa: E402
from cookbook.evaluate.tuning import Float, search  # noqa: E402
from cookbook.monitor import TrainingMonitor  # noqa: E402
from tests.blocks import VOCAB, loader  # noqa: E402


@functools.cache
def _empty_store() -> bytes:
    """An empty SQLite store with MLflow's schema, built once per process: its migrations take seconds."""
    with tempfile.TemporaryDirectory() as folder:
        MlflowClient(f"sqlite:///{folder}/mlflow.db").search_experiments()
        return (Path(folder) / "mlflow.db").read_bytes()


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    """One store for the module: the default one, in a runs folder of its own."""
    runs_dir = tmp_path_factory.mktemp("runs")
    (runs_dir / "mlflow").mkdir()
    (runs_dir / "mlflow" / "mlflow.db").write_bytes(_empty_store())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COOKBOOK_RUNS_DIR", str(runs_dir))
        yield f"sqlite:///{runs_dir / 'mlflow' / 'mlflow.db'}"


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


@dataclasses.dataclass
class _Alert:
    step: int
    kind: str
    message: str


def test_default_store_experiment_and_tags(uri):
    assert tracking.default_uri() == uri  # <runs>/mlflow/mlflow.db
    quiet = ("alembic", "mlflow.store.db.utils")  # they log a new store's schema migration
    for name in quiet:
        logging.getLogger(name).setLevel(logging.NOTSET)  # as before any store was opened in this process
    sink = tracking.MlflowSink(run_name="plain", tags={"team": "a"})  # experiment "cookbook", the default store
    sink.close()
    assert [logging.getLogger(name).level for name in quiet] == [logging.WARNING] * 2
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("cookbook")
    artifacts = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
    assert experiment.artifact_location == artifacts.resolve().as_uri()  # beside the SQLite file
    run = client.get_run(sink.run_id)
    assert run.info.experiment_id == experiment.experiment_id and run.info.run_name == "plain"
    assert run.data.tags["team"] == "a" and run.data.tags["cookbook.commit"] == env.commit()
    assert "mlflow.parentRunId" not in run.data.tags and client.list_artifacts(sink.run_id) == []  # no alerts
    table = tracking.runs()
    assert list(table.run) == ["plain"] and list(table.parent) == [""] and list(table.status) == ["FINISHED"]
    assert list(table.team) == ["a"] and not [c for c in table.columns if c.startswith(("mlflow.", "cookbook."))]
    assert tracking.runs("nothing yet", tracking_uri=uri).empty


def test_a_store_other_than_the_default(uri, tmp_path):
    other = tmp_path / "other.db"
    other.write_bytes(_empty_store())
    sink = tracking.MlflowSink(experiment="elsewhere", run_name="there", tracking_uri=f"sqlite:///{other}")
    sink.write({"step": 1, "loss": 1.0})
    sink.close()
    trial_logger = tracking.trial_logger("elsewhere", parent="sweep", tracking_uri=f"sqlite:///{other}")
    trial_logger({"value": 1.0, "state": "COMPLETE"})
    assert list(tracking.runs("elsewhere", tracking_uri=f"sqlite:///{other}").run) == ["there", "sweep", "trial-0"]
    assert MlflowClient(uri).get_experiment_by_name("elsewhere") is None  # nothing in the default store
    assert MlflowClient(f"sqlite:///{other}").get_experiment_by_name("elsewhere").artifact_location == (
        (tmp_path / "artifacts").resolve().as_uri())


def test_sink_steps_batches_arrays_timestamps_params_and_alerts(uri):
    parent = tracking.MlflowSink(experiment="sink2", run_name="parent", tracking_uri=uri)
    sink = tracking.MlflowSink(experiment="sink2", run_name="child", tracking_uri=uri, parent_run_id=parent.run_id,
                               params={5: "x" * 7000, "lr": 0.1})
    before = int(time.time() * 1000)
    sink.write({"loss": 3.0})  # no step: step 0
    sink.write({"step": 1, "vec": np.array([1.0, 2.0]), "tvec": torch.tensor([1.0, 2.0]), "loss": 2.0,
                "n": np.int64(4)}, {"layer.0": 0.5})
    sink.write({"step": 3}, {f"l{i}": float(i) for i in range(2001)})  # more than MLflow's 1000 metrics per request
    after = int(time.time() * 1000)
    sink.alert(_Alert(1, "spike", "loss spiked"))
    sink.alert(_Alert(2, "nan", "loss is NaN"))
    sink.close(status="FAILED")
    sink.close()  # already closed: stays FAILED
    client = MlflowClient(uri)
    loss = client.get_metric_history(sink.run_id, "loss")
    assert [(m.step, m.value) for m in loss] == [(0, 3.0), (1, 2.0)]  # arrays skipped, the rest kept
    assert all(before <= m.timestamp <= after for m in loss)  # milliseconds since the epoch
    assert [(m.step, m.value) for m in client.get_metric_history(sink.run_id, "grad_norm/layer.0")] == [(1, 0.5)]
    for name, value in (("grad_norm/l0", 0.0), ("grad_norm/l1000", 1000.0), ("grad_norm/l2000", 2000.0), ("n", 4.0)):
        history = client.get_metric_history(sink.run_id, name)
        assert [(m.step, m.value) for m in history] == [(3 if name != "n" else 1, value)]  # logged once
    run = client.get_run(sink.run_id)
    assert len(run.data.metrics) == 2001 + 3  # the layers, loss, n, grad_norm/layer.0: no vec, tvec, step
    assert run.data.params == {"5": "x" * 6000, "lr": "0.1"}  # keys as text, values cut at MLflow's limit
    assert run.info.status == "FAILED" and run.data.tags["alert.nan"] == "step 2"
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    text = Path(client.download_artifacts(sink.run_id, "alerts.txt", str(Path(uri.removeprefix("sqlite:///")).parent)))
    assert text.read_text() == "step 1 spike: loss spiked\nstep 2 nan: loss is NaN\n"
    table = tracking.runs("sink2", tracking_uri=uri)
    assert list(table.run) == ["parent", "child"] and list(table.parent) == ["", parent.run_id[:8]]


def test_trial_logger_defaults_and_rows_without_a_curve(tmp_path):
    (tmp_path / "trials.db").write_bytes(_empty_store())  # a store of its own: other tests use "tuning"
    uri = f"sqlite:///{tmp_path / 'trials.db'}"
    log = tracking.trial_logger(tracking_uri=uri)  # experiment "tuning", no parent
    assert log.parent_run_id is None
    log({"value": 0.5, "state": "COMPLETE", "lr": 0.1})
    log({"value": 1.5, "state": "PRUNED", "backend": "b", "number": 4, "epochs": 3, "curve": {2: 1.0, 1: 2.0}})
    client = MlflowClient(uri)
    table = tracking.runs("tuning", tracking_uri=uri).set_index("run").loc[["trial-0", "b-4"]]
    assert list(table.parent) == ["", ""] and list(table.status) == ["FINISHED", "FINISHED"]
    assert list(table.state) == ["COMPLETE", "PRUNED"] and list(table.value) == [0.5, 1.5]
    first, second = (client.get_run(i) for i in table.run_id)
    assert [(m.step, m.value) for m in client.get_metric_history(first.info.run_id, "value")] == [(0, 0.5)]
    assert client.get_metric_history(first.info.run_id, "curve") == [] and first.data.params == {"lr": "0.1"}
    assert [(m.step, m.value) for m in client.get_metric_history(second.info.run_id, "curve")] == [(1, 2.0), (2, 1.0)]
    assert [(m.step, m.value) for m in client.get_metric_history(second.info.run_id, "value")] == [(3, 1.5)]
    assert second.data.params == {"backend": "b", "number": "4", "epochs": "3"}
    for run in (first, second):
        own = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
        assert own == {"state": run.data.tags["state"], "cookbook.commit": env.commit()}
        assert "mlflow.parentRunId" not in run.data.tags
    nested = tracking.trial_logger("nested", parent="sweep", tracking_uri=uri)
    nested({"value": 2.0, "state": "COMPLETE"})
    parent = client.get_run(nested.parent_run_id)
    assert parent.info.run_name == "sweep" and parent.data.tags["cookbook.commit"] == env.commit()
    assert list(tracking.runs("nested", tracking_uri=uri).run) == ["sweep", "trial-0"]
