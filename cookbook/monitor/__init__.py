"""Monitoring: a training-health monitor with alerts and a NaN guard, its rules, log sinks, a live view,
and the deliberately broken set-ups it diagnoses.

monitor (TrainingMonitor) · rules (one detector per failure mode) · sinks (JSONL, CSV, TensorBoard,
hardware sampling) · live (in-place notebook view, text elsewhere) · failures (broken runs for notebook 06).
Shown in notebooks/06.
"""

from cookbook.monitor.failures import SaturatingLM, UnsafeLossScaler
from cookbook.monitor.live import LiveView, in_notebook, key_numbers
from cookbook.monitor.monitor import NonFiniteError, TrainingAlertWarning, TrainingMonitor, layer_of
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

__all__ = [
    "ALERT_KINDS", "Alert", "CsvSink", "Divergence", "Imbalance", "JsonlSink", "LiveView", "NonFiniteError",
    "Overflow", "Plateau", "SaturatingLM", "Spike", "TensorBoardSink", "TrainingAlertWarning", "TrainingMonitor",
    "UnsafeLossScaler", "Vanishing", "in_notebook", "key_numbers", "layer_of", "sample_hardware",
]
