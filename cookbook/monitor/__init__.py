"""Monitoring: a training-health monitor with alerts and a NaN guard, its rules, log sinks, a live view,
early stopping, and the deliberately broken set-ups it diagnoses.

monitor (TrainingMonitor) · stats (gradient norms, update ratios) · history (what was recorded) · rules (one
detector per failure mode) · guard (the NaN guard's last-good checkpoint) · early_stopping (EarlyStopping
callback) · sinks (JSONL, CSV, TensorBoard, hardware sampling) · live (in-place notebook view, text
elsewhere) · failures (broken runs for notebook 06). Shown in notebooks/06.
"""

from cookbook.monitor.early_stopping import EarlyStopping
from cookbook.monitor.failures import SaturatingLM, UnsafeLossScaler
from cookbook.monitor.guard import NonFiniteError
from cookbook.monitor.live import LiveView, in_notebook, key_numbers
from cookbook.monitor.monitor import TrainingAlertWarning, TrainingMonitor
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

__all__ = [
    "ALERT_KINDS", "Alert", "CsvSink", "Divergence", "EarlyStopping", "GradientStats", "Imbalance", "JsonlSink",
    "LiveView", "NonFiniteError", "Overflow", "Plateau", "SaturatingLM", "Spike", "TensorBoardSink",
    "TrainingAlertWarning", "TrainingMonitor", "UnsafeLossScaler", "Vanishing", "in_notebook", "key_numbers",
    "layer_of", "sample_hardware",
]
