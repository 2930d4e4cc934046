"""Log sinks: JSONL, CSV and TensorBoard hold exactly the monitor's history and alerts."""

import json

import pandas as pd
import pytest
import torch

from cookbook.monitor import TrainingMonitor, sinks
from tests.monitor.loops import healthy_loop, mlp


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


def _alert(step, kind="spike"):
    from types import SimpleNamespace

    return SimpleNamespace(step=step, kind=kind, value=9.0, threshold=3.0, message=f"{kind} at {step}")


def test_jsonl_sink_by_itself_nulls_non_finite_values_and_appends_after_close(tmp_path):
    sink = sinks.JsonlSink(tmp_path / "sub" / "log.jsonl")  # makes the folder
    sink.write({"step": 0, "loss": torch.tensor(2.5), "skipped": False}, {"0": float("inf")})
    sink.alert(_alert(0))
    sink.close()
    sink.write({"step": 1, "loss": float("nan")}, {})  # a resumed run keeps appending
    sink.close()
    sink.close()  # twice is fine
    records = [json.loads(line) for line in (tmp_path / "sub" / "log.jsonl").read_text().splitlines()]
    assert records == [
        {"type": "step", "step": 0, "loss": 2.5, "skipped": False, "layer_grad_norm": {"0": None}},
        {"type": "alert", "step": 0, "kind": "spike", "value": 9.0, "threshold": 3.0, "message": "spike at 0"},
        {"type": "step", "step": 1, "loss": None},
    ]


def test_csv_sink_by_itself_widens_its_header_and_keeps_alerts_apart(tmp_path):
    (tmp_path / "m.csv").write_text("stale\n")  # a new sink starts a new log
    sink = sinks.CsvSink(tmp_path / "m.csv")
    sink.write({"step": 0, "loss": 2.0}, {"0": 1.0})
    sink.write({"step": 1, "loss": 1.5}, {})
    sink.write({"step": 2, "loss": 1.0, "val_loss": 1.25}, {})
    sink.write({"step": 3, "loss": float("inf")}, {})
    sink.alert(_alert(1))
    sink.alert(_alert(3, "stalled"))
    sink.close()
    assert (tmp_path / "m.csv").read_text().splitlines() == [
        "step,loss,val_loss", "0,2.0,", "1,1.5,", "2,1.0,1.25", "3,,"]
    assert (tmp_path / "m.alerts.csv").read_text().splitlines() == [
        "step,kind,value,threshold,message", "1,spike,9.0,3.0,spike at 1", "3,stalled,9.0,3.0,stalled at 3"]


def test_tensorboard_sink_by_itself_files_each_key_under_its_group(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = sinks.TensorBoardSink(tmp_path)
    sink.write({"step": 4, "loss": 2.0, "val_loss": 1.5, "rss_gb": 0.5, "note": "x", "lr": None,
                "bad": float("nan")}, {"blocks.0": 0.25, "blocks.1": float("nan")})
    sink.alert(_alert(4))
    sink.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert scalars == {"train/loss": [(4, 2.0)], "val/val_loss": [(4, 1.5)], "hw/rss_gb": [(4, 0.5)],
                       "grad_norm/blocks.0": [(4, 0.25)]}
    assert events.Tags()["tensors"] == ["alerts/spike/text_summary"]
