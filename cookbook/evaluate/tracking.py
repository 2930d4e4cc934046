"""Experiment tracking with MLflow: a sink for the Trainer and the TrainingMonitor, a logger for tuning trials.

    sink = MlflowSink(run_name="pretrain", params={"lr": 1e-3})     # a local SQLite store, no server
    Trainer(model, train_loader, val_loader, config, callbacks=[sink]).fit()     # or TrainingMonitor(sinks=[sink])
    search(objective, space, on_trial=trial_logger("tuning", parent="optuna"))  # one nested run per trial
    runs()                                                       # every run of an experiment, as a DataFrame

The store is an SQLite file, by default `runs/mlflow/mlflow.db` (`cookbook.env.runs_dir`), with artifacts
beside it; any MLflow tracking URI works (`file:` folder, a server). Browse it with the MLflow UI, which needs
the full `mlflow` package (the `mlflow-skinny` client of the `evaluate` extra logs and reads, but has no UI):
`pip install mlflow && mlflow ui --backend-store-uri sqlite:///runs/mlflow/mlflow.db`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd

from cookbook import env

__all__ = ["MlflowSink", "default_uri", "runs", "trial_logger"]


def default_uri() -> str:
    """`sqlite:///<runs>/mlflow/mlflow.db`: the cookbook's local store (no server). Shown in notebooks/13 §6."""
    return f"sqlite:///{env.runs_dir('mlflow') / 'mlflow.db'}"


def _client(tracking_uri: str | None, experiment: str):
    """(MlflowClient, experiment id): the experiment is created on first use, its artifacts beside an SQLite store."""
    from mlflow.tracking import MlflowClient  # optional, heavy: the `evaluate` extra (mlflow-skinny)

    for name in ("alembic", "mlflow.store.db.utils"):  # the first use of a store logs its schema migration
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking_uri or default_uri()
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return client, found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return client, client.create_experiment(experiment, artifact_location=location)


def _metrics(row: Mapping, step: int, prefix: str = ""):
    """MLflow Metric objects for the finite numbers of a row (strings, arrays, NaN and bools left out)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    out = []
    for key, value in row.items():
        if hasattr(value, "item"):  # numpy / torch scalars; arrays (an expert-load vector) are left out
            try:
                value = value.item()
            except (ValueError, RuntimeError):
                continue
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        out.append(Metric(prefix + key, float(value), now, step))
    return out


def _params(params: Mapping) -> list:
    from mlflow.entities import Param

    return [Param(str(k), str(v)[:6000]) for k, v in params.items()]  # MLflow caps a value at 6000 characters


class MlflowSink:
    """One MLflow run fed by the Trainer (as a callback) or by a TrainingMonitor (as a sink), not both.

    As a sink: `write(row, layers)` logs the row's numbers at its step (and each layer's gradient norm as
    `grad_norm/<layer>`), `alert(alert)` records the alert as a tag and a text artifact line, `close()` ends
    the run. As a callback: the Trainer's config becomes the run's params, logged and evaluation rows its
    metrics, and the run ends with training. Shown in notebooks/13 §5.
    """

    def __init__(self, *, experiment: str = "cookbook", run_name: str | None = None, params: Mapping | None = None,
                 tags: Mapping[str, str] | None = None, tracking_uri: str | None = None, parent_run_id: str | None = None):
        self.client, self.experiment_id = _client(tracking_uri, experiment)
        tags = {**(tags or {}), "cookbook.commit": env.commit()}
        if parent_run_id is not None:
            tags["mlflow.parentRunId"] = parent_run_id  # shown nested under its parent in the UI
        self.run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags).info.run_id
        self.alerts: list[str] = []
        self._closed = False
        if params:
            self.client.log_batch(self.run_id, params=_params(params))

    # -- the TrainingMonitor's sink protocol
    def write(self, row: Mapping, layers: Mapping[str, float] | None = None) -> None:
        step = int(row.get("step", 0))
        metrics = _metrics(row, step) + _metrics(layers or {}, step, prefix="grad_norm/")
        self.client.log_batch(self.run_id, metrics=metrics)  # the client sends them in requests of <= 1000

    def alert(self, alert) -> None:
        self.alerts.append(f"step {alert.step} {alert.kind}: {alert.message}")
        self.client.set_tag(self.run_id, f"alert.{alert.kind}", f"step {alert.step}")

    def close(self, status: str = "FINISHED") -> None:
        if self._closed:
            return
        if self.alerts:
            self.client.log_text(self.run_id, "\n".join(self.alerts) + "\n", "alerts.txt")
        self.client.set_terminated(self.run_id, status=status)
        self._closed = True

    # -- the Trainer's callback protocol
    def on_train_begin(self, trainer) -> None:
        config = {k: str(v) for k, v in dataclasses.asdict(trainer.config).items()}
        self.client.log_batch(self.run_id, params=_params(config))

    def on_step_end(self, trainer, logs: Mapping) -> None:
        self.write(logs)

    def on_evaluate(self, trainer, logs: Mapping) -> None:
        self.write(logs)

    def on_train_end(self, trainer) -> None:
        self.close()


def trial_logger(experiment: str = "tuning", *, parent: str | None = None,
                 tracking_uri: str | None = None) -> Callable[[dict], None]:
    """An `on_trial` callback for `tuning.search`: each trial becomes an MLflow run with its parameters, its
    final value and its learning curve (`curve` at each epoch), nested under a parent run named `parent`.
    The parent run is `.parent_run_id` of the returned logger. Shown in notebooks/13 §2."""
    client, experiment_id = _client(tracking_uri, experiment)
    parent_id = None
    if parent is not None:
        parent_id = client.create_run(experiment_id, run_name=parent, tags={"cookbook.commit": env.commit()}).info.run_id

    def log(row: dict) -> None:
        row = dict(row)
        curve = row.pop("curve", {})
        value, state = row.pop("value"), row.pop("state")
        tags = {"state": state, "cookbook.commit": env.commit(), **({"mlflow.parentRunId": parent_id} if parent_id else {})}
        run_id = client.create_run(experiment_id, run_name=f"{row.get('backend', 'trial')}-{row.get('number', 0)}",
                                   tags=tags).info.run_id
        metrics = [m for epoch, v in sorted(curve.items()) for m in _metrics({"curve": v}, int(epoch))]
        metrics += _metrics({"value": value}, int(row.get("epochs", 0)))
        # one write per trial (the store is a file: every call is a transaction)
        client.log_batch(run_id, metrics=metrics, params=_params(row))  # the state is a tag since create_run
        client.set_terminated(run_id)

    log.parent_run_id = parent_id
    return log


def runs(experiment: str = "cookbook", *, tracking_uri: str | None = None) -> pd.DataFrame:
    """Every run of `experiment` (the first 5000, oldest first): name, status, parent, then its own tags, params and
    latest metrics as columns, read back from the store. Shown in notebooks/13 §6."""
    client, experiment_id = _client(tracking_uri, experiment)
    rows = []
    for run in client.search_runs([experiment_id], order_by=["attributes.start_time ASC"], max_results=5000):
        tags = run.data.tags
        own = {k: v for k, v in tags.items() if not k.startswith(("mlflow.", "cookbook."))}  # e.g. a trial's state
        rows.append({"run": run.info.run_name, "status": run.info.status,  # MLflow names every run
                     "parent": tags.get("mlflow.parentRunId", "")[:8], "run_id": run.info.run_id,
                     **own, **run.data.params, **run.data.metrics})
    return pd.DataFrame(rows)
